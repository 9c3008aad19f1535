"""Row-level validation of events against the data contract, expressed as a pandera schema.

Each check carries the name of a rule; pandera's lazy validation reports every failing row per
check, and each rejected row keeps the FIRST rule (in `RULES` order) it broke plus its source row
number, so nothing is silently dropped.

Values are normalised before pandera sees them (strings stripped, event types lower-cased,
timestamps parsed to UTC, numbers coerced): pandera's own dtype coercion fails a whole column
rather than naming rows, so parse failures become per-row flags that the schema checks.
"""

from __future__ import annotations

import re
import unicodedata
import weakref
from collections.abc import Callable

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from recsys.features import schema as S

SOURCE_ROW = "source_row"
REJECT_RULE = "reject_rule"

# rule names in the order they are checked (a row is reported under the first one it breaks)
EMPTY_USER_ID = "empty_user_id"
ID_TOO_LONG = "id_too_long"
ID_CONTROL_CHARACTER = "id_control_character"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
EMPTY_ITEM_ID = "empty_item_id"
NON_NUMERIC_QUANTITY = "non_numeric_quantity"
NON_POSITIVE_QUANTITY = "non_positive_quantity"
NON_NUMERIC_PRICE = "non_numeric_price"
NON_POSITIVE_PRICE = "non_positive_price"
DUPLICATE = "duplicate"
RULES = (EMPTY_USER_ID, ID_TOO_LONG, ID_CONTROL_CHARACTER, UNKNOWN_EVENT_TYPE, UNPARSEABLE_TIMESTAMP,
         TIMESTAMP_IN_FUTURE, EMPTY_ITEM_ID, NON_NUMERIC_QUANTITY, NON_POSITIVE_QUANTITY, NON_NUMERIC_PRICE, NON_POSITIVE_PRICE, DUPLICATE)

# normalisation flags the schema checks (never leave this module)
_BAD_QTY = "_bad_quantity"
_BAD_PRICE = "_bad_price"
_BAD_ID_LENGTH = "_bad_id_length"
_BAD_ID_CHARS = "_bad_id_chars"
# columns that make two events the same event
DUPLICATE_KEY = (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.TS, S.SESSION_ID, S.QUANTITY, S.PRICE)


class SchemaError(ValueError):
    """The input as a whole cannot be read as events (e.g. a required column is missing)."""


