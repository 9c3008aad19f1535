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
    m = symmetric_rows(upper, upper.T)
    del upper
    return normalised_rows(m, np.arange(n_items), row_mass(m), params, in_place=True)


# The same three steps on row parts (the Dask path: no worker holds the whole matrix before the driver does).
# Part p of n holds the items p, p + n, p + 2n, ...: interleaved, so best sellers spread over the parts.

def strided_rows(a, part: int, parts: int):
    """Rows part, part + parts, part + 2 * parts, ... of a sparse matrix or an array."""
    return a[part::parts]


def unstride_rows(pieces: list):
    """The inverse of `strided_rows` over parts 0..n-1: sparse matrices (CSR) or arrays, rows back in order."""
    parts = len(pieces)
    n_rows = sum(p.shape[0] for p in pieces)
    order = np.concatenate([np.arange(p, n_rows, parts) for p in range(parts)])
    inverse = np.empty(n_rows, dtype=np.int64)
    inverse[order] = np.arange(n_rows)
    if sp.issparse(pieces[0]):
        return sp.vstack(pieces, format="csr")[inverse]
    return np.concatenate(pieces)[inverse]


def pair_parts(upper: sp.csr_matrix, parts: int) -> list[tuple[sp.csr_matrix, sp.csr_matrix]]:
    """What row part p of `upper + upper.T` needs from one bucket's pairs: its rows of `upper` and of
    `upper.T`. Summed over buckets (in the same order for both) they give that part exactly."""
    by_col = upper.tocsc()
    return [(strided_rows(upper, p, parts), strided_rows(by_col.T, p, parts).tocsr()) for p in range(parts)]


def sum_pair_parts(pieces: list[tuple[sp.csr_matrix, sp.csr_matrix]]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    return (sum((a for a, _ in pieces[1:]), pieces[0][0]), sum((b for _, b in pieces[1:]), pieces[0][1]))


def symmetric_rows(upper_rows: sp.csr_matrix, lower_rows) -> sp.csr_matrix:
    """Rows of `upper + upper.T` (unnormalised) from those rows of `upper` and of `upper.T`."""
    m = (upper_rows + lower_rows).tocsr()
    m.sum_duplicates()
    return m


def symmetric_part(pair: tuple[sp.csr_matrix, sp.csr_matrix]) -> sp.csr_matrix:
    return symmetric_rows(*pair)


def row_mass(m: sp.csr_matrix) -> np.ndarray:
    """Each row's total weight (the normalisation needs every item's, over all parts)."""
    return np.asarray(m.sum(axis=1)).ravel()


def normalised_rows(m: sp.csr_matrix, rows: np.ndarray, mass: np.ndarray,
                    params: CovisitationParams = CovisitationParams(), in_place: bool = False) -> sp.csr_matrix:
    """The float32 rows `rows` of the normalised matrix, from those rows unnormalised (`m`) and every item's
    `row_mass`. `in_place`: scale `m`'s values (one process: no copy of the largest matrix)."""
    if params.normalise and m.nnz:
        inv = 1.0 / np.maximum(np.sqrt(mass), 1e-9)
        scale = inv[np.asarray(rows)[np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))]] * inv[m.indices]
        if in_place:
            m.data *= scale
        else:
            m = sp.csr_matrix((m.data * scale, m.indices, m.indptr), shape=m.shape)
    m = m.astype(np.float32)
    m.eliminate_zeros()
    return m
