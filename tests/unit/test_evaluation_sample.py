import pandas as pd

from recsys.features import schema as S
from recsys.models.evaluation import EvaluationParams, evaluation_truth, relevant_items


def _test_window(n_users: int) -> pd.DataFrame:
    users = [f"u{i:05d}" for i in range(n_users) for _ in range(2)]
    return pd.DataFrame({S.USER_ID: users, S.ITEM_ID: [f"i{i % 7}" for i in range(2 * n_users)],
                         S.EVENT_TYPE: [S.PURCHASE, "view"] * n_users})


def test_the_sample_is_a_seeded_sorted_subset_of_the_window_buyers():
    test = _test_window(500)
    full = relevant_items(test)
    truth, n_window = evaluation_truth(test, EvaluationParams(max_users=120, seed=3))
    assert n_window == 500 and len(truth) == 120
    assert truth.index.is_monotonic_increasing and set(truth.index) <= set(full.index)
    assert all(truth[u] == full[u] for u in truth.index)  # each sampled user keeps all of their items
    again, _ = evaluation_truth(test, EvaluationParams(max_users=120, seed=3))
    other, _ = evaluation_truth(test, EvaluationParams(max_users=120, seed=4))
    assert list(again.index) == list(truth.index)  # the same window gives the same users run after run
    assert list(other.index) != list(truth.index)


def test_windows_within_the_cap_are_scored_whole():
    test = _test_window(50)
    for params in (EvaluationParams(max_users=50), EvaluationParams(max_users=None)):
        truth, n_window = evaluation_truth(test, params)
        assert n_window == 50 and list(truth.index) == list(relevant_items(test).index)