def check_columns(frame: pd.DataFrame, required: tuple[str, ...], source: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SchemaError(f"{source}: missing required column(s) {missing}; found {list(frame.columns)}")


def parse_timestamps(values: pd.Series) -> pd.Series:
    """UTC timestamps; naive ones are taken as UTC; anything unparseable becomes NaT."""
    if pd.api.types.is_datetime64_any_dtype(values):
        out = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    else:
        out = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
    return out.astype("datetime64[us, UTC]")


def is_categorical(values: pd.Series) -> bool:
    return isinstance(values.dtype, pd.CategoricalDtype)


def _per_category(values: pd.Series, fn: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """`fn` (text -> text) applied to the categories of a categorical, not to every row: compact ids
    (recsys.tasks.data.read_events) stay integer codes. Categories that become equal merge; a category
    that becomes null turns its rows null; the result's categories are sorted (groupby order = text order)."""
    cats = fn(pd.Series(values.cat.categories, dtype="string"))
    codes, uniques = pd.factorize(cats, sort=True)  # null -> -1
    new = np.append(codes, -1)[values.cat.codes.to_numpy()]  # code -1 (null row) stays -1
    return pd.Series(pd.Categorical.from_codes(new, categories=pd.Index(uniques, dtype="str")), index=values.index)


def _flag_per_category(values: pd.Series, fn: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """A boolean rule computed once per category and read back per row (null rows: False)."""
    flags = fn(pd.Series(values.cat.categories, dtype="string")).fillna(False).to_numpy(dtype=bool)
    return pd.Series(np.append(flags, False)[values.cat.codes.to_numpy()], index=values.index)


def _strip(values: pd.Series) -> pd.Series:
    out = values.astype("string").str.strip()
    return out.mask(out == "")


def _clean_str(values: pd.Series) -> pd.Series:
    return _per_category(values, _strip) if is_categorical(values) else _strip(values)


_FORBIDDEN = re.compile(S.ID_FORBIDDEN_PATTERN)


def normalise_ids(values: pd.Series) -> pd.Series:
    """The id contract's normal form: text, stripped, NFC; empty -> null (ingest, training, service).
    A categorical stays categorical (its categories are normalised)."""
    if is_categorical(values):
        return _per_category(values, normalise_ids)
    out = _strip(values)
    ascii_ = out.str.isascii().fillna(True).astype(bool)
    if not ascii_.all():  # NFC only changes non-ASCII text; skipping ASCII keeps this cheap
        out = out.where(ascii_, out.str.normalize(S.ID_NORMAL_FORM))
    return out


def id_rule_violations(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(too long, has a control character) per normalised id; nulls break neither."""
    if is_categorical(values):
        return tuple(_flag_per_category(values, lambda c, j=j: id_rule_violations(c)[j]) for j in (0, 1))
    too_long = (values.str.len() > S.MAX_ID_LENGTH).fillna(False).astype(bool)
    control = values.str.contains(S.ID_FORBIDDEN_PATTERN, regex=True).fillna(False).astype(bool)
    return too_long, control


def id_problem(value: str) -> str | None:
    """Why one id breaks the contract (None when it is fine), for single ids such as a request's."""
    norm = unicodedata.normalize(S.ID_NORMAL_FORM, value.strip())
    if not norm:
        return "empty id"
    if len(norm) > S.MAX_ID_LENGTH:
        return f"id longer than {S.MAX_ID_LENGTH} characters"
    if _FORBIDDEN.search(norm):
        return "id contains a control character"
    return None


def _numbers(frame: pd.DataFrame, col: str) -> tuple[pd.Series, pd.Series]:
    """(numeric values, flag: a value was given but is not a number)."""
    if col not in frame:
        return pd.Series(np.nan, index=frame.index), pd.Series(False, index=frame.index)
    raw = frame[col]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return raw.astype("float64"), pd.Series(False, index=frame.index)
    num = pd.to_numeric(raw, errors="coerce")
    given = raw.notna() & (raw.astype("string").str.strip() != "").fillna(False)
    return num.astype("float64"), (given & num.isna()).astype(bool)


def _whole(qty: np.ndarray) -> np.ndarray:
    """A quantity is a whole number an int64 holds exactly (1e308 or inf is no quantity, and no cast error);
    NaN (not given) passes."""
    with np.errstate(invalid="ignore"):
        return np.isnan(qty) | ((qty == np.round(qty)) & (np.abs(qty) < 2.0 ** 53))


def normalise_events(events: pd.DataFrame) -> pd.DataFrame:
    """Contract dtypes for every contract column (missing optional ones become null) + parse flags."""
    out = pd.DataFrame(index=events.index)
    out[S.USER_ID] = normalise_ids(events[S.USER_ID])
    out[S.ITEM_ID] = normalise_ids(events[S.ITEM_ID])
    etype = events[S.EVENT_TYPE]
    out[S.EVENT_TYPE] = (_per_category(etype, lambda c: _strip(c).str.lower()) if is_categorical(etype)
                         else _strip(etype).str.lower())
    out[S.TS] = parse_timestamps(events[S.TS])
    for col in (S.SESSION_ID, S.QUERY):
        out[col] = _clean_str(events[col]) if col in events else pd.Series(pd.NA, index=events.index, dtype="string")
    qty, out[_BAD_QTY] = _numbers(events, S.QUANTITY)
    whole = pd.Series(_whole(qty.to_numpy()), index=qty.index)
    out[_BAD_QTY] = out[_BAD_QTY] | ~whole
    out[S.QUANTITY] = qty.where(whole).round().astype("Int64")
    out[S.PRICE], out[_BAD_PRICE] = _numbers(events, S.PRICE)
    user_long, user_ctrl = id_rule_violations(out[S.USER_ID])
    item_long, item_ctrl = id_rule_violations(out[S.ITEM_ID])
    out[_BAD_ID_LENGTH], out[_BAD_ID_CHARS] = user_long | item_long, user_ctrl | item_ctrl
    return out


def _one_of(values: np.ndarray, allowed: tuple[str, ...]) -> np.ndarray:
    """Elementwise membership for an object array that may hold None (None is in nothing)."""
    out = np.zeros(len(values), dtype=bool)
    for v in allowed:
        out |= values == v
    return out


def _present(values: np.ndarray) -> np.ndarray:
    return np.not_equal(values, None)


def row_checks(now: pd.Timestamp, future_tolerance: pd.Timedelta) -> list[tuple[str, Callable]]:
    """The row rules of the data contract, in RULES order (all but the cross-row `duplicate`): each a
    rule name and a predicate that is True where a row passes. A predicate reads normalised columns as
    plain numpy arrays (ids/types: object arrays with None; ts: datetime64[us] UTC with NaT; quantity,
    price: float64 with NaN; the parse flags: bool), produced either from a `normalise_events` frame
    (`frame_columns`, file ingest inside the pandera schema `event_schema`) or straight from the posted
    rows (`normalise_rows`, the service's collector): one definition of each rule for both paths, with
    no pandas fixed cost per call on the small batches of the request path."""
    limit = np.datetime64((now + future_tolerance).tz_convert("UTC").tz_localize(None).as_unit("us"), "us")

    return [
        (EMPTY_USER_ID, lambda c: _present(c[S.USER_ID])),
        # both ids: the contract of recsys.features.schema.MAX_ID_LENGTH / ID_FORBIDDEN_PATTERN
        (ID_TOO_LONG, lambda c: ~c[_BAD_ID_LENGTH]),
        (ID_CONTROL_CHARACTER, lambda c: ~c[_BAD_ID_CHARS]),
        (UNKNOWN_EVENT_TYPE, lambda c: _one_of(c[S.EVENT_TYPE], S.EVENT_TYPES)),
        (UNPARSEABLE_TIMESTAMP, lambda c: ~np.isnat(c[S.TS])),
        (TIMESTAMP_IN_FUTURE, lambda c: ~(c[S.TS] > limit)),  # NaT compares False
        (EMPTY_ITEM_ID, lambda c: ~(_one_of(c[S.EVENT_TYPE], S.ITEM_EVENT_TYPES) & ~_present(c[S.ITEM_ID]))),
        (NON_NUMERIC_QUANTITY, lambda c: ~c[_BAD_QTY]),
        (NON_POSITIVE_QUANTITY, lambda c: ~(_one_of(c[S.EVENT_TYPE], (S.PURCHASE, S.ADD_TO_CART))
                                           & (c[S.QUANTITY] <= 0))),  # NaN compares False
        (NON_NUMERIC_PRICE, lambda c: ~c[_BAD_PRICE]),
        (NON_POSITIVE_PRICE, lambda c: ~((c[S.EVENT_TYPE] == S.PURCHASE) & (c[S.PRICE] <= 0))),
    ]


_RULE_COLUMNS = (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.TS, S.QUANTITY, S.PRICE,
                 _BAD_QTY, _BAD_PRICE, _BAD_ID_LENGTH, _BAD_ID_CHARS)


def frame_columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The columns the rules read, as numpy arrays, from a `normalise_events` frame."""
    out = {c: frame[c].to_numpy(dtype=object, na_value=None) for c in (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE)}
    out[S.TS] = frame[S.TS].dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
    for c in (S.QUANTITY, S.PRICE):
        out[c] = frame[c].to_numpy(dtype="float64", na_value=np.nan)
    for c in (_BAD_QTY, _BAD_PRICE, _BAD_ID_LENGTH, _BAD_ID_CHARS):
        out[c] = frame[c].to_numpy(dtype=bool)
    return out


def event_schema(now: pd.Timestamp, future_tolerance: pd.Timedelta,
                 text_dtypes: dict[str, str] | None = None) -> pa.DataFrameSchema:
    """The row rules as a pandera schema; every check is named after its rule. `text_dtypes` names the
    columns that are categoricals (compact ids read from the event store) rather than "string"."""
    text = {c: "string" for c in (S.USER_ID, S.EVENT_TYPE, S.ITEM_ID)} | (text_dtypes or {})
    memo: list = [lambda: None, None]  # (weak ref to the frame, its columns): converted once per validation

    def columns(frame: pd.DataFrame) -> dict[str, np.ndarray]:
        if memo[0]() is not frame:
            memo[:] = [weakref.ref(frame), frame_columns(frame)]
        return memo[1]

    def check(fn: Callable) -> Callable:
        return lambda frame: pd.Series(fn(columns(frame)), index=frame.index)

    return pa.DataFrameSchema(
        {S.USER_ID: pa.Column(text[S.USER_ID], nullable=True), S.EVENT_TYPE: pa.Column(text[S.EVENT_TYPE], nullable=True),
         S.TS: pa.Column("datetime64[us, UTC]", nullable=True), S.ITEM_ID: pa.Column(text[S.ITEM_ID], nullable=True),
         _BAD_QTY: pa.Column(bool), _BAD_PRICE: pa.Column(bool),
         _BAD_ID_LENGTH: pa.Column(bool), _BAD_ID_CHARS: pa.Column(bool)},
        checks=[pa.Check(check(fn), name=rule, ignore_na=False) for rule, fn in row_checks(now, future_tolerance)],
        strict=False, coerce=False)


def _first_broken(columns: dict[str, np.ndarray], n: int, now: pd.Timestamp,
                  future_tolerance: pd.Timedelta) -> list[str | None]:
    broken = np.full(n, None, dtype=object)
    for rule, passes in row_checks(now, future_tolerance):
        fails = ~np.asarray(passes(columns), dtype=bool) & (broken == None)  # noqa: E711 (elementwise)
        broken[fails] = rule
    return broken.tolist()


def first_broken_rule(events: pd.DataFrame, now: pd.Timestamp,
                      future_tolerance: pd.Timedelta = pd.Timedelta(hours=1)) -> list[str | None]:
    """Per raw event (contract-named columns), the first row rule it breaks, None if it passes: the
    same rules as `split_valid_rows` without pandera. The cross-row `duplicate` rule is left to ingest."""
    return _first_broken(frame_columns(normalise_events(events)), len(events), now, future_tolerance)


def duplicate_schema(columns: list[str]) -> pa.DataFrameSchema:
    return pa.DataFrameSchema(unique=columns, report_duplicates="exclude_first")


def _failed_rows(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> pd.DataFrame:
    """(row position, rule) for every failing row and check, from pandera's failure cases."""
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
        cases = cases[cases["index"].notna()]
        rule = cases["check"].astype(str)
        # `unique` failures are named by pandera, not by us
        rule = rule.where(rule.isin(RULES), DUPLICATE)
        unknown = ~cases["check"].astype(str).isin(RULES) & ~cases["check"].astype(str).str.contains("unique")
        if unknown.any():  # a dtype/column-level failure we did not name: a bug in normalise_events
            raise SchemaError(f"unexpected validation failure: {cases.loc[unknown].head(3).to_dict('records')}")
        return pd.DataFrame({"pos": cases["index"].astype("int64").to_numpy(), "rule": rule.to_numpy()})
    return pd.DataFrame({"pos": np.array([], dtype="int64"), "rule": np.array([], dtype=object)})


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for large integer arrays (a sort + neighbour compare; faster than numpy 2's hash path)."""
    a = np.sort(values)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


def merge_keys(seen: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Sorted union of sorted `seen` and any `new` keys (timsort merges the two runs in linear time)."""
    return sorted_unique(np.concatenate([seen, sorted_unique(new)]))


def event_keys(valid: pd.DataFrame) -> np.ndarray:
    """A 64-bit content hash per event over DUPLICATE_KEY, independent of how the event was stored or
    exported (column order, dtype: object or string text, Int64 or float quantity, ts unit): the same
    event read back from the event store or from any re-export of a file gets the same key."""
    n = len(valid)

    def text(col: str) -> np.ndarray:
        if col not in valid:
            return np.full(n, "", dtype=object)
        return valid[col].astype("string").fillna("").to_numpy(dtype=object)

    def number(col: str) -> np.ndarray:
        if col not in valid:
            return np.full(n, np.nan)
        return pd.to_numeric(valid[col], errors="coerce").astype("float64").to_numpy()

    ts = pd.to_datetime(valid[S.TS], utc=True).dt.tz_convert(None).to_numpy(dtype="datetime64[us]").view("int64")
    canonical = pd.DataFrame({S.USER_ID: text(S.USER_ID), S.ITEM_ID: text(S.ITEM_ID), S.EVENT_TYPE: text(S.EVENT_TYPE),
                              S.TS: ts, S.SESSION_ID: text(S.SESSION_ID), S.QUANTITY: number(S.QUANTITY),
                              S.PRICE: number(S.PRICE)}, columns=list(DUPLICATE_KEY))
    return pd.util.hash_pandas_object(canonical, index=False).to_numpy(dtype=np.uint64)


def is_known(keys: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Which of `keys` are in the sorted array `known`."""
    if not len(known) or not len(keys):
        return np.zeros(len(keys), dtype=bool)
    at = np.minimum(np.searchsorted(known, keys), len(known) - 1)
    return known[at] == keys


def split_valid_rows(events: pd.DataFrame, now: pd.Timestamp,
                     future_tolerance: pd.Timedelta = pd.Timedelta(hours=1),
                     source: str = "events",
                     seen_keys: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid rows in contract dtypes, rejected raw rows with REJECT_RULE and SOURCE_ROW).

    `seen_keys` (sorted `event_keys` of earlier chunks of the same input) extends the duplicate
    rule across chunks. The input is not modified.
    """
    check_columns(events, S.REQUIRED_EVENT_COLUMNS, source)
    positions = np.arange(len(events))
    source_rows = events[SOURCE_ROW].to_numpy() if SOURCE_ROW in events else positions
    frame = normalise_events(events)
    frame.index = positions
    categorical = {c: "category" for c in (S.USER_ID, S.EVENT_TYPE, S.ITEM_ID) if is_categorical(frame[c])}
    failed = _failed_rows(event_schema(now, future_tolerance, categorical), frame)
    order = {r: i for i, r in enumerate(RULES)}
    rule = pd.Series(pd.NA, index=positions, dtype="object")
    if len(failed):
        first = (failed.assign(o=failed["rule"].map(order)).sort_values(["pos", "o"])
                 .drop_duplicates("pos"))
        rule.iloc[first["pos"].to_numpy()] = first["rule"].to_numpy()
    ok = rule.isna().to_numpy()
    dup_cols = [c for c in DUPLICATE_KEY if c in events.columns]
    survivors = frame.loc[ok]
    dup = _failed_rows(duplicate_schema(dup_cols), survivors)
    if len(dup):
        rule.loc[np.unique(dup["pos"].to_numpy())] = DUPLICATE
    ok = rule.isna().to_numpy()
    if seen_keys is not None and len(seen_keys) and ok.any():
        again = is_known(event_keys(frame.loc[ok]), seen_keys)
        rule.loc[positions[ok][again]] = DUPLICATE
        ok = rule.isna().to_numpy()
    rejected = events.loc[~ok].copy()
    rejected[SOURCE_ROW] = source_rows[~ok]
    rejected[REJECT_RULE] = rule.to_numpy()[~ok].astype(str)
    valid = frame.loc[ok, list(S.EVENT_COLUMNS)]
    valid.index = events.index[ok]
    return valid, rejected


def rule_counts(rejected: pd.DataFrame) -> dict[str, int]:
    if not len(rejected):
        return {}
    return {str(k): int(v) for k, v in rejected[REJECT_RULE].value_counts().items()}
