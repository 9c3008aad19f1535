"""Search: BM25 lexical retrieval (stems, typos), search sessions, the learned personalised ranker,
its persistence with the recommender, the semantic path (skipped without the extra) and the gate's
search guardrail."""

import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.interactions import build_interaction_data
from recsys.features.split import SplitParams, temporal_split
from recsys.features.synthetic import SyntheticParams, SyntheticWorld
from recsys.models.gate import GateParams, GuardrailMeasures, check_guardrails
from recsys.models.lexical import LexicalIndex
from recsys.models.search_ranker import (SearchModel, SearchRankerParams, build_search_model, evaluate_search,
                                  ranked_metrics, search_sessions, train_search_model)
from recsys.models.semantic import load_encoder, why_not

TITLES = ["classic leather bag", "red canvas backpack", "grey fabric couch", "modern desk lamp",
          "wooden kitchen table", "blue denim jeans"]
CATS = ["bags", "bags", "furniture", "lighting", "furniture", "bottoms"]
BRANDS = ["acme", "northface", "ikea", "philips", "ikea", "levis"]


@pytest.fixture(scope="module")
def lexical():
    return LexicalIndex.fit(TITLES, CATS, BRANDS)


def top_items(ix: LexicalIndex, query: str, n: int = 3) -> list[int]:
    s = ix.scores(ix.term_ids(query))
    return [int(i) for i in np.argsort(-s, kind="stable")[:n] if s[i] > 0]


@pytest.mark.parametrize("query", ["bag", "bags", "Bags!", "lamps", "lamp"])
def test_plural_and_singular_find_the_same_items(lexical, query):
    want = {"bag": 0, "bags": 0, "Bags!": 0, "lamps": 3, "lamp": 3}[query]
    assert top_items(lexical, query)[0] == want


def test_bag_and_bags_score_identically(lexical):
    np.testing.assert_array_equal(lexical.scores(lexical.term_ids("bag")), lexical.scores(lexical.term_ids("bags")))
    assert set(top_items(lexical, "bag", 6)) == {0, 1}  # the title word and the category "bags"


@pytest.mark.parametrize("typo,want", [("bakpack", 1), ("cuoch", 2), ("jeens", 5), ("kichen tabel", 4)])
def test_a_typo_finds_the_right_item(lexical, typo, want):
    assert top_items(lexical, typo)[0] == want


def test_the_encoder_reads_the_corrected_query(lexical):
    # a typo embeds as another word: the query embedding is taken of the corrected words; words no catalogue
    # word is close to (a "sofa" for a catalogue of couches) stay as typed for the encoder to understand
    assert lexical.corrected("kichen tabel") == "kitchen table"
    assert lexical.corrected("Bakpack for a sofa") == "backpack sofa"
    assert lexical.corrected("red lamp") == "red lamp"


def test_short_words_and_unknown_words_are_not_guessed(lexical):
    assert len(lexical.term_ids("xq")) == 0  # under 4 letters: no correction
    assert len(lexical.term_ids("zzzzzzzz")) == 0
    assert top_items(lexical, "zzzzzzzz") == []


def test_field_matches_and_brand(lexical):
    ids = lexical.term_ids("ikea couch")
    m = lexical.field_matches(ids, np.array([2, 4, 0]))
    np.testing.assert_allclose(m, [[0.5, 0.0, 0.5], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]])


def test_lexical_index_round_trip(lexical, tmp_path):
    lexical.save(tmp_path)
    back = LexicalIndex.load(tmp_path)
    for q in ("bags", "bakpack", "ikea couch"):
        np.testing.assert_array_equal(back.scores(back.term_ids(q)), lexical.scores(lexical.term_ids(q)))


def test_search_sessions_label_items_after_each_search():
    ts = pd.Timestamp("2026-01-05 10:00", tz="UTC")
    rows = [  # user, item, type, seconds, session, query
        ("u1", None, S.SEARCH, 0, "s1", "lamp"), ("u1", "i1", S.VIEW, 0, "s1", None),
        ("u1", "i2", S.VIEW, 10, "s1", None), ("u1", "i2", S.ADD_TO_CART, 20, "s1", None),
        ("u1", None, S.SEARCH, 30, "s1", "bag"), ("u1", "i3", S.PURCHASE, 40, "s1", None),
        ("u2", "i9", S.VIEW, 0, "s2", None),  # a session without a search: no label
        ("u3", "i4", S.VIEW, 0, "s3", None), ("u3", None, S.SEARCH, 5, "s3", "tent"),  # a view before the search
    ]
    ev = pd.DataFrame(rows, columns=[S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, "sec", S.SESSION_ID, S.QUERY])
    ev[S.TS] = ts + pd.to_timedelta(ev.pop("sec"), unit="s")
    out = search_sessions(ev.sample(frac=1.0, random_state=3))  # order of the rows does not matter
    assert out.searches[S.QUERY].tolist() == ["lamp", "bag", "tent"]
    got = {(int(s), i, int(g)) for s, i, g in out.labels.itertuples(index=False)}
    assert got == {(0, "i1", 1), (0, "i2", 2), (1, "i3", 3)}


