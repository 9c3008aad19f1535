"""features/exposure.py on hand-made impressions, and the guard: impressions alone never raise a score."""

import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.exposure import (EXPOSURE_FEATURES, NEVER_SHOWN_DAYS, ExposureParams, ExposureState,
                                      exposure_features, exposure_state, ignored_pairs, index_exposure)
from recsys.features.interactions import IdIndex

T0 = pd.Timestamp("2026-03-01 10:00", tz="UTC")
CUTOFF = pd.Timestamp("2026-03-03", tz="UTC")


def _imp(request_id, user, items, hours, endpoint="recommendations"):
    return [dict(request_id=request_id, ts=T0 + pd.Timedelta(hours=hours), endpoint=endpoint, user_id=user,
                 item_id=it, position=p, score=1.0 / p, strategy="model", model_version="1", variant="champion",
                 query=None) for p, it in enumerate(items, start=1)]


def _ev(user, item, etype, hours):
    return dict(user_id=user, item_id=item, event_type=etype, ts=T0 + pd.Timedelta(hours=hours), session_id=None,
                query=None, quantity=None, price=None)


IMPRESSIONS = pd.DataFrame(
    _imp("r1", "u1", ["a", "b", "c"], 0)         # u1 sees a, b, c; clicks b
    + _imp("r2", "u1", ["a"], 12)                 # a again 12 h later, top slot, ignored again
    + _imp("r3", "u2", ["b", "a"], 0)             # u2 clicks nothing
    + _imp("r4", "u1", ["z"], 1, "search")        # a search result: not a recommendation
    + _imp("r5", "u2", ["c"], 37)                 # 1 h before the cutoff: its window is still open
    + _imp("r6", "u1", ["d"], 50))                # after the cutoff: unseen at the cutoff
EVENTS = pd.DataFrame([_ev("u1", "b", "view", 0.1), _ev("u1", "b", "purchase", 0.2),
                       _ev("u1", "c", "view", 40)])  # c clicked only after the cutoff: still ignored at it
PARAMS = ExposureParams(enabled=True, half_life_days=1.0, position_decay=1.0, ctr_prior=2.0)


def _pair(state, user, item):
    r = state.pairs[(state.pairs[S.USER_ID] == user) & (state.pairs[S.ITEM_ID] == item)]
    assert len(r) == 1, (user, item)
    return r.iloc[0]


def test_exposure_counts_ignored_recency_and_position_as_propensity():
    st = exposure_state(IMPRESSIONS, EVENTS, CUTOFF, PARAMS)
    assert set(zip(st.pairs[S.USER_ID], st.pairs[S.ITEM_ID])) == {("u1", "a"), ("u1", "b"), ("u1", "c"),
                                                                 ("u2", "a"), ("u2", "b"), ("u2", "c")}
    age1, age2 = 38 / 24, 26 / 24  # days from the showings to the cutoff (half-life 1 day)
    a = _pair(st, "u1", "a")
    assert a.n_shown == 2 and a.n_ignored == 2 and a.best_position == 1
    assert a.shown == pytest.approx(0.5 ** age1 + 0.5 ** age2)
    assert a.ignored == pytest.approx(0.5 ** age1 + 0.5 ** age2)  # both at slot 1: examined for sure
    assert a.days_since_shown == pytest.approx(age2)
    b = _pair(st, "u1", "b")
    assert b.n_ignored == 0 and b.ignored == 0  # clicked
    c = _pair(st, "u1", "c")  # slot 3: an ignored showing counts 1/3 (the slot was looked at 1 time in 3)
    assert c.n_ignored == 1 and c.ignored == pytest.approx(0.5 ** age1 / 3)
    assert _pair(st, "u2", "a").ignored == pytest.approx(0.5 ** age1 / 2)
    late = _pair(st, "u2", "c")  # its attribution window is open at the cutoff: shown, not yet ignored
    assert late.n_shown == 1 and late.n_ignored == 0
    items = st.items.set_index(S.ITEM_ID)
    assert "z" not in items.index and "d" not in items.index
    # clicks over expected clicks: b (clicked once, shown at 2 and 1) beats a (never clicked)
    assert st.global_ctr == pytest.approx(1 / items["expected"].sum())
    assert items.loc["b", "ctr"] > st.global_ctr > items.loc["a", "ctr"]
    assert items.loc["b", "ctr"] == pytest.approx((1 + 2 * st.global_ctr) / (1 / 2 + 1 / 1 + 2))


def test_counts_are_capped():
    many = pd.DataFrame([r for n in range(30) for r in _imp(f"q{n}", "u9", ["a"], 36)])
    st = exposure_state(many, EVENTS, CUTOFF, ExposureParams(cap=3.0))
    assert _pair(st, "u9", "a").n_shown == 30 and _pair(st, "u9", "a").shown == 3.0


