"""Candidate sources (recall). One contract: fit on an `InteractionData`, then return up to
`n` candidates per user index as flat arrays (user, item, score, rank), rank starting at 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recsys.features.csr_rows import DENSE_BLOCK_CELLS, csr_row, row_blocks, rows_dot, weighted_rows_sum
from recsys.features.interactions import InteractionData
from recsys.models import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidates:
    users: np.ndarray  # int64 user index (-1 = unknown user)
    items: np.ndarray  # int64 item index
    scores: np.ndarray  # float32, higher is better
    ranks: np.ndarray  # int32, 1 = best

    def __len__(self) -> int:
        return len(self.users)

    @staticmethod
    def from_topk(users: np.ndarray, items2d: np.ndarray, scores2d: np.ndarray) -> "Candidates":
        """From per-user top-k arrays [n_users, k]; entries with item < 0 are dropped."""
        k = items2d.shape[1] if items2d.ndim == 2 else 0
        u = np.repeat(np.asarray(users, dtype=np.int64), k)
        it = items2d.reshape(-1).astype(np.int64, copy=False)
        sc = scores2d.reshape(-1).astype(np.float32, copy=False)
        rk = np.tile(np.arange(1, k + 1, dtype=np.int32), len(users))
        keep = (it >= 0) & np.isfinite(sc)
        if keep.all():  # the common case for full lists: no masked copies
            return Candidates(u, it, sc, rk)
        return Candidates(u[keep], it[keep], sc[keep], rk[keep])


class CandidateSource(Protocol):
    name: str

    def fit(self, data: InteractionData) -> "CandidateSource": ...

    def candidates(self, users: np.ndarray, n: int) -> Candidates: ...


def _topk_rows(matrix: sp.csr_matrix, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n columns by value of each requested CSR row, padded with -1 / -inf."""
    items = np.full((len(rows), n), -1, dtype=np.int64)
    scores = np.full((len(rows), n), -np.inf, dtype=np.float32)
    for r, row in enumerate(rows):
        if row < 0:
            continue
        lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
        if hi == lo:
            continue
        vals = matrix.data[lo:hi]
        top = np.argsort(-vals, kind="stable")[:n]
        items[r, :len(top)] = matrix.indices[lo:hi][top]
        scores[r, :len(top)] = vals[top]
    return items, scores


@dataclass(frozen=True)
class ALSParams:
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 2.0
    iterations: int = 15
    device: Literal["auto", "cpu", "gpu"] = "auto"
    use_cg: bool = True
    random_state: int = 42
    num_threads: int = 0  # 0 = all cores


def resolve_device(device: str) -> str:
    """`auto` -> gpu when implicit's CUDA extension loads, else cpu; `gpu` without CUDA is an error."""
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"ALS device must be auto, cpu or gpu, not '{device}'")
    if device == "cpu":
        return "cpu"
    from recsys.models.gpu import cuda_status

    ok, reason = cuda_status()
    if device == "gpu" and not ok:
        raise RuntimeError(f"ALS device 'gpu' was requested but the GPU path cannot load: {reason}. "
                           "Use --device cpu or auto.")
    return "gpu" if ok else "cpu"


