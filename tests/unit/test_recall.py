import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.interactions import build_interaction_data
from recsys.models.recall import (ALSParams, ALSSource, CovisitationSource, ItemKNNSource, PopularitySource,
                           RepeatSource, TextSource, TrendingParams, TrendingSource)
from recsys.models.item_item import EASEParams, EASESource, RP3betaParams, RP3betaSource, tune_on_window
from recsys.models.two_stage import merge_candidates, mmr_rerank, top_k_by_group
from tests.unit.conftest import make_events

REF = pd.Timestamp("2026-01-10", tz="UTC")

SOURCES = {
    "als": lambda: ALSSource(ALSParams(factors=4, iterations=3, device="cpu")),
    "popular": PopularitySource,
    "repeat": RepeatSource,
    "covis": CovisitationSource,
    "trending": TrendingSource,
    "trending_per_category": lambda: TrendingSource(TrendingParams(per_category=True)),
    "text": TextSource,
    "itemknn": ItemKNNSource,
    "ease": lambda: EASESource(EASEParams(l2=1.0)),
    "rp3beta": RP3betaSource,
    "ease_few_items": lambda: EASESource(EASEParams(l2=1.0, max_items=5)),
}


def test_als_recovers_the_held_out_diagonal(checkerboard):
    events, catalog = checkerboard
    data = build_interaction_data(events, catalog, REF)
    als = ALSSource(ALSParams(factors=8, iterations=30, regularization=0.01, device="cpu")).fit(data)
    users = data.users.index_of([f"u{u}" for u in range(12)])
    ids, _ = als.model.recommend(users, data.weighted[users], N=1, filter_already_liked_items=True)
    got = data.items.ids[ids[:, 0]].tolist()
    expected = [f"i{(u // 6) * 6 + u % 6}" for u in range(12)]
    assert got == expected


@pytest.fixture
def recent_checkerboard(checkerboard):
    """The checkerboard plus a few events in the last week (so trending has something)."""
    events, catalog = checkerboard
    extra = make_events([(f"u{u}", f"i{(u // 6) * 6 + (u + 1) % 6}", S.PURCHASE, "2026-01-08 10:00")
                         for u in range(12)])
    return pd.concat([events, extra], ignore_index=True), catalog


class TestSourceContract:
    """What every candidate source promises: fit -> self; candidates(users, n) -> Candidates."""

    @pytest.fixture(params=sorted(SOURCES))
    def fitted(self, request, recent_checkerboard):
        events, catalog = recent_checkerboard
        data = build_interaction_data(events, catalog, REF)
        source = SOURCES[request.param]()
        assert source.fit(data) is source
        return source, data

    def test_shape_ranks_and_order(self, fitted):
        source, data = fitted
        users = np.arange(data.n_users)
        c = source.candidates(users, 4)
        assert len(c) > 0, source.name
        assert c.users.dtype == np.int64 and c.items.dtype == np.int64 and c.ranks.dtype == np.int32
        assert c.items.min() >= 0 and c.items.max() < data.n_items
        assert set(np.unique(c.users)) <= set(users.tolist())
        for u in np.unique(c.users):
            mine = c.users == u
            assert mine.sum() <= 4
            assert len(np.unique(c.items[mine])) == mine.sum()  # no duplicate item per user
            assert sorted(c.ranks[mine].tolist()) == list(range(1, mine.sum() + 1))
            assert np.all(np.diff(c.scores[mine][np.argsort(c.ranks[mine])]) <= 1e-6)  # best first
            assert np.all(np.isfinite(c.scores[mine]))

    def test_empty_and_unknown_users(self, fitted):
        source, data = fitted
        assert len(source.candidates(np.zeros(0, dtype=np.int64), 4)) == 0
        c = source.candidates(np.array([-1]), 4)  # unknown user: nothing, or the same list for all
        assert np.all(c.items >= 0)

    def test_one_user_matches_the_batch(self, fitted):
        source, data = fitted
        batch = source.candidates(np.arange(data.n_users), 3)
        one = source.candidates(np.array([2]), 3)
        mine = batch.users == 2
        np.testing.assert_array_equal(one.items, batch.items[mine])


