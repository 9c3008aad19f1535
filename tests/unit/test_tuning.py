"""`--tune full`: the search space, the Optuna search on earlier windows, and the data-fingerprint reuse rule."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.split import SplitParams, temporal_split
from recsys.features.synthetic import SyntheticParams, SyntheticWorld
from recsys.models.ranker import RankerParams
from recsys.models.recall import ALSParams
from recsys.models.tuning import (SEARCH_SPACE, SearchParams, apply_settings, data_fingerprint, earlier_window_problem,
                                  fingerprint_change,
                                  get_setting, search_settings, sketch_jaccard, starting_point, tuned_params,
                                  validation_score)
from recsys.models.two_stage import TwoStageParams


def _params(**kw) -> TwoStageParams:
    return TwoStageParams(als=ALSParams(factors=8, iterations=3, device="cpu", num_threads=1),
                          ranker=RankerParams(n_estimators=20, num_threads=1), **kw)


@pytest.fixture(scope="module")
def tiny_world():
    world = SyntheticWorld(SyntheticParams(n_users=150, n_items=100, n_days=24, sessions_per_user_day=0.25))
    catalog = world.catalog()
    events = pd.concat([ev for _, ev in world.iter_days()], ignore_index=True)
    return events, catalog, temporal_split(events[S.TS].max(), SplitParams(label_days=5, test_days=5))


def test_settings_round_trip_through_the_nested_params():
    base = _params()
    point = starting_point(base)
    assert set(point) == set(SEARCH_SPACE)
    assert point["als.factors"] == 32  # 8 is not one of the choices: the first choice
    assert point["seen_items"] == "keep" and point["ranker.n_estimators"] == 100  # auto -> keep; 20 clipped up
    changed = apply_settings(base, {"als.regularization": 0.3, "recall.covis": 40, "seen_items": "drop",
                                    "interactions.half_life_days": 90.0, "train_windows": 2})
    assert changed.als.regularization == 0.3 and changed.als.factors == 8  # untouched fields stay
    assert changed.recall.covis == 40 and changed.recall.als == base.recall.als
    assert changed.seen_items == "drop" and changed.train_windows == 2
    assert get_setting(changed, "interactions.half_life_days") == 90.0
    with pytest.raises(KeyError, match="nope"):
        apply_settings(base, {"als.nope": 1})
    final = tuned_params(base, {"recall.als": 150, "seen_items": "drop"})
    assert final.recall.als == 150 and final.seen_items == "drop" and final.tune_popularity and final.tune_baselines


def test_search_params_reject_bad_values():
    with pytest.raises(ValueError, match="off, quick, full"):
        SearchParams(mode="fast")
    with pytest.raises(ValueError, match="budget"):
        SearchParams(budget_s=0)


def test_search_starts_from_the_configured_settings_and_keeps_the_best(tiny_world):
    """A known objective: the score is the negated distance of ALS regularisation from 0.2 (log scale); the
    search must score the configured point first, pass each trial to the callback and return the best."""
    events, catalog, split = tiny_world
    seen_windows, seen_trials = [], []

    def score(ev, cat, train_end, label_end, params):
        seen_windows.append((ev[S.TS].max(), train_end, label_end))
        assert params.tune_baselines is False and params.tune_popularity  # popularity: its own new-buyer grid
        return -abs(np.log(params.als.regularization / 0.2))

    result = search_settings(events, catalog, split.train_end, split.label_end, _params(),
                             SearchParams(mode="full", max_trials=12, seed=3), on_trial=seen_trials.append,
                             score=score)
    assert len(result.trials) == 12 and [t.number for t in seen_trials] == list(range(12))
    assert result.trials[0].settings == starting_point(_params())
    assert result.start_value == pytest.approx(-abs(np.log(0.05 / 0.2)))
    assert result.value == max(t.value for t in result.trials) >= result.start_value
    assert result.settings == max(result.trials, key=lambda t: t.value).settings
    assert all(w == (events[S.TS].max(), split.train_end, split.label_end) for w in seen_windows)


def test_failed_trials_are_recorded_and_skipped(tiny_world):
    events, catalog, split = tiny_world

    def score(ev, cat, train_end, label_end, params):
        if params.train_windows == 2:
            raise ValueError("too many candidates")
        return params.recall.als / 1000

    result = search_settings(events, catalog, split.train_end, split.label_end, _params(),
                             SearchParams(mode="full", max_trials=8, seed=0), score=score)
    failed = [t for t in result.trials if t.value is None]
    assert failed and all("too many candidates" in t.error for t in failed)
    assert result.settings["train_windows"] == 1
    with pytest.raises(ValueError, match="every tuning trial failed"):
        search_settings(events, catalog, split.train_end, split.label_end, _params(),
                        SearchParams(mode="full", max_trials=2), score=lambda *a: 1 / 0)


def test_the_time_budget_stops_the_search(tiny_world):
    events, catalog, split = tiny_world
    import time

    def slow(*args):
        time.sleep(0.3)
        return 0.1

    result = search_settings(events, catalog, split.train_end, split.label_end, _params(),
                             SearchParams(mode="full", budget_s=0.5, max_trials=50), score=slow)
    assert 1 <= len(result.trials) <= 3 and result.seconds < 2.5


def test_validation_score_never_sees_the_label_window_while_training(tiny_world):
    """The real objective: trained one window earlier, scored on the label window's buyers (a value in
    [0, 1]); events of the test window change nothing."""
    events, catalog, split = tiny_world
    base = replace(_params(), tune_baselines=False)
    a = validation_score(events, catalog, split.train_end, split.label_end, base)
    test_window = events[events[S.TS] >= split.label_end]
    shuffled = test_window.assign(**{S.ITEM_ID: test_window[S.ITEM_ID].sample(frac=1, random_state=1).to_numpy()})
    b = validation_score(pd.concat([events[events[S.TS] < split.label_end], shuffled]), catalog, split.train_end,
                         split.label_end, base)
    assert 0 < a <= 1 and a == b
    assert earlier_window_problem(events, split.train_end, split.label_end) is None
    short = events[events[S.TS] >= split.train_end - (split.label_end - split.train_end)]
    assert "needs one more label window" in earlier_window_problem(short, split.train_end, split.label_end)


def test_fingerprint_reuse_rule(tiny_world):
    events, _, split = tiny_world
    fp = data_fingerprint(events)
    assert fingerprint_change(fp, fp) is None
    # a nightly run one day later: same users/items, a few more events -> reuse
    assert fingerprint_change(data_fingerprint(events[events[S.TS] < events[S.TS].max().normalize()]), fp) is None
    half = data_fingerprint(events[events[S.TS] < split.train_end - pd.Timedelta(days=7)])
    assert "changed from" in fingerprint_change(half, fp)
    other = events.assign(**{S.ITEM_ID: "x" + events[S.ITEM_ID].astype(str)})
    assert fingerprint_change(fp, data_fingerprint(other)) == "item overlap 0.00 < 0.7"
    later = events.assign(**{S.TS: events[S.TS] + pd.Timedelta(days=40)})
    assert fingerprint_change(fp, data_fingerprint(later)) == "the last day moved by 40 days"


def test_sketch_jaccard_estimates_the_overlap():
    ids = np.array([f"u{i}" for i in range(4000)], dtype=object)
    a = data_fingerprint(pd.DataFrame({S.USER_ID: ids[:3000], S.ITEM_ID: ids[:3000],
                                       S.TS: pd.Timestamp("2026-01-01", tz="UTC")}))["user_sketch"]
    b = data_fingerprint(pd.DataFrame({S.USER_ID: ids[1000:], S.ITEM_ID: ids[1000:],
                                       S.TS: pd.Timestamp("2026-01-01", tz="UTC")}))["user_sketch"]
    assert sketch_jaccard(a, b) == pytest.approx(0.5, abs=0.1)  # 2000 shared of 4000
    assert sketch_jaccard(a, a) == 1.0 and sketch_jaccard(a, []) == 0.0