class ALSSource:
    """implicit's AlternatingLeastSquares on the confidence-weighted user x item matrix."""

    name: ClassVar[str] = "als"

    def __init__(self, params: ALSParams = ALSParams()):
        self.params = params
        self.model = None
        self.device = "cpu"
        self._user_items: sp.csr_matrix | None = None

    def fit(self, data: InteractionData) -> "ALSSource":
        from implicit.als import AlternatingLeastSquares

        p = self.params
        self.device = resolve_device(p.device)
        # implicit parallelises itself; a second BLAS thread pool underneath only contends
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=p.factors, regularization=p.regularization, alpha=p.alpha,
                iterations=p.iterations, use_gpu=self.device == "gpu", use_cg=p.use_cg,
                random_state=p.random_state, calculate_training_loss=False,
                **({} if self.device == "gpu" else {"num_threads": p.num_threads}))
            model.fit(data.weighted, show_progress=False,
                      callback=lambda it, _elapsed, _loss: progress.step(
                          f"ALS ({data.n_users:,} users x {data.n_items:,} items)", it + 1, p.iterations,
                          "iterations", rows=(it + 1) * data.weighted.nnz))
        self.model = model.to_cpu() if self.device == "gpu" else model
        self._user_items = data.weighted
        return self

    def candidates(self, users: np.ndarray, n: int) -> Candidates:
        users = np.asarray(users, dtype=np.int64)
        known = users[users >= 0]
        if len(known) == 0 or n <= 0:
            return Candidates.from_topk(np.zeros(0, np.int64), np.zeros((0, 0)), np.zeros((0, 0)))
        n = min(n, self.model.item_factors.shape[0])
        if len(known) == 1:  # a request: skip implicit's batch machinery (sparse slice, thread pool)
            ids, scores = self.recommend_vector(np.asarray(self.model.user_factors[known[0]]), n)
            return Candidates.from_topk(known, ids[None, :], scores[None, :].astype(np.float32))
        ids, scores = self.model.recommend(known, self._user_items[known], N=n,
                                           filter_already_liked_items=False)
        return Candidates.from_topk(known, ids, scores)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """ALS dot product of each (user, item) pair; NaN for unknown users."""
        users = np.asarray(users, dtype=np.int64)
        out = np.full(len(users), np.nan, dtype=np.float32)
        known = users >= 0
        if known.any():
            uf, itf = self.model.user_factors, self.model.item_factors
            out[known] = np.einsum("ij,ij->i", uf[users[known]], itf[np.asarray(items)[known]])
        return out

    def recommend_vector(self, user_vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        scores = self.model.item_factors @ user_vector
        top = np.argpartition(-scores, min(n, len(scores) - 1))[:n]
        top = top[np.argsort(-scores[top])]
        return top, scores[top]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(str(directory / "als.npz"))

    @classmethod
    def load(cls, directory: Path, data: InteractionData, params: ALSParams = ALSParams()) -> "ALSSource":
        from implicit.cpu.als import AlternatingLeastSquares

        src = cls(params)
        src.model = AlternatingLeastSquares.load(str(directory / "als.npz"))
        src._user_items = data.weighted
        return src


def _ranked_by(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items with a positive key, best first (stable for ties), and their keys."""
    order = np.argsort(-key, kind="stable")
    order = order[key[order] > 0]
    return order.astype(np.int64), key[order].astype(np.float32)


def _same_list_for_all(users: np.ndarray, ranking: np.ndarray, scores: np.ndarray, n: int) -> Candidates:
    """The top-n of one global ranking, proposed to every user (the unknown user -1 included)."""
    k = min(n, len(ranking))
    items = np.broadcast_to(ranking[:k], (len(users), k))
    vals = np.broadcast_to(scores[:k], (len(users), k))
    return Candidates.from_topk(users, np.ascontiguousarray(items), np.ascontiguousarray(vals))


POPULARITY_WINDOWS = (7, 28)  # days the feature state counts recent popularity over


@dataclass(frozen=True)
class PopularityParams:
    window_days: int = 7  # 7 or 28 (POPULARITY_WINDOWS)
    purchases_only: bool = False  # count purchases only (else confidence-weighted views, carts, purchases)

    def __post_init__(self) -> None:
        if self.window_days not in POPULARITY_WINDOWS:
            raise ValueError(f"popularity window_days must be one of {POPULARITY_WINDOWS}, not {self.window_days}")


class PopularitySource:
    """Most popular items in the recent window (confidence-weighted, or purchases only); same list for everyone."""

    name: ClassVar[str] = "popular"

    def __init__(self, params: PopularityParams = PopularityParams()):
        self.params = params
        self.ranking: np.ndarray = np.zeros(0, dtype=np.int64)
        self.scores: np.ndarray = np.zeros(0, dtype=np.float32)

    def fit(self, data: InteractionData) -> "PopularitySource":
        short = self.params.window_days == 7
        if self.params.purchases_only:
            # state saved before item_buys_7d existed: the 28-day purchases are the nearest count
            pop = data.item_buys_7d if short and data.item_buys_7d is not None else data.item_buys_28d
        else:
            pop = data.item_pop_7d if short else data.item_pop_28d
        # ties (and empty windows) broken by longer-term popularity
        self.ranking, self.scores = _ranked_by(pop.astype(np.float64) + 1e-6 * data.item_pop_28d)
        return self

    def candidates(self, users: np.ndarray, n: int) -> Candidates:
        return _same_list_for_all(np.asarray(users, dtype=np.int64), self.ranking, self.scores, n)


class RepeatSource:
    """The user's own history, most confident (recent, bought, carted) first."""

    name: ClassVar[str] = "repeat"

    def __init__(self) -> None:
        self._weighted: sp.csr_matrix | None = None

    def fit(self, data: InteractionData) -> "RepeatSource":
        self._weighted = data.weighted
        return self

    def candidates(self, users: np.ndarray, n: int) -> Candidates:
        users = np.asarray(users, dtype=np.int64)
        items, scores = _topk_rows(self._weighted, users, n)
        return Candidates.from_topk(users, items, scores)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of the user's own history: the confidence of each pair (0 when untouched)."""
        return _lookup(self._weighted, users, items)


def _lookup(matrix: sp.csr_matrix, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    users = np.asarray(users, dtype=np.int64)
    out = np.zeros(len(users), dtype=np.float32)
    known = users >= 0
    if known.any():
        out[known] = np.asarray(matrix[users[known], np.asarray(items)[known]], dtype=np.float32).ravel()
    return out


def _topk_dense(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n columns of each row of a dense score matrix; non-positive scores dropped (-1 / -inf)."""
    n = min(n, scores.shape[1])
    if n <= 0:
        return np.zeros((scores.shape[0], 0), np.int64), np.zeros((scores.shape[0], 0), np.float32)
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n] if n < scores.shape[1] else \
        np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    items = np.take_along_axis(part, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=1).astype(np.float32)
    bad = ~(vals > 0)
    items[bad], vals[bad] = -1, -np.inf
    return items, vals


def _topk_in_user_blocks(users: np.ndarray, n: int, n_items: int, block_cells: int, dense_scores) -> Candidates:
    """Top-n candidates per user from `dense_scores(block) -> [len(block), n_items]`, computed one
    bounded block of users at a time (`row_blocks`) so memory stays flat however many users are asked for;
    one vectorised argpartition per block beats a sort per sparse row once rows are mostly full."""
    parts = []
    stage = f"candidate blocks ({len(users):,} users x {n_items:,} items)"
    for lo, hi in row_blocks(len(users), n_items, block_cells):
        block = users[lo:hi]
        items, vals = _topk_dense(dense_scores(block), n)
        parts.append(Candidates.from_topk(block, items, vals))
        progress.step(stage, hi, len(users), "users", rows=hi)
    return Candidates(*(np.concatenate([getattr(c, f) for c in parts])
                        for f in ("users", "items", "scores", "ranks")))


def _empty() -> Candidates:
    return Candidates(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int32))


class CovisitationSource:
    """Items that co-visit (same user, close in time) with the user's history, weighted by that history."""

    name: ClassVar[str] = "covis"

    def __init__(self, block_cells: int = DENSE_BLOCK_CELLS) -> None:
        self._weighted: sp.csr_matrix | None = None
        self._covis: sp.csr_matrix | None = None
        # history @ covis fills most of a user's row at scale (10M events: 3.6e9 entries for all test
        # users at once, 27 GiB of indices), so it is read a bounded block of users at a time
        self.block_cells = block_cells

    def fit(self, data: InteractionData) -> "CovisitationSource":
        if data.covis is None:
            raise ValueError("the interaction data has no co-visitation matrix")
        self._weighted, self._covis = data.weighted, data.covis
        return self

    def candidates(self, users: np.ndarray, n: int) -> Candidates:
        users = np.asarray(users, dtype=np.int64)
        known = users[users >= 0]
        if len(known) == 0 or n <= 0:
            return _empty()
        if len(known) == 1:
            history, weights = csr_row(self._weighted, known[0])
            items, vals = _topk_dense(weighted_rows_sum(self._covis, history, weights)[None, :], n)
            return Candidates.from_topk(known, items, vals)
        return _topk_in_user_blocks(known, n, self._covis.shape[1], self.block_cells,
                                    lambda block: (self._weighted[block] @ self._covis).toarray())


@dataclass(frozen=True)
class TrendingParams:
    per_category: bool = False  # rank trending items inside the user's own categories
    min_recent: float = 1.0  # items with less recent (7-day) weight never trend


class TrendingSource:
    """Items whose last 7 days beat their 28-day rate; optionally weighted by the user's category shares."""

    name: ClassVar[str] = "trending"

    def __init__(self, params: TrendingParams = TrendingParams()):
        self.params = params
        self.ranking: np.ndarray = np.zeros(0, dtype=np.int64)
        self.scores: np.ndarray = np.zeros(0, dtype=np.float32)
        self._data: InteractionData | None = None

    def fit(self, data: InteractionData) -> "TrendingSource":
        pop7, pop28 = data.item_pop_7d.astype(np.float64), data.item_pop_28d.astype(np.float64)
        trend = (pop7 + 1.0) / (pop28 / 4.0 + 1.0)
        key = np.where(pop7 >= self.params.min_recent, trend * np.log1p(pop7), 0.0)
        self.ranking, self.scores = _ranked_by(key)
        self._key = key.astype(np.float32)
        self._data = data
        return self

    def candidates(self, users: np.ndarray, n: int) -> Candidates:
        users = np.asarray(users, dtype=np.int64)
        if not self.params.per_category:
            return _same_list_for_all(users, self.ranking, self.scores, n)
        known = users[users >= 0]
        if len(known) == 0:
            return _empty()
        d = self._data
        shares = d.user_cat_share[known].toarray()[:, d.item_category]  # users x items
        items, vals = _topk_dense(shares * self._key[None, :], n)
        return Candidates.from_topk(known, items, vals)


class TextSource:
    """Content neighbours (TF-IDF over title + category) of the user's weighted history.

    Needs no interactions on the candidate item, so brand-new items can be proposed."""

    name: ClassVar[str] = "text"

    def __init__(self, block_cells: int = DENSE_BLOCK_CELLS) -> None:
        self.index = None
        self._weighted: sp.csr_matrix | None = None
        self.block_cells = block_cells

    def fit(self, data: InteractionData) -> "TextSource":
        from recsys.models.text_index import TextIndex

        cats = np.asarray(data.categories, dtype=object)[data.item_category]
        self.index = TextIndex.fit(np.asarray(data.item_titles, dtype=object), cats)
        self._weighted = data.weighted
        return self

    def _profiles(self, users: np.ndarray) -> sp.csr_matrix:
        p = (self._weighted[users] @ self.index.matrix).tocsr()
        norms = np.sqrt(np.asarray(p.multiply(p).sum(axis=1)).ravel())
        return (sp.diags(1.0 / np.maximum(norms, 1e-9)) @ p).tocsr()

    def _profile(self, user: int) -> np.ndarray:
        """One user's unit-length profile as a dense term vector (the per-request form of _profiles)."""
        history, weights = csr_row(self._weighted, user)
        p = weighted_rows_sum(self.index.matrix, history, weights)
        return p / max(float(np.linalg.norm(p)), 1e-9)

    def candidates(self, users: np.ndarray, n: int) -> Candidates:
        users = np.asarray(users, dtype=np.int64)
        known = users[users >= 0]
        if len(known) == 0 or n <= 0:
            return _empty()
        if len(known) == 1:
            items, vals = _topk_dense((self.index.matrix @ self._profile(known[0]))[None, :], n)
            return Candidates.from_topk(known, items, vals)
        return _topk_in_user_blocks(known, n, self.index.matrix.shape[0], self.block_cells,
                                    lambda block: (self._profiles(block) @ self.index.matrix.T).toarray())

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Cosine of each item's text vector with its user's history profile (0 for unknown users)."""
        users = np.asarray(users, dtype=np.int64)
        out = np.zeros(len(users), dtype=np.float32)
        known = np.flatnonzero(users >= 0)
        if len(known) == 0:
            return out
        uniq, inverse = np.unique(users[known], return_inverse=True)
        if len(uniq) == 1:
            out[known] = rows_dot(self.index.matrix, np.asarray(items)[known], self._profile(uniq[0]))
            return out
        prof = self._profiles(uniq)
        out[known] = np.asarray(prof[inverse].multiply(self.index.matrix[np.asarray(items)[known]]).sum(axis=1)
                                ).ravel()
        return out


@dataclass(frozen=True)
class ItemKNNParams:
    kind: Literal["bm25", "cosine"] = "bm25"
    neighbours: int = 100


class ItemKNNSource:
    """implicit's item-item nearest neighbours (BM25 or cosine); a baseline."""

    name: ClassVar[str] = "itemknn"

    def __init__(self, params: ItemKNNParams = ItemKNNParams()):
        self.params = params
        self.model = None
        self._user_items: sp.csr_matrix | None = None

    def fit(self, data: InteractionData) -> "ItemKNNSource":
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        import warnings

        cls = BM25Recommender if self.params.kind == "bm25" else CosineRecommender
        # implicit converts its own BM25-weighted COO back to CSR and warns about it
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = cls(K=self.params.neighbours, num_threads=1)
            self.model.fit(data.weighted, show_progress=False)
        self._user_items = data.weighted
        return self

    def candidates(self, users: np.ndarray, n: int) -> Candidates:
        users = np.asarray(users, dtype=np.int64)
        known = users[users >= 0]
        if len(known) == 0 or n <= 0:
            return _empty()
        n = min(n, self._user_items.shape[1])
        ids, scores = self.model.recommend(known, self._user_items[known], N=n,
                                           filter_already_liked_items=False)
        scores = np.where(scores > 0, scores, -np.inf)
        return Candidates.from_topk(known, np.where(scores > 0, ids, -1), scores)
