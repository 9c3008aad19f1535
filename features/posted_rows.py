"""Validation of posted events, a few at a time (the service's collector): the same normalisation and the
same row rules as file ingest (features/validation.py), computed per row over plain Python values instead of
through a DataFrame, whose fixed cost (~10 ms per batch) would dominate a batch of 50 events.
tests/unit/test_validation.py proves both paths give every row the same verdict."""

import re
import unicodedata
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from recsys.features import schema as S
from recsys.features.validation import (_BAD_ID_CHARS, _BAD_ID_LENGTH, _BAD_PRICE, _BAD_QTY, _FORBIDDEN,
                                        _first_broken, _whole, parse_timestamps)


def first_broken_rule_rows(rows: list[dict], now: pd.Timestamp,
                           future_tolerance: pd.Timedelta = pd.Timedelta(hours=1)) -> list[str | None]:
    """`first_broken_rule` for raw events as dicts (the service's posted batches): the same rule
    functions over `normalise_rows`: ~0.5 ms CPU for 50 events instead of ~10 ms through a DataFrame."""
    return _first_broken(normalise_rows(rows), len(rows), now, future_tolerance)


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def _clean_value(value) -> str | None:
    """`_clean_str` for one value: text, stripped, empty -> None."""
    if _missing(value):
        return None
    return str(value).strip() or None


def _id_value(value) -> str | None:
    """`normalise_ids` for one value."""
    out = _clean_value(value)
    if out is not None and not out.isascii():
        out = unicodedata.normalize(S.ID_NORMAL_FORM, out)
    return out


# ISO 8601 as storefronts send it; `datetime.fromisoformat` reads these exactly as pandas does, anything
# else goes to the same pandas parser as file ingest (`parse_timestamps`)
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:?\d{2})?")


def _timestamps(values: list) -> np.ndarray:
    """UTC datetime64[us] (NaT = unparseable) per value, as `parse_timestamps` reads them."""
    out = np.full(len(values), np.datetime64("NaT", "us"))
    slow = []
    for i, v in enumerate(values):
        if isinstance(v, str) and _ISO.fullmatch(v.strip()):
            try:
                t = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
            except ValueError:
                slow.append(i)
                continue
            if t.tzinfo is not None:
                t = t.astimezone(timezone.utc).replace(tzinfo=None)
            out[i] = np.datetime64(t, "us")
        elif not _missing(v):
            slow.append(i)
    if slow:
        parsed = parse_timestamps(pd.Series([values[i] for i in slow], dtype=object))
        out[slow] = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
    return out


def _number_values(values: list) -> tuple[np.ndarray, np.ndarray]:
    """`_numbers` for a list of values: (float64, flag: given but not a number)."""
    raw = np.array([None if _missing(v) else v for v in values], dtype=object)
    num = pd.to_numeric(raw, errors="coerce").astype("float64") if len(raw) else np.zeros(0)
    given = np.array([v is not None and str(v).strip() != "" for v in raw], dtype=bool)
    return num, given & np.isnan(num)


def normalise_rows(rows: list[dict]) -> dict[str, np.ndarray]:
    """`frame_columns(normalise_events(frame))` computed row by row, for a few events at a time."""
    out: dict[str, np.ndarray] = {}
    for col in (S.USER_ID, S.ITEM_ID):
        out[col] = np.array([_id_value(r.get(col)) for r in rows], dtype=object)
    types = [_clean_value(r.get(S.EVENT_TYPE)) for r in rows]
    out[S.EVENT_TYPE] = np.array([t.lower() if t is not None else None for t in types], dtype=object)
    out[S.TS] = _timestamps([r.get(S.TS) for r in rows])
    qty, bad_qty = _number_values([r.get(S.QUANTITY) for r in rows])
    whole = _whole(qty)
    out[S.QUANTITY], out[_BAD_QTY] = np.where(whole, np.round(qty), np.nan), bad_qty | ~whole
    out[S.PRICE], out[_BAD_PRICE] = _number_values([r.get(S.PRICE) for r in rows])
    long_, ctrl = [], []
    for user, item in zip(out[S.USER_ID], out[S.ITEM_ID]):
        ids = [v for v in (user, item) if v is not None]
        long_.append(any(len(v) > S.MAX_ID_LENGTH for v in ids))
        ctrl.append(any(_FORBIDDEN.search(v) is not None for v in ids))
    out[_BAD_ID_LENGTH], out[_BAD_ID_CHARS] = np.array(long_, dtype=bool), np.array(ctrl, dtype=bool)
    return out
