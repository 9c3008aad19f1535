"""Per-request recommendation logic for the service: ranking one user, folding a live session into
the ALS user vector, and content slots for new (never interacted) items.

Pure: arrays in, arrays out, no pandas on the per-request path. Only the public attributes of
`TwoStageRecommender` are used (`data`, `sources`, `params`, `booster`, `best_iteration`,
`candidate_table`, `features`, `cold_start`), and of the candidate sources only "als" (an implicit
CPU model under `.model`) and "popular" are named; any other source is asked for candidates as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recsys.features.csr_rows import csr_row, weighted_rows_sum
from recsys.models.recall import Candidates
from recsys.models.text_index import TextIndex
from recsys.models.two_stage import CandidateTable, TwoStageRecommender, merge_candidates

# per-item strategies, as reported by the service
MODEL = "model"  # ranked two-stage list of a known user
SESSION = "session"  # ranked list whose ALS candidates come from the session-folded user vector
POPULAR = "popular"  # popularity fallback (unknown user, no usable session)
CONTENT = "content"  # a new item (no interactions yet) chosen by text similarity to the user's profile
SEARCH = "search"  # text recall + ranker blend
SIMILAR_ALS = "als_similar"  # item-factor cosine neighbours
SIMILAR_CONTENT = "content_similar"  # TF-IDF neighbours (cold items)


@dataclass(frozen=True)
class SessionParams:
    """How live events are folded in and how many slots new items may take."""

    # session events count as this many times their event weight (they are fresher than history)
    session_boost: float = 2.0
    max_session_events: int = 50
    # slots of a k-list that may go to new items chosen by content similarity (0 = off)
    new_item_slots: int = 1
    new_item_min_similarity: float = 0.15
    # items of the user's history used to build the content profile
    profile_items: int = 20


@dataclass
class Recommendation:
    items: np.ndarray  # int64 item indices
    scores: np.ndarray  # float32
    strategies: list[str]
    strategy: str  # the list's overall strategy


@dataclass
class ServingIndex:
    """Per-model structures built once at load time (never per request)."""

    text: TextIndex
    item_unit_factors: np.ndarray  # L2-normalised ALS item factors (cosine neighbours)
    cold_items: np.ndarray  # item indices without any interaction in the state
    cold_text: sp.csr_matrix  # text rows of the cold items
    is_cold: np.ndarray  # bool per item
    source_width: int  # number of per-source feature columns the ranker expects
    yty_reg: np.ndarray  # Y'Y + regularization * I of the ALS item factors (float64), for session folding
    text_csc: sp.csc_matrix  # the text matrix by term, for per-request query scoring
    extras: dict = field(default_factory=dict)


def build_serving_index(rec: TwoStageRecommender) -> ServingIndex:
    data = rec.data
    titles = data.item_titles if len(data.item_titles) == data.n_items else np.full(data.n_items, "", object)
    cats = np.asarray(data.categories, dtype=object)[data.item_category]
    text = TextIndex.fit(titles.astype(str), cats.astype(str))
    factors = np.asarray(als_model(rec).item_factors, dtype=np.float32)
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    unit = factors / np.maximum(norms, 1e-9)
    touched = np.diff(data.weighted.tocsc().indptr) > 0
    cold = np.flatnonzero(~touched).astype(np.int64)
    width = merge_candidates({}, data.n_items).source_features.shape[1]
    model = als_model(rec)
    y = factors.astype(np.float64)
    yty_reg = y.T @ y + float(model.regularization) * np.eye(y.shape[1])
    return ServingIndex(text=text, item_unit_factors=unit, cold_items=cold, cold_text=text.matrix[cold].tocsr(),
                        is_cold=~touched, source_width=width, yty_reg=yty_reg,
                        text_csc=text.matrix.tocsc())


def als_model(rec: TwoStageRecommender):
    return rec.sources["als"].model


# ---- ranking -------------------------------------------------------------------------------
def rank_table(rec: TwoStageRecommender, table: CandidateTable) -> np.ndarray:
    """Ranker scores of a small candidate table, single-threaded (per-request sized input)."""
    if len(table.users) == 0:
        return np.zeros(0, dtype=np.float64)
    # float64: LightGBM converts float32 input value by value (~1.5x slower at this size)
    return rec.booster.predict(rec.features(table).astype(np.float64), num_iteration=rec.best_iteration,
                               num_threads=1)


def top_k(items: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if len(items) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    n = min(k, len(items))
    part = np.argpartition(-scores, n - 1)[:n] if n < len(items) else np.arange(len(items))
    order = part[np.argsort(-scores[part], kind="stable")]
    return items[order].astype(np.int64), scores[order].astype(np.float32)


def recommend_user(rec: TwoStageRecommender, index: ServingIndex, user: int, k: int,
                   params: SessionParams = SessionParams()) -> Recommendation:
    """Ranked top-k of one user index (-1 = unknown: the popularity fallback)."""
    if user < 0:
        items, scores = rec.cold_start(k)
        ok = items >= 0
        out = Recommendation(items[ok], scores[ok], [POPULAR] * int(ok.sum()), POPULAR)
    else:
        table = rec.candidate_table(np.array([user], dtype=np.int64))
        items, scores = top_k(table.items, rank_table(rec, table), k)
        out = Recommendation(items, scores, [MODEL] * len(items), MODEL)
    return add_new_items(rec, index, out, *history_profile(rec, user, params), k, params)


# ---- sessions ------------------------------------------------------------------------------
def session_confidences(rec: TwoStageRecommender, user: int, session_items: np.ndarray,
                         session_types: list[str], params: SessionParams) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, confidences): the user's history (if known) plus the weighted session events."""
    w = np.array([rec.params.interactions.weight_of(t) for t in session_types], dtype=np.float64)
    w *= params.session_boost
    items = np.asarray(session_items, dtype=np.int64)
    if user >= 0:
        hist_items, hist_w = csr_row(rec.data.weighted, user)
        items, w = np.concatenate([hist_items, items]), np.concatenate([hist_w, w])
    uniq, inverse = np.unique(items, return_inverse=True)
    return uniq, np.bincount(inverse, weights=w, minlength=len(uniq)).astype(np.float32)


