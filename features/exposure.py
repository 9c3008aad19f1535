"""Exposure: what the service showed each user before a cutoff, and what they ignored (issue 17, item 2).

Input: impressions (one row per shown item, `recsys.tasks.impressions.read_impressions`, with `ts` on the
events' clock) and events (with the optional `request_id` link). Shown items are attributed with
`recsys.features.attribution.attribute`, using only events before the cutoff (no label-window leak).

Per (user, item), from recommendation lists shown before the cutoff:

- `shown`: recency-decayed showings (half-life `half_life_days`), capped at `cap`;
- `ignored`: showings with no click / cart / purchase within the attribution window, each weighted by its
  examination probability `position ** -position_decay` (the propensity that the shopper looked at the
  slot at all) and by recency, capped: evidence the user saw the item and did not want it;
- `days_since_shown`; `best_position` (kept in the table, never a ranker feature, see below).

Per item: `shown` (log of decayed showings) and `ctr`: clicks over expected clicks (clicks / sum of
examination probabilities), smoothed toward the global rate by `ctr_prior` pseudo-examinations.

**Guard against learning the service's own past order.** Being shown is caused by the model that served,
and in a closed loop only shown items can be clicked, so a ranker fed exposure as plain features learns
"shown before -> positive" and freezes its own lists. So: (1) the served position is never a feature: it
enters only as the examination propensity that discounts ignored showings and normalises the item CTR;
(2) exposure counts are recency-decayed and capped; (3) the ranker is trained with monotone constraints
on every exposure feature (`EXPOSURE_MONOTONE`): more showings, more ignored showings, a more recent
showing or more item impressions can never raise a score, only clicks (through the CTR and the event
features) can.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.features import schema as S
from recsys.features.attribution import (CARTED, CLICKED, BOUGHT, ENDPOINT, POSITION, RECOMMENDATION_ENDPOINTS,
                                         AttributionParams, attribute)
from recsys.features.csr_rows import csr_lookup
from recsys.features.interactions import IdIndex

EXPOSURE_FEATURES = ("x_shown", "x_ignored", "x_days_since_shown", "xi_shown", "xi_ctr")
# +1: the score may only rise with the feature, -1: only fall (LightGBM monotone_constraints)
EXPOSURE_MONOTONE = {"x_shown": -1, "x_ignored": -1, "x_days_since_shown": 1, "xi_shown": -1, "xi_ctr": 1}
NEVER_SHOWN_DAYS = 999.0
PAIR_COLUMNS = (S.USER_ID, S.ITEM_ID, "shown", "ignored", "days_since_shown", "best_position", "n_shown", "n_ignored")
ITEM_COLUMNS = (S.ITEM_ID, "shown", "n_shown", "clicks", "expected", "ctr")


@dataclass(frozen=True)
class ExposureParams:
    """How impressions become features and negatives (`TrainConfig.feedback`)."""

    enabled: bool = False
    impressions_dir: str | None = None  # the service's impressions; default $RECSYS_HOME/impressions
    attribution_hours: float = 24.0
    half_life_days: float = 7.0
    cap: float = 5.0
    position_decay: float = 1.0  # examination propensity of slot r: r ** -position_decay
    ctr_prior: float = 20.0  # pseudo-examinations at the global rate in the item CTR
    negatives: bool = True  # shown-and-ignored items of the label window join the user's ranking group
    # ... when the shopper likely looked at them: 1 - prod(1 - examination) over the window's showings
    negative_min_examination: float = 0.5
    endpoints: tuple[str, ...] = RECOMMENDATION_ENDPOINTS
    monotone: bool = True  # the guard's constraints (off only to measure what the guard does)

    def __post_init__(self) -> None:
        if self.half_life_days <= 0 or self.cap <= 0 or self.position_decay < 0 or self.ctr_prior < 0:
            raise ValueError("feedback: half_life_days and cap must be > 0, position_decay and ctr_prior >= 0")


@dataclass
class ExposureState:
    """Exposure before `cutoff`, by external ids (saved with the model)."""

    cutoff: pd.Timestamp
    pairs: pd.DataFrame
    items: pd.DataFrame
    global_ctr: float
    params: ExposureParams = field(default_factory=ExposureParams)

    def save(self, directory: Path) -> None:
        import json
        from dataclasses import asdict

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.pairs.to_parquet(directory / "pairs.parquet", index=False)
        self.items.to_parquet(directory / "items.parquet", index=False)
        (directory / "meta.json").write_text(json.dumps(
            {"cutoff": self.cutoff.isoformat(), "global_ctr": self.global_ctr, "params": asdict(self.params)},
            indent=2))

    @classmethod
    def load(cls, directory: Path) -> "ExposureState":
        import json

        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        p = dict(meta["params"])
        p["endpoints"] = tuple(p.get("endpoints", RECOMMENDATION_ENDPOINTS))
        return cls(pd.Timestamp(meta["cutoff"]), pd.read_parquet(directory / "pairs.parquet"),
                   pd.read_parquet(directory / "items.parquet"), float(meta["global_ctr"]), ExposureParams(**p))


def examination(position: np.ndarray, decay: float) -> np.ndarray:
    return np.asarray(position, dtype=float) ** -decay


def shown_lists(impressions: pd.DataFrame, params: ExposureParams) -> pd.DataFrame:
    """Recommendation impressions of known users (search and similar-item lists are about a query or an item)."""
    imp = impressions
    if ENDPOINT in imp:
        imp = imp[imp[ENDPOINT].isin(params.endpoints)]
    return imp[imp[S.USER_ID].notna() & imp[S.ITEM_ID].notna()]


def exposure_state(impressions: pd.DataFrame, events: pd.DataFrame, cutoff: pd.Timestamp,
                   params: ExposureParams = ExposureParams()) -> ExposureState:
    """Exposure of every (user, item) and item shown before `cutoff`; outcomes from events before it."""
    cutoff = pd.Timestamp(cutoff)
    imp = shown_lists(impressions, params)
    imp = imp[pd.to_datetime(imp[S.TS], utc=True) < cutoff]
    ev = events[pd.to_datetime(events[S.TS], utc=True) < cutoff]
    window = pd.Timedelta(hours=params.attribution_hours)
    if imp.empty:
        return ExposureState(cutoff, pd.DataFrame({c: pd.Series(dtype=object if c in (S.USER_ID, S.ITEM_ID) else float)
                                                   for c in PAIR_COLUMNS}),
                             pd.DataFrame({c: pd.Series(dtype=object if c == S.ITEM_ID else float)
                                           for c in ITEM_COLUMNS}), 0.0, params)
    att = attribute(imp, ev, AttributionParams(window=window))
    ts = pd.to_datetime(att[S.TS], utc=True)
    age = ((cutoff - ts) / pd.Timedelta(days=1)).to_numpy(dtype=float)
    decay = 0.5 ** (age / params.half_life_days)
    exam = examination(att[POSITION].to_numpy(), params.position_decay)
    engaged = (att[CLICKED] | att[CARTED] | att[BOUGHT]).to_numpy(dtype=bool)
    # a showing whose attribution window is still open at the cutoff is not (yet) ignored
    ignored = ~engaged & ((ts + window) <= cutoff).to_numpy()
    frame = pd.DataFrame({S.USER_ID: att[S.USER_ID].astype(str).values, S.ITEM_ID: att[S.ITEM_ID].astype(str).values,
                          "w": decay, "wi": decay * exam * ignored, "age": age, POSITION: att[POSITION].values,
                          "ig": ignored.astype(float), "exam": exam, "click": engaged.astype(float)})
    pairs = (frame.groupby([S.USER_ID, S.ITEM_ID], sort=True)
             .agg(shown=("w", "sum"), ignored=("wi", "sum"), days_since_shown=("age", "min"),
                  best_position=(POSITION, "min"), n_shown=("w", "size"), n_ignored=("ig", "sum"))
             .reset_index())
    pairs["shown"] = np.minimum(pairs["shown"], params.cap)
    pairs["ignored"] = np.minimum(pairs["ignored"], params.cap)
    items = (frame.groupby(S.ITEM_ID, sort=True)
             .agg(shown=("w", "sum"), n_shown=("w", "size"), clicks=("click", "sum"), expected=("exam", "sum"))
             .reset_index())
    global_ctr = float(items["clicks"].sum() / max(items["expected"].sum(), 1e-9))
    items["ctr"] = (items["clicks"] + params.ctr_prior * global_ctr) / (items["expected"] + params.ctr_prior)
    return ExposureState(cutoff, pairs, items, global_ctr, params)


def ignored_pairs(impressions: pd.DataFrame, label_events: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp,
                  params: ExposureParams = ExposureParams()) -> pd.DataFrame:
    """(user_id, item_id) shown in [start, end) on a recommendation list with no view, cart or purchase of
    that item by that user in the label window, and likely looked at (the chance that at least one of its
    showings was examined, by position, is at least `negative_min_examination`): the extra label-0
    candidates of the user's ranking group. An item at slot 10 was most likely never seen: not a negative."""
    imp = shown_lists(impressions, params)
    ts = pd.to_datetime(imp[S.TS], utc=True)
    imp = imp[(ts >= pd.Timestamp(start)) & (ts < pd.Timestamp(end))]
    miss = pd.DataFrame({S.USER_ID: imp[S.USER_ID].astype(str).values, S.ITEM_ID: imp[S.ITEM_ID].astype(str).values,
                         "miss": np.log1p(-np.minimum(examination(imp[POSITION].to_numpy(), params.position_decay),
                                                      1 - 1e-12))})
    seen = 1 - np.exp(miss.groupby([S.USER_ID, S.ITEM_ID], sort=True)["miss"].sum())
    shown = seen[seen >= params.negative_min_examination].reset_index()[[S.USER_ID, S.ITEM_ID]]
    acted = label_events.loc[label_events[S.EVENT_TYPE].isin(S.ITEM_EVENT_TYPES) & label_events[S.ITEM_ID].notna(),
                             [S.USER_ID, S.ITEM_ID]].astype(str).drop_duplicates()
    m = shown.merge(acted, how="left", indicator=True)
    return m.loc[m["_merge"] == "left_only", [S.USER_ID, S.ITEM_ID]].reset_index(drop=True)