def test_no_impressions_give_an_empty_state():
    st = exposure_state(IMPRESSIONS.iloc[:0], EVENTS, CUTOFF, PARAMS)
    assert st.pairs.empty and st.items.empty and st.global_ctr == 0.0
    x = exposure_features(index_exposure(st, IdIndex(["u1"]), IdIndex(["a"])), np.array([0]), np.array([0]))
    assert x[0, EXPOSURE_FEATURES.index("x_days_since_shown")] == NEVER_SHOWN_DAYS and x[0, 0] == 0


def test_features_by_position_and_unknown_users(tmp_path):
    st = exposure_state(IMPRESSIONS, EVENTS, CUTOFF, PARAMS)
    st.save(tmp_path / "exp")
    back = ExposureState.load(tmp_path / "exp")
    assert back.params == PARAMS and back.cutoff == CUTOFF
    users, items = IdIndex(["u1", "u2", "u7"]), IdIndex(["a", "b", "c", "q"])
    ix = index_exposure(back, users, items)
    x = exposure_features(ix, np.array([0, 0, -1, 2, 0]), np.array([0, 1, 0, 3, 3]))
    col = {f: x[:, j] for j, f in enumerate(EXPOSURE_FEATURES)}
    assert col["x_ignored"][0] == pytest.approx(_pair(st, "u1", "a").ignored)
    assert col["x_shown"][1] == pytest.approx(_pair(st, "u1", "b").shown) and col["x_ignored"][1] == 0
    # an unknown user and a never-shown item: nothing shown, the global CTR
    assert col["x_shown"][2] == 0 and col["x_days_since_shown"][2] == NEVER_SHOWN_DAYS
    assert col["x_days_since_shown"][4] == NEVER_SHOWN_DAYS and col["xi_ctr"][4] == pytest.approx(st.global_ctr)
    assert col["xi_shown"][0] == pytest.approx(np.log1p(st.items.set_index(S.ITEM_ID).loc["a", "shown"]))
    # one user (the request path) gives the rows of the batch path
    one = exposure_features(ix, np.array([0, 0]), np.array([0, 1]))
    np.testing.assert_allclose(one, x[:2])


def test_ignored_pairs_are_shown_in_the_window_and_not_acted_on():
    start, end = T0, T0 + pd.Timedelta(days=1)
    label = EVENTS[(EVENTS[S.TS] >= start) & (EVENTS[S.TS] < end)]
    got = set(map(tuple, ignored_pairs(IMPRESSIONS, label, start, end, PARAMS).to_numpy()))
    # u1/b was viewed; u1/c sat at slot 3 (looked at 1 time in 3: likely never seen); search and later lists
    # are outside; u1/a was shown twice at slot 1
    assert got == {("u1", "a"), ("u2", "a"), ("u2", "b")}
    every = ExposureParams(negative_min_examination=0.0)
    assert ("u1", "c") in set(map(tuple, ignored_pairs(IMPRESSIONS, label, start, end, every).to_numpy()))


# ---- the guard, on a trained two-stage model -----------------------------------------------------------
@pytest.fixture(scope="module")
def looped():
    """A world where the service 'showed' every user the items they later acted on (the closed loop's
    worst case: being shown predicts the label) plus random ones; trained with and without the guard."""
    from recsys.features.split import SplitParams, temporal_split
    from recsys.features.synthetic import SyntheticParams, SyntheticWorld
    from recsys.models.ranker import RankerParams
    from recsys.models.recall import ALSParams
    from recsys.models.two_stage import TwoStageParams
    from recsys.models.two_stage_training import train_two_stage

    world = SyntheticWorld(SyntheticParams(n_users=200, n_items=120, n_days=21, sessions_per_user_day=0.3))
    events = pd.concat([ev for _, ev in world.iter_days()], ignore_index=True)
    split = temporal_split(events[S.TS].max(), SplitParams(label_days=4, test_days=3))
    rng = np.random.default_rng(0)
    acted = events[events[S.EVENT_TYPE].isin(S.ITEM_EVENT_TYPES)].drop_duplicates([S.USER_ID, S.ITEM_ID])
    rows = []
    for n, (u, it, ts) in enumerate(zip(acted[S.USER_ID], acted[S.ITEM_ID], acted[S.TS])):
        shown = [it, *rng.choice(world.item_ids, 3, replace=False)]
        rows += [dict(request_id=f"r{n}", ts=ts - pd.Timedelta(hours=30), endpoint="recommendations", user_id=u,
                      item_id=x, position=p, score=0.0, strategy="model", model_version="1", variant="champion",
                      query=None) for p, x in enumerate(shown, start=1)]
    imp = pd.DataFrame(rows)
    params = TwoStageParams(als=ALSParams(factors=8, iterations=3, device="cpu", num_threads=1),
                            ranker=RankerParams(n_estimators=40, num_threads=1), tune_baselines=False)
    fb = ExposureParams(enabled=True)
    rec, _ = train_two_stage(events, world.catalog(), split.train_end, split.label_end, params, impressions=imp,
                             feedback=fb)
    return rec, imp, events, split, fb