def test_ranked_metrics_by_hand():
    m = ranked_metrics([np.array([5, 7, 9]), np.array([1, 2])], [{7: 3}, {4: 1}], k=10,
                       label_gain=(0.0, 1.0, 3.0, 7.0))
    np.testing.assert_allclose(m["ndcg_at_10"], [1.0 / np.log2(3), 0.0])
    np.testing.assert_allclose(m["mrr"], [0.5, 0.0])


# ---- the learned ranker on a small synthetic world -----------------------------------------------
@pytest.fixture(scope="module")
def world():
    w = SyntheticWorld(SyntheticParams(n_users=1200, n_items=500, n_days=35, seed=7))
    catalog = w.catalog()
    events = pd.concat([d for _, d in w.iter_days()], ignore_index=True)
    split = temporal_split(events[S.TS].max(), SplitParams())
    data_train = build_interaction_data(events, catalog, split.train_end)
    data_final = build_interaction_data(events, catalog, split.label_end)
    model, result = train_search_model(events, catalog, data_train, data_final, split.train_end, split.label_end,
                                       SearchRankerParams())
    test = search_sessions(events).between(split.label_end, split.test_end)
    return w, catalog, events, split, data_final, model, result, test


def test_learned_ranker_beats_bm25_on_later_searches(world):
    _, _, _, _, data, model, result, test = world
    assert result is not None and model.booster is not None
    learned = evaluate_search(lambda u, q: model.rank(data, u, q)[0], data, test)
    bm25 = evaluate_search(lambda u, q: model.retrieve(q).items, data, test)
    assert len(learned["ndcg_at_10"]) > 100
    assert learned["ndcg_at_10"].mean() > 1.15 * bm25["ndcg_at_10"].mean()
    assert learned["mrr"].mean() > bm25["mrr"].mean()


def test_the_same_query_ranks_differently_for_different_shoppers(world):
    w, _, _, _, data, model, _, _ = world
    noun = w.item_title[0].split()[-1]
    users = [u for u in range(data.n_users)][:200]
    orders = {tuple(model.rank(data, u, noun)[0][:5].tolist()) for u in users}
    assert len(orders) > 10
    # a cheap-taste and a premium-taste shopper: the price level of their top results follows their own
    ids = data.users.ids
    level = {ids[u]: w.user_level[int(str(ids[u])[1:])] for u in range(data.n_users)}
    cheap = [u for u in range(data.n_users) if level[ids[u]] == 0][:60]
    dear = [u for u in range(data.n_users) if level[ids[u]] == 2][:60]

    def mean_level(us):
        return np.mean([w.item_level[int(str(data.items.ids[i])[1:])]
                        for u in us for i in model.rank(data, u, noun)[0][:3]])
    assert mean_level(cheap) < mean_level(dear)


def test_search_model_travels_with_the_recommender(world, tmp_path):
    _, _, _, _, data, model, _, test = world
    model.save(tmp_path / "search")
    back = SearchModel.load(tmp_path / "search")
    for q in test.searches[S.QUERY].head(20):
        np.testing.assert_array_equal(back.rank(data, 3, q)[0], model.rank(data, 3, q)[0])
    assert back.describe()["ranker"] == "lambdarank"


def test_no_searches_to_learn_from_keeps_the_unlearned_order(world):
    w, catalog, events, split, data, _, _, _ = world
    plain = events.loc[events[S.EVENT_TYPE] != S.SEARCH]
    model, result = train_search_model(plain, catalog, data, data, split.train_end, split.label_end,
                                       SearchRankerParams())
    assert result is None and model.booster is None
    q = w.item_title[0].split()[-1]
    np.testing.assert_array_equal(model.rank(data, 0, q)[0], model.retrieve(q).items)


