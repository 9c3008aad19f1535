"""Strong item-item baselines: EASE (Steck 2019, closed form) and RP3beta (Paudel et al. 2017).

Both follow the recall-source contract of models/recall.py (fit on an `InteractionData`, then up to
`n` candidates per user index) and both work on the binary user x item matrix restricted to the most
active `max_items` items: EASE inverts a dense [items x items] Gram matrix, so its cost is cubic in
that number; RP3beta's item graph is sparse but its two-step walk fills it quickly.
`tune_on_window` picks their hyper-parameters on a label window (never the test window).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.features.csr_rows import DENSE_BLOCK_CELLS, csr_row, row_blocks
from recsys.features.interactions import InteractionData
from recsys.models.recall import Candidates, _empty, _topk_dense
from recsys.models.tuning import TuningResult, grid_search, window_truth


def active_items(matrix: sp.csr_matrix, max_items: int) -> np.ndarray:
    """Sorted column indices of the (at most) `max_items` columns with the most users, touched ones only."""
    counts = np.diff(matrix.tocsc().indptr)
    touched = np.flatnonzero(counts > 0)
    if len(touched) > max_items:
        order = np.argsort(-counts[touched], kind="stable")[:max_items]
        touched = touched[order]
    return np.sort(touched).astype(np.int64)


def binary(matrix: sp.csr_matrix) -> sp.csr_matrix:
    out = matrix.copy().astype(np.float32)
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out


class _ItemItemSource:
    """Scores = the user's history row (active items) @ an item x item weight matrix `_weights`."""

    name: ClassVar[str] = "item_item"

    def __init__(self, params=None, block_cells: int = DENSE_BLOCK_CELLS) -> None:
        self.params = params if params is not None else self.default_params()
        self.block_cells = block_cells
        self._history: sp.csr_matrix | None = None  # users x active items: binary or log(1 + confidence)
        self._active = np.zeros(0, dtype=np.int64)  # active column -> item index
        self._weights = None  # [active x active], dense ndarray or CSR

    def _prepare(self, data: InteractionData, max_items: int, history: str) -> sp.csr_matrix:
        """The binary users x active-items matrix the weights are learnt from; the user rows they are
        applied to are binary too, or log(1 + confidence) (recent and bought items count more)."""
        x = binary(data.weighted)
        self._active = active_items(x, max_items)
        x = x[:, self._active].tocsr()
        if history == "binary":
            self._history = x
        else:
            self._history = data.weighted[:, self._active].tocsr().astype(np.float32)
            self._history.data = np.log1p(self._history.data)
        return x

    def _scores(self, block: np.ndarray) -> np.ndarray:
        return self._scores_of(self._history[block])

    def _scores_of(self, rows: sp.csr_matrix) -> np.ndarray:
        s = rows @ self._weights
        return np.asarray(s.toarray() if sp.issparse(s) else s, dtype=np.float32)

    def _user_scores(self, user: int) -> np.ndarray:
        """One user's scores over the active items (the per-request form of `_scores`): the same sparse
        product on a one-row matrix built from the CSR arrays (scipy's row indexing costs more), so the
        floats, and the order of tied items, are those of the batch path."""
        cols, vals = csr_row(self._history, user)
        row = sp.csr_matrix((vals, cols, np.array([0, len(cols)])), shape=(1, len(self._active)))
        return self._scores_of(row)[0]

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The user's history row @ W at each item, for any (user, item) pair: NaN for an unknown user or an
        item outside the active set (no weights), 0 where the history does not reach the item."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        out = np.full(len(users), np.nan, dtype=np.float32)
        if len(users) == 0 or len(self._active) == 0:
            return out
        col = self.active_column(items)
        ok = np.flatnonzero((users >= 0) & (col >= 0))
        if len(ok) == 0:
            return out
        uniq, inverse = np.unique(users[ok], return_inverse=True)
        if len(uniq) == 1:
            out[ok] = self._user_scores(int(uniq[0]))[col[ok]]
            return out
        for lo, hi in row_blocks(len(uniq), len(self._active), self.block_cells):
            rows = np.flatnonzero((inverse >= lo) & (inverse < hi))
            out[ok[rows]] = self._scores(uniq[lo:hi])[inverse[rows] - lo, col[ok[rows]]]
        return out

    def active_column(self, items: np.ndarray) -> np.ndarray:
        """Each item's column among the active items, -1 for the others."""
        items = np.asarray(items, dtype=np.int64)
        if len(self._active) == 0:
            return np.full(len(items), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._active, items), len(self._active) - 1)
        return np.where(self._active[pos] == items, pos, -1)

    def candidates(self, users: np.ndarray, n: int) -> Candidates:
        users = np.asarray(users, dtype=np.int64)
        known = users[users >= 0]
        if len(known) == 0 or n <= 0 or len(self._active) == 0:
            return _empty()
        if len(known) == 1:  # one request: the per-request row product
            cols, vals = _topk_dense(self._user_scores(int(known[0]))[None, :], n)
            items = np.where(cols >= 0, self._active[np.maximum(cols, 0)], -1)
            return Candidates.from_topk(known, items, vals)
        parts = []
        for lo, hi in row_blocks(len(known), len(self._active), self.block_cells):
            block = known[lo:hi]
            cols, vals = _topk_dense(self._scores(block), n)
            items = np.where(cols >= 0, self._active[np.maximum(cols, 0)], -1)
            parts.append(Candidates.from_topk(block, items, vals))
        return Candidates(*(np.concatenate([getattr(c, f) for c in parts])
                            for f in ("users", "items", "scores", "ranks")))