def test_feedback_model_carries_exposure_and_saves_it(looped, tmp_path):
    from recsys.models.two_stage import FEATURE_NAMES, TwoStageRecommender

    rec, *_ = looped
    assert rec.feature_names == FEATURE_NAMES + list(EXPOSURE_FEATURES)
    assert rec.booster.num_feature() == len(rec.feature_names)
    assert len(rec.exposure.pairs) > 0 and rec.feedback_negatives > 0
    rec.save(tmp_path / "m")
    back = TwoStageRecommender.load(tmp_path / "m")
    users = np.arange(20)
    np.testing.assert_array_equal(back.recommend(users, 10)[0], rec.recommend(users, 10)[0])


def test_impressions_alone_never_raise_a_score(looped):
    """Show every candidate of quiet users (no event in their last two days) five more times after their last
    event, so no click can be credited to the new showings: no score goes up, and some go down."""
    rec, imp, events, split, fb = looped
    before_cut = events[events[S.TS] < split.label_end]
    last = before_cut.groupby(S.USER_ID)[S.TS].max()
    when = split.label_end - pd.Timedelta(hours=36)
    quiet = rec.data.users.index_of(last.index[last < when - pd.Timedelta(hours=1)].to_numpy())
    users = np.unique(quiet[quiet >= 0])[:40]
    assert len(users) >= 10
    table = rec.candidate_table(users)
    before_x, before = rec.features(table), rec.score(table)
    uid, iid = rec.data.users.ids[table.users], rec.data.items.ids[table.items]
    extra = pd.DataFrame([dict(request_id=f"x{n}-{k}", ts=when + pd.Timedelta(minutes=k), endpoint="recommendations",
                               user_id=u, item_id=i, position=1, score=0.0, strategy="model", model_version="1",
                               variant="champion", query=None)
                          for n, (u, i) in enumerate(zip(uid, iid)) for k in range(5)])
    rec.set_exposure(exposure_state(pd.concat([imp, extra], ignore_index=True), events, split.label_end, fb))
    try:
        after_x, after = rec.features(table), rec.score(table)
    finally:
        rec.set_exposure(exposure_state(imp, events, split.label_end, fb))
    shown, ignored = (EXPOSURE_FEATURES.index(f) - len(EXPOSURE_FEATURES) for f in ("x_shown", "x_ignored"))
    assert (after_x[:, shown] > before_x[:, shown]).all() and (after_x[:, ignored] > before_x[:, ignored]).all()
    np.testing.assert_array_equal(after_x[:, :-len(EXPOSURE_FEATURES)], before_x[:, :-len(EXPOSURE_FEATURES)])
    assert (after <= before + 1e-9).all()
    assert (after < before - 1e-6).any()  # the ranker does use them: ignored showings push items down


def test_no_impressions_train_the_model_of_today():
    """Feedback on with nothing shown yet (the first training): the very same ranker as feedback off."""
    from recsys.features.synthetic import SyntheticParams, SyntheticWorld
    from recsys.models.ranker import RankerParams
    from recsys.models.recall import ALSParams
    from recsys.models.two_stage import FEATURE_NAMES, TwoStageParams
    from recsys.models.two_stage_training import train_two_stage

    world = SyntheticWorld(SyntheticParams(n_users=120, n_items=80, n_days=14, sessions_per_user_day=0.3))
    events = pd.concat([ev for _, ev in world.iter_days()], ignore_index=True)
    end = events[S.TS].max().normalize() + pd.Timedelta(days=1)
    params = TwoStageParams(als=ALSParams(factors=4, iterations=2, device="cpu", num_threads=1),
                            ranker=RankerParams(n_estimators=10, num_threads=1), tune_baselines=False)
    args = (events, world.catalog(), end - pd.Timedelta(days=6), end - pd.Timedelta(days=3), params)
    plain, _ = train_two_stage(*args)
    for imp in (None, IMPRESSIONS.iloc[:0]):
        fed, _ = train_two_stage(*args, impressions=imp, feedback=ExposureParams(enabled=True))
        assert fed.exposure is None and fed.feature_names == FEATURE_NAMES
        assert fed.booster.model_to_string() == plain.booster.model_to_string()
