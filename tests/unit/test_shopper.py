"""The simulated shoppers' choice model (pure): position bias, tastes, the funnel, known-bad events."""

import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.synthetic import SyntheticParams, SyntheticWorld
from recsys.features.validation import first_broken_rule
from recsys.models.shopper import (ArmTally, ShopperParams, click_probability, examination, faulty_events,
                                   merge_user_sums, plan_sessions, react, reaction_events)

WORLD = SyntheticWorld(SyntheticParams(n_users=200, n_items=150, n_days=10, seed=5))


def test_looking_falls_with_position_and_clicks_follow():
    assert examination(np.array([1, 2, 4]), 1.0).tolist() == [1.0, 0.5, 0.25]
    assert examination(np.array([1, 5]), 0.0).tolist() == [1.0, 1.0]  # no position bias
    # the same item in every slot: clicks per slot fall with the slot
    rng = np.random.default_rng(0)
    user = 3
    item = int(WORLD.favorites[user, 0])
    clicks = np.zeros(10)
    for _ in range(3000):
        clicks += react(WORLD, user, np.full(10, item), ShopperParams(), rng).clicked
    assert clicks[0] > clicks[1] > clicks[4] > clicks[9] > 0
    assert clicks[0] / clicks[9] == pytest.approx(10, rel=0.25)


def test_shoppers_click_what_they_like():
    params = ShopperParams()
    for user in range(20):
        fav = WORLD.favorites[user]
        liked_cat = int(np.argmax(WORLD.user_taste[user]))
        disliked = np.flatnonzero(WORLD.item_cat == int(np.argmin(WORLD.user_taste[user])))
        disliked = np.setdiff1d(disliked, fav)
        p_fav = click_probability(WORLD, user, fav, params)
        p_other = click_probability(WORLD, user, disliked, params)
        assert p_fav.min() > np.median(p_other) and p_fav.mean() > 2 * p_other.mean()
        own = np.flatnonzero((WORLD.item_cat == liked_cat) & (WORLD.item_level == WORLD.user_level[user]))
        own = np.setdiff1d(own, fav)
        if len(own) and len(disliked):
            assert click_probability(WORLD, user, own, params).mean() > p_other.mean()
    assert click_probability(WORLD, 0, np.array([-1]), params).tolist() == [0.0]  # unknown to the world


def test_events_follow_the_funnel_and_carry_the_request_id():
    rng = np.random.default_rng(1)
    start = pd.Timestamp("2026-02-01 10:00", tz="UTC")
    events = []
    for user in range(50):
        r = react(WORLD, user, WORLD.favorites[user][:8], ShopperParams(), rng)
        assert (r.bought <= r.carted).all() and (r.carted <= r.clicked).all()
        events += reaction_events(WORLD, user, r, f"req{user}", f"s{user}", start)
    frame = pd.DataFrame(events)
    counts = frame[S.EVENT_TYPE].value_counts()
    assert counts[S.VIEW] > counts[S.ADD_TO_CART] > counts[S.PURCHASE] > 0
    assert (frame["request_id"] == "req" + frame[S.SESSION_ID].str[1:]).all()
    assert pd.to_datetime(frame[S.TS]).min() > start
    assert first_broken_rule(frame.reindex(columns=list(S.EVENT_COLUMNS)), pd.Timestamp.now(tz="UTC"),
                             pd.Timedelta(hours=1)) == [None] * len(frame)


def test_faulty_events_break_the_rules_they_are_meant_to():
    good = {S.USER_ID: "u1", S.ITEM_ID: "i1", S.EVENT_TYPE: S.VIEW, S.TS: "2026-02-01T10:00:00+00:00"}
    bad = faulty_events(good, 6)
    frame = pd.DataFrame(bad).reindex(columns=list(S.EVENT_COLUMNS))
    rules = first_broken_rule(frame, pd.Timestamp.now(tz="UTC"), pd.Timedelta(hours=1))
    assert rules == ["unknown_event_type", "empty_user_id", "unparseable_timestamp", "non_positive_quantity", None,
                     "unknown_event_type"]
    assert bad[4] == good and bad[4] is not good  # the exact repeat: a duplicate for ingest


def test_sessions_come_from_the_world_and_tallies_add_up():
    rng = np.random.default_rng(2)
    sessions = plan_sessions(WORLD, 10, 400, rng)
    assert len(sessions) == 400 and all(0 <= s.start_s < 86400 for s in sessions)
    assert [s.start_s for s in sessions] == sorted(s.start_s for s in sessions)
    searching = [s for s in sessions if s.query]
    assert 0.15 < len(searching) / 400 < 0.35  # the generator's search share (0.25)
    nouns = {t.split()[3] for t in WORLD.item_title}
    assert all(s.query.split()[-1] in nouns for s in searching)
    tally = ArmTally()
    for s in sessions[:30]:
        items = WORLD.favorites[s.user]
        tally.add(s.user, "3", react(WORLD, s.user, items, ShopperParams(), rng), WORLD.item_price[items])
    fig = tally.figures()
    assert fig["sessions"] == 30 and fig["impressions"] == 30 * WORLD.p.favorites_per_user
    assert fig["ctr"] == fig["clicks"] / fig["impressions"] and fig["versions"] == ["3"]
    total: dict = {}
    merge_user_sums(total, {"champion": tally.per_user})
    merge_user_sums(total, {"champion": tally.per_user})
    assert sum(r[0] for r in total["champion"].values()) == 2 * fig["impressions"]
