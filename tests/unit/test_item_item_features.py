"""EASE and RP3beta as pair features (`m_ease_score`, `m_rp3beta_score`) on tiny known cases."""

import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.features.interactions import build_interaction_data
from recsys.models.item_item import EASEParams, EASESource, RP3betaParams, RP3betaSource
from tests.unit.conftest import make_events

REF = pd.Timestamp("2026-01-10", tz="UTC")


def tiny():
    """Four users, four touched items (i0..i3) and one item nobody touched (i4)."""
    rows = [("a", "i0"), ("a", "i1"), ("b", "i1"), ("b", "i2"), ("c", "i0"), ("c", "i2"), ("c", "i3"), ("d", "i3")]
    events = make_events([(u, i, S.VIEW, "2026-01-05 10:00") for u, i in rows])
    catalog = pd.DataFrame({S.ITEM_ID: [f"i{i}" for i in range(5)], S.TITLE: [f"t{i}" for i in range(5)],
                            S.CATEGORY: ["x"] * 5, S.PRICE: np.ones(5)})
    return build_interaction_data(events, catalog, REF)


def test_ease_pair_score_is_the_history_row_times_the_closed_form_weights():
    data = tiny()
    src = EASESource(EASEParams(l2=0.5, history="binary")).fit(data)
    items = data.items.index_of([f"i{i}" for i in range(4)])
    x = np.zeros((data.n_users, 4))
    for u, i in [("a", 0), ("a", 1), ("b", 1), ("b", 2), ("c", 0), ("c", 2), ("c", 3), ("d", 3)]:
        x[data.users.position(u), i] = 1.0
    p = np.linalg.inv(x.T @ x + 0.5 * np.eye(4))  # Steck 2019, by hand
    b = np.eye(4) - p / np.diag(p)
    expected = x @ b
    users = np.repeat(np.arange(data.n_users), 4)
    got = src.score_pairs(users, np.tile(items, data.n_users))
    np.testing.assert_allclose(got.reshape(data.n_users, 4), expected, rtol=1e-4, atol=1e-5)
    # one user at a time (the per-request path) gives the same floats
    a = data.users.position("a")
    np.testing.assert_array_equal(src.score_pairs(np.full(4, a), items), got[a * 4:(a + 1) * 4])
    # no weights for an item nobody touched, nothing for an unknown user
    new = data.items.position("i4")
    assert np.isnan(src.score_pairs(np.array([a, -1]), np.array([new, items[0]]))).all()


def test_rp3beta_pair_score_is_the_history_row_times_the_walk_weights():
    data = tiny()
    src = RP3betaSource(RP3betaParams(alpha=1.0, beta=0.5, neighbours=10, history="binary")).fit(data)
    x = np.zeros((data.n_users, data.n_items))
    for u, i in [("a", 0), ("a", 1), ("b", 1), ("b", 2), ("c", 0), ("c", 2), ("c", 3), ("d", 3)]:
        x[data.users.position(u), data.items.position(f"i{i}")] = 1.0
    x = x[:, src._active]
    p_ui = x / x.sum(axis=1, keepdims=True)
    p_iu = x.T / x.sum(axis=0)[:, None]
    w = (p_iu @ p_ui) / x.sum(axis=0)[None, :] ** 0.5  # two-step walk / degree(j) ** beta
    np.fill_diagonal(w, 0.0)
    users = np.repeat(np.arange(data.n_users), len(src._active))
    items = np.tile(src._active, data.n_users)
    np.testing.assert_allclose(src.score_pairs(users, items).reshape(data.n_users, -1), x @ w, rtol=1e-4, atol=1e-6)
