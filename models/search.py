"""Per-request search and similar items over a `TwoStageRecommender`'s catalog state. Pure.

Search: TF-IDF recall (the `TextIndex` built from the recommender's titles and categories), then the
trained ranker scores the (user, item) pairs, and the final score blends both:

    score = text_weight * text / max(text) + (1 - text_weight) * minmax(ranker)

both terms scaled to [0, 1] within the request's candidates. The ranker was trained without a query
feature and without a text source, so the source columns are "not proposed" (NaN, count 0) and the
ranker contributes what it knows from the pair features (popularity, trend, price fit, the user's
category share and history with the item); for an unknown user those are the item-side features only,
for a known user they personalise the order. The text term keeps results on the query.
"""

from __future__ import annotations

from dataclasses import dataclass

import math
import re
from collections import Counter

import numpy as np

from models.session import (SEARCH, SIMILAR_ALS, SIMILAR_CONTENT, Recommendation, ServingIndex, als_model,
                            rank_table, top_k)
from models.two_stage import CandidateTable, TwoStageRecommender


@dataclass(frozen=True)
class SearchParams:
    candidates: int = 200
    text_weight: float = 0.6
    # with live session events: share of the non-text term given to the items' ALS affinity with the
    # session-folded user vector (the rest stays with the ranker)
    session_weight: float = 0.5


def _minmax(x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x) if hi - lo < 1e-12 else (x - lo) / (hi - lo)


_TOKEN = re.compile(r"(?u)\b\w+\b")  # TextIndex's token pattern


def query_scores(index: ServingIndex, query: str) -> np.ndarray:
    """Cosine of every item's TF-IDF row with the query: the same numbers as `TextIndex.search`
    (lowercase, the index's token pattern, sublinear tf, idf, L2 norm), computed from the fitted
    vocabulary and idf directly; scikit-learn's `transform` costs ~1.5 ms of input validation per call."""
    vec = index.text.vectorizer
    vocab, idf = vec.vocabulary_, vec.idf_
    counts = Counter(t for t in _TOKEN.findall(query.lower()) if t in vocab)
    if not counts:
        return np.zeros(index.text_csc.shape[0], dtype=np.float32)
    cols = np.array([vocab[t] for t in counts], dtype=np.int64)
    w = np.array([(1.0 + math.log(c)) for c in counts.values()]) * idf[cols]
    w /= np.linalg.norm(w)
    return np.asarray(index.text_csc[:, cols] @ w.astype(np.float32)).ravel()


def text_top(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    positive = np.flatnonzero(scores > 0)
    if len(positive) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    return top_k(positive, scores[positive], n)


def search(rec: TwoStageRecommender, index: ServingIndex, query: str, user: int, k: int,
           params: SearchParams = SearchParams(), session: np.ndarray | None = None) -> Recommendation:
    """Top-k items for `query`, personalised by the ranker when `user` >= 0 and by the live session when
    `session` (a session-folded ALS user vector, `models.session.session_vector`) is given; empty if no
    term matches."""
    items, text_scores = text_top(query_scores(index, query), params.candidates)
    if len(items) == 0:
        return Recommendation(items, text_scores, [], SEARCH)
    n = len(items)
    feats = np.full((n, index.source_width), np.nan, dtype=np.float32)
    feats[:, -1] = 0.0  # src_count: proposed by no recall source
    table = CandidateTable(np.full(n, user, dtype=np.int64), items, feats)
    personal = _minmax(np.asarray(rank_table(rec, table), dtype=np.float64))
    if session is not None:
        affinity = np.asarray(als_model(rec).item_factors[items], dtype=np.float64) @ session.astype(np.float64)
        personal = (1.0 - params.session_weight) * personal + params.session_weight * _minmax(affinity)
    blended = (params.text_weight * text_scores / max(float(text_scores.max()), 1e-9)
               + (1.0 - params.text_weight) * personal)
    top, scores = top_k(items, blended, k)
    return Recommendation(top, scores, [SEARCH] * len(top), SEARCH)


def similar_items(rec: TwoStageRecommender, index: ServingIndex, item: int, k: int) -> Recommendation:
    """Neighbours of one item: ALS item-factor cosine, or TF-IDF neighbours for an item nobody touched
    (its factors carry no signal). The item itself is excluded."""
    if index.is_cold[item]:
        its, scs = index.text.similar(item, k)
        return Recommendation(its, scs, [SIMILAR_CONTENT] * len(its), SIMILAR_CONTENT)
    sims = index.item_unit_factors @ index.item_unit_factors[item]
    sims[item] = -np.inf
    sims[index.is_cold] = -np.inf  # cold items' factors are noise
    cand = np.flatnonzero(np.isfinite(sims))
    its, scs = top_k(cand, sims[cand], k)
    return Recommendation(its, scs, [SIMILAR_ALS] * len(its), SIMILAR_ALS)
