"""Offline evaluation of the two-stage model and its baselines on one test window."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.models.metrics import catalog_coverage, intra_list_diversity, novelty, per_user_metrics, summarize
from recsys.models.two_stage import SOURCE_NAMES, TwoStageRecommender

# baseline name -> the recommender's source it uses alone (item-kNN, EASE and RP3beta are fitted at
# evaluation time, the last two with the settings tuned on the label window)
BASELINES = {"popularity": "popular", "als": "als", "repeat": "repeat", "covis": "covis",
             "trending": "trending", "text": "text", "itemknn": "itemknn", "ease": "ease", "rp3beta": "rp3beta"}
SEGMENTS = ("returning", "new")


@dataclass(frozen=True)
class EvaluationParams:
    """Which test-window users evaluation and the gate score."""

    # at most this many users, a seeded uniform sample of the window's buyers (None: all of them). Scoring
    # costs users x catalog, and both grow with the data, so scoring every test user makes the flow
    # quadratic in events. 20,000 users put the standard error of mean NDCG@10 near 0.0025.
    max_users: int | None = 20_000
    seed: int = 0  # a fixed seed: the same window gives the same users, run after run


def relevant_items(test_events: pd.DataFrame) -> pd.Series:
    """user_id -> set of purchased item ids in the window, users sorted."""
    buys = test_events.loc[(test_events[S.EVENT_TYPE] == S.PURCHASE) & test_events[S.ITEM_ID].notna()]
    return buys.groupby(S.USER_ID, sort=True)[S.ITEM_ID].unique().map(set)


def evaluation_truth(test_events: pd.DataFrame, params: EvaluationParams) -> tuple[pd.Series, int]:
    """(user_id -> purchased items, sorted by user) for the users to score, and how many the window has."""
    truth = relevant_items(test_events)
    n_window = len(truth)
    if params.max_users is not None and n_window > params.max_users:
        keep = np.random.default_rng(params.seed).choice(n_window, params.max_users, replace=False)
        truth = truth.iloc[np.sort(keep)]
    return truth, n_window


@dataclass
class Evaluation:
    metrics: dict[str, float]  # flat, keyed as logged: test.ndcg_at_10, baseline.als.ndcg_at_10, ...
    user_ids: list[str]
    per_user: dict[str, np.ndarray] = field(default_factory=dict)  # two-stage, per test user
    baseline_per_user: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # baseline -> per_user
    # long frame (model, metric, k, value) for k = 1..curve_max_k, from the same lists as `metrics`
    curves: pd.DataFrame | None = None
    # new users with context (recsys.models.cold_start.context_metrics): per-user NDCG@k by metric prefix
    # (test.new_context, test.new_category, baseline.<name>.new_context)
    context_per_user: dict[str, np.ndarray] = field(default_factory=dict)


def score_users(rec: TwoStageRecommender, user_ids: list[str], relevant: list[set], k: int) -> dict[str, np.ndarray]:
    """Per-user metrics of `rec` (through its public `recommend_ids`, as served) on given truth."""
    lists = [r["items"] for r in rec.recommend_ids(user_ids, k)]
    return per_user_metrics(lists, relevant, k)


def list_metrics(items2d: np.ndarray, relevant: list[set], ids: np.ndarray, k: int, item_share: np.ndarray,
                 n_users: int, item_category: np.ndarray, segments: dict[str, np.ndarray],
                 prefix: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Accuracy, coverage, novelty and diversity of one set of top-k lists, overall and per segment."""
    lists = [ids[row[row >= 0]].tolist() for row in items2d]
    per_user = per_user_metrics(lists, relevant, k)
    idx_lists = [row[row >= 0] for row in items2d]
    per_user[f"novelty_at_{k}"] = novelty(idx_lists, item_share, n_users)
    per_user[f"diversity_at_{k}"] = intra_list_diversity(idx_lists, item_category)
    out = {f"{prefix}{m}": v for m, v in summarize(per_user).items()}
    out[f"{prefix}coverage_at_{k}"] = catalog_coverage(lists, len(ids))
    for segment, mask in segments.items():
        if mask.any():
            out.update({f"{prefix}{segment}.{m}": float(v[mask].mean()) for m, v in per_user.items()})
    return out, per_user


def evaluate(rec: TwoStageRecommender, test_events: pd.DataFrame, k: int,
             baselines: tuple[str, ...] = tuple(BASELINES), curve_max_k: int = 20,
             params: EvaluationParams = EvaluationParams(), recommend=None, new_context: bool = True) -> Evaluation:
    """Metrics @k of the two-stage model and every baseline on the same users, plus metric@k curves.

    With `new_context`, the scored users unknown to the model are also scored with their first test-window
    event revealed (`test.new_context.*`) or only its category (`test.new_category.*`), next to the
    popularity-style baselines on the same cases (`new_user_context`).

    Each model's list is computed once at depth max(k, curve_max_k); a top-k list is a prefix of it.
    `recommend(users, depth)` replaces `rec.recommend` (e.g. scoring on a Dask cluster)."""
    truth, n_window = evaluation_truth(test_events, params)
    user_ids = truth.index.astype(str).tolist()
    relevant = truth.tolist()
    idx = rec.data.users.index_of(user_ids)
    ids = rec.data.items.ids
    metrics: dict[str, float] = {"test.n_users": float(len(user_ids)), "test.n_users_in_window": float(n_window),
                                 "test.new_user_share": float(np.mean(idx < 0)) if len(idx) else 0.0}
    segments = {"returning": idx >= 0, "new": idx < 0}
    touched = np.diff(rec.data.weighted.tocsc().indptr)
    item_share = touched / max(rec.data.n_users, 1)
    common = dict(relevant=relevant, ids=ids, k=k, item_share=item_share, n_users=rec.data.n_users,
                  item_category=rec.data.item_category, segments=segments)

    depth = max(k, curve_max_k)
    lists = {"two-stage": (recommend or rec.recommend)(idx, depth)[0]}
    m, per_user = list_metrics(lists["two-stage"][:, :k], prefix="test.", **common)
    metrics.update(m)
    baseline_per_user = {}
    for baseline in baselines:
        if not rec.has_source(BASELINES[baseline]):  # e.g. `text` without a real catalogue
            continue
        lists[baseline] = rec.source_top_k(BASELINES[baseline], idx, depth)
        m, baseline_per_user[baseline] = list_metrics(lists[baseline][:, :k], prefix=f"baseline.{baseline}.",
                                                      **common)
        metrics.update(m)
    metrics.update(candidate_recall(rec, idx, relevant))
    curves = curves_from_lists(lists, relevant, ids, curve_max_k) if curve_max_k > 0 else None
    context_per_user = {}
    if new_context and (idx < 0).any():
        context, context_per_user = new_user_context(rec, test_events, [u for u, i in zip(user_ids, idx) if i < 0],
                                                     {b: lists[b][np.flatnonzero(idx < 0)[0]]
                                                      for b in POPULARITY_STYLE if b in lists}, k)
        metrics.update(context)
    return Evaluation(metrics=metrics, user_ids=user_ids, per_user=per_user, curves=curves,
                      baseline_per_user=baseline_per_user, context_per_user=context_per_user)


