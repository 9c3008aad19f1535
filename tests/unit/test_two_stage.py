import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.split import SplitParams, temporal_split, window
from recsys.features.synthetic import SyntheticParams, SyntheticWorld
from recsys.models.evaluation import EvaluationParams, evaluate, relevant_items
from recsys.models.ranker import RankerParams
from recsys.models.recall import ALSParams
from recsys.features.ranking_features import PAIR_FEATURES
from recsys.models.session import SessionParams
from recsys.models.two_stage import SOURCE_NAMES, TwoStageParams, TwoStageRecommender
from recsys.models.two_stage_training import train_two_stage


@pytest.fixture(scope="module")
def small_world():
    world = SyntheticWorld(SyntheticParams(n_users=250, n_items=160, n_days=24, sessions_per_user_day=0.25))
    catalog = world.catalog()
    events = pd.concat([ev for _, ev in world.iter_days()], ignore_index=True)
    return events, catalog


def _params(**kw) -> TwoStageParams:
    return TwoStageParams(als=ALSParams(factors=8, iterations=3, device="cpu", num_threads=1),
                          ranker=RankerParams(n_estimators=20, num_threads=1), **kw)


@pytest.fixture(scope="module")
def trained(small_world):
    events, catalog = small_world
    split = temporal_split(events[S.TS].max(), SplitParams(label_days=5, test_days=5))
    rec, result = train_two_stage(events, catalog, split.train_end, split.label_end,
                                  _params(train_windows=2, item_item_sources=("ease", "rp3beta")))
    return rec, result, window(events, split.label_end, split.test_end)


def test_trains_evaluates_and_logs_every_source_and_baseline(trained):
    rec, result, test = trained
    assert result.history["valid.ndcg_at_10"]
    m = evaluate(rec, test, 10).metrics
    for name in rec.sources:
        assert any(key.startswith(f"recall.{name}_recall_at_") for key in m), name
    for b in ("popularity", "als", "repeat", "covis", "itemknn", "ease", "rp3beta"):
        assert f"baseline.{b}.ndcg_at_10" in m
    # EASE, RP3beta and the popularity list were tuned on the label window: a grid point won, and the
    # baselines were fitted with the winner
    tuning = rec.baseline_tuning
    assert set(tuning) == {"popularity", "ease", "rp3beta", "cold_start"}
    for name in ("ease", "rp3beta"):
        best = max(score for _, score in tuning[name].scores)
        winner = next(point for point, score in tuning[name].scores if score == best)
        assert all(getattr(tuning[name].params, key) == v for key, v in winner.items())
        assert rec.baseline_source(name).params == tuning[name].params
        # ... and they are candidate sources and ranker features with the tuned settings
        assert rec.sources[name] is rec.baseline_source(name) and getattr(rec.params, name) == tuning[name].params
        assert {f"src_{name}_score", f"m_{name}_score"} <= set(rec.feature_names)
    assert rec.params.popularity == tuning["popularity"].params
    # the new-user path: chosen on the label window, carried by the final model, scored with context
    assert rec.params.cold_start == tuning["cold_start"].params and tuning["cold_start"].scores
    best_event = max(v for point, v in tuning["cold_start"].scores if point["context"] == "event")
    assert best_event == max(v for point, v in tuning["cold_start"].scores
                             if point["context"] == "event" and point["session_strategy"] ==
                             rec.params.cold_start.session_strategy
                             and point["session_items_first"] == rec.params.cold_start.session_items_first)
    if m.get("test.new_context.n_users"):
        assert {"test.new_context.ndcg_at_10", "test.new_category.ndcg_at_10",
                "baseline.popularity.new_context.ndcg_at_10"} <= set(m)
    # new users get the tuned popularity list: never below the popularity baseline on them
    assert m["test.new_user_share"] > 0
    assert m["test.new.ndcg_at_10"] >= m["baseline.popularity.new.ndcg_at_10"]
    assert 0 <= m["test.diversity_at_10"] <= 1 and m["test.novelty_at_10"] > 0
    assert "test.returning.ndcg_at_10" in m
    assert m["test.n_users"] == m["test.n_users_in_window"] == len(relevant_items(test))


def test_evaluation_scores_a_capped_sample_of_the_window(trained):
    rec, _, test = trained
    n_window = len(relevant_items(test))
    cap = n_window // 3
    ev = evaluate(rec, test, 10, curve_max_k=0, params=EvaluationParams(max_users=cap, seed=1))
    assert len(ev.user_ids) == cap and ev.metrics["test.n_users"] == cap
    assert ev.metrics["test.n_users_in_window"] == n_window
    assert len(ev.per_user["ndcg_at_10"]) == cap