def session_row(rec: TwoStageRecommender, user: int, session_items: np.ndarray, session_types: list[str],
                params: SessionParams) -> sp.csr_matrix:
    """The same as a 1 x n_items confidence row (what implicit's `recalculate_user` takes)."""
    items, conf = session_confidences(rec, user, session_items, session_types, params)
    return sp.csr_matrix((conf, items, [0, len(items)]), shape=(1, rec.data.n_items))


def fold_session(rec: TwoStageRecommender, index: ServingIndex, user: int, session_items: np.ndarray,
                 session_types: list[str], params: SessionParams = SessionParams()) -> np.ndarray:
    """ALS user vector re-solved against the fixed item factors from history + session.

    The same least-squares step as implicit's `recalculate_user` (x = (Y'Y + reg I + Y'(C - I)Y)^-1 Y'C p,
    confidences scaled by alpha), written in numpy with Y'Y + reg I precomputed: implicit's version
    recomputes nothing expensive either, but starts an OpenMP team per call, which costs tens of ms
    on a busy 2-core machine. The confidences come as plain arrays: building scipy matrices per
    request cost more than the solve."""
    items, conf = session_confidences(rec, user, session_items, session_types, params)
    model = als_model(rec)
    conf = conf.astype(np.float64) * float(model.alpha)
    y = np.asarray(model.item_factors[items], dtype=np.float64)
    a = index.yty_reg + (y.T * (conf - 1.0)) @ y
    b = y.T @ conf
    return np.linalg.solve(a, b).astype(np.float32)


def session_vector(rec: TwoStageRecommender, index: ServingIndex, user: int, session_items: np.ndarray,
                   session_types: list[str], params: SessionParams = SessionParams()) -> np.ndarray | None:
    """The session-folded ALS user vector, or None when the session has no item events to fold."""
    session_items = np.asarray(session_items, dtype=np.int64)[-params.max_session_events:]
    session_types = list(session_types)[-params.max_session_events:]
    keep = np.array([rec.params.interactions.weight_of(t) > 0 for t in session_types], dtype=bool)
    if not keep.any():
        return None
    return fold_session(rec, index, user, session_items[keep], [t for t, ok in zip(session_types, keep) if ok],
                        params)


