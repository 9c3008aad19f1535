import numpy as np
import pytest

from recsys.models.ranker import MAX_GROUP_SIZE, RankerParams, check_groups, train_ranker


def test_oversized_group_and_bad_label_get_clear_errors():
    with pytest.raises(ValueError, match="at most 10000"):
        check_groups(np.zeros(MAX_GROUP_SIZE + 1, int), np.array([MAX_GROUP_SIZE + 1]), (0, 1))
    with pytest.raises(ValueError, match="label_gain"):
        check_groups(np.array([0, 5]), np.array([2]), (0, 1, 3))


def test_ranker_learns_a_planted_signal_and_returns_history():
    rng = np.random.default_rng(0)
    n_groups, size = 300, 20
    x = rng.normal(size=(n_groups * size, 3))
    y = (x[:, 0] > 1.0).astype(int) + (x[:, 0] > 1.8).astype(int)
    groups = np.full(n_groups, size)
    res = train_ranker(x[:4000], y[:4000], groups[:200], x[4000:], y[4000:], groups[200:], ["f0", "f1", "f2"],
                       RankerParams(n_estimators=50, early_stopping_rounds=10, min_child_samples=5))
    gains = res.booster.feature_importance("gain")
    assert gains[0] > 10 * max(gains[1], gains[2])
    curve = res.history["valid.ndcg_at_10"]
    assert len(curve) >= res.best_iteration and max(curve) > 0.9
