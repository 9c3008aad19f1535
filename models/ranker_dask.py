"""LambdaRank on a Dask cluster (`lightgbm.dask.DaskLGBMRanker`): the same inputs and result type as
`recsys.models.ranker.train_ranker`, for training sets that should be spread over several workers.

The caller owns the cluster and passes a `distributed.Client`; nothing here starts or configures one.
Query groups are never split across partitions (LightGBM needs each group inside one chunk).
"""

from __future__ import annotations

import numpy as np

from recsys.models.ranker import RankerParams, RankerResult, check_groups


def group_partitions(groups: np.ndarray, n_partitions: int) -> list[tuple[int, int, int, int]]:
    """Split consecutive query groups into at most `n_partitions` chunks of similar row counts.

    Returns (row_start, row_end, group_start, group_end) per chunk; no group crosses a boundary.
    """
    groups = np.asarray(groups, dtype=np.int64)
    if len(groups) == 0:
        return []
    n_partitions = max(1, min(int(n_partitions), len(groups)))
    bounds = np.concatenate([[0], np.cumsum(groups)])
    total = bounds[-1]
    # the group index where each chunk's row target falls, at group boundaries only
    cuts = np.searchsorted(bounds, [total * i / n_partitions for i in range(1, n_partitions)], side="left")
    cuts = np.unique(np.clip(cuts, 1, len(groups) - 1)) if len(groups) > 1 else np.array([], dtype=np.int64)
    edges = [0, *cuts.tolist(), len(groups)]
    return [(int(bounds[a]), int(bounds[b]), a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _to_dask(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_partitions: int):
    import dask.array as da

    parts = group_partitions(groups, n_partitions)
    row_chunks = tuple(r1 - r0 for r0, r1, _, _ in parts)
    group_chunks = tuple(g1 - g0 for _, _, g0, g1 in parts)
    dx = da.from_array(np.asarray(x), chunks=(row_chunks, x.shape[1]))
    dy = da.from_array(np.asarray(y), chunks=(row_chunks,))
    dg = da.from_array(np.asarray(groups), chunks=(group_chunks,))
    return dx, dy, dg


def train_ranker_dask(x: np.ndarray, y: np.ndarray, groups: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                      groups_val: np.ndarray, feature_names: list[str], params: RankerParams, client,
                      n_partitions: int | None = None) -> RankerResult:
    """Fit a `DaskLGBMRanker` on `client`'s workers; returns a plain (local) booster and its history.

    LightGBM's Dask interface has no early stopping: all `n_estimators` rounds run and `best_iteration`
    is the validation optimum from the recorded history (used at predict time like the local ranker).
    """
    check_groups(y, groups, params.label_gain)
    check_groups(y_val, groups_val, params.label_gain)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    val = _to_dask(x_val, y_val, groups_val, n_partitions or n_workers) if len(groups_val) > 0 else None
    return fit_dask_ranker(*_to_dask(x, y, groups, n_partitions or n_workers), val, feature_names, params, client)


def fit_dask_ranker(dx, dy, dg, val: tuple | None, feature_names: list[str], params: RankerParams,
                    client) -> RankerResult:
    """`DaskLGBMRanker` on dask arrays (x, y, group; each chunk whole query groups) that may live only on
    the workers; `val` the same triple for validation or None."""
    import lightgbm.dask as lgb_dask

    fit_kwargs: dict = {"group": dg, "feature_name": list(feature_names)}
    if val is not None:
        vx, vy, vg = val
        fit_kwargs.update(eval_X=(vx,), eval_y=(vy,), eval_group=[vg], eval_names=["valid"], eval_at=[params.eval_at])
    model = lgb_dask.DaskLGBMRanker(
        client=client, objective=params.objective, n_estimators=params.n_estimators,
        learning_rate=params.learning_rate, num_leaves=params.num_leaves,
        min_child_samples=params.min_child_samples, colsample_bytree=params.colsample_bytree,
        label_gain=list(params.label_gain), random_state=params.seed, verbose=-1,
        lambdarank_truncation_level=max(params.eval_at * 2, 20))
    model.fit(dx, dy, **fit_kwargs)
    evals = getattr(model, "evals_result_", None) or {}
    history = {f"{split}.{name.replace('@', '_at_')}": list(values)
               for split, metrics in evals.items() for name, values in metrics.items()}
    curve = history.get(f"valid.ndcg_at_{params.eval_at}")
    best = int(np.argmax(curve)) + 1 if curve else params.n_estimators
    return RankerResult(booster=model.to_local().booster_, best_iteration=best, history=history)
