import numpy as np
import pandas as pd

from features.interactions import build_interaction_data
from models.recall import ALSParams, ALSSource, PopularitySource, RepeatSource
from models.two_stage import merge_candidates, top_k_by_group

REF = pd.Timestamp("2026-01-10", tz="UTC")


def test_als_recovers_the_held_out_diagonal(checkerboard):
    events, catalog = checkerboard
    data = build_interaction_data(events, catalog, REF)
    als = ALSSource(ALSParams(factors=8, iterations=30, regularization=0.01, device="cpu")).fit(data)
    users = data.users.index_of([f"u{u}" for u in range(12)])
    ids, _ = als.model.recommend(users, data.weighted[users], N=1, filter_already_liked_items=True)
    got = data.items.ids[ids[:, 0]].tolist()
    expected = [f"i{(u // 6) * 6 + u % 6}" for u in range(12)]
    assert got == expected


def test_every_source_honours_the_contract(checkerboard):
    events, catalog = checkerboard
    data = build_interaction_data(events, catalog, REF)
    users = np.arange(data.n_users)
    for source in (ALSSource(ALSParams(factors=4, iterations=3, device="cpu")), PopularitySource(), RepeatSource()):
        c = source.fit(data).candidates(users, 4)
        assert len(c) > 0, source.name
        assert c.items.min() >= 0 and c.items.max() < data.n_items
        for u in np.unique(c.users):
            mine = c.users == u
            assert mine.sum() <= 4
            assert sorted(c.ranks[mine].tolist()) == list(range(1, mine.sum() + 1))
            assert np.all(np.diff(c.scores[mine][np.argsort(c.ranks[mine])]) <= 1e-6)  # best first


def test_merge_keeps_every_source_rank_and_counts_sources():
    from models.recall import Candidates

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
