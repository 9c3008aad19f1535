"""The two-stage model's per-user work on a Dask cluster: candidates, pair features, ranking sets and
scoring run on the workers, users split into blocks, the model state broadcast to every worker once.

The ranker is trained by `lightgbm.dask` straight from the ranking-set blocks the workers built (they are
never gathered on the driver); only their shapes and the finished booster travel back. The caller owns the
`distributed.Client` (recsys.tasks.cluster opens one); nothing here starts or configures a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.models.ranker import RankerResult
from recsys.models.ranker_dask import fit_dask_ranker

# users per task: one block's candidate table + features is ~400 rows x ~40 float columns per user (~60 MiB
# per 1,000 users), the same bound the single-process path uses for its blocks (RECOMMEND_BLOCK_USERS)
CLUSTER_BLOCK_USERS = 5_000


def user_blocks(users: np.ndarray, block_users: int = CLUSTER_BLOCK_USERS) -> list[np.ndarray]:
    """Consecutive blocks of at most `block_users` of the (sorted) user indices."""
    users = np.asarray(users, dtype=np.int64)
    return [users[lo:lo + block_users] for lo in range(0, len(users), max(1, block_users))]


def broadcast(client, obj):
    """`obj` copied once to every worker; the future stands for it in later tasks."""
    return client.scatter([obj], broadcast=True, hash=False)[0]


def _ranking_set(learner, label_events: pd.DataFrame, users: np.ndarray):
    return learner.ranking_set(label_events, users)


def _shape(ranking_set) -> tuple[int, int, int, str]:
    return ranking_set.x.shape[0], ranking_set.x.shape[1], len(ranking_set.groups), ranking_set.x.dtype.str


def _part(ranking_set, name: str) -> np.ndarray:
    return getattr(ranking_set, name)


@dataclass
class ClusterRankingSets:
    """Ranking-set blocks held by the workers (futures) and their shapes (rows, features, groups, dtype)."""

    futures: list
    shapes: list[tuple[int, int, int, str]]

    @property
    def n_groups(self) -> int:
        return sum(s[2] for s in self.shapes)

    def dask_arrays(self):
        """(x, y, group) dask arrays whose chunks are the non-empty blocks (no query group crosses one)."""
        import dask.array as da

        parts = [(f, s) for f, s in zip(self.futures, self.shapes) if s[2] > 0]
        x = da.concatenate([da.from_delayed(_delayed_part(f, "x"), shape=(s[0], s[1]), dtype=np.dtype(s[3]))
                            for f, s in parts])
        y = da.concatenate([da.from_delayed(_delayed_part(f, "y"), shape=(s[0],), dtype=np.int64) for f, s in parts])
        g = da.concatenate([da.from_delayed(_delayed_part(f, "groups"), shape=(s[2],), dtype=np.int64)
                            for f, s in parts])
        return x, y, g


def _delayed_part(future, name: str):
    import dask

    return dask.delayed(_part, pure=True)(future, name)


def ranking_sets_on_cluster(client, learner, label_events: pd.DataFrame, users: np.ndarray,
                            block_users: int = CLUSTER_BLOCK_USERS) -> ClusterRankingSets:
    """`learner.ranking_set(label_events, users)` computed block by block on the workers; the rows, in
    block order, are those of the single-process call (each user's candidates depend on that user only)."""
    learner_f, labels_f = broadcast(client, learner), broadcast(client, label_events)
    futures = [client.submit(_ranking_set, learner_f, labels_f, block, pure=False) for block in user_blocks(users, block_users)]
    shapes = client.gather([client.submit(_shape, f, pure=False) for f in futures])
    return ClusterRankingSets(futures, [tuple(s) for s in shapes])


def fit_ranker_on_cluster(client, windows: list[tuple[object, pd.DataFrame, int]], feature_names: list[str],
                          params, block_users: int = CLUSTER_BLOCK_USERS) -> RankerResult:
    """The ranker of `train_two_stage` from (learner, label events, seed) per label window, with
    `lightgbm.dask`: each window's users split into train/validation as the single-process path splits them,
    ranking sets built on the workers, training and validation stacked in the same order."""
    train_sets, val_sets = [], []
    for learner, label_events, seed in windows:
        train_users, val_users = learner.split_users(label_events, seed)
        train_sets.append(ranking_sets_on_cluster(client, learner, label_events, train_users, block_users))
        val_sets.append(ranking_sets_on_cluster(client, learner, label_events, val_users, block_users))
    train = ClusterRankingSets([f for s in train_sets for f in s.futures], [t for s in train_sets for t in s.shapes])
    val = ClusterRankingSets([f for s in val_sets for f in s.futures], [t for s in val_sets for t in s.shapes])
    if train.n_groups == 0:
        raise ValueError("no training user has a positive label among their candidates; "
                         "the label window is empty or recall finds nothing")
    with client.as_current():  # the dask arrays over the workers' blocks resolve through this client
        return fit_dask_ranker(*train.dask_arrays(), val.dask_arrays() if val.n_groups else None,
                               feature_names, params, client)


def _recommend_block(rec, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    return rec.recommend(users, k)


def recommend_on_cluster(client, rec, users: np.ndarray, k: int,
                         block_users: int = CLUSTER_BLOCK_USERS) -> tuple[np.ndarray, np.ndarray]:
    """`rec.recommend(users, k)` with the known users' blocks scored on the workers (the [users x k] lists
    come back; the candidates and features stay there)."""
    users = np.asarray(users, dtype=np.int64)
    items = np.full((len(users), k), -1, dtype=np.int64)
    scores = np.full((len(users), k), -np.inf, dtype=np.float32)
    known = np.unique(users[users >= 0])
    if len(known):
        rec_f = broadcast(client, rec)
        parts = client.gather([client.submit(_recommend_block, rec_f, block, k, pure=False)
                               for block in user_blocks(known, block_users)])
        it, sc = np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])
        mask = users >= 0
        row = np.searchsorted(known, users[mask])
        items[mask], scores[mask] = it[row], sc[row]
    unknown = users < 0
    if unknown.any():
        items[unknown], scores[unknown] = rec.cold_start(k)
    return items, scores


def recommend_ids_on_cluster(client, rec, user_ids, k: int, block_users: int = CLUSTER_BLOCK_USERS) -> list[list[str]]:
    """The item ids of `rec.recommend_ids(user_ids, k)` (as served), the known users' lists scored on the
    workers (`recommend_on_cluster`), unknown users answered by the cold-start list."""
    users = rec.data.users.index_of(list(user_ids))
    items, _ = recommend_on_cluster(client, rec, users, k, block_users)
    return [rec.data.items.ids[its[its >= 0]].tolist() for its in items]
