"""The per-block partials of `recsys.features.event_stats` add up to the whole frame's numbers: digest, data
profile, search sessions, users seen before: blocks with their own categorical dictionaries, as the Dask
workers read them."""

import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.event_stats import (combine_partials, digest_of, events_digest, in_sessions, profile_frame,
                                         search_session_hashes, users_seen_before, window_counts, window_numbers,
                                         window_partials, window_sample_hashes)
from recsys.features.split import SplitParams, temporal_split, window
from recsys.features.synthetic import SyntheticParams, SyntheticWorld
from recsys.features.validation import split_valid_rows
from recsys.models.evaluation import data_profile
from recsys.models.search_ranker import search_sessions

NOW = pd.Timestamp("2026-06-01", tz="UTC")


@pytest.fixture(scope="module")
def events():
    world = SyntheticWorld(SyntheticParams(n_users=2200, n_items=200, n_days=21, seed=4))
    frame = pd.concat([e for _, e in world.iter_days()], ignore_index=True)
    for col in (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.SESSION_ID, S.QUERY):  # compact ids, as read
        frame[col] = frame[col].astype("category")
    valid, _ = split_valid_rows(frame, NOW)
    assert len(valid) > 25_000  # over 2 x DIGEST_SAMPLE: the digest samples every n // 10000-th row
    return valid.reset_index(drop=True)


def blocks_of(events: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """`n` consecutive blocks, each with only its own categories (as a worker's read gives them)."""
    cuts = np.linspace(0, len(events), n + 1).astype(int)
    out = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        b = events.iloc[lo:hi].copy()
        for col in b.columns:
            if isinstance(b[col].dtype, pd.CategoricalDtype):
                b[col] = b[col].cat.remove_unused_categories()
        out.append(b.reset_index(drop=True))
    return out


def windows_of(events):
    split = temporal_split(events[S.TS].max(), SplitParams())
    return {"train": (None, split.train_end), "label": (split.train_end, split.label_end),
            "test": (split.label_end, split.test_end), "all": (None, None)}


def test_digest_and_profile_combined_from_blocks_equal_the_whole_frames(events):
    windows = windows_of(events)
    blocks = blocks_of(events, 7)
    partials = [window_partials(b, windows) for b in blocks]
    counts = [window_counts(p) for p in partials]
    numbers = window_numbers(combine_partials(partials))
    for name, (start, end) in windows.items():
        w = events if end is None else window(events, start, end)
        total, offset, hashes = sum(c[name] for c in counts), 0, []
        for b, c in zip(blocks, counts):
            hashes.append(window_sample_hashes(b, start, end, offset, total))
            offset += c[name]
        digest = digest_of(total, numbers[name].ts_min, numbers[name].ts_max, np.concatenate(hashes))
        assert digest == events_digest(w), name
        assert numbers[name].users == w[S.USER_ID].nunique() and numbers[name].items == w[S.ITEM_ID].nunique()
    assert events_digest(events) != events_digest(events.iloc[1:])  # a row fewer: another digest
    three = {k: v for k, v in windows.items() if k != "all"}
    expected = data_profile(events, pd.DataFrame({S.ITEM_ID: range(200)}), three)
    got = profile_frame({k: numbers[k] for k in three}, 200)
    assert expected["new_users"].iloc[1] > 0
    assert got.to_csv(index=False) == expected.to_csv(index=False)


def test_search_sessions_from_the_sessions_with_a_search_equal_those_from_every_event(events):
    blocks = blocks_of(events, 5)
    hashes = np.unique(np.concatenate([search_session_hashes(b) for b in blocks]))
    subset = pd.concat([in_sessions(b, hashes) for b in blocks], ignore_index=True)
    assert len(subset) < len(events) / 2
    full, part = search_sessions(events), search_sessions(subset)
    assert len(full.searches) > 100 and len(full.labels) > 50
    pd.testing.assert_frame_equal(part.labels, full.labels)
    for col in full.searches.columns:
        assert part.searches[col].astype(str).tolist() == full.searches[col].astype(str).tolist(), col


def test_users_seen_before_a_start_from_blocks(events):
    start = windows_of(events)["test"][0]
    users = window(events, start, events[S.TS].max() + pd.Timedelta(1, "s"))[S.USER_ID].astype(str).unique().tolist()
    hashes = pd.util.hash_pandas_object(pd.Series(users, dtype=object), index=False).to_numpy()
    seen = np.concatenate([users_seen_before(b, start, np.unique(hashes)) for b in blocks_of(events, 4)])
    expected = pd.Index(users).isin(pd.Index(events.loc[events[S.TS] < start, S.USER_ID].unique()).astype(str))
    assert 0 < expected.sum() < len(users)
    assert np.isin(hashes, seen).tolist() == expected.tolist()
