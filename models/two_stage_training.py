"""Fitting the two-stage recommender over time windows: where the feature states come from (`FrameEvents`
in this process, or the Dask workers' `recsys.tasks.cluster_events.ClusterEvents`), the label-window
choices made before the fit (popularity list, seen items, item-item baselines), the feedback from what was
shown, and `train_two_stage`, which ties them together. The learner itself is `recsys.models.two_stage`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.features.exposure import ExposureParams, exposure_state, ignored_pairs
from recsys.features.interactions import InteractionData, InteractionParams, build_interaction_data
from recsys.models import progress
from recsys.models.cold_start import tune_cold_start
from recsys.models.item_item import ITEM_ITEM, tune_on_window
from recsys.models.ranker import RankerResult
from recsys.models.recall import POPULARITY_WINDOWS, PopularitySource
from recsys.models.tuning import TuningResult, grid_search, window_truth
from recsys.models.two_stage import (SEEN_DROP_BELOW, TwoStageParams, TwoStageRecommender, fit_sources,
                                     repeat_purchase_share)


class FrameEvents:
    """The events of a run as one frame: feature states and windows computed in this process."""

    def __init__(self, events: pd.DataFrame, catalog: pd.DataFrame):
        self.events, self.catalog = events, catalog

    def state(self, ref_time: pd.Timestamp, params: InteractionParams) -> InteractionData:
        return build_interaction_data(self.events, self.catalog, ref_time, params)

    def window(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        return self.events.loc[(self.events[S.TS] >= start) & (self.events[S.TS] < end)]


DASK_FEEDBACK_ERROR = ("feedback is on and impressions were found, but the Dask runner does not apply the exposure "
                       "guard (monotone constraints) yet: train in one process or with feedback off")


def with_feedback(learner: TwoStageRecommender, impressions: pd.DataFrame | None, events: pd.DataFrame,
                  start: pd.Timestamp, end: pd.Timestamp | None,
                  feedback: ExposureParams | None) -> TwoStageRecommender:
    """`learner` with the exposure snapshot at `start` and (when `end` is given and `feedback.negatives`) the
    items shown in [start, end) and ignored as extra label-0 candidates. No impressions: unchanged."""
    if feedback is None or not feedback.enabled or impressions is None or impressions.empty:
        return learner
    if events is None:  # the states were built on Dask workers (recsys.tasks.cluster_events)
        raise ValueError(DASK_FEEDBACK_ERROR)
    learner.set_exposure(exposure_state(impressions, events, start, feedback))
    if end is not None and feedback.negatives:
        labels = events.loc[(events[S.TS] >= start) & (events[S.TS] < end)]
        neg = ignored_pairs(impressions, labels, start, end, feedback)
        u = learner.data.users.index_of(neg[S.USER_ID])
        i = learner.data.items.index_of(neg[S.ITEM_ID])
        ok = (u >= 0) & (i >= 0)
        learner.extra_negatives = (u[ok].astype(np.int64), i[ok].astype(np.int64))
    return learner


def train_two_stage(events: pd.DataFrame | None, catalog: pd.DataFrame, train_end: pd.Timestamp,
                    label_end: pd.Timestamp, params: TwoStageParams,
                    client=None, source=None, impressions: pd.DataFrame | None = None,
                    feedback: ExposureParams | None = None) -> tuple[TwoStageRecommender, RankerResult]:
    """Ranker learnt at `train_end` (labels from [train_end, label_end)); recall refit at `label_end`.

    With `train_windows` > 1 the ranking sets of earlier cutoffs (train_end - w * window,
    labelled by the window after each) are stacked; each window holds out the same share of
    its users for validation (early stopping on all windows' held-out users).

    With a Dask `client` the ranking sets are built on its workers and the ranker is trained by
    `lightgbm.dask` (recsys.models.distributed); the same users, candidates and features. `source` (in
    place of `events`: `state(ref_time, params)`, `window(start, end)`) supplies the feature states and
    label windows, e.g. built on the Dask workers from the store (recsys.tasks.cluster_events).

    With `feedback` enabled and `impressions` (on the events' clock), every learner gets the exposure features
    at its cutoff and its label window's shown-and-ignored items as negatives (`with_feedback`); the final
    model carries the exposure snapshot at `label_end`."""
    source = source if source is not None else FrameEvents(events, catalog)
    span = pd.Timestamp(label_end) - pd.Timestamp(train_end)
    stride = pd.Timedelta(days=params.train_window_stride_days) if params.train_window_stride_days > 0 else span
    data_train = source.state(train_end, params.interactions)
    label_events = source.window(train_end, label_end)
    tuning: dict[str, TuningResult] = {}
    if params.tune_popularity:
        tuning["popularity"] = tune_popularity(data_train, label_events, params)
        params = replace(params, popularity=tuning["popularity"].params)
    if params.seen_items == "auto":
        share = repeat_purchase_share(data_train, label_events)
        params = replace(params, seen_items="drop" if share is not None and share < SEEN_DROP_BELOW else "keep")
    if params.tune_baselines:  # before any fit: the item-item sources use the settings chosen here
        tuning.update(tune_item_item_baselines(data_train, label_events, params))
        params = replace(params, **{name: tuning[name].params for name in params.item_item_sources})
    # stacked windows share the ranker's user budget (`max_train_users` in all): on small data every window
    # adds users, on large data the ranker fit costs what one window's did
    states = []
    for w in range(1, max(params.train_windows, 1)):
        start = pd.Timestamp(train_end) - w * stride
        data_w = source.state(start, params.interactions)
        if data_w.n_users == 0:  # no history before this window (nor before any earlier one)
            break
        states.append((start, data_w))
    learn = replace(params, max_train_users=-(-params.max_train_users // (1 + len(states)))) if states else params
    extra = []
    for w, (start, data_w) in enumerate(states, 1):
        learner_w = with_feedback(TwoStageRecommender(data_w, fit_sources(data_w, params), learn),
                                  impressions, events, start, start + span, feedback)
        labels_w = source.window(start, start + span)
        extra.append((learner_w, labels_w, params.ranker.seed + w) if client is not None
                     else learner_w.split_ranking_sets(labels_w, params.ranker.seed + w))
    progress.note(f"stage 1/3: recall sources on events before {pd.Timestamp(train_end):%Y-%m-%d} "
                  f"({data_train.n_users:,} users, {data_train.n_items:,} items)")
    learner = with_feedback(TwoStageRecommender(data_train, fit_sources(data_train, params), learn),
                            impressions, events, pd.Timestamp(train_end), pd.Timestamp(label_end), feedback)
    progress.note(f"stage 2/3: ranking sets (candidates + features) and the ranker on {len(label_events):,} "
                  "label-window events")
    if client is not None and learner.exposure is not None:
        raise ValueError(DASK_FEEDBACK_ERROR)
    if client is not None:
        from recsys.models.distributed import fit_ranker_on_cluster

        result = fit_ranker_on_cluster(client, [(learner, label_events, params.ranker.seed), *extra],
                                       learner.feature_names, params.ranker)
    else:
        result = learner.fit_ranker(label_events, seed=params.ranker.seed, extra=tuple(extra))
    if params.cold_start.tune:
        tuning["cold_start"] = tune_new_users(learner, result, label_events, params)
        params = replace(params, cold_start=tuning["cold_start"].params)
    data_final = source.state(label_end, params.interactions)
    progress.note(f"stage 3/3: recall sources refit on events before {pd.Timestamp(label_end):%Y-%m-%d} "
                  f"(ranker: best iteration {result.best_iteration})")
    final = TwoStageRecommender(data_final, fit_sources(data_final, params), params,
                                result.booster, result.best_iteration)
    if learner.exposure is not None:
        final = with_feedback(final, impressions, events, pd.Timestamp(label_end), None, feedback)
        final.feedback_negatives = sum(len(x.extra_negatives[0]) for x in (learner,)
                                       if x.extra_negatives is not None)
    final.baseline_tuning = tuning
    return final, result


POPULARITY_GRID = tuple({"window_days": w, "purchases_only": p} for w in POPULARITY_WINDOWS for p in (False, True))
MIN_NEW_BUYERS = 30  # fewer new buyers in the label window than this: score the lists on every buyer


def tune_popularity(data: InteractionData, label_events: pd.DataFrame, params: TwoStageParams) -> TuningResult:
    """The popularity list (window, purchases only or not) that best predicts what the label window's new
    buyers purchase; a tie keeps the configured setting (listed first)."""
    users, relevant = window_truth(data, label_events, 5000, params.ranker.seed, new_users=True)
    if len(users) < MIN_NEW_BUYERS:
        users, relevant = window_truth(data, label_events, 5000, params.ranker.seed)
    configured = {"window_days": params.popularity.window_days, "purchases_only": params.popularity.purchases_only}
    grid = (configured, *(g for g in POPULARITY_GRID if g != configured))
    return grid_search(PopularitySource, params.popularity, grid, data, users, relevant)


def tune_new_users(learner: TwoStageRecommender, result: RankerResult, label_events: pd.DataFrame,
                   params: TwoStageParams) -> TuningResult:
    """The new-user path (recsys.models.cold_start) chosen on the label window's new buyers, with the learner
    the ranker was fitted on (its state ends where the label window begins)."""
    from recsys.models.session import build_serving_index

    if learner.booster is None:  # fitted on a Dask cluster
        learner.booster, learner.best_iteration = result.booster, result.best_iteration
    return tune_cold_start(learner, build_serving_index(learner), label_events, params.cold_start,
                           seed=params.ranker.seed)


def tune_item_item_baselines(data: InteractionData, label_events: pd.DataFrame,
                             params: TwoStageParams) -> dict[str, TuningResult]:
    """EASE and RP3beta settings picked on the label window (fit before it, scored on its buyers)."""
    return {name: tune_on_window(name, data, label_events, base=getattr(params, name), seed=params.ranker.seed)
            for name in ITEM_ITEM}

