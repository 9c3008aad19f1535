"""The two-stage recommender: recall sources -> merged candidates -> LightGBM ranker."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.features.covisitation import CovisitationParams
from recsys.features.exposure import (EXPOSURE_FEATURES, ExposureIndex, ExposureState,
                                      exposure_features, index_exposure,
                                      monotone_constraints)
from recsys.features.csr_rows import csr_lookup
from recsys.features.interactions import IdIndex, InteractionData, InteractionParams
from recsys.features.ranking_features import PAIR_FEATURES, pair_features, pair_labels
from recsys.models.cold_start import ColdStartParams
from recsys.models.item_item import ITEM_ITEM, EASEParams, RP3betaParams
from recsys.models.ranker import RankerParams, RankerResult, train_ranker
from recsys.models.recall import (ALSParams, ALSSource, Candidates, CovisitationSource,
                           PopularityParams, PopularitySource, RepeatSource, TextSource, TrendingParams,
                           TrendingSource)
from recsys.models.search_ranker import SearchModel
from recsys.models.tuning import TuningResult

BASE_SOURCES = ("als", "popular", "repeat", "covis", "trending", "text")
# the strong item-item models (models/item_item.py), as sources and pair features when
# `TwoStageParams.item_item_sources` names them
ITEM_ITEM_SOURCES = ("ease", "rp3beta")
# every source that can propose; merge_candidates writes source j's score/rank to columns 2j / 2j + 1 of the
# full table, and each model's stored `feature_names` select the columns its ranker reads
SOURCE_NAMES = BASE_SOURCES + ITEM_ITEM_SOURCES
# pair scores of model-based sources, computed for every candidate (not only those the source proposed).
# No ALS dot product here: models/session.py folds a session into a fresh ALS vector and feeds it
# through the ALS source's candidates only, so a feature read from the stored user factors would
# disagree with it (src_als_score carries the ALS signal).
MODEL_FEATURES = ("m_text_sim", "m_ease_score", "m_rp3beta_score")
_MODEL_FEATURE_SOURCE = {"m_text_sim": "text", "m_ease_score": "ease", "m_rp3beta_score": "rp3beta"}
STRATEGY_MODEL = "model"
STRATEGY_POPULAR = "popular"


@dataclass(frozen=True)
class RecallParams:
    """Candidate budget per source."""

    als: int = 100
    popular: int = 50
    repeat: int = 50
    covis: int = 100
    trending: int = 30
    text: int = 50
    # the item-item sources, when `TwoStageParams.item_item_sources` turns them on (0: a pair feature only)
    ease: int = 50
    rp3beta: int = 50

    def budget(self, name: str) -> int:
        return getattr(self, name)


@dataclass(frozen=True)
class TwoStageParams:
    interactions: InteractionParams = field(default_factory=InteractionParams)
    als: ALSParams = field(default_factory=ALSParams)
    popularity: PopularityParams = field(default_factory=PopularityParams)
    trending: TrendingParams = field(default_factory=TrendingParams)
    recall: RecallParams = field(default_factory=RecallParams)
    ranker: RankerParams = field(default_factory=RankerParams)
    max_train_users: int = 20_000
    # ranking sets stacked from this many label windows, each `label_end - train_end` long, going back (those
    # with history before them); they share `max_train_users`. Two: more users to learn from on small data,
    # the same ranker cost on large data, one more recall fit
    train_windows: int = 2
    train_window_stride_days: int = 0  # days between stacked cutoffs; 0 = the label window's length
    # who the ranker learns from: every user active in the label window, or only its buyers
    # (the population the offline test scores: relevant = purchases)
    train_users: str = "active"
    # MMR re-ranking over categories: 0 = off (pure ranker order), 1 = diversity only
    diversity: float = 0.0
    diversity_pool: int = 50
    # strong item-item baselines (evaluation only): their starting settings, and whether a small grid on
    # the label window (before the test window) picks their hyper-parameters
    ease: EASEParams = field(default_factory=EASEParams)
    rp3beta: RP3betaParams = field(default_factory=RP3betaParams)
    tune_baselines: bool = True
    # pick the popularity list (new users' fallback and a candidate source) on the label window:
    # window 7 or 28 days, all events or purchases only, scored on the window's new buyers
    tune_popularity: bool = True
    # items the user already touched: "keep" them among the candidates (re-buying shops), "drop" them
    # (catalogues people consume once), or "auto": drop when fewer than SEEN_DROP_BELOW of the label
    # window's purchases by known users were of items they had touched before
    seen_items: str = "auto"
    # new users by context (category, session events): recsys.models.cold_start, its grid tuned on the label
    # window's new buyers when `cold_start.tune`
    cold_start: ColdStartParams = field(default_factory=ColdStartParams)
    # EASE / RP3beta (with the settings the label-window grid chose, or the configured ones when
    # tune_baselines is off) as candidate sources (`recall.<name>` each) and pair features
    # (`m_<name>_score`: the user's history row @ W for every candidate); () = evaluation-only baselines
    # (a model saved before they existed loads with ()). README "Offline quality": +0.006 mean ratio
    item_item_sources: tuple[str, ...] = ("ease", "rp3beta")

    def __post_init__(self) -> None:
        if self.seen_items not in ("auto", "keep", "drop"):
            raise ValueError(f"seen_items must be auto, keep or drop, not '{self.seen_items}'")
        unknown = [n for n in self.item_item_sources if n not in ITEM_ITEM_SOURCES]
        if unknown:
            raise ValueError(f"item_item_sources may name {', '.join(ITEM_ITEM_SOURCES)}, not {unknown}")
        # one order whatever the caller's (the feature list follows it)
        object.__setattr__(self, "item_item_sources",
                           tuple(n for n in ITEM_ITEM_SOURCES if n in self.item_item_sources))


def source_feature_names(sources: tuple[str, ...] = SOURCE_NAMES) -> list[str]:
    return [f"src_{name}_{kind}" for name in sources for kind in ("score", "rank")] + ["src_count"]


def feature_names_for(params: "TwoStageParams", exposure: bool = False) -> list[str]:
    """The ranker's columns for these settings: the base sources' and the enabled item-item sources'
    score/rank, the pair features, the text pair score and the enabled item-item pair scores, then the
    exposure features. Without item-item sources: the list of every model saved before they existed."""
    extra = params.item_item_sources
    names = (source_feature_names(BASE_SOURCES + extra) + list(PAIR_FEATURES) + ["m_text_sim"]
             + [f"m_{name}_score" for name in extra])
    return names + list(EXPOSURE_FEATURES) if exposure else names


FEATURE_NAMES = feature_names_for(TwoStageParams())  # the default settings' columns (no exposure)
# every column `features` can build, in the order of the full table it builds them from
ALL_FEATURE_NAMES = source_feature_names() + list(PAIR_FEATURES) + list(MODEL_FEATURES) + list(EXPOSURE_FEATURES)
RECOMMEND_BLOCK_USERS = 10_000  # users whose candidates are built and scored together in recommend()


@dataclass(frozen=True)
class CandidateTable:
    """Union of all sources' candidates, sorted by (user, item), with per-source features."""

    users: np.ndarray
    items: np.ndarray
    source_features: np.ndarray  # [n, len(source_feature_names())], NaN where a source did not propose


