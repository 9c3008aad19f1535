"""Choosing a source's settings on a label window (a window before the test window, never the test one):
fit at the cutoff, score each grid point's own top-k lists on the window's buyers, keep the best."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.features.interactions import InteractionData
from recsys.models.metrics import ndcg_at_k


@dataclass(frozen=True)
class TuningResult:
    params: object  # the winning parameter dataclass (EASEParams, PopularityParams, ...)
    scores: tuple[tuple[dict, float], ...]  # (grid point, validation NDCG@k) in grid order


def window_truth(data: InteractionData, label_events: pd.DataFrame, max_users: int | None, seed: int = 0,
                 new_users: bool = False) -> tuple[np.ndarray, list[set]]:
    """(user indices, purchased item indices) of the label window's buyers: those known at the cutoff,
    or with `new_users` those unknown then (all index -1), sampled to at most `max_users`."""
    buys = label_events.loc[(label_events[S.EVENT_TYPE] == S.PURCHASE) & label_events[S.ITEM_ID].notna(),
                            [S.USER_ID, S.ITEM_ID]]
    u = data.users.index_of(buys[S.USER_ID].to_numpy(dtype=object))
    i = data.items.index_of(buys[S.ITEM_ID].to_numpy(dtype=object))
    ok = (i >= 0) & ((u < 0) if new_users else (u >= 0))
    truth = pd.Series(i[ok]).groupby(buys[S.USER_ID].to_numpy(dtype=object)[ok]).agg(lambda s: set(s.tolist()))
    users = data.users.index_of(truth.index.to_numpy(dtype=object)).astype(np.int64)
    order = np.argsort(users, kind="stable")
    users, relevant = users[order], [truth.iloc[j] for j in order]
    if max_users is not None and len(users) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        return users[keep], [relevant[j] for j in keep]
    return users, relevant


def ndcg_of(source, users: np.ndarray, relevant: list[set], k: int) -> float:
    """Mean NDCG@k of a fitted source's own top-k lists for `users` (sorted; -1 = unknown user)."""
    if len(users) == 0:
        return 0.0
    uniq, inverse = np.unique(users, return_inverse=True)
    c = source.candidates(uniq, k)
    lists: list[list[int]] = [[] for _ in uniq]
    for r in np.argsort(c.ranks, kind="stable"):
        lists[int(np.searchsorted(uniq, c.users[r]))].append(int(c.items[r]))
    hits = np.zeros((len(users), k), dtype=bool)
    for row, (j, rel) in enumerate(zip(inverse, relevant)):
        for pos, item in enumerate(lists[j][:k]):
            hits[row, pos] = item in rel
    return float(ndcg_at_k(hits, np.array([len(s) for s in relevant])).mean())


def grid_search(source_cls, base, grid: tuple[dict, ...], data: InteractionData, users: np.ndarray,
                relevant: list[set], k: int = 10, fit_many=None) -> TuningResult:
    """`source_cls(replace(base, **point)).fit(data)` for each point (or `fit_many(data, params)` for
    all at once, where points share costly work); the best mean NDCG@k wins, a tie keeps the earlier point."""
    params = [replace(base, **point) for point in grid]
    fitted = fit_many(data, params) if fit_many is not None else (source_cls(p).fit(data) for p in params)
    scores = [(point, ndcg_of(src, users, relevant, k)) for point, src in zip(grid, fitted)]
    best = max(range(len(scores)), key=lambda j: (scores[j][1], -j))
    return TuningResult(replace(base, **scores[best][0]), tuple(scores))


# ---- `recsys train --tune full`: a bounded Optuna search over the hand-set constants --------------------
# The two-stage model is trained one window earlier than the flow trains it (ranker labels from the window
# before the label window, recall refit at the label window's start) and scored on the label window's buyers:
# the test window is never seen. Optuna's TPE sampler (seeded) proposes the settings; the configured ones are
# the first trial, so the chosen settings never score below them on that window.

