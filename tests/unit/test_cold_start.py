"""New users by context (models/cold_start.py) on the tiny three-group shop of test_session."""

from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.models.cold_start import (POPULAR, POPULAR_CATEGORY, ColdStartParams, build_cold_start_index,
                                      category_list, context_cases, context_metrics, new_user_recommendation,
                                      session_list, top_items, tune_cold_start)
from recsys.models.two_stage import params_from_dict
from tests.unit.conftest import make_events
from tests.unit.test_session import group_of_item, item_idx, shop  # noqa: F401 - `shop` is a fixture


def groups_of(rec, items):
    return [group_of_item(int(rec.data.items.ids[i][1:])) for i in items]


def with_cold(rec, **kw):
    """`rec` with other cold-start settings (a shallow copy: the fixture is shared)."""
    out = object.__new__(type(rec))
    out.__dict__.update(rec.__dict__)
    out.params = replace(rec.params, cold_start=replace(rec.params.cold_start, **kw))
    return out


def test_index_scales_popularity_globally_and_within_each_category(shop):
    rec, _ = shop
    index = build_cold_start_index(rec)
    assert index.popularity.max() == pytest.approx(1.0) and index.popularity.min() >= 0
    for code in np.unique(index.item_category[index.popularity > 0]):
        assert index.within_category[index.item_category == code].max() == pytest.approx(1.0)


def test_category_list_leads_with_the_category_and_weight_zero_is_the_global_list(shop):
    rec, _ = shop
    lamp, _ = category_list(rec, "lamp", 8, weight=1.0)
    assert groups_of(rec, lamp) == [1] * 8  # the 8 lamps, most popular first
    glob, _ = category_list(rec, "lamp", 5, weight=0.0)
    assert glob.tolist() == rec.cold_start(5)[0].tolist()
    assert category_list(rec, "no such category", 5) is None


def test_session_strategies_follow_the_session_items(shop):
    rec, index = shop
    seen = item_idx(rec, "i10")  # a lamp
    base = ColdStartParams()
    covis = session_list(rec, index, seen, [S.VIEW], 5, replace(base, session_strategy="covis"))
    assert covis.strategy == "session_covis" and groups_of(rec, covis.items) == [1] * 5
    assert seen[0] not in covis.items  # neighbours, not the item itself
    first = session_list(rec, index, seen, [S.VIEW], 5, replace(base, session_strategy="covis",
                                                                  session_items_first=True))
    assert first.items[0] == seen[0] and first.items[1:].tolist() == covis.items[:4].tolist()
    cat = session_list(rec, index, seen, [S.VIEW], 5, replace(base, session_strategy="category",
                                                               category_weight=1.0))
    assert cat.strategy == "session_category" and groups_of(rec, cat.items) == [1] * 5
    blend = session_list(rec, index, seen, [S.VIEW], 5, replace(base, session_strategy="blend"))
    assert blend.strategy == "session_blend" and groups_of(rec, blend.items[:3]) == [1, 1, 1]
    pop = session_list(rec, index, seen, [S.VIEW], 5, replace(base, session_strategy="popular"))
    assert pop.strategy == POPULAR and pop.items.tolist() == rec.cold_start(5)[0].tolist()


def test_new_user_dispatch_by_context(shop):
    rec, index = shop
    none = new_user_recommendation(rec, index, np.zeros(0, np.int64), [], None, 5)
    assert none.strategy == POPULAR
    cat = new_user_recommendation(rec, index, np.zeros(0, np.int64), [], "tea", 5)
    assert cat.strategy == POPULAR_CATEGORY and cat.strategies == [POPULAR_CATEGORY] * 5
    unknown = new_user_recommendation(rec, index, np.zeros(0, np.int64), [], "no such category", 5)
    assert unknown.strategy == POPULAR
    searches_only = new_user_recommendation(rec, index, item_idx(rec, "i10"), [S.SEARCH], "tea", 5)
    assert searches_only.strategy == POPULAR_CATEGORY  # nothing to fold: the category decides
    covis = new_user_recommendation(with_cold(rec, session_strategy="covis"), index, item_idx(rec, "i10"),
                                    [S.VIEW], "tea", 5)
    assert covis.strategy == "session_covis"  # session events beat the landing category
    folded = new_user_recommendation(rec, index, item_idx(rec, "i10"), [S.VIEW], None, 5)
    assert folded.strategy == "session"  # the configured default: the two-stage model, session folded in