def merge_candidates(per_source: dict[str, Candidates], n_items: int) -> CandidateTable:
    """Union of candidates; each source's score and rank kept as features (NaN when absent)."""
    parts = [(name, c) for name, c in per_source.items() if len(c)]
    if not parts:
        return CandidateTable(np.zeros(0, np.int64), np.zeros(0, np.int64),
                              np.zeros((0, len(source_feature_names())), np.float32))
    # shift users by one so the unknown user (-1) still gets a non-negative key
    keys = np.concatenate([(c.users + 1) * n_items + c.items for _, c in parts])
    uniq, inverse = np.unique(keys, return_inverse=True)
    feats = np.full((len(uniq), len(source_feature_names())), np.nan, dtype=np.float32)
    offset = 0
    for name, c in parts:
        j = 2 * SOURCE_NAMES.index(name)
        idx = inverse[offset:offset + len(c)]
        feats[idx, j] = c.scores
        feats[idx, j + 1] = c.ranks
        offset += len(c)
    feats[:, -1] = (~np.isnan(feats[:, 1:-1:2])).sum(axis=1)
    return CandidateTable(uniq // n_items - 1, uniq % n_items, feats)


def without_seen(table: CandidateTable, data: InteractionData) -> CandidateTable:
    """The candidate rows whose item the user has not touched before the cutoff."""
    known = table.users >= 0
    seen = np.zeros(len(table.users), dtype=bool)
    if known.any():
        seen[known] = csr_lookup(data.weighted, table.users[known], table.items[known]) > 0
    keep = ~seen
    return CandidateTable(table.users[keep], table.items[keep], table.source_features[keep])


SEEN_DROP_BELOW = 0.05


def repeat_purchase_share(data: InteractionData, label_events: pd.DataFrame) -> float | None:
    """Share of the window's purchases by users known at the cutoff that were of items they had touched."""
    buys = label_events.loc[label_events[S.EVENT_TYPE] == S.PURCHASE]
    u = data.users.index_of(buys[S.USER_ID])
    i = data.items.index_of(buys[S.ITEM_ID])
    ok = (u >= 0) & (i >= 0)
    if not ok.any():
        return None
    return float((csr_lookup(data.weighted, u[ok], i[ok]) > 0).mean())


def fit_sources(data: InteractionData, params: TwoStageParams) -> dict[str, object]:
    return {
        "als": ALSSource(params.als).fit(data),
        **non_als_sources(data, params),
    }


def non_als_sources(data: InteractionData, params: TwoStageParams) -> dict[str, object]:
    """Sources rebuilt from the feature state alone (what `load` needs besides the ALS factors)."""
    sources = {
        "popular": PopularitySource(params.popularity).fit(data),
        "repeat": RepeatSource().fit(data),
        "covis": CovisitationSource().fit(data),
        "trending": TrendingSource(params.trending).fit(data),
    }
    if has_catalog_text(data):  # else text neighbours are only the user's own items: `repeat` again
        sources["text"] = TextSource().fit(data)
    for name in params.item_item_sources:
        sources[name] = ITEM_ITEM[name][0](getattr(params, name)).fit(data)
    return sources


def has_catalog_text(data: InteractionData, min_share: float = 0.5) -> bool:
    """Whether at least `min_share` of the items users touched have a title other than their own id."""
    touched = np.flatnonzero(np.diff(data.weighted.tocsc().indptr) > 0)
    if len(touched) == 0 or len(data.item_titles) != data.n_items:
        return False
    titles = np.asarray(data.item_titles, dtype=object)[touched].astype(str)
    ids = np.asarray(data.items.ids, dtype=object)[touched].astype(str)
    real = (np.char.strip(titles) != "") & (titles != ids)
    return bool(real.mean() >= min_share)


def top_k_by_group(users: np.ndarray, items: np.ndarray, scores: np.ndarray, k: int,
                   user_order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[len(user_order), k] item and score arrays (-1 / -inf padded) from a flat scored table.

    `user_order` must be sorted and unique (as from np.unique)."""
    out_items = np.full((len(user_order), k), -1, dtype=np.int64)
    out_scores = np.full((len(user_order), k), -np.inf, dtype=np.float32)
    if len(users) == 0:
        return out_items, out_scores
    order = np.lexsort((-scores, users))
    u_sorted = users[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1]
    pos = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = pos < k
    sel = u_sorted[keep]
    row_of_user = np.minimum(np.searchsorted(user_order, sel), max(len(user_order) - 1, 0))
    ok = user_order[row_of_user] == sel
    out_items[row_of_user[ok], pos[keep][ok]] = items[order][keep][ok]
    out_scores[row_of_user[ok], pos[keep][ok]] = scores[order][keep][ok]
    return out_items, out_scores


@dataclass
class RankingSet:
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    users: np.ndarray


class TwoStageRecommender:
    """Everything needed to answer `recommend` for a user: feature state, sources, ranker."""

    # the learned search model (recsys.models.search_ranker.SearchModel) trained with it, saved in "search/"
    search_model = None
    # feedback (recsys.features.exposure): the exposure snapshot at this state's cutoff, saved in "exposure/";
    # None = the ranker has no exposure features (feedback off, no impressions, a model saved before them)
    exposure: ExposureState | None = None
    _exposure_index: ExposureIndex | None = None
    # training only: (user, item) positions shown and ignored in the label window, extra label-0 candidates
    extra_negatives: tuple[np.ndarray, np.ndarray] | None = None
    # the ranker's columns as saved with a loaded model (None: those of `params`, see `feature_names_for`)
    saved_feature_names: list[str] | None = None

    def __init__(self, data: InteractionData, sources: dict[str, object], params: TwoStageParams,
                 booster: lgb.Booster | None = None, best_iteration: int | None = None):
        self.data = data
        self.sources = sources
        self.params = params
        self.booster = booster
        self.best_iteration = best_iteration
        # item-item baselines: settings chosen on the label window ("ease" -> TuningResult), fitted sources
        self.baseline_tuning: dict[str, TuningResult] = {}
        self._baselines: dict[str, object] = {}

    def set_exposure(self, state: ExposureState | None) -> None:
        self.exposure = state
        self._exposure_index = None if state is None else index_exposure(state, self.data.users, self.data.items)

    @property
    def feature_names(self) -> list[str]:
        """The ranker's columns: a loaded model's stored list, else the one its settings give."""
        if self.saved_feature_names is not None:
            return list(self.saved_feature_names)
        return feature_names_for(self.params, self.exposure is not None)

    def can_build(self, name: str) -> bool:
        """Whether `features` can fill the column `name` (its source fitted, exposure known)."""
        if name not in ALL_FEATURE_NAMES:
            return False
        if name in EXPOSURE_FEATURES:
            return self.exposure is not None
        owner = _MODEL_FEATURE_SOURCE.get(name) or next(
            (src for src in ITEM_ITEM_SOURCES if name.startswith(f"src_{src}_")), None)
        return owner not in ITEM_ITEM_SOURCES or owner in self.sources

    # ---- candidates and features -----------------------------------------------------
    def candidate_table(self, users: np.ndarray) -> CandidateTable:
        users = np.asarray(users, dtype=np.int64)
        per_source = {name: self.sources[name].candidates(users, self.params.recall.budget(name))
                      for name in SOURCE_NAMES if name in self.sources}
        table = merge_candidates(per_source, self.data.n_items)
        return without_seen(table, self.data) if self.params.seen_items == "drop" else table

    def features(self, table: CandidateTable) -> np.ndarray:
        """[len(table), len(feature_names)] float32: the columns `feature_names` asks for, in its order
        (a column map over the full table, so a model saved with fewer columns reads exactly its own)."""
        names = self.feature_names
        where = {name: j for j, name in enumerate(names)}
        out = np.full((len(table.users), len(names)), np.nan, dtype=np.float32)

        def put(block_names, block) -> None:
            for j, name in enumerate(block_names):
                if name in where:
                    out[:, where[name]] = block[:, j] if block.ndim == 2 else block

        put(source_feature_names(), table.source_features)
        put(PAIR_FEATURES, pair_features(self.data, table.users, table.items))
        for f in MODEL_FEATURES:
            src = self.sources.get(_MODEL_FEATURE_SOURCE[f])
            if f in where and src is not None:
                out[:, where[f]] = src.score_pairs(table.users, table.items)
        if self.exposure is not None and any(f in where for f in EXPOSURE_FEATURES):
            if self._exposure_index is None:
                self._exposure_index = index_exposure(self.exposure, self.data.users, self.data.items)
            put(EXPOSURE_FEATURES, exposure_features(self._exposure_index, table.users, table.items))
        return out

    def score(self, table: CandidateTable) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("the ranker is not trained")
        if len(table.users) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.booster.predict(self.features(table), num_iteration=self.best_iteration,
                                    num_threads=self.params.ranker.num_threads or 0)

    # ---- training ------------------------------------------------------------------
    def ranking_set(self, label_events: pd.DataFrame, users: np.ndarray) -> RankingSet:
        """Candidates of `users` labelled from `label_events`; groups without a positive dropped."""
        table = self.with_extra_negatives(self.candidate_table(users), users)
        y = pair_labels(label_events, self.data.users, self.data.items, table.users, table.items)
        group_has_pos = pd.Series(y > 0).groupby(table.users).transform("any").to_numpy()
        keep = group_has_pos
        x = self.features(table)[keep]
        u = table.users[keep]
        _, groups = np.unique(u, return_counts=True)
        return RankingSet(x=x, y=y[keep], groups=groups, users=np.unique(u))

    def with_extra_negatives(self, table: CandidateTable, users: np.ndarray) -> CandidateTable:
        """`table` plus the shown-and-ignored items of `users` that no source proposed (NaN source features)."""
        if self.extra_negatives is None or len(self.extra_negatives[0]) == 0:
            return table
        eu, ei = self.extra_negatives
        mine = np.isin(eu, users)
        eu, ei = eu[mine], ei[mine]
        n = self.data.n_items
        have = (table.users + 1) * n + table.items
        new = np.setdiff1d(np.unique((eu + 1) * n + ei), have)
        if len(new) == 0:
            return table
        keys = np.concatenate([have, new])
        order = np.argsort(keys, kind="stable")
        feats = np.full((len(new), table.source_features.shape[1]), np.nan, dtype=np.float32)
        feats[:, -1] = 0.0  # src_count: no source proposed it
        sf = np.vstack([table.source_features, feats])[order]
        keys = keys[order]
        return CandidateTable(keys // n - 1, keys % n, sf)

    def label_users(self, label_events: pd.DataFrame, seed: int) -> np.ndarray:
        """Users active in `label_events` and known before the cutoff (sampled to max_train_users)."""
        types = (S.PURCHASE,) if self.params.train_users == "buyers" else S.ITEM_EVENT_TYPES
        users = self.data.users.index_of(
            label_events.loc[label_events[S.EVENT_TYPE].isin(types), S.USER_ID].unique())
        users = np.unique(users[users >= 0])
        if len(users) > self.params.max_train_users:
            rng = np.random.default_rng(seed)
            users = np.sort(rng.choice(users, self.params.max_train_users, replace=False))
        return users

    def split_users(self, label_events: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) users of this cutoff, validation a random share of them."""
        label_users = self.label_users(label_events, seed)
        is_val = np.random.default_rng(seed).random(len(label_users)) < self.params.ranker.validation_share
        return label_users[~is_val], label_users[is_val]

    def split_ranking_sets(self, label_events: pd.DataFrame, seed: int) -> tuple[RankingSet, RankingSet]:
        """(train, validation) ranking sets of this cutoff, validation a random share of users."""
        train_users, val_users = self.split_users(label_events, seed)
        return self.ranking_set(label_events, train_users), self.ranking_set(label_events, val_users)

    def fit_ranker(self, label_events: pd.DataFrame, seed: int = 42,
                   extra: tuple[tuple[RankingSet, RankingSet], ...] = ()) -> RankerResult:
        """Train the ranker on users active in `label_events` (known before the cutoff).

        A random share of those users validates (early stopping); `extra` (train, validation)
        ranking sets of older label windows are stacked onto both sides."""
        p = self.params
        train, val = self.split_ranking_sets(label_events, seed)
        sets, vals = [train, *(e[0] for e in extra)], [val, *(e[1] for e in extra)]
        if sum(len(t.groups) for t in sets) == 0:
            raise ValueError("no training user has a positive label among their candidates; "
                             "the label window is empty or recall finds nothing")

        def stack(parts: list[RankingSet]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return (np.vstack([t.x for t in parts]), np.concatenate([t.y for t in parts]),
                    np.concatenate([t.groups for t in parts]))

        names = self.feature_names
        guarded = self.exposure is not None and getattr(self.exposure.params, "monotone", True)
        monotone = monotone_constraints(names) if guarded else None
        result = train_ranker(*stack(sets), *stack(vals), names, p.ranker, monotone=monotone)
        self.booster, self.best_iteration = result.booster, result.best_iteration
        return result

    # ---- inference -----------------------------------------------------------------
    def recommend(self, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item indices and scores per user index (-1 = unknown user)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        known = np.flatnonzero(users >= 0)
        if len(known):
            uk = np.unique(users[known])
            # users in blocks: the candidate table and its features (~400 rows x ~40 columns per user)
            # would otherwise grow with every user scored at once (10M events: ~100k test users, >12 GiB)
            parts = [self._recommend_known(uk[lo:lo + RECOMMEND_BLOCK_USERS], k)
                     for lo in range(0, len(uk), RECOMMEND_BLOCK_USERS)]
            it, sc = np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])
            row = np.searchsorted(uk, users[known])
            items[known], scores[known] = it[row], sc[row]
        unknown = np.flatnonzero(users < 0)
        if len(unknown):
            it, sc = self.cold_start(k)
            items[unknown], scores[unknown] = it, sc
        return items, scores

    def _recommend_known(self, uk: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of sorted unique known user indices, one row per user."""
        table = self.candidate_table(uk)
        lam = self.params.diversity
        pool = max(k, self.params.diversity_pool) if lam > 0 else k
        it, sc = top_k_by_group(table.users, table.items, self.score(table), pool, uk)
        if lam > 0:
            it, sc = mmr_rerank(it, sc, self.data.item_category, k, lam)
        return it, sc

    def explain(self, user_id: str, k: int, top_features: int = 5) -> list[dict]:
        """Why each of the user's top-k items is there: the sources that proposed it and the
        features contributing most to its ranker score (LightGBM SHAP-style contributions)."""
        u = self.data.users.position(str(user_id))
        if u < 0:
            items, scores = self.cold_start(k)
            return [{"item_id": str(self.data.items.ids[i]), "score": float(s), "sources": ["popular"],
                     "top_features": [], "strategy": STRATEGY_POPULAR} for i, s in zip(items, scores) if i >= 0]
        table = self.candidate_table(np.array([u]))
        x = self.features(table)
        scores = self.booster.predict(x, num_iteration=self.best_iteration)
        contrib = self.booster.predict(x, num_iteration=self.best_iteration, pred_contrib=True)[:, :-1]
        out = []
        for row in np.argsort(-scores, kind="stable")[:k]:
            proposed = [name for j, name in enumerate(SOURCE_NAMES)
                        if not np.isnan(table.source_features[row, 2 * j])]
            top = np.argsort(-np.abs(contrib[row]))[:top_features]
            out.append({"item_id": str(self.data.items.ids[table.items[row]]), "score": float(scores[row]),
                        "sources": proposed, "strategy": STRATEGY_MODEL,
                        "top_features": [{"feature": self.feature_names[j], "value": float(x[row, j]),
                                          "contribution": float(contrib[row, j])} for j in top]})
        return out

    def cold_start(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """A user with no history gets the recent popularity ranking."""
        pop = self.sources["popular"]
        items = np.full(k, -1, dtype=np.int64)
        scores = np.full(k, -np.inf, dtype=np.float32)
        n = min(k, len(pop.ranking))
        items[:n], scores[:n] = pop.ranking[:n], pop.scores[:n]
        return items, scores

    def recommend_ids(self, user_ids, k: int) -> list[dict]:
        """[{"user_id", "items": [...], "scores": [...], "strategy"}] for external ids."""
        user_ids = list(user_ids)
        if len(user_ids) == 1:
            idx = np.array([self.data.users.position(str(user_ids[0]))])
        else:
            idx = self.data.users.index_of(user_ids)
        items, scores = self.recommend(idx, k)
        out = []
        for uid, u, its, scs in zip(user_ids, idx, items, scores):
            ok = its >= 0
            out.append({"user_id": str(uid), "items": self.data.items.ids[its[ok]].tolist(),
                        "scores": [float(s) for s in scs[ok]],
                        "strategy": STRATEGY_MODEL if u >= 0 else STRATEGY_POPULAR})
        return out

    def baseline_params(self, name: str):
        """An item-item baseline's settings: those tuned on the label window, else the configured ones."""
        tuned = getattr(self, "baseline_tuning", {}).get(name)
        return tuned.params if tuned is not None else getattr(self.params, name)

    def has_source(self, name: str) -> bool:
        """Whether `baseline_source(name)` can answer (a fitted source, or a baseline fitted on demand)."""
        return name in self.sources or name == "itemknn" or name in ITEM_ITEM

    def baseline_source(self, name: str):
        """A recall source by name; baseline-only ones (item-kNN, EASE, RP3beta) are fitted on first use
        and kept outside `sources`, so they never join the candidates or the saved model."""
        if name in self.sources:
            return self.sources[name]
        if name != "itemknn" and name not in ITEM_ITEM:
            raise KeyError(name)
        if not hasattr(self, "_baselines"):  # a recommender pickled before baselines were kept here
            self._baselines = {}
        if name not in self._baselines:
            if name == "itemknn":
                from recsys.models.recall import ItemKNNSource

                self._baselines[name] = ItemKNNSource().fit(self.data)
            else:
                self._baselines[name] = ITEM_ITEM[name][0](self.baseline_params(name)).fit(self.data)
        return self._baselines[name]

    def source_top_k(self, name: str, users: np.ndarray, k: int) -> np.ndarray:
        """A single source's own top-k as [n_users, k] item indices (a baseline).

        Personal sources know nothing of unknown users; those get the popularity list.
        """
        users = np.asarray(users, dtype=np.int64)
        uniq = np.unique(users)
        c = self.baseline_source(name).candidates(uniq, k)
        items, _ = top_k_by_group(c.users, c.items, c.scores, k, uniq)
        items = items[np.searchsorted(uniq, users)]
        cold = users < 0
        if name != "popular" and cold.any():
            items[cold] = self.source_top_k("popular", np.array([-1]), k)[0]
        return items

    # ---- persistence -----------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self.data.save(directory / "state")
        self.sources["als"].save(directory / "als")
        self.booster.save_model(str(directory / "ranker.txt"), num_iteration=self.best_iteration)
        meta = {"params": asdict(self.params), "best_iteration": self.best_iteration,
                "feature_names": self.feature_names, "ref_time": self.data.ref_time.isoformat()}
        (directory / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        if self.exposure is not None:
            self.exposure.save(directory / "exposure")
        if self.search_model is not None:
            self.search_model.save(directory / "search")

    @classmethod
    def load(cls, directory: Path) -> "TwoStageRecommender":
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        params = params_from_dict(meta["params"])
        data = InteractionData.load(directory / "state")
        sources = {"als": ALSSource.load(directory / "als", data, params.als),
                   **non_als_sources(data, params)}
        booster = lgb.Booster(model_file=str(directory / "ranker.txt"))
        rec = cls(data, sources, params, booster, None)
        if (directory / "exposure").is_dir():
            rec.set_exposure(ExposureState.load(directory / "exposure"))
        # the feature list saved with the model decides the columns its ranker reads (a model saved before the
        # item-item sources reads none of theirs); a name this code cannot build, or whose source is not
        # fitted, is refused
        saved = meta.get("feature_names")
        if saved is not None:
            missing = [n for n in saved if not rec.can_build(n)]
            if missing or booster.num_feature() != len(saved):
                raise ValueError(f"{directory}: the saved ranker expects {len(saved)} features "
                                 f"(booster: {booster.num_feature()}); this code cannot build {missing}")
            rec.saved_feature_names = list(saved)
        if (directory / "search").is_dir():
            rec.search_model = SearchModel.load(directory / "search")
        return rec


def params_from_dict(d: dict) -> TwoStageParams:
    ranker = dict(d["ranker"])
    ranker["label_gain"] = tuple(ranker["label_gain"])
    inter = dict(d["interactions"])
    inter["covisitation"] = CovisitationParams(**inter.get("covisitation", {}))
    scalars = {name: d[name] for name in ("max_train_users", "train_windows", "train_window_stride_days", "train_users", "diversity",
                                          "diversity_pool")
               if name in d}
    scalars.update({name: d[name] for name in ("tune_baselines", "tune_popularity", "seen_items") if name in d})
    # a model saved before the item-item sources had none
    scalars["item_item_sources"] = tuple(d.get("item_item_sources", ()))
    return TwoStageParams(interactions=InteractionParams(**inter), als=ALSParams(**d["als"]),
                          ease=EASEParams(**d.get("ease", {})), rp3beta=RP3betaParams(**d.get("rp3beta", {})),
                          popularity=PopularityParams(**d["popularity"]),
                          trending=TrendingParams(**d.get("trending", {})), recall=RecallParams(**d["recall"]),
                          ranker=RankerParams(**ranker), cold_start=ColdStartParams(**d.get("cold_start", {})),
                          **scalars)


def mmr_rerank(items: np.ndarray, scores: np.ndarray, item_category: np.ndarray, k: int,
               diversity: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy MMR over categories per row: pick argmax (1-d)*score01 - d*[category already picked].

    `items`/`scores` are [n_users, pool] sorted by score (-1 padded); returns [n_users, k]."""
    n, pool = items.shape
    out_i = np.full((n, k), -1, dtype=np.int64)
    out_s = np.full((n, k), -np.inf, dtype=np.float32)
    for r in range(n):
        ok = items[r] >= 0
        its, scs = items[r][ok], scores[r][ok]
        if len(its) == 0:
            continue
        span = scs.max() - scs.min()
        rel = (scs - scs.min()) / span if span > 0 else np.ones(len(scs))
        cats = item_category[its]
        taken = np.zeros(len(its), dtype=bool)
        seen_cats: set[int] = set()
        for j in range(min(k, len(its))):
            penalty = np.fromiter((c in seen_cats for c in cats), dtype=float, count=len(cats))
            value = np.where(taken, -np.inf, (1 - diversity) * rel - diversity * penalty)
            best = int(np.argmax(value))
            taken[best] = True
            seen_cats.add(int(cats[best]))
            out_i[r, j], out_s[r, j] = its[best], scs[best]
    return out_i, out_s


__all__ = ["TwoStageRecommender", "TwoStageParams", "RecallParams", "IdIndex"]