TUNE_MODES = ("off", "quick", "full")
VALIDATION_METRIC = "ndcg_at_10"


@dataclass(frozen=True)
class SearchParams:
    """How a run tunes: off, quick (small grids on the label window), or full (the Optuna search)."""

    mode: str = "quick"
    budget_s: float = 600.0  # no trial starts after this many seconds (a running one finishes)
    max_trials: int = 40
    seed: int = 0
    reuse: bool = True  # full: reuse the previous run's chosen settings unless the data changed enough

    def __post_init__(self) -> None:
        if self.mode not in TUNE_MODES:
            raise ValueError(f"tune mode must be one of {', '.join(TUNE_MODES)}, not '{self.mode}'")
        if self.budget_s <= 0 or self.max_trials < 1:
            raise ValueError(f"tune budget must be > 0 s and trials >= 1, not {self.budget_s} s / {self.max_trials}")


# name -> (kind, choices or (low, high), options); names are `section.field` of TwoStageParams
SEARCH_SPACE: dict[str, tuple] = {
    "als.factors": ("categorical", (32, 64, 128)),
    "als.regularization": ("float", (0.005, 1.0), {"log": True}),
    "als.iterations": ("int", (6, 30), {}),
    "ranker.num_leaves": ("int", (7, 127), {"log": True}),
    "ranker.learning_rate": ("float", (0.02, 0.2), {"log": True}),
    "ranker.n_estimators": ("int", (100, 600), {"step": 50}),
    "recall.als": ("int", (30, 200), {"step": 10}),
    "recall.covis": ("int", (30, 200), {"step": 10}),
    "recall.repeat": ("int", (20, 100), {"step": 10}),
    "recall.popular": ("int", (10, 100), {"step": 10}),
    "recall.trending": ("int", (10, 60), {"step": 10}),
    "interactions.half_life_days": ("float", (7.0, 180.0), {"log": True}),
    "seen_items": ("categorical", ("keep", "drop")),
    "train_windows": ("categorical", (1, 2)),
}


def get_setting(params, name: str):
    """`params.<section>.<field>` (or a top-level field) by its dotted name."""
    value = params
    for part in name.split("."):
        value = getattr(value, part)
    return value


def apply_settings(params, settings: dict):
    """A copy of a (nested, frozen) params dataclass with dotted `section.field` values replaced."""
    nested: dict[str, dict] = {}
    top: dict = {}
    for name, value in settings.items():
        if "." in name:
            section, field_ = name.split(".", 1)
            nested.setdefault(section, {})[field_] = value
        else:
            top[name] = value
    for section, values in nested.items():
        if not hasattr(params, section):
            raise KeyError(f"unknown setting '{section}.*'")
        top[section] = apply_settings(getattr(params, section), values)
    for name in top:
        if not hasattr(params, name):
            raise KeyError(f"unknown setting '{name}'")
    return replace(params, **top)


def suggest(trial, space: dict[str, tuple] = SEARCH_SPACE) -> dict:
    """One point of the search space from an Optuna trial."""
    out = {}
    for name, (kind, bounds, *opts) in space.items():
        if kind == "categorical":
            out[name] = trial.suggest_categorical(name, list(bounds))
        elif kind == "int":
            out[name] = trial.suggest_int(name, bounds[0], bounds[1], **(opts[0] if opts else {}))
        else:
            out[name] = trial.suggest_float(name, bounds[0], bounds[1], **(opts[0] if opts else {}))
    return out


def starting_point(params, space: dict[str, tuple] = SEARCH_SPACE) -> dict:
    """The configured settings as a point of the space (seen_items "auto" -> keep), clipped into its bounds."""
    out = {}
    for name, (kind, bounds, *_) in space.items():
        value = get_setting(params, name)
        if name == "seen_items" and value == "auto":
            value = "keep"
        if kind == "categorical":
            value = value if value in bounds else bounds[0]
        else:
            value = type(bounds[0])(min(max(value, bounds[0]), bounds[1]))
        out[name] = value
    return out


