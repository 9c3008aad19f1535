"""New users: what they get from what is known of them at request time, and how that choice is tuned.

A user the state does not know gets, by context:
- nothing: the tuned popularity list (`TwoStageRecommender.cold_start`), strategy "popular";
- a category (the page they landed on): recent popularity within the category blended with the global
  list, `category_weight` of the way towards the category (0 = the global list), strategy "popular_category";
- session events: `session_strategy`, one of
  "popular" (ignore the session), "session" (the two-stage model with the session folded into the ALS
  vector, `recsys.models.session.recommend_session`), "covis" (co-visitation neighbours of the session
  items, then the category list), "category" (popularity within the session items' categories, by their
  share of the session) or "blend" (reciprocal-rank fusion of the three); with `session_items_first`
  the session's own items lead the list (shoppers who view before they buy).

The choice is a tiny grid scored on the label window's new buyers (never the test window) with the
protocol of `context_cases`: each buyer's first item event in the window is revealed, the rest of their
purchases in the window are what the list must find.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.features.csr_rows import weighted_rows_sum
from recsys.models.metrics import per_user_metrics

if TYPE_CHECKING:  # the recommender imports this module's params
    from recsys.models.session import Recommendation, ServingIndex
    from recsys.models.two_stage import TwoStageRecommender

SESSION_STRATEGIES = ("popular", "session", "covis", "category", "blend")
CATEGORY_WEIGHTS = (0.0, 0.5, 0.8, 1.0)
# strategies as the service reports them (the list's overall strategy)
POPULAR = "popular"
POPULAR_CATEGORY = "popular_category"
SESSION_NAMES = {"popular": POPULAR, "session": "session", "covis": "session_covis",
                 "category": "session_category", "blend": "session_blend"}
RRF_OFFSET = 20.0  # reciprocal-rank fusion: 1 / (offset + rank)
MIN_CASES = 30  # fewer new buyers with a context than this in the label window: every buyer counts as new


@dataclass(frozen=True)
class ColdStartParams:
    """How a new user's list is built from its context; `tune` picks the first three on the label window."""

    category_weight: float = 0.5
    session_strategy: str = "session"  # what the service did before this path existed
    session_items_first: bool = False
    tune: bool = True
    max_users: int = 1000  # label-window new buyers scored per grid point (a seeded sample)

    def __post_init__(self) -> None:
        if self.session_strategy not in SESSION_STRATEGIES:
            raise ValueError(f"cold_start session_strategy must be one of {', '.join(SESSION_STRATEGIES)}, "
                             f"not '{self.session_strategy}'")
        if not 0.0 <= self.category_weight <= 1.0:
            raise ValueError(f"cold_start category_weight must be in [0, 1], not {self.category_weight}")


# ---- the lists ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColdStartIndex:
    """Per-model arrays (built once): the popularity list's scores, and the same within each category."""

    popularity: np.ndarray  # float64 per item, the popular source's score / its maximum (0 = not ranked)
    within_category: np.ndarray  # float64 per item, its score / the best score of its category
    item_category: np.ndarray
    category_code: dict  # category name -> code


def build_cold_start_index(rec: TwoStageRecommender) -> ColdStartIndex:
    data, pop = rec.data, rec.sources["popular"]
    score = np.zeros(data.n_items, dtype=np.float64)
    score[pop.ranking] = np.maximum(pop.scores, 0.0)
    cats = np.asarray(data.item_category, dtype=np.int64)
    best = np.zeros(max(int(cats.max(initial=-1)) + 1, len(data.categories)), dtype=np.float64)
    np.maximum.at(best, cats, score)
    within = np.divide(score, best[cats], out=np.zeros_like(score), where=best[cats] > 0)
    names = np.asarray(data.categories, dtype=object).astype(str)
    return ColdStartIndex(score / max(score.max(initial=0.0), 1e-12), within, cats,
                          {name: code for code, name in enumerate(names)})


def cold_index(rec: TwoStageRecommender) -> ColdStartIndex:
    """The recommender's `ColdStartIndex`, built on first use and kept with it."""
    index = getattr(rec, "_cold_start_index", None)
    if index is None:
        index = build_cold_start_index(rec)
        rec._cold_start_index = index
    return index


def category_scores(index: ColdStartIndex, shares: dict[int, float], weight: float) -> np.ndarray:
    """(1 - weight) * global popularity + weight * popularity within the categories (by their share)."""
    within = np.zeros(len(index.popularity))
    for code, share in shares.items():
        mine = index.item_category == code
        within[mine] = share * index.within_category[mine]
    return (1.0 - weight) * index.popularity + weight * within + 1e-9 * index.popularity


