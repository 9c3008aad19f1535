"""Item-to-item co-visitation from events before a cutoff.

Two item events of the same user close in time co-visit: the pair gets the weight of the
later event's type times a decay in the time gap. The matrix is symmetric, items x items,
and normalised by the square root of each item's total mass (a cosine-like score) so that
best sellers do not co-visit everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

DAY_SECONDS = 86400.0


@dataclass(frozen=True)
class CovisitationParams:
    max_lag: int = 10  # pair each event with up to this many following events of the same user
    max_gap_hours: float = 24.0 * 7  # events further apart never co-visit
    gap_half_life_hours: float = 24.0  # weight halves every this many hours of gap
    normalise: bool = True


def build_covisitation(user_idx: np.ndarray, item_idx: np.ndarray, ts_seconds: np.ndarray,
                       type_weight: np.ndarray, n_items: int,
                       params: CovisitationParams = CovisitationParams()) -> sp.csr_matrix:
    """Symmetric items x items co-visitation weights (zero diagonal) from flat event arrays.

    The caller passes only events before the cutoff (build_interaction_data does)."""
    return covisitation_from_pairs(covisitation_pairs(user_idx, item_idx, ts_seconds, type_weight, n_items, params),
                                   params)


def covisitation_pairs(user_idx: np.ndarray, item_idx: np.ndarray, ts_seconds: np.ndarray,
                       type_weight: np.ndarray, n_items: int,
                       params: CovisitationParams = CovisitationParams()) -> sp.csr_matrix:
    """Unnormalised pair weights as (earlier item, later item), float64. Pairs never cross users, so the
    events may be split by user into blocks whose results are summed (the Dask path does).

    Memory: pairs are summed one lag at a time, one direction only (the matrix is symmetric), so the
    peak is the distinct pairs plus one lag's raw pairs; collecting every lag's raw pairs first peaked
    at 8 GiB for 10M events."""
    order = np.lexsort((np.asarray(ts_seconds, dtype=np.float64), np.asarray(user_idx, dtype=np.int64)))
    u = np.asarray(user_idx, dtype=np.int64)[order]
    it = np.asarray(item_idx, dtype=np.int32)[order]
    t = np.asarray(ts_seconds, dtype=np.float64)[order]
    w = np.asarray(type_weight, dtype=np.float64)[order]
    del order
    max_gap = params.max_gap_hours * 3600.0
    half = max(params.gap_half_life_hours * 3600.0, 1.0)
    upper = sp.csr_matrix((n_items, n_items), dtype=np.float64)  # pairs as (earlier item, later item)
    for lag in range(1, params.max_lag + 1):
        if lag >= len(u):
            break
        a, b = slice(0, len(u) - lag), slice(lag, len(u))
        gap = t[b] - t[a]
        ok = (u[a] == u[b]) & (it[a] != it[b]) & (gap <= max_gap)
        if not ok.any():
            continue
        weight = np.maximum(w[a][ok], w[b][ok]) * np.power(0.5, gap[ok] / half)
        upper = upper + sp.csr_matrix((weight, (it[a][ok], it[b][ok])), shape=(n_items, n_items))
        del gap, ok, weight
    return upper


def covisitation_from_pairs(upper: sp.csr_matrix, params: CovisitationParams = CovisitationParams()) -> sp.csr_matrix:
    """The symmetric, normalised float32 matrix from the (summed) pair weights of `covisitation_pairs`."""
    n_items = upper.shape[0]
    m = (upper + upper.T).tocsr()
    del upper
    m.sum_duplicates()
    if params.normalise and m.nnz:
        mass = np.sqrt(np.asarray(m.sum(axis=1)).ravel())
        inv = 1.0 / np.maximum(mass, 1e-9)
        m.data *= inv[np.repeat(np.arange(n_items), np.diff(m.indptr))] * inv[m.indices]
    m = m.astype(np.float32)
    m.eliminate_zeros()
    return m
