import pandas as pd
import pytest

from features import schema as S
from features.validation import REJECT_RULE, SOURCE_ROW, SchemaError, split_valid_rows

NOW = pd.Timestamp("2026-02-01", tz="UTC")


def test_each_bad_row_is_kept_with_its_rule_and_row_number():
    raw = pd.DataFrame({
        S.USER_ID: ["u1", "", "u3", "u4", "u5", "u6", "u1", "u7"],
        S.ITEM_ID: ["a", "b", "c", None, "e", "f", "a", None],
        S.EVENT_TYPE: ["view", "view", "teleport", "purchase", "view", "purchase", "view", "search"],
        S.TS: ["2026-01-01T10:00Z", "2026-01-01", "2026-01-01", "2026-01-01", "not a date", "2026-01-02",
               "2026-01-01T10:00Z", "2026-01-03"],
        S.PRICE: [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, None],
    })
    before = raw.copy()
    valid, rejected = split_valid_rows(raw, now=NOW)
    pd.testing.assert_frame_equal(raw, before)  # input untouched
    assert dict(zip(rejected[SOURCE_ROW], rejected[REJECT_RULE])) == {
        1: "empty_user_id", 2: "unknown_event_type", 3: "empty_item_id", 4: "unparseable_timestamp",
        5: "non_positive_price", 6: "duplicate"}
    assert len(valid) + len(rejected) == len(raw)
    assert valid[S.USER_ID].tolist() == ["u1", "u7"]  # a search event needs no item


def test_future_timestamps_rejected_beyond_tolerance():
    raw = pd.DataFrame({S.USER_ID: ["u", "u"], S.ITEM_ID: ["a", "b"], S.EVENT_TYPE: ["view", "view"],
                        S.TS: ["2026-02-01T00:30Z", "2026-02-03"]})
    _, rejected = split_valid_rows(raw, now=NOW)
    assert rejected[REJECT_RULE].tolist() == ["timestamp_in_future"]


def test_missing_column_is_a_schema_error_naming_it():
    with pytest.raises(SchemaError, match="event_type"):
        split_valid_rows(pd.DataFrame({S.USER_ID: ["u"], S.ITEM_ID: ["a"], S.TS: ["2026-01-01"]}), now=NOW)