def recommend_session(rec: TwoStageRecommender, index: ServingIndex, user: int, session_items: np.ndarray,
                      session_types: list[str], k: int,
                      params: SessionParams = SessionParams()) -> Recommendation:
    """Ranked top-k for a user (known or not) with live session events (known item indices).

    The ALS candidates (and their score/rank features) come from the session-folded vector; the
    other sources answer for the user's index as usual (an unknown user gets the non-personal ones).
    """
    session_items = np.asarray(session_items, dtype=np.int64)[-params.max_session_events:]
    session_types = list(session_types)[-params.max_session_events:]
    if len(session_items) == 0:
        return recommend_user(rec, index, user, k, params)
    keep = np.array([rec.params.interactions.weight_of(t) > 0 for t in session_types], dtype=bool)
    if not keep.any():  # only searches: nothing to fold
        return recommend_user(rec, index, user, k, params)
    s_items, s_types = session_items[keep], [t for t, ok in zip(session_types, keep) if ok]
    vector = fold_session(rec, index, user, s_items, s_types, params)
    users = np.array([user], dtype=np.int64)
    per_source: dict[str, Candidates] = {}
    for name, src in rec.sources.items():
        budget = rec.params.recall.budget(name)
        if name == "als":
            its, scs = rec.sources["als"].recommend_vector(vector, budget)
            per_source[name] = Candidates.from_topk(users, its[None, :], scs[None, :].astype(np.float32))
        else:
            per_source[name] = src.candidates(users, budget)
    table = merge_candidates(per_source, rec.data.n_items)
    items, scores = top_k(table.items, rank_table(rec, table), k)
    out = Recommendation(items, scores, [SESSION] * len(items), SESSION)
    if user < 0 and index.is_cold[s_items].all():
        return lead_with_content(index, out, s_items, k)
    prof_items, prof_w = history_profile(rec, user, params)
    prof_items = np.concatenate([prof_items, s_items])
    prof_w = np.concatenate([prof_w, np.ones(len(s_items), np.float32) * prof_w.max(initial=1.0)])
    return add_new_items(rec, index, out, prof_items, prof_w, k, params)


def lead_with_content(index: ServingIndex, out: Recommendation, s_items: np.ndarray, k: int) -> Recommendation:
    """A visitor without history who only touched new items: neither the folded vector (new items'
    factors carry no signal) nor the ranker knows anything, so the first half of the list is the
    items most similar in text to what they looked at; the ranked list fills the rest."""
    sims = index.text.profile_scores(s_items, np.ones(len(s_items), np.float32))
    sims[s_items] = 0.0
    n = max(1, k // 2)
    c_items, c_scores = top_k(np.flatnonzero(sims > 0), sims[sims > 0], n)
    rest = [j for j, it in enumerate(out.items.tolist()) if it not in set(c_items.tolist())][:k - len(c_items)]
    return Recommendation(np.concatenate([c_items, out.items[rest]]),
                          np.concatenate([c_scores, out.scores[rest]]).astype(np.float32),
                          [CONTENT] * len(c_items) + [out.strategies[j] for j in rest], CONTENT)


# ---- new items by content ------------------------------------------------------------------
def history_profile(rec: TwoStageRecommender, user: int, params: SessionParams) -> tuple[np.ndarray, np.ndarray]:
    """The user's most confident items and their weights (empty for an unknown user)."""
    if user < 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    m = rec.data.weighted
    lo, hi = m.indptr[user], m.indptr[user + 1]
    vals = m.data[lo:hi]
    top = np.argsort(-vals, kind="stable")[:params.profile_items]
    return m.indices[lo:hi][top].astype(np.int64), vals[top].astype(np.float32)


def add_new_items(rec: TwoStageRecommender, index: ServingIndex, out: Recommendation, prof_items: np.ndarray,
                  prof_w: np.ndarray, k: int, params: SessionParams) -> Recommendation:
    """Give up to `new_item_slots` of the last positions to new items similar to the profile.

    New items have no interactions, so neither ALS nor the ranker's popularity features can find
    them; text similarity to what the user touched is the only signal."""
    slots = min(params.new_item_slots, k // 5)
    if slots <= 0 or len(prof_items) == 0 or len(index.cold_items) == 0:
        return out
    profile = weighted_rows_sum(index.text.matrix, prof_items, prof_w)  # dense [vocab]
    norm = float(np.linalg.norm(profile))
    if norm == 0:
        return out
    sims = index.cold_text @ (profile / norm)
    best = np.argsort(-sims, kind="stable")[:slots]
    best = best[sims[best] >= params.new_item_min_similarity]
    new = np.array([i for i in index.cold_items[best] if i not in set(out.items.tolist())], dtype=np.int64)
    if len(new) == 0:
        return out
    n_keep = min(len(out.items), k - len(new))
    floor = float(out.scores[n_keep - 1]) if n_keep else 0.0
    return Recommendation(np.concatenate([out.items[:n_keep], new]),
                          np.concatenate([out.scores[:n_keep], np.full(len(new), floor, np.float32)]),
                          out.strategies[:n_keep] + [CONTENT] * len(new), out.strategy)