def test_save_load_gives_the_same_recommendations(trained, tmp_path):
    rec = trained[0]
    rec.save(tmp_path / "m")
    loaded = TwoStageRecommender.load(tmp_path / "m")
    users = rec.data.users.ids[:5].tolist() + ["nobody"]
    assert [r["items"] for r in loaded.recommend_ids(users, 10)] == [r["items"] for r in rec.recommend_ids(users, 10)]


def test_explain_names_sources_and_top_features(trained):
    rec = trained[0]
    user = rec.data.users.ids[0]
    out = rec.explain(user, 5)
    assert [e["item_id"] for e in out] == rec.recommend_ids([user], 5)[0]["items"]
    for e in out:
        assert e["sources"] and set(e["sources"]) <= set(SOURCE_NAMES)
        assert len(e["top_features"]) == 5 and all(f["feature"] in rec.feature_names for f in e["top_features"])
    assert rec.explain("nobody", 3)[0]["sources"] == ["popular"]


def test_diversity_knob_raises_category_diversity(trained):
    import dataclasses

    from recsys.models.metrics import intra_list_diversity

    rec = trained[0]
    users = np.arange(min(50, rec.data.n_users))
    base, _ = rec.recommend(users, 10)
    params = rec.params
    rec.params = dataclasses.replace(params, diversity=0.7)
    try:
        div, _ = rec.recommend(users, 10)
    finally:
        rec.params = params
    lists = lambda a: [r[r >= 0] for r in a]  # noqa: E731
    cat = rec.data.item_category
    assert intra_list_diversity(lists(div), cat).mean() >= intra_list_diversity(lists(base), cat).mean()


def test_params_round_trip_through_json_dict():
    import dataclasses
    import json

    from recsys.features.covisitation import CovisitationParams
    from recsys.features.interactions import InteractionParams
    from recsys.models.item_item import EASEParams, RP3betaParams
    from recsys.models.recall import PopularityParams, TrendingParams
    from recsys.models.two_stage import params_from_dict

    p = _params(train_windows=3, train_window_stride_days=2, train_users="buyers", diversity=0.4,
                interactions=InteractionParams(covisitation=CovisitationParams(max_lag=3)),
                trending=TrendingParams(per_category=True), popularity=PopularityParams(28, purchases_only=True),
                ease=EASEParams(l2=7.0, max_items=50), rp3beta=RP3betaParams(alpha=0.5), tune_baselines=False,
                tune_popularity=False, seen_items="drop", item_item_sources=("rp3beta", "ease"))
    assert p.item_item_sources == ("ease", "rp3beta")  # one order, whatever the caller's
    assert params_from_dict(json.loads(json.dumps(dataclasses.asdict(p)))) == p
    with pytest.raises(ValueError, match="item_item_sources"):
        _params(item_item_sources=("slim",))


def test_one_user_requests_match_the_batch_path(trained):
    """Serving asks about one user at a time through fast paths (CSR rows read directly, no scipy
    fancy indexing); training asks about thousands at once. Both must give the same candidates,
    features and ranker scores."""
    rec = trained[0]
    users = np.arange(min(rec.data.n_users, 25), dtype=np.int64)
    assert len(users) > 5
    for name in rec.sources:
        batch = rec.sources[name].candidates(users, rec.params.recall.budget(name))
        for u in users:
            one = rec.sources[name].candidates(np.array([u]), rec.params.recall.budget(name))
            mine = batch.users == u
            # the same scores (sorted: ties may be cut in another order), the same items above the cut
            np.testing.assert_allclose(np.sort(one.scores), np.sort(batch.scores[mine]), rtol=1e-4, atol=1e-6,
                                       err_msg=f"{name} user {u}")
            floor = one.scores.min(initial=np.inf)
            assert set(one.items[one.scores > floor + 1e-5]) == set(batch.items[mine][batch.scores[mine] > floor + 1e-5])
    table = rec.candidate_table(users)
    x_batch = rec.features(table)
    for u in users[:8]:
        rows = np.flatnonzero(table.users == u)
        one = type(table)(table.users[rows], table.items[rows], table.source_features[rows])
        np.testing.assert_allclose(rec.features(one), x_batch[rows], rtol=1e-4, atol=1e-5, err_msg=f"user {u}")


def test_recommend_in_user_blocks_gives_the_same_lists(trained, monkeypatch):
    import recsys.models.two_stage as two_stage

    rec = trained[0]
    users = np.r_[np.arange(rec.data.n_users, dtype=np.int64)[::-1], -1, 3]  # unordered, unknown, repeated
    whole_items, whole_scores = rec.recommend(users, 10)
    monkeypatch.setattr(two_stage, "RECOMMEND_BLOCK_USERS", 7)
    assert rec.data.n_users > 3 * 7
    items, scores = rec.recommend(users, 10)
    np.testing.assert_array_equal(items, whole_items)
    np.testing.assert_allclose(scores, whole_scores, rtol=1e-6)


