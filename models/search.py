"""Per-request search and similar items over a `TwoStageRecommender`'s catalog state. Pure.

Search: a model trained with its search model (`rec.search_model`, models/search_ranker.py) answers with
BM25 (+ semantic) retrieval and the learned personalised LambdaRank order. A model without one (older
versions) keeps the hand-set blend below, `blend_search`, which the learned ranker replaced:

Blend: TF-IDF recall (the `TextIndex` built from the recommender's titles and categories), then the
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

from recsys.models.search_ranker import SearchSessions, evaluate_search
from recsys.models.session import (SEARCH, SIMILAR_ALS, SIMILAR_CONTENT, Recommendation, ServingIndex, als_model,
                            build_serving_index, rank_table, top_k)
from recsys.models.two_stage import CandidateTable, TwoStageRecommender


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
    """Top-k items for `query`, personalised when `user` >= 0 and by the live session when `session` (a
    session-folded ALS user vector, `recsys.models.session.session_vector`) is given; empty if nothing matches."""
    model = rec.search_model
    if model is None:
        return blend_search(rec, index, query, user, k, params, session)
    items, scores = model.rank(rec.data, user, query)
    if session is not None and len(items):
        # the learned order knows the user's history, not what they did a minute ago: blend the session in
        mixed = with_session(rec, items, _minmax(np.asarray(scores, dtype=np.float64)), session, params)
        order = np.argsort(-mixed, kind="stable")
        items, scores = items[order], mixed[order].astype(np.float32)
    return Recommendation(items[:k], scores[:k], [SEARCH] * min(k, len(items)), SEARCH)


def with_session(rec: TwoStageRecommender, items: np.ndarray, personal: np.ndarray, session: np.ndarray,
                 params: SearchParams) -> np.ndarray:
    """`personal` (in [0, 1]) mixed with the items' ALS affinity to the live session, `session_weight` of it."""
    affinity = np.asarray(als_model(rec).item_factors[items], dtype=np.float64) @ session.astype(np.float64)
    return (1.0 - params.session_weight) * personal + params.session_weight * _minmax(affinity)


def search_status(rec: TwoStageRecommender) -> dict:
    """How /search answers for this model (reported by /version)."""
    if rec.search_model is None:
        return {"retrieval": "tf-idf", "ranker": "blend 0.6 text + 0.4 recommendation ranker",
                "semantic": "off: this model version was trained without a search model"}
    return rec.search_model.describe()


def search_quality(rec: TwoStageRecommender, sessions: SearchSessions, k: int = 10,
                   index: ServingIndex | None = None, max_searches: int | None = 5_000,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Per-search NDCG@k and MRR of `search` as served (learned ranker, or the blend for a model without a
    search model) on held-out search sessions (a seeded sample of `max_searches`: the standard error of
    mean NDCG@10 is then ~0.005); the BM25-only order too (`bm25.` keys) when there is one."""
    sessions = sessions.sample(max_searches, seed)
    if rec.search_model is None:
        index = index if index is not None else build_serving_index(rec)
        return evaluate_search(lambda u, q: blend_search(rec, index, q, u, 100).items, rec.data, sessions, k)
    model = rec.search_model
    out = evaluate_search(lambda u, q: model.rank(rec.data, u, q)[0], rec.data, sessions, k)
    bm25 = evaluate_search(lambda u, q: model.retrieve(q, semantic=False).items, rec.data, sessions, k)
    return {**out, **{f"bm25.{m}": v for m, v in bm25.items()}}


def search_metrics(quality: dict[str, np.ndarray]) -> dict[str, float]:
    """`search.*` means for MLflow (0 searches: only the count)."""
    n = len(next(iter(quality.values()))) if quality else 0
    means = {f"search.{m}": float(v.mean()) for m, v in quality.items()} if n else {}
    return {"search.n_searches": float(n), **means}


def blend_search(rec: TwoStageRecommender, index: ServingIndex, query: str, user: int, k: int,
                 params: SearchParams = SearchParams(), session: np.ndarray | None = None) -> Recommendation:
    """The hand-set blend: TF-IDF recall, 0.6 x text cosine + 0.4 x min-max of the recommendation ranker."""
    items, text_scores = text_top(query_scores(index, query), params.candidates)
    if len(items) == 0:
        return Recommendation(items, text_scores, [], SEARCH)
    n = len(items)
    feats = np.full((n, index.source_width), np.nan, dtype=np.float32)
    feats[:, -1] = 0.0  # src_count: proposed by no recall source
    table = CandidateTable(np.full(n, user, dtype=np.int64), items, feats)
    personal = _minmax(np.asarray(rank_table(rec, table), dtype=np.float64))
    if session is not None:
        personal = with_session(rec, items, personal, session, params)
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
