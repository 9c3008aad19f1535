import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S


def make_events(rows):
    """rows: (user, item, event_type, 'YYYY-MM-DD HH:MM')."""
    frame = pd.DataFrame(rows, columns=[S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.TS])
    frame[S.TS] = pd.to_datetime(frame[S.TS], utc=True)
    for col in (S.SESSION_ID, S.QUERY):
        frame[col] = None
    frame[S.QUANTITY] = 1
    frame[S.PRICE] = 1.0
    return frame[list(S.EVENT_COLUMNS)]


@pytest.fixture
def checkerboard():
    """Two taste groups of 6 users x 6 items; each user saw all own-group items but one (the diagonal).

    The held-out item of user u is item (u % 6) of the user's own group: the right recommendation.
    """
    rows = []
    for u in range(12):
        group = u // 6
        held_out = group * 6 + u % 6
        for i in range(group * 6, group * 6 + 6):
            if i != held_out:
                for rep in range(3):
                    rows.append((f"u{u}", f"i{i}", S.VIEW, f"2026-01-0{1 + rep} 10:00"))
    events = make_events(rows)
    catalog = pd.DataFrame({S.ITEM_ID: [f"i{i}" for i in range(12)], S.TITLE: [f"item {i}" for i in range(12)],
                            S.CATEGORY: ["a"] * 6 + ["b"] * 6, S.PRICE: np.arange(1.0, 13.0)})
    return events, catalog