def test_popularity_tuning_follows_what_new_buyers_buy():
    from recsys.models.recall import PopularityParams
    from recsys.models.two_stage_training import tune_popularity
    from tests.unit.conftest import make_events

    # last 7 days: item v is viewed a lot; over 28 days, item b is what people buy
    rows = [(f"o{j}", "v", S.VIEW, "2026-01-25 10:00") for j in range(60)]
    rows += [(f"o{j}", "b", S.PURCHASE, "2026-01-10 10:00") for j in range(5)]
    rows += [(f"o{j}", "c", S.PURCHASE, "2026-01-26 10:00") for j in range(2)]
    events = make_events(rows)
    catalog = pd.DataFrame({S.ITEM_ID: ["v", "b", "c"], S.TITLE: ["v", "b", "c"], S.CATEGORY: ["k"] * 3})
    from recsys.features.interactions import build_interaction_data

    data = build_interaction_data(events, catalog, pd.Timestamp("2026-01-28", tz="UTC"))
    labels = make_events([(f"new{j}", "b", S.PURCHASE, "2026-01-29 10:00") for j in range(40)])
    res = tune_popularity(data, labels, _params())
    assert res.params == PopularityParams(window_days=28, purchases_only=True)
    assert res.scores[0][0] == {"window_days": 7, "purchases_only": False}  # the configured one, tried first
    assert res.scores[0][1] < 0.7 < dict((tuple(p.values()), sc) for p, sc in res.scores)[(28, True)]


def test_seen_items_auto_drops_them_only_where_nobody_rebuys(small_world):
    from dataclasses import replace

    from recsys.features.interactions import build_interaction_data
    from recsys.models.two_stage import repeat_purchase_share, without_seen

    events, catalog = small_world
    split = temporal_split(events[S.TS].max(), SplitParams(label_days=5, test_days=5))
    data = build_interaction_data(events, catalog, split.train_end)
    labels = window(events, split.train_end, split.label_end)
    share = repeat_purchase_share(data, labels)
    assert 0 < share <= 1
    # the same window with every re-purchase removed: nobody re-buys, so auto drops seen items
    buys = labels[labels[S.EVENT_TYPE] == S.PURCHASE]
    u, i = data.users.index_of(buys[S.USER_ID].to_numpy(object)), data.items.index_of(buys[S.ITEM_ID].to_numpy(object))
    from recsys.features.csr_rows import csr_lookup

    rebuy = np.zeros(len(buys), bool)
    ok = (u >= 0) & (i >= 0)
    rebuy[ok] = csr_lookup(data.weighted, u[ok], i[ok]) > 0
    assert rebuy[ok].mean() == pytest.approx(share)
    fresh = labels.drop(buys.index[rebuy])
    assert repeat_purchase_share(data, fresh) == 0.0
    rec, _ = train_two_stage(pd.concat([events[events[S.TS] < split.train_end], fresh]), catalog,
                             split.train_end, split.label_end, _params(tune_baselines=False))
    assert rec.params.seen_items == "drop"
    users = np.arange(min(rec.data.n_users, 40))
    table = rec.candidate_table(users)
    assert len(table.users) and not (csr_lookup(rec.data.weighted, table.users, table.items) > 0).any()
    kept = TwoStageRecommender(rec.data, rec.sources, replace(rec.params, seen_items="keep"))
    full = kept.candidate_table(users)
    assert len(full.users) > len(table.users)
    assert len(without_seen(full, rec.data).users) == len(table.users)


def test_text_source_is_left_out_without_a_real_catalogue(small_world):
    events, catalog = small_world
    bare = catalog.assign(**{S.TITLE: catalog[S.ITEM_ID]})  # titles that are only the ids
    split = temporal_split(events[S.TS].max(), SplitParams(label_days=5, test_days=5))
    rec, _ = train_two_stage(events, bare, split.train_end, split.label_end,
                             _params(tune_baselines=False, tune_popularity=False))
    assert "text" not in rec.sources and "repeat" in rec.sources
    m = evaluate(rec, window(events, split.label_end, split.test_end), 10, curve_max_k=0).metrics
    assert "baseline.text.ndcg_at_10" not in m and "baseline.repeat.ndcg_at_10" in m
    assert not any(key.startswith("recall.text_") for key in m) and "test.ndcg_at_10" in m
    assert np.isnan(rec.features(rec.candidate_table(np.arange(5)))[:, rec.feature_names.index("m_text_sim")]).all()