@dataclass(frozen=True)
class EASEParams:
    l2: float = 200.0  # ridge penalty on the item-item weights
    # the Gram matrix is dense: its inversion grows with the cube of this (1M events: 7.7k items, 2,000
    # keeps the three-point grid within the flow's time budget)
    max_items: int = 2000
    history: Literal["binary", "log_confidence"] = "log_confidence"  # the user row the weights apply to


class EASESource(_ItemItemSource):
    """EASE: B = I - P diag(1/diag(P)), P = (X'X + l2 I)^-1, diagonal forced to zero; score = x_u B."""

    name: ClassVar[str] = "ease"
    default_params = EASEParams

    def fit(self, data: InteractionData) -> "EASESource":
        x = self._prepare(data, self.params.max_items, self.params.history)
        if x.shape[1] == 0:
            self._weights = np.zeros((0, 0), np.float32)
            return self
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.params.l2
        with threadpool_limits(2, "blas"):  # numpy's LU inverse measured faster here than potrf/potri
            p = np.linalg.inv(gram)
        b = p / -np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        self._weights = b.astype(np.float32)
        return self


@dataclass(frozen=True)
class RP3betaParams:
    alpha: float = 1.0  # power on the two-step transition probability
    beta: float = 0.5  # popularity penalty: weights divided by item degree ** beta
    neighbours: int = 200  # weights kept per item (the largest)
    max_items: int = 3000  # the two-step walk is read densely, a block of items at a time: n^2 cells
    history: Literal["binary", "log_confidence"] = "log_confidence"


class RP3betaSource(_ItemItemSource):
    """RP3beta: W[i, j] = (P(i -> user -> j)) ** alpha / degree(j) ** beta, top `neighbours` per row."""

    name: ClassVar[str] = "rp3beta"
    default_params = RP3betaParams

    def fit(self, data: InteractionData) -> "RP3betaSource":
        fitted = self.fit_many(data, [self.params], self.block_cells)[0]
        self._active, self._history, self._weights = fitted._active, fitted._history, fitted._weights
        return self

    @classmethod
    def fit_many(cls, data: InteractionData, points: list[RP3betaParams],
                 block_cells: int = DENSE_BLOCK_CELLS) -> list["RP3betaSource"]:
        """One source per parameter set, sharing the two-step walk (the costly product, computed once a
        block of items at a time); the points must agree on `max_items` and `history`."""
        if len({(p.max_items, p.history) for p in points}) > 1:
            raise ValueError("fit_many needs one max_items and one history for all points")
        sources = [cls(p, block_cells) for p in points]
        x = sources[0]._prepare(data, points[0].max_items, points[0].history)
        n = x.shape[1]
        user_deg = np.asarray(x.sum(axis=1)).ravel()
        item_deg = np.asarray(x.sum(axis=0)).ravel()
        p_ui = (sp.diags(1.0 / np.maximum(user_deg, 1.0)) @ x).tocsr()
        p_iu = (sp.diags(1.0 / np.maximum(item_deg, 1.0)) @ x.T).tocsr()
        parts: list[list[tuple]] = [[] for _ in points]
        for lo, hi in row_blocks(n, n, block_cells):
            walk = (p_iu[lo:hi] @ p_ui).toarray().astype(np.float32)
            walk[np.arange(hi - lo), np.arange(lo, hi)] = 0.0
            for p, out in zip(points, parts):
                w = np.power(walk, p.alpha) * np.power(np.maximum(item_deg, 1.0), -p.beta).astype(np.float32)
                keep = min(p.neighbours, n)
                top, top_vals = _topk_dense(w, keep)
                ok = top >= 0
                out.append((np.repeat(np.arange(lo, hi), keep).reshape(hi - lo, keep)[ok], top[ok], top_vals[ok]))
        for src, out in zip(sources, parts):
            src._active, src._history = sources[0]._active, sources[0]._history
            rows, cols, vals = (np.concatenate([o[j] for o in out]) if out else np.zeros(0) for j in range(3))
            src._weights = sp.csr_matrix((vals.astype(np.float32), (rows.astype(np.int64), cols.astype(np.int64))),
                                         shape=(n, n), dtype=np.float32)
        return sources


ITEM_ITEM = {"ease": (EASESource, EASEParams), "rp3beta": (RP3betaSource, RP3betaParams)}
# the validation grids (small: each EASE point is one dense inversion; the RP3beta points share one walk)
DEFAULT_GRIDS: dict[str, tuple[dict, ...]] = {
    "ease": tuple({"l2": v} for v in (20.0, 100.0, 500.0)),
    "rp3beta": ({"alpha": 0.6, "beta": 0.25}, *({"alpha": 1.0, "beta": b} for b in (0.0, 0.25, 0.5))),
}


def tune_on_window(kind: str, data: InteractionData, label_events: pd.DataFrame, base=None,
                   grid: tuple[dict, ...] | None = None, k: int = 10, max_users: int | None = 5000,
                   seed: int = 0) -> TuningResult:
    """Fit `kind` ("ease" / "rp3beta") on `data` at each grid point; keep the best NDCG@k on the label
    window's buyers known at the cutoff. Ties keep the earlier grid point."""
    source_cls, params_cls = ITEM_ITEM[kind]
    users, relevant = window_truth(data, label_events, max_users, seed)
    fit_many = RP3betaSource.fit_many if kind == "rp3beta" else None  # one walk for the whole grid
    return grid_search(source_cls, base if base is not None else params_cls(),
                       grid if grid is not None else DEFAULT_GRIDS[kind], data, users, relevant, k, fit_many)
