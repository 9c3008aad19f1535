"""What the training flow logs about its events (digest, data profile, window sizes), as per-block partials
that add up to the numbers of the whole frame: one frame in one process, or blocks of whole days on Dask
workers (recsys.tasks.cluster_events) whose partials are combined there and never gather the events.

Distinct users and items are counted by their 64-bit hash (`pd.util.hash_pandas_object` of the id string; a
categorical hashes as its strings, so blocks with different dictionaries agree): a collision among 1e8 ids
has a probability of ~3e-4 and would undercount one id; the one-process profile counts the strings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.features import schema as S

DIGEST_SAMPLE = 10_000  # about this many rows of a frame are hashed into its digest (every n // DIGEST_SAMPLE-th)
_EMPTY = np.empty(0, dtype=np.uint64)


def window_mask(events: pd.DataFrame, start: pd.Timestamp | None, end: pd.Timestamp | None) -> np.ndarray:
    """start <= ts < end, each bound when given."""
    ts = events[S.TS]
    mask = np.ones(len(events), dtype=bool)
    if end is not None:
        mask &= (ts < end).to_numpy()
    if start is not None:
        mask &= (ts >= start).to_numpy()
    return mask


def id_hashes(values: pd.Series) -> np.ndarray:
    """Sorted distinct 64-bit hashes of the non-missing ids (strings or categoricals alike)."""
    values = values[values.notna()]
    if not len(values):
        return _EMPTY
    return np.unique(pd.util.hash_pandas_object(values.astype(str) if not isinstance(values.dtype, pd.CategoricalDtype)
                                                else values, index=False).to_numpy())


# ---- the digest -----------------------------------------------------------------------------------------
def sample_positions(offset: int, n_here: int, n_total: int) -> np.ndarray:
    """Local positions of a block (rows offset..offset+n_here of a frame of n_total rows) that the frame's
    digest samples: every max(1, n_total // DIGEST_SAMPLE)-th row of the whole frame."""
    step = max(1, n_total // DIGEST_SAMPLE)
    return np.arange((-offset) % step, n_here, step)


def sample_hashes(events: pd.DataFrame, positions: np.ndarray) -> np.ndarray:
    """The row hashes (user, item, event type) of the sampled rows."""
    return pd.util.hash_pandas_object(events[[S.USER_ID, S.ITEM_ID, S.EVENT_TYPE]].iloc[positions],
                                      index=False).to_numpy()


def digest_of(n: int, ts_min, ts_max, hashes: np.ndarray) -> str:
    """The digest of a frame from its row count, time range and sampled row hashes (in frame order)."""
    h = hashlib.sha256()
    h.update(str(n).encode())
    if n:
        h.update(str(ts_min).encode() + str(ts_max).encode())
        h.update(np.ascontiguousarray(hashes).tobytes())
    return h.hexdigest()[:16]


def events_digest(events: pd.DataFrame) -> str:
    """A cheap content digest of an events frame (row count, time range, hashed sample of ids): equal for
    the same rows in the same order, whether computed on the frame or combined from its blocks."""
    n = len(events)
    hashes = sample_hashes(events, sample_positions(0, n, n)) if n else _EMPTY
    return digest_of(n, events[S.TS].min() if n else None, events[S.TS].max() if n else None, hashes)


def window_sample_hashes(events: pd.DataFrame, start, end, offset: int, n_total: int) -> np.ndarray:
    """One block's share of the digest sample of the window [start, end) (`offset` rows of the window
    before this block, `n_total` in the window)."""
    w = events.loc[window_mask(events, start, end)]
    return sample_hashes(w, sample_positions(offset, len(w), n_total)) if len(w) else _EMPTY


# ---- the profile ----------------------------------------------------------------------------------------
@dataclass
class WindowPartial:
    """A window's numbers over some blocks of events: rows, time range, purchases, distinct user and item
    hashes, and the hashes of users seen before the window's start (for its new users)."""

    n: int
    ts_min: pd.Timestamp | None
    ts_max: pd.Timestamp | None
    purchases: int
    users: np.ndarray
    items: np.ndarray
    users_before: np.ndarray | None  # None: the window has no start

    def __add__(self, other: "WindowPartial") -> "WindowPartial":
        def lo(a, b):
            return b if a is None else a if b is None else min(a, b)

        def hi(a, b):
            return b if a is None else a if b is None else max(a, b)

        before = (None if self.users_before is None
                  else np.union1d(self.users_before, other.users_before))
        return WindowPartial(self.n + other.n, lo(self.ts_min, other.ts_min), hi(self.ts_max, other.ts_max),
                             self.purchases + other.purchases, np.union1d(self.users, other.users),
                             np.union1d(self.items, other.items), before)


def window_partials(events: pd.DataFrame, windows: dict[str, tuple]) -> dict[str, WindowPartial]:
    """Each window's (name -> (start or None, end or None)) partial over these events."""
    out = {}
    for name, (start, end) in windows.items():
        w = events.loc[window_mask(events, start, end)]
        ts = w[S.TS]
        before = id_hashes(events.loc[window_mask(events, None, start), S.USER_ID]) if start is not None else None
        out[name] = WindowPartial(len(w), ts.min() if len(w) else None, ts.max() if len(w) else None,
                                  int((w[S.EVENT_TYPE] == S.PURCHASE).sum()), id_hashes(w[S.USER_ID]),
                                  id_hashes(w[S.ITEM_ID]), before)
    return out


def window_counts(partials: dict[str, WindowPartial]) -> dict[str, int]:
    return {name: p.n for name, p in partials.items()}


def combine_partials(parts: list[dict[str, WindowPartial]]) -> dict[str, WindowPartial]:
    out = dict(parts[0])
    for p in parts[1:]:
        out = {name: out[name] + p[name] for name in out}
    return out


@dataclass(frozen=True)
class WindowNumbers:
    """A window's profile (the numbers only: what reaches the driver)."""

    n: int
    ts_min: pd.Timestamp | None
    ts_max: pd.Timestamp | None
    purchases: int
    users: int
    items: int
    new_users: int


def window_numbers(partials: dict[str, WindowPartial]) -> dict[str, WindowNumbers]:
    return {name: WindowNumbers(p.n, p.ts_min, p.ts_max, p.purchases, len(p.users), len(p.items),
                                len(p.users) if p.users_before is None
                                else int((~np.isin(p.users, p.users_before, assume_unique=True)).sum()))
            for name, p in partials.items()}


def profile_frame(numbers: dict[str, WindowNumbers], catalog_items: int) -> pd.DataFrame:
    """`recsys.models.evaluation.data_profile`'s table from the windows' numbers."""
    return pd.DataFrame([{"window": name, "from": w.ts_min if w.ts_min is not None else pd.NaT,
                          "to": w.ts_max if w.ts_max is not None else pd.NaT, "events": w.n, "users": w.users,
                          "items": w.items, "purchases": w.purchases, "new_users": w.new_users,
                          "catalog_items": catalog_items} for name, w in numbers.items()])


# ---- sessions with a search -----------------------------------------------------------------------------
def search_session_hashes(events: pd.DataFrame) -> np.ndarray:
    """Distinct hashes of the sessions that hold a search with a query."""
    is_search = (events[S.EVENT_TYPE] == S.SEARCH).to_numpy() & events[S.QUERY].notna().to_numpy()
    return id_hashes(events.loc[is_search, S.SESSION_ID])


def in_sessions(events: pd.DataFrame, session_hashes: np.ndarray) -> pd.DataFrame:
    """The events of the sessions whose hash is given, in their order (what `search_sessions` reads: a hash
    collision only adds a session without a search, which adds nothing there)."""
    sid = events[S.SESSION_ID]
    keep = sid.notna().to_numpy().copy()
    if keep.any():
        h = pd.util.hash_pandas_object(sid[keep], index=False).to_numpy()
        keep[keep] = np.isin(h, session_hashes)
    return events.loc[keep]


def users_seen_before(events: pd.DataFrame, start: pd.Timestamp, user_hashes: np.ndarray) -> np.ndarray:
    """Those of the given user hashes with an event before `start`."""
    seen = id_hashes(events.loc[window_mask(events, None, start), S.USER_ID])
    return np.intersect1d(seen, user_hashes, assume_unique=True)