def test_covisitation_proposes_what_others_bought_with_my_items():
    events = make_events([("a", "x", S.PURCHASE, "2026-01-02 10:00"), ("a", "y", S.PURCHASE, "2026-01-02 10:05"),
                          ("b", "x", S.PURCHASE, "2026-01-03 10:00"), ("b", "z", S.VIEW, "2026-01-09 10:00"),
                          ("c", "x", S.VIEW, "2026-01-04 10:00")])
    catalog = pd.DataFrame({S.ITEM_ID: ["x", "y", "z"], S.TITLE: ["x", "y", "z"], S.CATEGORY: ["k"] * 3})
    data = build_interaction_data(events, catalog, REF)
    c = CovisitationSource().fit(data).candidates(data.users.index_of(["c"]), 5)
    got = data.items.ids[c.items].tolist()
    # y co-visited with x within minutes; z six days after x (decayed) -> y first
    assert got == ["y", "z"]



def test_covisitation_in_user_blocks_gives_the_same_candidates():
    events = make_events([(u, it, S.VIEW, f"2026-01-0{d} 1{h}:00") for u, d in (("a", 2), ("b", 3), ("c", 4), ("d", 5))
                          for h, it in enumerate(("x", "y", "z", "w")) if (u, it) != ("d", "w")])
    catalog = pd.DataFrame({S.ITEM_ID: ["x", "y", "z", "w"], S.TITLE: list("xyzw"), S.CATEGORY: ["k"] * 4})
    data = build_interaction_data(events, catalog, REF)
    users = np.arange(data.n_users)
    whole = CovisitationSource().fit(data).candidates(users, 3)
    blocks = CovisitationSource(block_cells=data.n_items).fit(data)  # one user per block
    assert blocks.block_cells // data.n_items == 1
    chunked = blocks.candidates(users, 3)
    assert len(whole) == len(chunked) > data.n_users
    for f in ("users", "items", "scores", "ranks"):
        np.testing.assert_array_equal(getattr(whole, f), getattr(chunked, f))

def test_text_source_reaches_items_nobody_touched():
    events = make_events([("a", "x", S.PURCHASE, "2026-01-02 10:00")])
    catalog = pd.DataFrame({S.ITEM_ID: ["x", "new", "other"],
                            S.TITLE: ["red wooden chess set", "wooden chess board", "blue kettle"],
                            S.CATEGORY: ["games", "games", "kitchen"]})
    data = build_interaction_data(events, catalog, REF)
    src = TextSource().fit(data)
    c = src.candidates(np.array([0]), 3)
    assert data.items.ids[c.items[c.items != data.items.position("x")][0]] == "new"
    sims = src.score_pairs(np.array([0, 0, -1]), data.items.index_of(["new", "other", "new"]))
    assert sims[0] > sims[1] >= 0 and sims[2] == 0


def test_merge_keeps_every_source_rank_and_counts_sources():
    from recsys.models.recall import Candidates

    a = Candidates(np.array([0, 0]), np.array([5, 6]), np.array([0.9, 0.8], np.float32), np.array([1, 2], np.int32))
    b = Candidates(np.array([0, -1]), np.array([6, 7]), np.array([3.0, 2.0], np.float32), np.array([1, 1], np.int32))
    t = merge_candidates({"als": a, "popular": b}, n_items=10)
    rows = {(u, i): f for u, i, f in zip(t.users.tolist(), t.items.tolist(), t.source_features)}
    assert set(rows) == {(0, 5), (0, 6), (-1, 7)}
    assert rows[(0, 6)][1] == 2 and rows[(0, 6)][3] == 1 and rows[(0, 6)][-1] == 2  # als rank, pop rank, count
    assert np.isnan(rows[(0, 5)][2]) and rows[(0, 5)][-1] == 1


def test_top_k_by_group_orders_by_score():
    items, scores = top_k_by_group(np.array([1, 1, 1, 3]), np.array([10, 11, 12, 13]),
                                   np.array([0.1, 0.9, 0.5, 0.2]), 2, np.array([1, 2, 3]))
    assert items.tolist() == [[11, 12], [-1, -1], [13, -1]]


def test_mmr_trades_score_for_new_categories():
    cat = np.array([0, 0, 0, 1])
    items = np.array([[0, 1, 2, 3]])
    scores = np.array([[1.0, 0.9, 0.8, 0.1]], dtype=np.float32)
    assert mmr_rerank(items, scores, cat, 3, 0.0)[0].tolist() == [[0, 1, 2]]
    assert mmr_rerank(items, scores, cat, 3, 0.5)[0].tolist() == [[0, 3, 1]]


@pytest.mark.parametrize("source", [EASESource(EASEParams(l2=0.5)), RP3betaSource(RP3betaParams(beta=0.0)),
                                    EASESource(EASEParams(l2=0.5), block_cells=12)])