@dataclass(frozen=True)
class TrialRecord:
    number: int
    settings: dict
    value: float | None  # validation NDCG@10; None when the trial failed
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class SearchResult:
    settings: dict  # the best trial's point (dotted names)
    value: float
    start_value: float | None  # the configured settings' score on the same window (the first trial)
    trials: tuple[TrialRecord, ...]
    seconds: float


def validation_score(events: pd.DataFrame, catalog: pd.DataFrame, train_end: pd.Timestamp,
                     label_end: pd.Timestamp, params) -> float:
    """NDCG@10 on the label window's buyers of the two-stage model trained one window earlier: ranker
    labels from [train_end - span, train_end), recall refit at train_end. Events from label_end on are dropped."""
    # imported here: models.two_stage imports this module (grid_search, window_truth)
    from recsys.models.evaluation import evaluate
    from recsys.models.two_stage_training import train_two_stage

    span = pd.Timestamp(label_end) - pd.Timestamp(train_end)
    seen = events.loc[events[S.TS] < label_end]
    rec, _ = train_two_stage(seen.loc[seen[S.TS] < train_end], catalog, pd.Timestamp(train_end) - span,
                             train_end, params)
    window_events = seen.loc[seen[S.TS] >= train_end]
    return float(evaluate(rec, window_events, 10, baselines=(), curve_max_k=0, new_context=False).metrics.get(
        f"test.{VALIDATION_METRIC}", 0.0))


def earlier_window_problem(events: pd.DataFrame, train_end: pd.Timestamp, label_end: pd.Timestamp) -> str | None:
    """Why the search cannot train one window earlier (no events before that window's start), or None."""
    start = pd.Timestamp(train_end) - (pd.Timestamp(label_end) - pd.Timestamp(train_end))
    if not (events[S.TS] < start).any():
        return (f"no events before {start:%Y-%m-%d}, the start of the window before the label window: "
                "the search needs one more label window of history")
    return None


def search_settings(events: pd.DataFrame, catalog: pd.DataFrame, train_end: pd.Timestamp, label_end: pd.Timestamp,
                    base, search: SearchParams, on_trial=None, score=validation_score,
                    space: dict[str, tuple] = SEARCH_SPACE) -> SearchResult:
    """The Optuna (TPE, seeded) search: the configured settings first, then at most `max_trials` points
    while `budget_s` lasts. Each trial trains without the EASE/RP3beta grids (evaluation only); the popularity
    grid stays (it is tuned on new buyers, which the overall score hardly sees).
    `on_trial(TrialRecord)` is called after every trial (the flow logs it as an MLflow child run)."""
    import time

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the popularity list (new users' fallback) keeps its own grid on the window's new buyers in every trial
    trial_base = replace(base, tune_baselines=False)
    records: list[TrialRecord] = []

    def objective(trial) -> float:
        settings = suggest(trial, space)
        t0 = time.perf_counter()
        try:
            value = score(events, catalog, train_end, label_end, apply_settings(trial_base, settings))
        except Exception as exc:  # one bad point (e.g. too many candidates for LightGBM) must not end the search
            records.append(TrialRecord(trial.number, settings, None, time.perf_counter() - t0,
                                       f"{type(exc).__name__}: {exc}"))
            if on_trial is not None:
                on_trial(records[-1])
            raise optuna.TrialPruned(str(exc)) from exc
        records.append(TrialRecord(trial.number, settings, value, time.perf_counter() - t0))
        if on_trial is not None:
            on_trial(records[-1])
        return value

    t_start = time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=search.seed))
    study.enqueue_trial(starting_point(base, space))
    study.optimize(objective, n_trials=search.max_trials, timeout=search.budget_s)
    done = [r for r in records if r.value is not None]
    if not done:
        raise ValueError(f"every tuning trial failed; the first: {records[0].error if records else 'none ran'}")
    best = max(done, key=lambda r: (r.value, -r.number))  # a tie keeps the earlier trial (the configured one)
    first = records[0].value if records and records[0].number == 0 else None
    return SearchResult(best.settings, best.value, first, tuple(records), time.perf_counter() - t_start)


