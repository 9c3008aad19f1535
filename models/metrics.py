"""Ranking metrics from a hit matrix. Each returns one value per user; average for a total."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def hit_matrix(recommended: Sequence[Sequence[Hashable]], relevant: Sequence[set], k: int) -> np.ndarray:
    """hits[u, j] is True when the j-th recommendation of user u is relevant (first k only)."""
    hits = np.zeros((len(recommended), k), dtype=bool)
    for u, (recs, rel) in enumerate(zip(recommended, relevant)):
        for j, item in enumerate(list(recs)[:k]):
            hits[u, j] = item in rel
    return hits


def discounts(k: int) -> np.ndarray:
    """DCG position discounts 1 / log2(rank + 1) for ranks 1..k (binary NDCG here, graded NDCG of search)."""
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Binary-relevance NDCG@k, k = hits.shape[1]; users with no relevant item get 0."""
    k = hits.shape[1]
    disc = discounts(k)
    dcg = (hits * disc).sum(axis=1)
    ideal_n = np.minimum(n_relevant, k)
    idcg = np.cumsum(disc)[np.maximum(ideal_n, 1) - 1]
    return np.where(ideal_n > 0, dcg / idcg, 0.0)


def map_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Average precision@k normalised by min(k, |relevant|)."""
    k = hits.shape[1]
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    denom = np.minimum(n_relevant, k)
    return np.where(denom > 0, (precision_at * hits).sum(axis=1) / np.maximum(denom, 1), 0.0)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    return np.where(n_relevant > 0, hits.sum(axis=1) / np.maximum(n_relevant, 1), 0.0)


def hitrate_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    return hits.any(axis=1).astype(float)


def mrr_at_k(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    first = np.argmax(hits, axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


METRICS = {"ndcg": ndcg_at_k, "map": map_at_k, "recall": recall_at_k, "hitrate": hitrate_at_k, "mrr": mrr_at_k}


def per_user_metrics(recommended: Sequence[Sequence[Hashable]], relevant: Sequence[set],
                     k: int) -> dict[str, np.ndarray]:
    """{"ndcg_at_10": array per user, ...} for every metric in METRICS."""
    hits = hit_matrix(recommended, relevant, k)
    n_rel = np.array([len(r) for r in relevant], dtype=np.int64)
    return {f"{name}_at_{k}": fn(hits, n_rel) for name, fn in METRICS.items()}


def catalog_coverage(recommended: Sequence[Sequence[Hashable]], n_items: int) -> float:
    """Share of the catalog that appears in at least one list."""
    seen = {item for recs in recommended for item in recs}
    return len(seen) / max(n_items, 1)


def novelty(recommended: Sequence[Sequence[int]], item_share: np.ndarray, n_users: int) -> np.ndarray:
    """Mean self-information -log2(p) of each list's items, p = share of users who touched the item.

    Items nobody touched count as touched by one user (p = 1 / n_users). Empty lists get 0."""
    floor = 1.0 / max(n_users, 1)
    out = np.zeros(len(recommended))
    for u, recs in enumerate(recommended):
        recs = np.asarray(list(recs), dtype=np.int64)
        if len(recs):
            out[u] = float(np.mean(-np.log2(np.maximum(item_share[recs], floor))))
    return out


def intra_list_diversity(recommended: Sequence[Sequence[int]], item_category: np.ndarray) -> np.ndarray:
    """Share of item pairs in each list whose categories differ (0 for lists shorter than 2)."""
    out = np.zeros(len(recommended))
    for u, recs in enumerate(recommended):
        cats = item_category[np.asarray(list(recs), dtype=np.int64)]
        n = len(cats)
        if n >= 2:
            same = sum(c * (c - 1) // 2 for c in np.unique(cats, return_counts=True)[1])
            out[u] = 1.0 - same / (n * (n - 1) / 2)
    return out


def summarize(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(np.mean(values)) if len(values) else 0.0 for name, values in per_user.items()}


def gate_metric_problem(metric: str, k: int) -> str | None:
    """Why `metric` cannot be the gate's metric at list length k (None when it can)."""
    allowed = [f"{name}_at_{k}" for name in METRICS]
    if metric in allowed:
        return None
    return f"'{metric}' is not a per-user metric at k={k}: use one of {', '.join(allowed)}"
