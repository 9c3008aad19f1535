import numpy as np
import pytest
import pandas as pd

from recsys.features import schema as S
from recsys.features.interactions import build_interaction_data
from recsys.features.ranking_features import PAIR_FEATURES, pair_features, pair_labels
from tests.unit.conftest import make_events

CUTOFF = pd.Timestamp("2026-01-10", tz="UTC")


def _catalog():
    return pd.DataFrame({S.ITEM_ID: ["a", "b", "c"], S.TITLE: ["x", "y", "z"], S.CATEGORY: ["k", "k", "m"],
                         S.PRICE: [1.0, 2.0, 3.0]})


def _before():
    return make_events([("u1", "a", S.VIEW, "2026-01-02 10:00"), ("u1", "a", S.PURCHASE, "2026-01-03 10:00"),
                        ("u2", "b", S.VIEW, "2026-01-09 23:59"), ("u2", "c", S.ADD_TO_CART, "2026-01-05 10:00")])


def test_features_never_read_events_at_or_after_the_cutoff():
    before = _before()
    after = make_events([("u1", "b", S.PURCHASE, "2026-01-10 00:00"), ("u2", "a", S.VIEW, "2026-01-11 10:00"),
                         ("u3", "c", S.PURCHASE, "2026-01-12 10:00")])
    d1 = build_interaction_data(before, _catalog(), CUTOFF)
    d2 = build_interaction_data(pd.concat([before, after], ignore_index=True), _catalog(), CUTOFF)
    users = np.repeat(d1.users.index_of(["u1", "u2"]), 3)
    items = np.tile(d1.items.index_of(["a", "b", "c"]), 2)
    np.testing.assert_array_equal(pair_features(d1, users, items), pair_features(d2, users, items))
    assert list(d2.users.ids) == list(d1.users.ids)  # u3 only exists after the cutoff
    assert (d1.covis != d2.covis).nnz == 0


def test_sources_and_model_features_never_read_events_at_or_after_the_cutoff():
    from recsys.models.recall import ALSParams
    from recsys.models.two_stage import SOURCE_NAMES, TwoStageParams, TwoStageRecommender, fit_sources

    before = _before()
    after = make_events([("u1", "b", S.PURCHASE, "2026-01-10 00:00"), ("u2", "a", S.VIEW, "2026-01-10 00:00"),
                         ("u1", "c", S.PURCHASE, "2026-01-12 10:00")])
    params = TwoStageParams(als=ALSParams(factors=2, iterations=2, device="cpu", num_threads=1))
    recs = []
    for events in (before, pd.concat([before, after], ignore_index=True)):
        d = build_interaction_data(events, _catalog(), CUTOFF)
        recs.append(TwoStageRecommender(d, fit_sources(d, params), params))
    users = recs[0].data.users.index_of(["u1", "u2"])
    t1, t2 = recs[0].candidate_table(users), recs[1].candidate_table(users)
    np.testing.assert_array_equal(t1.items, t2.items)
    np.testing.assert_array_equal(t1.source_features, t2.source_features)
    np.testing.assert_array_equal(recs[0].features(t1), recs[1].features(t2))
    assert set(SOURCE_NAMES) <= set(recs[0].sources)


def test_known_feature_values():
    d = build_interaction_data(_before(), _catalog(), CUTOFF)
    u1, a, c = d.users.position("u1"), d.items.position("a"), d.items.position("c")
    f = dict(zip(PAIR_FEATURES, pair_features(d, np.array([u1]), np.array([a]))[0]))
    assert f["ui_views"] == 1 and f["ui_purchases"] == 1 and f["ui_carts"] == 0
    assert f["ui_days_since"] == pytest.approx(6 + 14 / 24)  # last touch 2026-01-03 10:00, cutoff 01-10 00:00
    assert f["u_cat_share"] == pytest.approx(1.0)
    assert f["u_buys"] == pytest.approx(np.log1p(1)) and f["ui_buy_share"] == pytest.approx(1.0)
    assert f["i_buyers"] == pytest.approx(np.log1p(1))
    b = d.items.position("b")
    u2 = d.users.position("u2")
    covis = pair_features(d, np.array([u2, u1]), np.array([b, b]))[:, PAIR_FEATURES.index("ui_covis")]
    assert covis[0] > 0 and covis[1] == 0  # u2's c co-visits b (4.5 days apart); u1 only ever saw a
    hc = dict(zip(PAIR_FEATURES, pair_features(d, np.array([u2]), np.array([c]))[0]))
    assert hc["u_cat_entropy"] > 0  # u2 spread over categories k and m
    g = dict(zip(PAIR_FEATURES, pair_features(d, np.array([-1]), np.array([c]))[0]))
    assert g["ui_views"] == 0 and g["u_days_since_last"] == 999.0  # unknown user gets defaults


def test_graded_labels_take_the_strongest_event():
    d = build_interaction_data(_before(), _catalog(), CUTOFF)
    label = make_events([("u1", "b", S.VIEW, "2026-01-11 10:00"), ("u1", "b", S.PURCHASE, "2026-01-11 11:00"),
                         ("u2", "a", S.VIEW, "2026-01-12 10:00")])
    users = d.users.index_of(["u1", "u2", "u2"])
    items = d.items.index_of(["b", "a", "c"])
    assert pair_labels(label, d.users, d.items, users, items).tolist() == [3, 1, 0]