def _unit(x: np.ndarray) -> np.ndarray:
    top = x.max(initial=0.0)
    return x / top if top > 0 else np.zeros_like(x)


def first_then(primary: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Scores ranking every item with a positive `primary` score first (in its order), then the rest by `fallback`."""
    return np.where(primary > 0, 2.0 + _unit(primary), _unit(np.maximum(fallback, 0.0)))


def top_items(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best items with a positive score, best first (ties: lower index)."""
    scores = np.array(scores, dtype=np.float64)
    if exclude is not None and len(exclude):
        scores[exclude] = 0.0
    n = min(k, int((scores > 0).sum()))
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    part = np.argpartition(-scores, n - 1)[:n]
    order = part[np.lexsort((part, -scores[part]))]
    return order.astype(np.int64), scores[order].astype(np.float32)


def session_weights(rec: TwoStageRecommender, items: np.ndarray,
                    types: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(item indices, event weights, types) of the session's item events (searches, unknown types dropped)."""
    w = np.array([rec.params.interactions.weight_of(t) for t in types], dtype=np.float64)
    items = np.asarray(items, dtype=np.int64)
    keep = (w > 0) & (items >= 0)
    return items[keep], w[keep], [t for t, ok in zip(types, keep) if ok]


def category_list(rec: TwoStageRecommender, category: str, k: int,
                  weight: float | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """A new user's list given a category name (`weight`: the model's `category_weight`); None when the
    model does not know the category."""
    index = cold_index(rec)
    code = index.category_code.get(str(category))
    if code is None:
        return None
    weight = rec.params.cold_start.category_weight if weight is None else weight
    return top_items(category_scores(index, {code: 1.0}, weight), k)


def context_scores(rec: TwoStageRecommender, items: np.ndarray, weights: np.ndarray, strategy: str,
                   items_first: bool, category_weight: float) -> np.ndarray:
    """Dense item scores of a context-only strategy ("covis", "category") for session items with weights."""
    index = cold_index(rec)
    shares = pd.Series(weights).groupby(index.item_category[items]).sum()
    by_category = category_scores(index, (shares / shares.sum()).to_dict(), category_weight)
    if strategy == "category":
        scores = by_category
    elif strategy == "covis":
        covis = rec.data.covis
        near = weighted_rows_sum(covis, items, weights) if covis is not None else np.zeros(rec.data.n_items)
        near[items] = 0.0
        scores = first_then(near, by_category)
    else:
        raise ValueError(f"no context scores for strategy '{strategy}'")
    return lead_with(items, weights, scores) if items_first else scores


def lead_with(items: np.ndarray, weights: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`scores` with the session's own items first (by their summed event weight)."""
    own = np.zeros(len(scores))
    np.add.at(own, items, weights)
    return first_then(own, scores)


def rrf(lists: list[np.ndarray], n_items: int) -> np.ndarray:
    """Reciprocal-rank fusion of ranked item lists (equal weights) as dense scores."""
    out = np.zeros(n_items)
    for items in lists:
        out[items] += 1.0 / (RRF_OFFSET + np.arange(1, len(items) + 1))
    return out


def session_list(rec: TwoStageRecommender, serving: ServingIndex, items: np.ndarray, types: list[str], k: int,
                 params: ColdStartParams, cache: dict | None = None) -> Recommendation:
    """A new user's top-k given session events (known item indices), by `params.session_strategy`.

    `cache` (a dict kept by the caller) holds the two-stage session lists already computed (tuning asks for
    the same session under several grid points)."""
    from recsys.models.session import Recommendation, recommend_session

    def two_stage(its: np.ndarray, tps: list[str], depth: int) -> Recommendation:
        """The service's session path for a new user (`recommend_session`), through `cache`."""
        key = (tuple(np.asarray(its).tolist()), tuple(tps), depth)
        if cache is None or key not in cache:
            found = recommend_session(rec, serving, -1, np.asarray(its, dtype=np.int64), list(tps), depth)
            if cache is None:
                return found
            cache[key] = found
        return cache[key]

    s_items, w, s_types = session_weights(rec, items, types)
    strategy = params.session_strategy
    if len(s_items) == 0 or strategy == "popular" or (strategy == "session" and not params.session_items_first) \
            or serving.is_cold[s_items].all():  # only new items: the session path leads with content
        if strategy == "popular":
            items, types = np.zeros(0, np.int64), []
        return two_stage(items, types, k)
    depth = max(k, 50)
    if strategy in ("session", "blend"):
        ranked = two_stage(s_items, s_types, depth)
    if strategy == "session":
        scores = lead_with(s_items, w, rrf([ranked.items], rec.data.n_items))
    elif strategy == "blend":
        parts = [ranked.items] + [top_items(context_scores(rec, s_items, w, name, False, params.category_weight),
                                            depth)[0] for name in ("covis", "category")]
        scores = rrf(parts, rec.data.n_items)
        scores = lead_with(s_items, w, scores) if params.session_items_first else scores
    else:
        scores = context_scores(rec, s_items, w, strategy, params.session_items_first, params.category_weight)
    top, sc = top_items(scores, k)
    name = SESSION_NAMES[strategy]
    return Recommendation(top, sc, [name] * len(top), name)


def new_user_recommendation(rec: TwoStageRecommender, serving: ServingIndex, items: np.ndarray, types: list[str],
                            category: str | None, k: int) -> Recommendation:
    """What the service answers for a user the model does not know: by session events if any usable,
    else by category if known, else the popularity list (with the service's new-item slots as before)."""
    from recsys.models.session import Recommendation, recommend_session

    items = np.asarray(items, dtype=np.int64)
    params = rec.params.cold_start
    if len(session_weights(rec, items, list(types))[0]):
        return session_list(rec, serving, items, list(types), k, params)
    if category is not None:
        found = category_list(rec, category, k)
        if found is not None:
            return Recommendation(found[0], found[1], [POPULAR_CATEGORY] * len(found[0]), POPULAR_CATEGORY)
    return recommend_session(rec, serving, -1, items, list(types), k)


def cold_start_status(rec: TwoStageRecommender) -> dict[str, str]:
    """What a new user gets from this model (reported by the service's /version)."""
    p = rec.params.cold_start
    session = SESSION_NAMES[p.session_strategy] + (", the session's items first" if p.session_items_first else "")
    return {"session": session, "category": f"{POPULAR_CATEGORY} (category weight {p.category_weight:g})",
            "none": POPULAR}


# ---- the protocol: the first event revealed, the rest of the window's purchases to find ------------------
@dataclass
class ContextCases:
    """New buyers of a window with their revealed first event and the purchases left to find."""

    user_ids: list[str]
    first_item: np.ndarray  # item index of the revealed event
    first_type: list[str]
    relevant: list[set]  # item ids purchased in the window, the revealed event's row left out

    def __len__(self) -> int:
        return len(self.user_ids)


def context_cases(rec: TwoStageRecommender, window_events: pd.DataFrame, user_ids: list[str] | None = None,
                  max_users: int | None = None, seed: int = 0, as_new: bool = False) -> ContextCases:
    """Cases of the window's buyers unknown to `rec` (or, `as_new`, every buyer, history ignored), limited to
    `user_ids` when given. A buyer's first item event (earliest timestamp, file order on ties) is revealed;
    the items bought in the window by the other rows must be found; buyers with nothing left, or whose
    first item the model does not know, are left out."""
    ev = window_events.loc[window_events[S.EVENT_TYPE].isin(S.ITEM_EVENT_TYPES) & window_events[S.ITEM_ID].notna(),
                           [S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.TS]]
    ev = ev.assign(**{S.USER_ID: ev[S.USER_ID].astype(str), S.ITEM_ID: ev[S.ITEM_ID].astype(str),
                      S.EVENT_TYPE: ev[S.EVENT_TYPE].astype(str)})
    ev = ev.assign(_row=np.arange(len(ev))).sort_values([S.USER_ID, S.TS, "_row"], kind="stable")
    buyers = ev.loc[ev[S.EVENT_TYPE] == S.PURCHASE, S.USER_ID].unique()
    if not as_new:
        buyers = buyers[rec.data.users.index_of(buyers) < 0]
    if user_ids is not None:
        buyers = np.intersect1d(buyers, np.asarray(user_ids, dtype=str))
    ev = ev.loc[ev[S.USER_ID].isin(set(buyers))]
    first = ev.groupby(S.USER_ID, sort=True).head(1)
    rest = ev.drop(index=first.index)
    left = rest.loc[rest[S.EVENT_TYPE] == S.PURCHASE].groupby(S.USER_ID, sort=True)[S.ITEM_ID].agg(set)
    first = first.set_index(S.USER_ID)
    item = rec.data.items.index_of(first[S.ITEM_ID].to_numpy(dtype=object))
    first = first.assign(_item=item)
    users = [u for u in left.index if first.at[u, "_item"] >= 0]
    if max_users is not None and len(users) > max_users:
        users = [users[j] for j in np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))]
    return ContextCases(users, first.loc[users, "_item"].to_numpy(dtype=np.int64),
                        first.loc[users, S.EVENT_TYPE].tolist(), [left[u] for u in users])


def case_lists(rec: TwoStageRecommender, serving: ServingIndex, cases: ContextCases, k: int,
               params: ColdStartParams, context: str, cache: dict | None = None) -> list[list[str]]:
    """Each case's top-k item ids with `context` "event" (the session path) or "category" (its category)."""
    ids = rec.data.items.ids
    cats = np.asarray(rec.data.categories, dtype=object).astype(str)
    out = []
    for item, etype in zip(cases.first_item, cases.first_type):
        if context == "event":
            r = session_list(rec, serving, np.array([item]), [etype], k, params, cache)
            out.append(ids[r.items].tolist())
        else:
            found = category_list(rec, cats[rec.data.item_category[item]], k, params.category_weight)
            out.append(ids[found[0]].tolist() if found is not None else [])
    return out


def context_metrics(rec: TwoStageRecommender, serving: ServingIndex, cases: ContextCases, k: int,
                    baselines: dict[str, np.ndarray] | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """`test.new_context.*` (first event revealed), `test.new_category.*` (only its category) and
    `baseline.<name>.new_context.*` (a context-free list, e.g. the popularity baseline's) on the same cases;
    with the per-user NDCG@k arrays under the same names."""
    if len(cases) == 0:
        return {"test.new_context.n_users": 0.0}, {}
    metrics = {"test.new_context.n_users": float(len(cases))}
    per_user = {}
    runs = {"test.new_context": case_lists(rec, serving, cases, k, rec.params.cold_start, "event"),
            "test.new_category": case_lists(rec, serving, cases, k, rec.params.cold_start, "category")}
    ids = rec.data.items.ids
    for name, top in (baselines or {}).items():
        runs[f"baseline.{name}.new_context"] = [ids[top[top >= 0][:k]].tolist()] * len(cases)
    for prefix, lists in runs.items():
        m = per_user_metrics(lists, cases.relevant, k)
        metrics.update({f"{prefix}.{key}": float(v.mean()) for key, v in m.items()})
        per_user[prefix] = m[f"ndcg_at_{k}"]
    return metrics, per_user


# ---- the grid -----------------------------------------------------------------------------------
def cold_start_grid(base: ColdStartParams) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """(category points, session points); the configured setting first in each (a tie keeps it)."""
    cats = tuple({"category_weight": w} for w in (base.category_weight,
                                                  *(w for w in CATEGORY_WEIGHTS if w != base.category_weight)))
    configured = {"session_strategy": base.session_strategy, "session_items_first": base.session_items_first}
    points = [{"session_strategy": s, "session_items_first": f} for s in SESSION_STRATEGIES
              for f in ((False,) if s == "popular" else (False, True))]
    return cats, (configured, *(p for p in points if p != configured))


def tune_cold_start(rec: TwoStageRecommender, serving: ServingIndex, label_events: pd.DataFrame,
                    base: ColdStartParams, k: int = 10, seed: int = 0):
    """The category weight and the session strategy that best serve the label window's new buyers
    (mean NDCG@k on `context_cases`; fewer than MIN_CASES: every buyer, history ignored). `rec` is a
    recommender whose state ends where `label_events` begin (the learner the ranker was fitted on)."""
    from recsys.models.tuning import TuningResult

    cases = context_cases(rec, label_events, max_users=base.max_users, seed=seed)
    if len(cases) < MIN_CASES:
        cases = context_cases(rec, label_events, max_users=base.max_users, seed=seed, as_new=True)
    if len(cases) == 0:
        return TuningResult(base, ())
    cat_points, session_points = cold_start_grid(base)
    scores = []
    cache: dict = {}

    def score(point: dict, context: str) -> float:
        params = replace(base, **point)
        value = float(per_user_metrics(case_lists(rec, serving, cases, k, params, context, cache), cases.relevant,
                                       k)[f"ndcg_at_{k}"].mean())
        scores.append(({**point, "context": context, "cases": len(cases)}, value))
        return value

    cat = [score(p, "category") for p in cat_points]
    best_cat = cat_points[int(np.argmax(cat))]  # argmax: the first of equals, the configured one
    ses = [score({**p, **best_cat}, "event") for p in session_points]
    best = replace(base, **best_cat, **session_points[int(np.argmax(ses))])
    return TuningResult(best, tuple(scores))