# ---- semantic ---------------------------------------------------------------------------------
@pytest.mark.skipif(why_not() is not None, reason=f"semantic extra: {why_not()}")
def test_a_word_absent_from_every_title_but_close_in_meaning_finds_the_item():
    titles = ["grey fabric couch", "oak dining table", "steel desk lamp", "leather office chair"]
    cats = ["furniture", "furniture", "lighting", "furniture"]
    data = _TinyData(titles, cats)
    model = build_search_model(data, pd.DataFrame({S.ITEM_ID: data.items.ids}), search_sessions(_no_events()),
                               SearchRankerParams(), encoder=load_encoder())
    assert len(model.lexical.term_ids("sofa")) == 0  # no lexical match at all
    assert model.describe()["semantic"] == "on"
    assert model.rank(data, -1, "sofa")[0][0] == 0
    import pickle

    back = pickle.loads(pickle.dumps(model))  # the torch model is not pickled, but reloaded
    assert back.describe()["semantic"] == "on" and back.rank(data, -1, "sofa")[0][0] == 0


def _no_events() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in S.EVENT_COLUMNS}).assign(
        **{S.TS: pd.Series(dtype="datetime64[us, UTC]")})


class _TinyData:
    """The attributes of InteractionData that build_search_model and rank (without a ranker) read."""

    def __init__(self, titles, cats):
        from recsys.features.interactions import IdIndex

        self.item_titles = np.array(titles, dtype=object)
        self.n_items = len(titles)
        self.categories = np.array(sorted(set(cats)), dtype=object)
        self.item_category = np.searchsorted(self.categories, np.array(cats, dtype=object))
        self.items = IdIndex(np.array([f"i{i}" for i in range(len(titles))], dtype=object))


# ---- gate ---------------------------------------------------------------------------------------
def test_gate_vetoes_a_drop_in_search_quality():
    p = GateParams()
    champ = GuardrailMeasures(0.5, None, 10.0, search_ndcg=0.50)
    worse = GuardrailMeasures(0.5, None, 10.0, search_ndcg=0.45)
    same = GuardrailMeasures(0.5, None, 10.0, search_ndcg=0.49)
    g = {r.name: r for r in check_guardrails(worse, champ, p)}["search_ndcg"]
    assert not g.passed and "drop +0.0500" in g.detail
    assert {r.name: r for r in check_guardrails(same, champ, p)}["search_ndcg"].passed
    none = GuardrailMeasures(0.5, None, 10.0)  # no searches in the window: not checked
    assert "search_ndcg" not in {r.name for r in check_guardrails(none, champ, p)}
    assert "search_ndcg" not in {r.name for r in check_guardrails(worse, champ, GateParams(max_search_ndcg_drop=None))}


def test_search_model_pickles_for_the_result_cache(world):
    """Prefect persists the trained recommender (with its search model) by pickle."""
    import pickle

    _, _, _, _, data, model, _, test = world
    back = pickle.loads(pickle.dumps(model))
    for q in test.searches[S.QUERY].head(10):
        np.testing.assert_array_equal(back.rank(data, 5, q)[0], model.rank(data, 5, q)[0])
    assert back.lexical.term_ids("bakpack").tolist() == model.lexical.term_ids("bakpack").tolist()


def test_the_search_ranker_learns_from_at_most_max_train_searches(world, monkeypatch):
    """At scale the label window holds far more searches than the ranker needs: a seeded sample of
    `max_train_searches` is retrieved and learned from (train + validation), every search when None."""
    import dataclasses

    from recsys.models import search_ranker as sr

    _, catalog, events, split, _, model, _, _ = world
    data_train = build_interaction_data(events, catalog, split.train_end)
    window = search_sessions(events).between(split.train_end, split.label_end)
    seen = []
    real = sr.ranking_groups
    monkeypatch.setattr(sr, "ranking_groups", lambda m, d, s: seen.append(len(s)) or real(m, d, s))
    params = model.params
    model.params = dataclasses.replace(params, max_train_searches=60)
    try:
        assert sr.fit_search_ranker(model, data_train, window) is not None
    finally:
        model.params = params
    assert sum(seen) == 60 < len(window)
    seen.clear()
    model.params = dataclasses.replace(params, max_train_searches=None)
    try:
        sr.fit_search_ranker(model, data_train, window)
    finally:
        model.params = params
    assert sum(seen) == len(window)
