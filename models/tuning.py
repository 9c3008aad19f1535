"""Choosing a source's settings on a label window (a window before the test window, never the test one):
fit at the cutoff, score each grid point's own top-k lists on the window's buyers, keep the best."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.features.interactions import InteractionData
from recsys.models.metrics import ndcg_at_k


@dataclass(frozen=True)
class TuningResult:
    params: object  # the winning parameter dataclass (EASEParams, PopularityParams, ...)
    scores: tuple[tuple[dict, float], ...]  # (grid point, validation NDCG@k) in grid order


def window_truth(data: InteractionData, label_events: pd.DataFrame, max_users: int | None, seed: int = 0,
                 new_users: bool = False) -> tuple[np.ndarray, list[set]]:
    """(user indices, purchased item indices) of the label window's buyers: those known at the cutoff,
    or with `new_users` those unknown then (all index -1), sampled to at most `max_users`."""
    buys = label_events.loc[(label_events[S.EVENT_TYPE] == S.PURCHASE) & label_events[S.ITEM_ID].notna(),
                            [S.USER_ID, S.ITEM_ID]]
    u = data.users.index_of(buys[S.USER_ID].to_numpy(dtype=object))
    i = data.items.index_of(buys[S.ITEM_ID].to_numpy(dtype=object))
    ok = (i >= 0) & ((u < 0) if new_users else (u >= 0))
    truth = pd.Series(i[ok]).groupby(buys[S.USER_ID].to_numpy(dtype=object)[ok]).agg(lambda s: set(s.tolist()))
    users = data.users.index_of(truth.index.to_numpy(dtype=object)).astype(np.int64)
    order = np.argsort(users, kind="stable")
    users, relevant = users[order], [truth.iloc[j] for j in order]
    if max_users is not None and len(users) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        return users[keep], [relevant[j] for j in keep]
    return users, relevant


def ndcg_of(source, users: np.ndarray, relevant: list[set], k: int) -> float:
    """Mean NDCG@k of a fitted source's own top-k lists for `users` (sorted; -1 = unknown user)."""
    if len(users) == 0:
        return 0.0
    uniq, inverse = np.unique(users, return_inverse=True)
    c = source.candidates(uniq, k)
    lists: list[list[int]] = [[] for _ in uniq]
    for r in np.argsort(c.ranks, kind="stable"):
        lists[int(np.searchsorted(uniq, c.users[r]))].append(int(c.items[r]))
    hits = np.zeros((len(users), k), dtype=bool)
    for row, (j, rel) in enumerate(zip(inverse, relevant)):
        for pos, item in enumerate(lists[j][:k]):
            hits[row, pos] = item in rel
    return float(ndcg_at_k(hits, np.array([len(s) for s in relevant])).mean())


def grid_search(source_cls, base, grid: tuple[dict, ...], data: InteractionData, users: np.ndarray,
                relevant: list[set], k: int = 10, fit_many=None) -> TuningResult:
    """`source_cls(replace(base, **point)).fit(data)` for each point (or `fit_many(data, params)` for
    all at once, where points share costly work); the best mean NDCG@k wins, a tie keeps the earlier point."""
    params = [replace(base, **point) for point in grid]
    fitted = fit_many(data, params) if fit_many is not None else (source_cls(p).fit(data) for p in params)
    scores = [(point, ndcg_of(src, users, relevant, k)) for point, src in zip(grid, fitted)]
    best = max(range(len(scores)), key=lambda j: (scores[j][1], -j))
    return TuningResult(replace(base, **scores[best][0]), tuple(scores))