def test_item_item_sources_recover_the_held_out_diagonal(checkerboard, source):
    events, catalog = checkerboard
    data = build_interaction_data(events, catalog, REF)
    users = data.users.index_of([f"u{u}" for u in range(12)])
    c = source.fit(data).candidates(users, 6)
    for u in range(12):
        mine = c.items[(c.users == users[u])]
        own = {data.items.position(f"i{i}") for i in range(6 * (u // 6), 6 * (u // 6) + 6)}
        held_out = data.items.position(f"i{(u // 6) * 6 + u % 6}")
        # the first five are the user's own group; the unseen one of them scores highest
        assert set(mine[:5].tolist()) <= own and held_out in mine[:5].tolist()
        assert mine[0] == held_out, (u, mine)


def test_ease_keeps_only_the_most_active_items():
    events = make_events([(u, it, S.PURCHASE, "2026-01-02 10:00")
                          for u, its in (("a", "xy"), ("b", "xy"), ("c", "xz"), ("d", "x")) for it in its])
    catalog = pd.DataFrame({S.ITEM_ID: ["x", "y", "z"], S.TITLE: ["x", "y", "z"], S.CATEGORY: ["k"] * 3})
    data = build_interaction_data(events, catalog, REF)
    src = EASESource(EASEParams(l2=0.1, max_items=2)).fit(data)
    assert data.items.ids[src._active].tolist() == ["x", "y"]  # z, touched once, is out
    c = src.candidates(data.users.index_of(["d"]), 3)
    assert data.items.ids[c.items].tolist() == ["y"]


def test_rp3beta_penalises_popular_items_with_beta():
    # user q touched a; a is co-bought with the popular p (4 users) and the rare r (1 user, also a)
    rows = [("q", "a")] + [(f"u{j}", "p") for j in range(3)] + [("v", "a"), ("v", "p"), ("w", "a"), ("w", "r")]
    events = make_events([(u, it, S.PURCHASE, "2026-01-02 10:00") for u, it in rows])
    catalog = pd.DataFrame({S.ITEM_ID: ["a", "p", "r"], S.TITLE: ["a", "p", "r"], S.CATEGORY: ["k"] * 3})
    data = build_interaction_data(events, catalog, REF)
    user = data.users.index_of(["q"])
    plain = RP3betaSource(RP3betaParams(alpha=1.0, beta=0.0)).fit(data).candidates(user, 2)
    penal = RP3betaSource(RP3betaParams(alpha=1.0, beta=1.0)).fit(data).candidates(user, 2)
    # a -> v -> p and a -> w -> r are equally likely walks; beta divides p's weight by its degree 4
    assert np.isclose(plain.scores[0], plain.scores[1])
    assert data.items.ids[penal.items].tolist() == ["r", "p"]
    assert np.isclose(penal.scores[0] / penal.scores[1], 4.0)


def test_tuning_picks_the_grid_point_that_scores_best_on_the_label_window(checkerboard):
    events, catalog = checkerboard
    data = build_interaction_data(events, catalog, REF)
    # the label window: each user buys their held-out item
    labels = make_events([(f"u{u}", f"i{(u // 6) * 6 + u % 6}", S.PURCHASE, "2026-01-11 10:00") for u in range(12)])
    res = tune_on_window("ease", data, labels, grid=({"l2": 0.5}, {"l2": 1e6}), k=1)
    scores = dict((p["l2"], s) for p, s in res.scores)
    assert scores[0.5] == 1.0 and res.params.l2 == 0.5
    res = tune_on_window("rp3beta", data, labels, grid=({"beta": 0.0}, {"beta": 0.5}), k=1)
    assert res.scores[0][1] == 1.0 and res.params.beta == 0.0  # a tie keeps the first point


def test_rp3beta_grid_shares_one_walk_and_matches_separate_fits(recent_checkerboard):
    events, catalog = recent_checkerboard
    data = build_interaction_data(events, catalog, REF)
    points = [RP3betaParams(alpha=a, beta=b, neighbours=4) for a in (0.5, 1.0) for b in (0.0, 0.7)]
    many = RP3betaSource.fit_many(data, points, block_cells=24)  # 2 item rows per block
    users = np.arange(data.n_users)
    for p, src in zip(points, many):
        alone = RP3betaSource(p).fit(data)
        np.testing.assert_allclose(src._weights.toarray(), alone._weights.toarray(), rtol=1e-5)
        np.testing.assert_array_equal(src.candidates(users, 3).items, alone.candidates(users, 3).items)
    with pytest.raises(ValueError, match="one max_items"):
        RP3betaSource.fit_many(data, [RP3betaParams(max_items=3), RP3betaParams()])
