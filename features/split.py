"""Temporal split: train | label window | test window, by day boundaries in UTC."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from recsys.features import schema as S


@dataclass(frozen=True)
class SplitParams:
    label_days: int = 7
    test_days: int = 7
    # end (exclusive, UTC date) of the data this run may see; None = the day after the last event
    cutoff: str | None = None

    def __post_init__(self) -> None:
        if self.label_days < 1 or self.test_days < 1:
            raise ValueError("label_days and test_days must be >= 1")


@dataclass(frozen=True)
class Split:
    train_end: pd.Timestamp  # = start of the label window
    label_end: pd.Timestamp  # = start of the test window
    test_end: pd.Timestamp

    def as_dict(self) -> dict[str, str]:
        return {"train_end": self.train_end.isoformat(), "label_end": self.label_end.isoformat(),
                "test_end": self.test_end.isoformat()}


def temporal_split(last_event: pd.Timestamp, params: SplitParams) -> Split:
    """Window boundaries ending at `params.cutoff` (or the day after `last_event`)."""
    if params.cutoff is not None:
        end = pd.Timestamp(params.cutoff)
        end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    else:
        end = pd.Timestamp(last_event).tz_convert("UTC").normalize() + pd.Timedelta(days=1)
    test_start = end - pd.Timedelta(days=params.test_days)
    label_start = test_start - pd.Timedelta(days=params.label_days)
    return Split(train_end=label_start, label_end=test_start, test_end=end)


def window(events: pd.DataFrame, start: pd.Timestamp | None, end: pd.Timestamp) -> pd.DataFrame:
    """Events with start <= ts < end (no lower bound when start is None)."""
    mask = events[S.TS] < end
    if start is not None:
        mask &= events[S.TS] >= start
    return events.loc[mask]
