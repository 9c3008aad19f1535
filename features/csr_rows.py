"""Rows of a CSR matrix read straight from `indptr` / `indices` / `data` (one user's items, a few users'
weighted sums, dot products), and the row blocks that bound dense score matrices. Scipy's fancy indexing
builds several intermediate matrices per call, which cost more than the ranker on the one-user request
path; these read the arrays directly. Pure."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import scipy.sparse as sp

# Per-request scoring asks about ONE user: these helpers read that user's CSR row straight from
# indptr/indices/data. scipy's fancy indexing builds several intermediate matrices per call (~50-100 us
# each), which dominated a request; the batch (training) path keeps scipy.

# Batch paths (training, evaluation, batch scoring) read [users x items] products densely, a bounded
# block of users at a time: at scale the rows are mostly full, and dense reads beat sparse ones.

DENSE_BLOCK_CELLS = 1 << 24  # cells per block: 64 MiB as float32


def row_blocks(n_rows: int, n_cols: int, block_cells: int = DENSE_BLOCK_CELLS) -> Iterator[tuple[int, int]]:
    """(lo, hi) row ranges whose dense [rows x n_cols] block has at most `block_cells` cells (>= 1 row)."""
    step = max(1, block_cells // max(n_cols, 1))
    for lo in range(0, n_rows, step):
        yield lo, min(lo + step, n_rows)


def single_row(rows: np.ndarray) -> int | None:
    """The row index when every entry of `rows` is the same one (a single user's pairs), else None."""
    rows = np.asarray(rows)
    if len(rows) == 0 or rows[0] != rows[-1] or not (rows == rows[0]).all():
        return None
    return int(rows[0])


def csr_row(matrix: sp.csr_matrix, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of one CSR row (views, no copy)."""
    lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
    return matrix.indices[lo:hi], matrix.data[lo:hi]


def csr_lookup(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """matrix[rows[i], cols[i]] for every i, as a flat float array (0 where absent)."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.float32)
    row = single_row(rows)
    if row is not None and matrix.has_sorted_indices:
        idx, vals = csr_row(matrix, row)
        cols = np.asarray(cols)
        if len(idx) == 0:
            return np.zeros(len(cols), dtype=np.float32)
        pos = np.minimum(np.searchsorted(idx, cols), len(idx) - 1)
        return np.where(idx[pos] == cols, vals[pos], 0.0).astype(np.float32)
    return np.asarray(matrix[rows, cols], dtype=np.float32).ravel()


def row_totals(matrix: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """Sum of each requested row."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.float64)
    row = single_row(rows)
    if row is not None:
        return np.full(len(rows), csr_row(matrix, row)[1].sum(dtype=np.float64))
    return np.asarray(matrix[rows].sum(axis=1), dtype=np.float64).ravel()


def _row_positions(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which requested row, position in indices/data) of every stored entry of `rows`."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = indptr[rows].astype(np.int64)
    lengths = indptr[rows + 1].astype(np.int64) - starts
    seg = np.repeat(np.arange(len(rows)), lengths)
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return seg, np.arange(int(lengths.sum()), dtype=np.int64) + offsets


def weighted_rows_sum(matrix: sp.csr_matrix, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_k weights[k] * matrix[rows[k]] as a dense vector of matrix.shape[1] (float64)."""
    seg, pos = _row_positions(matrix.indptr, rows)
    vals = matrix.data[pos] * np.asarray(weights, dtype=np.float64)[seg]
    return np.bincount(matrix.indices[pos], weights=vals, minlength=matrix.shape[1])


def rows_dot(matrix: sp.csr_matrix, rows: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """matrix[rows[k]] . vector for every k (float64)."""
    seg, pos = _row_positions(matrix.indptr, rows)
    return np.bincount(seg, weights=matrix.data[pos] * vector[matrix.indices[pos]], minlength=len(rows))