@pytest.mark.parametrize("block_users", [1, 2, 1000])
def test_history_scores_in_blocks_equal_the_full_product(monkeypatch, block_users):
    import scipy.sparse as sp

    import recsys.features.ranking_features as rf

    rng = np.random.default_rng(0)
    user_items = sp.random(9, 6, density=0.4, format="csr", random_state=1, dtype=np.float32)
    item_item = sp.random(6, 6, density=0.5, format="csr", random_state=2, dtype=np.float32)
    users, items = rng.integers(0, 9, 40), rng.integers(0, 6, 40)  # unsorted, repeated pairs
    monkeypatch.setattr(rf, "DENSE_BLOCK_CELLS", 6 * block_users)
    expected = (user_items @ item_item).toarray()[users, items]
    assert np.count_nonzero(expected) > 5
    np.testing.assert_allclose(rf.history_scores(user_items, item_item, users, items), expected, rtol=1e-6)


def test_covisitation_weights_by_hand():
    from recsys.features.covisitation import CovisitationParams, build_covisitation

    h = 3600.0
    # user 0: items 0, 1, 2 one hour apart (the last a purchase); user 1: 1, then 2 beyond the 7-day gap,
    # then 1 twice (1 with 1 is never a pair); user 2 (listed out of time order): 1 then 0
    user = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    item = np.array([0, 1, 2, 1, 2, 1, 1, 0, 1])
    ts = np.array([0, 1, 2, 0, 200, 201, 202, 30, 6]) * h
    weight = np.array([1.0, 1.0, 3.0, 1.0, 1.0, 1.0, 1.0, 2.0, 1.0])
    decay = lambda hours: 0.5 ** (hours / 24.0)  # noqa: E731
    m = build_covisitation(user, item, ts, weight, 3, CovisitationParams(normalise=False)).toarray()
    expected = np.zeros((3, 3))
    expected[0, 1] = 1.0 * decay(1) + 2.0 * decay(24)  # user 0, lag 1; user 2 (6h -> 30h)
    # user 0 (purchase weight); user 1: 2@200h with 1@201h (lag 1) and 1@202h (lag 2), never 1@0h (gap)
    expected[1, 2] = 3.0 * decay(1) + 1.0 * decay(1) + 1.0 * decay(2)
    expected[0, 2] = 3.0 * decay(2)  # user 0, lag 2
    expected += expected.T
    np.testing.assert_allclose(m, expected, rtol=1e-6)
    assert m.dtype == np.float32

    cosine = build_covisitation(user, item, ts, weight, 3, CovisitationParams()).toarray()
    mass = np.sqrt(expected.sum(axis=1))
    np.testing.assert_allclose(cosine, expected / np.outer(mass, mass), rtol=1e-6)
    short = build_covisitation(user, item, ts, weight, 3, CovisitationParams(normalise=False, max_lag=1)).toarray()
    assert short[0, 2] == 0 and short[0, 1] > 0


def test_covisitation_and_sums_reduced_in_row_parts_equal_the_whole_reduction():
    """The Dask path reduces the users x items sums and the co-visitation pairs in interleaved row parts (no
    worker holds a whole matrix): put back together they are the one-block results bit for bit."""
    import scipy.sparse as sp

    from recsys.features.covisitation import (CovisitationParams, covisitation_from_pairs, normalised_rows,
                                              pair_parts, row_mass, sum_pair_parts, symmetric_part, unstride_rows)
    from recsys.features.interactions import (build_interaction_data, combine_sums, interaction_sums, state_ids,
                                              state_maps, sums_from_parts, sums_parts)

    rng = np.random.default_rng(0)
    n, parts = 23, 4
    buckets = [sp.random(n, n, density=0.2, random_state=s, format="csr") * 3.7 for s in range(3)]
    expected = covisitation_from_pairs(sum(buckets[1:], buckets[0]), CovisitationParams())
    split = [pair_parts(b, parts) for b in buckets]
    sym = [symmetric_part(sum_pair_parts([s[p] for s in split])) for p in range(parts)]
    assert max(m.shape[0] for m in sym) == -(-n // parts)  # each part holds its rows only
    mass = unstride_rows([row_mass(m) for m in sym])
    got = unstride_rows([normalised_rows(m, np.arange(p, n, parts), mass) for p, m in enumerate(sym)])
    assert expected.nnz > 50
    for attr in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, attr), getattr(expected, attr))
    assert unstride_rows([np.arange(p, 10, 3) for p in range(3)]).tolist() == list(range(10))

    events = make_events([(f"u{rng.integers(10)}", f"i{rng.integers(8)}", str(rng.choice(["view", "add_to_cart",
                          "purchase"])), f"2026-01-{1 + rng.integers(20):02d} {rng.integers(24):02d}:00")
                          for _ in range(80)])
    cutoff = events[S.TS].max()
    catalog = pd.DataFrame({S.ITEM_ID: [f"i{k}" for k in range(8)], S.CATEGORY: "c", S.PRICE: 1.0})
    user_ids, item_ids = state_ids(events, cutoff)
    users, items = state_maps(catalog, [user_ids], [item_ids])
    halves = [events.iloc[: len(events) // 2], events.iloc[len(events) // 2:]]
    block_sums = [interaction_sums(h, users, items, cutoff, covisitation=False) for h in halves]
    whole = combine_sums(block_sums)
    split_sums = [sums_parts(s, 3) for s in block_sums]
    rebuilt = sums_from_parts([combine_sums([s[p] for s in split_sums]) for p in range(3)])
    assert split_sums[0][1].weighted.shape[0] < whole.weighted.shape[0] and len(split_sums[0][1].item_pop_all) == 0
    for name in ("weighted", "views", "recency"):
        assert (getattr(rebuilt, name) != getattr(whole, name)).nnz == 0, name
    for name in ("user_last_age", "user_type_counts", "item_pop_all", "item_first_age"):
        np.testing.assert_array_equal(getattr(rebuilt, name), getattr(whole, name), err_msg=name)
    assert build_interaction_data(events, catalog, cutoff).n_users == whole.weighted.shape[0] == 10