def test_stacked_windows_share_the_rankers_user_budget(small_world, monkeypatch):
    """Two windows on small data add users; on data past `max_train_users` the ranker learns from as
    many users (so as many rows) as with one window: the default's second window costs no ranker time."""
    import recsys.models.two_stage as two_stage

    groups_seen: list[int] = []
    real = two_stage.train_ranker

    def spy(x, y, groups, x_val, y_val, groups_val, *rest, **kw):
        groups_seen.append(len(groups) + len(groups_val))
        return real(x, y, groups, x_val, y_val, groups_val, *rest, **kw)

    monkeypatch.setattr(two_stage, "train_ranker", spy)
    events, catalog = small_world
    split = temporal_split(events[S.TS].max(), SplitParams(label_days=5, test_days=5))
    quick = dict(tune_baselines=False, tune_popularity=False)
    for windows, cap in ((1, 10_000), (2, 10_000), (1, 30), (2, 30)):
        rec, _ = train_two_stage(events, catalog, split.train_end, split.label_end,
                                 _params(train_windows=windows, max_train_users=cap, **quick))
        assert rec.params.max_train_users == cap  # the saved settings are the configured ones
    one, two, one_capped, two_capped = groups_seen
    assert two > 1.5 * one  # uncapped: the earlier window's users join
    assert 20 <= one_capped <= 30 and 20 <= two_capped <= 30


# what every model saved before the item-item sources stored as its `feature_names`
OLD_FEATURE_NAMES = ([f"src_{n}_{k}" for n in ("als", "popular", "repeat", "covis", "trending", "text")
                      for k in ("score", "rank")] + ["src_count", *PAIR_FEATURES, "m_text_sim"])


@pytest.fixture(scope="module")
def old_style(small_world, tmp_path_factory):
    """A model without item-item sources, saved with the meta.json the code before them wrote."""
    import json

    events, catalog = small_world
    split = temporal_split(events[S.TS].max(), SplitParams(label_days=5, test_days=5))
    rec, _ = train_two_stage(events, catalog, split.train_end, split.label_end,
                             _params(train_windows=1, item_item_sources=()))
    directory = tmp_path_factory.mktemp("old") / "m"
    rec.save(directory)
    meta = json.loads((directory / "meta.json").read_text())
    del meta["params"]["item_item_sources"], meta["params"]["recall"]["ease"], meta["params"]["recall"]["rp3beta"]
    (directory / "meta.json").write_text(json.dumps(meta))
    return rec, directory


def test_a_model_saved_before_the_item_item_sources_loads_and_scores_the_same(old_style):
    from recsys.features.ranking_features import pair_features
    from recsys.models.session import build_serving_index, recommend_user

    rec, directory = old_style
    assert rec.feature_names == OLD_FEATURE_NAMES and rec.booster.num_feature() == len(OLD_FEATURE_NAMES)
    loaded = TwoStageRecommender.load(directory)
    assert loaded.feature_names == OLD_FEATURE_NAMES and loaded.params.item_item_sources == ()
    assert not {"ease", "rp3beta"} & set(loaded.sources)
    users = np.arange(min(loaded.data.n_users, 40))
    table = loaded.candidate_table(users)
    # the columns the code before the item-item sources built: its 13 source columns, pairs, text similarity
    old_x = np.hstack([table.source_features[:, :12], table.source_features[:, -1:],
                       pair_features(loaded.data, table.users, table.items),
                       loaded.sources["text"].score_pairs(table.users, table.items)[:, None]])
    np.testing.assert_array_equal(loaded.features(table), old_x)
    ids = loaded.data.users.ids[:8].tolist() + ["nobody"]
    before, after = rec.recommend_ids(ids, 10), loaded.recommend_ids(ids, 10)
    assert [r["items"] for r in after] == [r["items"] for r in before]
    np.testing.assert_allclose(np.concatenate([r["scores"] for r in after]),
                               np.concatenate([r["scores"] for r in before]), rtol=1e-6)
    index = build_serving_index(loaded)  # and per request, as the service serves it
    u = loaded.data.users.position(ids[0])
    served = recommend_user(loaded, index, u, 10, SessionParams(new_item_slots=0))
    assert loaded.data.items.ids[served.items].tolist() == before[0]["items"]


def test_load_refuses_columns_whose_source_is_not_fitted(old_style, tmp_path):
    import json
    import shutil

    _, directory = old_style
    broken = tmp_path / "m"
    shutil.copytree(directory, broken)
    meta = json.loads((broken / "meta.json").read_text())
    meta["feature_names"] = meta["feature_names"][:-1] + ["m_ease_score"]  # EASE was never fitted
    (broken / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="m_ease_score"):
        TwoStageRecommender.load(broken)


def test_the_cli_default_item_item_sources_are_the_models():
    import inspect

    from recsys.flows.cli import train

    default = inspect.signature(train).parameters["item_item_sources"].default.default
    assert tuple(n for n in default.split(",") if n != "none") == TwoStageParams().item_item_sources