def window(rows):
    return make_events([(u, i, t, f"2026-01-{d} 10:00") for u, i, t, d in rows])


def test_context_cases_reveal_the_first_event_and_keep_the_rest_of_the_purchases(shop):
    rec, _ = shop
    events = window([("new1", "i03", S.VIEW, "09"), ("new1", "i04", S.PURCHASE, "10"),
                     ("new1", "i03", S.PURCHASE, "11"),
                     ("new2", "i05", S.PURCHASE, "09"),  # nothing left once the first event is revealed
                     ("new3", "i06", S.PURCHASE, "09"), ("new3", "i07", S.PURCHASE, "09"),  # tie: file order
                     ("new4", "zz", S.VIEW, "09"), ("new4", "i01", S.PURCHASE, "10"),  # first item unknown
                     ("u10", "i01", S.VIEW, "09"), ("u10", "i02", S.PURCHASE, "10")])  # known user
    cases = context_cases(rec, events)
    assert cases.user_ids == ["new1", "new3"]
    assert rec.data.items.ids[cases.first_item].tolist() == ["i03", "i06"]
    assert cases.first_type == [S.VIEW, S.PURCHASE]
    assert cases.relevant == [{"i04", "i03"}, {"i07"}]
    everyone = context_cases(rec, events, as_new=True)
    assert "u10" in everyone.user_ids
    assert context_cases(rec, events, user_ids=["new3"]).user_ids == ["new3"]


def shopping_window(rec, n_users=40):
    """New users who look at an item of one group and then buy two other items of that group."""
    rng = np.random.default_rng(1)
    rows = []
    for u in range(n_users):
        g = u % 3
        its = rng.choice(np.arange(g * 8, g * 8 + 8), 3, replace=False)
        rows += [(f"n{u}", f"i{its[0]:02d}", S.VIEW, "09"), (f"n{u}", f"i{its[1]:02d}", S.PURCHASE, "10"),
                 (f"n{u}", f"i{its[2]:02d}", S.PURCHASE, "11")]
    return window(rows)


def test_tuning_picks_a_session_aware_path_and_context_beats_popularity(shop):
    rec, index = shop
    events = shopping_window(rec)
    chosen = tune_cold_start(rec, index, events, ColdStartParams(session_strategy="popular", category_weight=0.0))
    p = chosen.params
    assert p.category_weight > 0 and p.session_strategy != "popular"
    scored = {(pt["context"], pt.get("session_strategy"), pt.get("session_items_first"), pt.get("category_weight")): v
              for pt, v in chosen.scores}
    best_event = max(v for key, v in scored.items() if key[0] == "event")
    assert best_event > scored[("event", "popular", False, p.category_weight)]
    cases = context_cases(rec, events)
    tuned = with_cold(rec, **{f: getattr(p, f) for f in ("category_weight", "session_strategy", "session_items_first")})
    metrics, per_user = context_metrics(tuned, index, cases, 5, {"popularity": rec.cold_start(5)[0]})
    assert metrics["test.new_context.n_users"] == len(cases) == 40
    assert metrics["test.new_context.ndcg_at_5"] > metrics["baseline.popularity.new_context.ndcg_at_5"]
    assert metrics["test.new_category.ndcg_at_5"] > metrics["baseline.popularity.new_context.ndcg_at_5"]
    assert len(per_user["test.new_context"]) == 40


def test_params_validate_and_travel_with_the_model(shop):
    rec, _ = shop
    with pytest.raises(ValueError, match="session_strategy"):
        ColdStartParams(session_strategy="magic")
    with pytest.raises(ValueError, match="category_weight"):
        ColdStartParams(category_weight=2.0)
    params = replace(rec.params, cold_start=ColdStartParams(category_weight=0.8, session_strategy="covis"))
    assert params_from_dict(asdict(params)).cold_start == params.cold_start
    old = asdict(rec.params)
    del old["cold_start"]  # a model saved before this path existed
    assert params_from_dict(old).cold_start == ColdStartParams()


def test_top_items_orders_and_excludes():
    items, scores = top_items(np.array([0.0, 3.0, 1.0, 3.0, 2.0]), 3, exclude=np.array([4]))
    assert items.tolist() == [1, 3, 2] and scores.tolist() == [3.0, 3.0, 1.0]
    assert len(top_items(np.zeros(4), 3)[0]) == 0
