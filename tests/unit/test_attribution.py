"""features/attribution.py on hand-made cases: request_id match, user+item+time match, the window, an item
shown twice, and the per-user outcomes the A/B analysis reads."""

import pandas as pd
import pytest

from recsys.features.attribution import (BY_REQUEST, BY_USER_ITEM, AttributionParams, attribute,
                                         per_user_outcomes)
from recsys.models.ab_test import stats_by_arm

T0 = pd.Timestamp("2026-03-01 10:00", tz="UTC")


def _imp(request_id, user, items, minutes, variant="champion", version="1", endpoint="recommendations"):
    return [dict(request_id=request_id, ts=T0 + pd.Timedelta(minutes=minutes), endpoint=endpoint, user_id=user,
                 item_id=it, position=p, score=1.0 / p, strategy="model", model_version=version, variant=variant,
                 query=None) for p, it in enumerate(items, start=1)]


def _ev(user, item, etype, minutes, request_id=None, price=None, quantity=None):
    return dict(user_id=user, item_id=item, event_type=etype, ts=T0 + pd.Timedelta(minutes=minutes),
                session_id=None, query=None, quantity=quantity, price=price, request_id=request_id)


def _row(out, request_id, item):
    r = out[(out.request_id == request_id) & (out.item_id == item)]
    assert len(r) == 1
    return r.iloc[0]


def test_hand_made_cases():
    impressions = pd.DataFrame(
        _imp("r1", "u1", ["a", "b", "c"], 0)          # u1 sees a, b, c
        + _imp("r2", "u1", ["d", "a"], 30)            # ... and later a again, in another list
        + _imp("r3", "u2", ["a", "b"], 0)             # u2
        + _imp("r4", "u3", ["x"], 0))
    events = pd.DataFrame([
        _ev("u1", "b", "view", 5, request_id="r1"),                 # 1. request_id names the slot
        _ev("u1", "b", "purchase", 10, request_id="r1", price=20.0, quantity=2),
        _ev("u1", "a", "add_to_cart", 40),                          # 2. no request_id: last showing before it (r2)
        _ev("u2", "a", "purchase", 20, price=5.0),                  # no request_id, no view: bought implies clicked
        _ev("u2", "b", "view", 60 * 30),                            # 3. 30 h later: outside the 24 h window
        _ev("u3", "x", "view", -5),                                 # before it was shown: not caused by it
        _ev("u1", "c", "search", 6),                                # a search is no item outcome
    ])
    out = attribute(impressions, events, AttributionParams(window=pd.Timedelta(hours=24)))
    assert len(out) == len(impressions)
    b = _row(out, "r1", "b")
    assert b.clicked and b.bought and not b.carted and b.revenue == pytest.approx(40.0) and b.match == BY_REQUEST
    # 4. an item shown twice to u1: the cart goes to the later showing only
    assert _row(out, "r2", "a").carted and _row(out, "r2", "a").match == BY_USER_ITEM
    assert not _row(out, "r1", "a").clicked
    u2a = _row(out, "r3", "a")
    assert u2a.clicked and u2a.bought and u2a.revenue == pytest.approx(5.0)
    assert not _row(out, "r3", "b").clicked               # outside the window
    assert not _row(out, "r4", "x").clicked               # before the impression
    assert not _row(out, "r1", "c").clicked
    assert int(out.clicked.sum()) == 3


def test_request_id_wins_over_a_later_showing():
    """The event names r1 although the item was shown again later in r2: the named response gets it."""
    impressions = pd.DataFrame(_imp("r1", "u1", ["a"], 0) + _imp("r2", "u1", ["a"], 10))
    events = pd.DataFrame([_ev("u1", "a", "view", 20, request_id="r1")])
    out = attribute(impressions, events)
    assert _row(out, "r1", "a").clicked and not _row(out, "r2", "a").clicked
    # a request_id outside the window does not count either way
    late = pd.DataFrame([_ev("u1", "a", "view", 60 * 25, request_id="r1")])
    assert not attribute(impressions, late).clicked.any()


def test_per_user_outcomes_and_arm_stats():
    impressions = pd.DataFrame(
        _imp("r1", "u1", ["a", "b", "c"], 0) + _imp("r2", "u2", ["a", "b", "c"], 0, variant="challenger", version="2")
        + _imp("r3", None, ["a"], 0) + _imp("r4", "u1", ["q"], 0, endpoint="similar"))
    events = pd.DataFrame([_ev("u1", "a", "view", 1), _ev("u2", "c", "purchase", 1, price=3.0),
                           _ev("u1", "q", "view", 1)])
    per_user = per_user_outcomes(attribute(impressions, events), k=2)
    assert per_user[["variant", "model_version", "user_id", "shown", "clicked", "bought"]].values.tolist() == [
        ["challenger", "2", "u2", 2, 0, 0], ["champion", "1", "u1", 2, 1, 0]]  # c is at position 3 > k
    stats = stats_by_arm(per_user, {"ctr": "clicked"})
    assert stats["champion"]["ctr"].rate == pytest.approx(0.5) and stats["challenger"]["ctr"].rate == 0.0
    assert stats["champion"]["ctr"].users == 1


def test_request_links_reach_the_stored_events():
    """The collector's raw rows (text, untrimmed ids, naive ISO times) link to the store's normalised events."""
    from recsys.features.attribution import link_request_ids, request_links

    collected = pd.DataFrame({"user_id": [" u1", "u2", "u3"], "item_id": ["a", "b", "c"],
                              "event_type": ["View", "purchase", "view"],
                              "ts": ["2026-03-01T10:05:00", "2026-03-01T10:06:00+00:00", "2026-03-01T10:07:00Z"],
                              "request_id": ["r1", None, "r9"]})
    links = request_links(collected)
    assert links["request_id"].tolist() == ["r1", "r9"]
    store = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "item_id": ["a", "b", "c"],
                          "event_type": ["view", "purchase", "view"],
                          "ts": pd.to_datetime(["2026-03-01 10:05", "2026-03-01 10:06", "2026-03-01 10:08"],
                                               utc=True).astype("datetime64[us, UTC]")})
    out = link_request_ids(store, links)
    assert len(out) == 3
    assert out["request_id"].tolist()[0] == "r1"
    assert out["request_id"].isna().tolist()[1:] == [True, True]  # no request_id; another time