def tuned_params(base, settings: dict):
    """The final run's params: the chosen settings (seen items among them). The popularity list keeps its
    quick grid on the label window's new buyers, the item-item baselines theirs (evaluation only)."""
    return apply_settings(base, settings)


# ---- whether a previous run's chosen settings still fit this data ---------------------------------------
SKETCH_SIZE = 256  # bottom-k MinHash sketch of the user and item id sets (Jaccard error ~ 1/sqrt(k) ~ 0.06)
REUSE_RULE = {"events_ratio": 1.25, "users_ratio": 1.25, "items_ratio": 1.25, "span_ratio": 1.25,
              "min_item_jaccard": 0.7, "min_user_jaccard": 0.5, "max_days_moved": 28}


def _sketch(ids) -> list[int]:
    h = pd.util.hash_pandas_object(pd.Series(pd.unique(np.asarray(ids, dtype=object))).astype(str),
                                   index=False).to_numpy(dtype=np.uint64)
    return [int(x) for x in np.sort(h)[:SKETCH_SIZE]]


def data_fingerprint(events: pd.DataFrame) -> dict:
    """What the tuned settings depend on: sizes, date range, and MinHash sketches of the user and item ids."""
    ts = events[S.TS]
    return {"events": int(len(events)), "users": int(events[S.USER_ID].nunique()),
            "items": int(events[S.ITEM_ID].nunique()),
            "first_day": str(ts.min().date()) if len(events) else "",
            "last_day": str(ts.max().date()) if len(events) else "",
            "user_sketch": _sketch(events[S.USER_ID]), "item_sketch": _sketch(events[S.ITEM_ID].dropna())}


def sketch_jaccard(a: list[int], b: list[int]) -> float:
    """Bottom-k estimate of |A & B| / |A | B| from two sketches."""
    if not a or not b:
        return 0.0
    a, b = np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)
    union = np.union1d(a, b)[:SKETCH_SIZE]
    return float((np.isin(union, a) & np.isin(union, b)).mean())


def fingerprint_change(old: dict, new: dict, rule: dict = REUSE_RULE) -> str | None:
    """Why `old`'s tuned settings no longer fit `new`'s data (one line), or None when they can be reused.

    Sizes within a factor 1.25, the date span too, the last day moved by at most 28 days, and most of the
    same items (Jaccard >= 0.7) and users (>= 0.5): a nightly run on a growing log reuses the settings for
    weeks, a new data set, a new catalogue or a doubled log is tuned again."""
    for key in ("events", "users", "items"):
        a, b = max(old.get(key, 0), 1), max(new.get(key, 0), 1)
        if max(a, b) / min(a, b) > rule[f"{key}_ratio"]:
            return f"{key} changed from {old.get(key, 0):,} to {new.get(key, 0):,}"
    try:
        span = [(pd.Timestamp(d["last_day"]) - pd.Timestamp(d["first_day"])).days + 1 for d in (old, new)]
        moved = abs((pd.Timestamp(new["last_day"]) - pd.Timestamp(old["last_day"])).days)
    except (KeyError, ValueError):
        return "no date range recorded"
    if max(span) / max(min(span), 1) > rule["span_ratio"]:
        return f"the data spans {span[1]} days, not {span[0]}"
    if moved > rule["max_days_moved"]:
        return f"the last day moved by {moved} days"
    for key, least in (("item", rule["min_item_jaccard"]), ("user", rule["min_user_jaccard"])):
        j = sketch_jaccard(old.get(f"{key}_sketch", []), new.get(f"{key}_sketch", []))
        if j < least:
            return f"{key} overlap {j:.2f} < {least}"
    return None
