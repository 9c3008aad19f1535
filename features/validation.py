"""Row-level validation of events against the data contract. Each rejected row keeps the first
rule it broke and its source row number, so nothing is silently dropped."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import schema as S

SOURCE_ROW = "source_row"
REJECT_RULE = "reject_rule"


class SchemaError(ValueError):
    """The input as a whole cannot be read as events (e.g. a required column is missing)."""


def check_columns(frame: pd.DataFrame, required: tuple[str, ...], source: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: missing required column(s) {missing}; found {list(frame.columns)}")


def parse_timestamps(values: pd.Series) -> pd.Series:
    """UTC timestamps; naive ones are taken as UTC; anything unparseable becomes NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    return pd.to_datetime(values, errors="coerce", utc=True, format="mixed")


def split_valid_rows(events: pd.DataFrame, now: pd.Timestamp,
                     future_tolerance: pd.Timedelta = pd.Timedelta(hours=1),
                     source: str = "events") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid rows, rejected rows with REJECT_RULE and SOURCE_ROW). Rules are checked in order."""
    check_columns(events, S.REQUIRED_EVENT_COLUMNS, source)
    frame = events.copy()
    if SOURCE_ROW not in frame:
        frame[SOURCE_ROW] = np.arange(len(frame))
    ts = parse_timestamps(frame[S.TS])
    user = frame[S.USER_ID].astype("string").str.strip()
    item = frame[S.ITEM_ID].astype("string").str.strip()
    etype = frame[S.EVENT_TYPE].astype("string").str.strip().str.lower()
    price = pd.to_numeric(frame[S.PRICE], errors="coerce") if S.PRICE in frame else pd.Series(np.nan, frame.index)
    item_event = etype.isin(S.ITEM_EVENT_TYPES)

    rules: list[tuple[str, pd.Series]] = [
        ("empty_user_id", user.isna() | (user == "")),
        ("unknown_event_type", ~etype.isin(S.EVENT_TYPES).fillna(False)),
        ("unparseable_timestamp", ts.isna()),
        ("timestamp_in_future", ts > now + future_tolerance),
        ("empty_item_id", item_event.fillna(False) & (item.isna() | (item == ""))),
        ("non_positive_price", (etype == S.PURCHASE).fillna(False) & (price <= 0).fillna(False)),
    ]
    rule = pd.Series(pd.NA, index=frame.index, dtype="string")
    for name, mask in rules:
        rule = rule.mask(rule.isna() & mask.fillna(False).astype(bool), name)
    frame[S.TS], frame[S.USER_ID], frame[S.ITEM_ID], frame[S.EVENT_TYPE] = ts, user, item, etype
    dup_cols = [c for c in (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.TS, S.SESSION_ID) if c in frame]
    dup = frame.duplicated(subset=dup_cols, keep="first") & rule.isna()
    rule = rule.mask(dup, "duplicate")
    bad = rule.notna().to_numpy()
    rejected = events.loc[bad].copy()
    if SOURCE_ROW not in rejected:
        rejected[SOURCE_ROW] = np.flatnonzero(bad)
    rejected[REJECT_RULE] = rule[bad].astype(str).to_numpy()
    valid = frame.loc[~bad].drop(columns=[SOURCE_ROW])
    for col in S.EVENT_COLUMNS:
        if col not in valid:
            valid[col] = None
    return valid[list(S.EVENT_COLUMNS)], rejected