@dataclass
class ExposureIndex:
    """An `ExposureState` on a model's user/item positions, for per-pair lookups (training and requests)."""

    shown: sp.csr_matrix
    ignored: sp.csr_matrix
    since_plus_one: sp.csr_matrix  # days since shown + 1 (0 = never shown)
    item_shown: np.ndarray
    item_ctr: np.ndarray


def index_exposure(state: ExposureState, users: IdIndex, items: IdIndex) -> ExposureIndex:
    shape = (len(users), len(items))
    u = users.index_of(state.pairs[S.USER_ID]) if len(state.pairs) else np.zeros(0, np.int64)
    i = items.index_of(state.pairs[S.ITEM_ID]) if len(state.pairs) else np.zeros(0, np.int64)
    ok = (u >= 0) & (i >= 0)

    def mat(values) -> sp.csr_matrix:
        m = sp.csr_matrix((np.asarray(values, dtype=np.float32)[ok], (u[ok], i[ok])), shape=shape)
        m.sort_indices()
        return m

    item_shown = np.zeros(len(items), dtype=np.float32)
    item_ctr = np.full(len(items), state.global_ctr, dtype=np.float32)
    if len(state.items):
        j = items.index_of(state.items[S.ITEM_ID])
        okj = j >= 0
        item_shown[j[okj]] = np.log1p(state.items["shown"].to_numpy(dtype=float)[okj])
        item_ctr[j[okj]] = state.items["ctr"].to_numpy(dtype=float)[okj]
    return ExposureIndex(mat(state.pairs["shown"]) if len(state.pairs) else mat([]),
                         mat(state.pairs["ignored"]) if len(state.pairs) else mat([]),
                         mat(state.pairs["days_since_shown"].to_numpy(dtype=float) + 1.0) if len(state.pairs)
                         else mat([]), item_shown, item_ctr)


def exposure_features(index: ExposureIndex, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[n_pairs, len(EXPOSURE_FEATURES)]; `users` may hold -1 (unknown user: never shown anything)."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    out = np.zeros((len(users), len(EXPOSURE_FEATURES)), dtype=np.float32)
    out[:, 2] = NEVER_SHOWN_DAYS
    known = users >= 0
    if known.any():
        uk, ik = users[known], items[known]
        out[known, 0] = csr_lookup(index.shown, uk, ik)
        out[known, 1] = csr_lookup(index.ignored, uk, ik)
        since = csr_lookup(index.since_plus_one, uk, ik)
        out[known, 2] = np.where(since > 0, since - 1.0, NEVER_SHOWN_DAYS)
    out[:, 3] = index.item_shown[items]
    out[:, 4] = index.item_ctr[items]
    return out


def monotone_constraints(feature_names: list[str]) -> list[int]:
    return [EXPOSURE_MONOTONE.get(name, 0) for name in feature_names]
