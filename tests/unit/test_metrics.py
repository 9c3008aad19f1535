import math

import numpy as np
import pytest

from recsys.models.metrics import catalog_coverage, hit_matrix, per_user_metrics, summarize


def test_hand_computed_values():
    # user A: relevant {a, c}; list a, b, c -> hits at ranks 1 and 3
    # user B: relevant {z}; list x, y, w -> no hit
    m = per_user_metrics([["a", "b", "c"], ["x", "y", "w"]], [{"a", "c"}, {"z"}], k=3)
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg_at_3"][0] == pytest.approx(dcg / idcg)
    assert m["map_at_3"][0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m["recall_at_3"][0] == pytest.approx(1.0)
    assert m["hitrate_at_3"][0] == 1.0
    assert m["mrr_at_3"][0] == 1.0
    assert all(m[name][1] == 0.0 for name in m)
    assert summarize(m)["hitrate_at_3"] == pytest.approx(0.5)


def test_map_is_normalised_by_min_k_and_relevant():
    # 5 relevant items, k=2, both hits -> AP = 1 (not 2/5)
    m = per_user_metrics([["a", "b"]], [{"a", "b", "c", "d", "e"}], k=2)
    assert m["map_at_2"][0] == pytest.approx(1.0)
    assert m["recall_at_2"][0] == pytest.approx(2 / 5)
    assert m["ndcg_at_2"][0] == pytest.approx(1.0)


def test_mrr_uses_first_hit_and_k_truncates():
    m = per_user_metrics([["x", "y", "a", "b"]], [{"a", "b"}], k=3)
    assert m["mrr_at_3"][0] == pytest.approx(1 / 3)
    assert hit_matrix([["x", "y", "a", "b"]], [{"a", "b"}], 3).tolist() == [[False, False, True]]


def test_coverage():
    assert catalog_coverage([["a", "b"], ["b", "c"]], n_items=6) == pytest.approx(0.5)
    assert np.isclose(catalog_coverage([], n_items=6), 0.0)


def test_novelty_hand_computed():
    from recsys.models.metrics import novelty

    share = np.array([0.5, 0.25, 0.0])  # item 2 never touched -> floor 1/8
    got = novelty([[0, 1], [2], []], share, n_users=8)
    assert got[0] == pytest.approx((1 + 2) / 2)  # -log2(.5) = 1, -log2(.25) = 2
    assert got[1] == pytest.approx(3.0)  # -log2(1/8)
    assert got[2] == 0.0


def test_intra_list_diversity_hand_computed():
    from recsys.models.metrics import intra_list_diversity

    cat = np.array([0, 0, 1, 2])
    got = intra_list_diversity([[0, 1, 2], [0, 1], [0, 2, 3], [3]], cat)
    # [0,1,2]: pairs (0,1) same, (0,2) (1,2) differ -> 2/3 ; [0,1]: 0 ; all differ: 1 ; single: 0
    assert got.tolist() == pytest.approx([2 / 3, 0.0, 1.0, 0.0])