POPULARITY_STYLE = ("popularity", "trending")  # the baselines' lists for a user without history


def new_user_context(rec: TwoStageRecommender, test_events: pd.DataFrame, new_user_ids: list[str],
                     baseline_lists: dict[str, np.ndarray], k: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The new users' metrics with context revealed (recsys.models.cold_start.context_cases: each user's first
    test-window event is the context, the rest of their test-window purchases the truth)."""
    from recsys.models.cold_start import context_cases, context_metrics
    from recsys.models.session import build_serving_index

    cases = context_cases(rec, test_events, user_ids=new_user_ids)
    return context_metrics(rec, build_serving_index(rec), cases, k, baseline_lists)


def candidate_recall(rec: TwoStageRecommender, idx: np.ndarray, relevant: list[set]) -> dict[str, float]:
    """recall.<source>_recall_at_<budget>: share of relevant items each source (and the union) proposes."""
    users = np.unique(idx)
    table = rec.candidate_table(users)
    ids = rec.data.items.ids
    total = sum(len(r) for r in relevant)
    if total == 0:
        return {}
    names = [name for name in SOURCE_NAMES if name in rec.sources]  # `text` is absent without a catalogue
    found = {name: 0 for name in names}
    found["union"] = 0
    order = np.argsort(table.users, kind="stable")
    u_sorted = table.users[order]
    for u_idx, rel in zip(idx, relevant):
        lo, hi = np.searchsorted(u_sorted, [u_idx, u_idx + 1])
        rows = order[lo:hi]
        cand_items = ids[table.items[rows]]
        found["union"] += len(rel & set(cand_items))
        for name in names:
            j = SOURCE_NAMES.index(name)
            proposed = ~np.isnan(table.source_features[rows, 2 * j])
            found[name] += len(rel & set(cand_items[proposed]))
    budget_total = sum(rec.params.recall.budget(n) for n in names)
    out = {f"recall.{name}_recall_at_{rec.params.recall.budget(name)}": found[name] / total for name in names}
    out[f"recall.union_recall_at_{budget_total}"] = found["union"] / total
    return out


def curves_from_lists(lists: dict[str, np.ndarray], relevant: list[set], ids: np.ndarray, max_k: int,
                      metrics: tuple[str, ...] = ("ndcg", "recall", "hitrate", "map")) -> pd.DataFrame:
    """Long frame (model, metric, k, value) for k = 1..max_k from each model's top-max_k item indices."""
    from recsys.models.metrics import METRICS, hit_matrix

    n_relevant = np.array([len(r) for r in relevant], dtype=int)
    rows = []
    for model, items2d in lists.items():
        recs = [ids[row[row >= 0]].tolist() for row in items2d[:, :max_k]]
        hits = hit_matrix(recs, relevant, max_k)  # once; every k is a prefix of its columns
        for k in range(1, max_k + 1):
            for name in metrics:
                values = METRICS[name](hits[:, :k], n_relevant)
                rows.append((model, name, k, float(values.mean()) if len(values) else 0.0))
    return pd.DataFrame(rows, columns=["model", "metric", "k", "value"])


def data_profile(events: pd.DataFrame, catalog: pd.DataFrame, windows: dict[str, tuple]) -> pd.DataFrame:
    """One row per window (name -> (start or None, end)): events, users, items, purchases, new users, dates."""
    rows = []
    ts = events[S.TS]
    user_codes, _ = pd.factorize(events[S.USER_ID])  # integer codes: no Python sets of id strings
    first_seen = ts.groupby(user_codes).min()  # indexed by code
    for name, (start, end) in windows.items():
        mask = (ts < end if start is None else (ts >= start) & (ts < end)).to_numpy()
        w = events.loc[mask]
        users = np.unique(user_codes[mask])
        users = users[users >= 0]
        rows.append({"window": name, "from": w[S.TS].min(), "to": w[S.TS].max(), "events": len(w),
                     "users": len(users), "items": w[S.ITEM_ID].nunique(),
                     "purchases": int((w[S.EVENT_TYPE] == S.PURCHASE).sum()),
                     "new_users": int((first_seen.loc[users] >= start).sum()) if start is not None else len(users),
                     "catalog_items": len(catalog)})
    return pd.DataFrame(rows)
