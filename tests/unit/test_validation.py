import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.validation import REJECT_RULE, SOURCE_ROW, SchemaError, split_valid_rows

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


GOOD = {S.USER_ID: "u1", S.ITEM_ID: "a", S.EVENT_TYPE: "purchase", S.TS: "2026-01-10T10:00:00Z",
        S.SESSION_ID: "s1", S.QUANTITY: "2", S.PRICE: "3.5"}


@pytest.mark.parametrize("change, rule", [
    ({S.USER_ID: "  "}, "empty_user_id"),
    ({S.USER_ID: None}, "empty_user_id"),
    ({S.EVENT_TYPE: "teleport"}, "unknown_event_type"),
    ({S.EVENT_TYPE: None}, "unknown_event_type"),
    ({S.TS: "31/31/2026"}, "unparseable_timestamp"),
    ({S.TS: None}, "unparseable_timestamp"),
    ({S.TS: "2027-01-01"}, "timestamp_in_future"),
    ({S.ITEM_ID: ""}, "empty_item_id"),
    ({S.QUANTITY: "two"}, "non_numeric_quantity"),
    ({S.QUANTITY: "1.5"}, "non_numeric_quantity"),
    ({S.QUANTITY: "1e308"}, "non_numeric_quantity"),  # no int64 holds it: a rule, not a cast error
    ({S.QUANTITY: "inf"}, "non_numeric_quantity"),
    ({S.QUANTITY: "-3"}, "non_positive_quantity"),
    ({S.PRICE: "€3"}, "non_numeric_price"),
    ({S.PRICE: "0"}, "non_positive_price"),
    ({S.PRICE: "-1.0"}, "non_positive_price"),
    ({S.USER_ID: "", S.TS: "garbage"}, "empty_user_id"),  # first rule in RULES order wins
])
def test_catalogue_of_bad_rows(change, rule):
    from recsys.features.posted_rows import first_broken_rule_rows
    from recsys.features.validation import first_broken_rule

    raw = pd.DataFrame([GOOD, {**GOOD, **change}])
    valid, rejected = split_valid_rows(raw, now=NOW)
    assert rejected[REJECT_RULE].tolist() == [rule]
    assert rejected[SOURCE_ROW].tolist() == [1]
    assert len(valid) == 1
    # the service's collector asks the same rules, without pandera, and gets the same answer
    assert first_broken_rule(raw, NOW) == [None, rule]
    assert first_broken_rule_rows([GOOD, {**GOOD, **change}], NOW) == [None, rule]


@pytest.mark.parametrize("change", [
    {S.EVENT_TYPE: " VIEW ", S.QUANTITY: "0"},  # quantity rule only for cart/purchase; types normalised
    {S.EVENT_TYPE: "search", S.ITEM_ID: None, S.PRICE: None},
    {S.TS: "2026-01-10 12:00:00+02:00"},  # explicit offset honoured
    {S.TS: "2026-02-01T00:30:00Z"},  # within the 1 h future tolerance
    {S.PRICE: None, S.QUANTITY: None},  # optional fields
])
def test_good_rows_pass(change):
    valid, rejected = split_valid_rows(pd.DataFrame([{**GOOD, **change}]), now=NOW)
    assert len(rejected) == 0 and len(valid) == 1


def test_valid_rows_come_back_in_contract_dtypes():
    valid, _ = split_valid_rows(pd.DataFrame([GOOD, {**GOOD, S.TS: "2026-01-10 13:00:00+02:00"}]), now=NOW)
    assert list(valid.columns) == list(S.EVENT_COLUMNS)
    assert str(valid[S.TS].dtype) == "datetime64[us, UTC]"
    assert valid[S.TS].iloc[1] == pd.Timestamp("2026-01-10 11:00", tz="UTC")
    assert valid[S.QUANTITY].tolist() == [2, 2] and valid[S.PRICE].tolist() == [3.5, 3.5]


def test_duplicates_need_every_key_field_equal_and_span_chunks():
    from recsys.features.validation import event_keys

    first, _ = split_valid_rows(pd.DataFrame([GOOD]), now=NOW)
    again = pd.DataFrame([GOOD, {**GOOD, S.QUANTITY: "3"}, {**GOOD, S.QUANTITY: "3"}])
    valid, rejected = split_valid_rows(again, now=NOW, seen_keys=np.sort(event_keys(first)))
    # row 0 repeats the earlier chunk, row 2 repeats row 1; row 1 differs in quantity only
    assert dict(zip(rejected[SOURCE_ROW], rejected[REJECT_RULE])) == {0: "duplicate", 2: "duplicate"}
    assert valid[S.QUANTITY].tolist() == [3]


def test_rules_are_checked_by_pandera_named_after_the_rule():
    from recsys.features.validation import RULES, event_schema

    schema = event_schema(NOW, pd.Timedelta(hours=1))
    names = {c.name for c in schema.checks} | {c.name for col in schema.columns.values() for c in col.checks}
    assert names == set(RULES) - {"duplicate"}


# messy values for the parity test: every field of GOOD varied with what storefronts and files send
MESSY = {
    S.USER_ID: ["u1", " u1 ", "", "  ", None, "Cafe\u0301", "caf\u00e9", "x" * 128, "x" * 129, "a\x00b", "tab\tin",
                "\u00a0u2\u00a0", "u\x85", "\u00e9" * 128, "e\u0301" * 100],
    S.ITEM_ID: ["a", " a", "", None, "y" * 129, "i\x1f", "\u00c5ngstr\u00f6m"],
    S.EVENT_TYPE: ["view", " VIEW ", "Purchase", "add_to_cart", "search", "teleport", "", None, "ADD_TO_CART "],
    S.TS: ["2026-01-10T10:00:00Z", "2026-01-10", "2026-01-10 12:00:00+02:00", "2026-01-10T10:00:00+0200",
           "2026-01-10T10:00:00.123456Z", " 2026-01-10T10:00 ", "2026-02-01T00:30:00Z", "2026-02-01T01:00:01Z",
           "2026-02-30T10:00:00Z", "2026-13-01", "Jan 10 2026", "10/01/2026", "31/31/2026", "garbage", "", None,
           "2027-01-01", "20260110"],
    S.QUANTITY: ["2", 2, 2.0, " 3 ", "1.5", 1.5, "0", 0, "-3", "two", "", None, "1e308", "inf", float("nan"), "1_000"],
    S.PRICE: ["3.5", 3.5, 0, "0", "-1.0", "\u20ac3", "", None, " 7 ", "nan", 1e308],
}


def messy_rows(n: int = 400, seed: int = 7) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for field, values in MESSY.items():  # each value once on an otherwise good row
        rows += [{**GOOD, field: v} for v in values]
    for _ in range(n):  # and random mixes of several at once
        rows.append({f: rng.choice(MESSY[f]) if rng.random() < 0.4 else GOOD[f] for f in MESSY} | {
            S.SESSION_ID: rng.choice(["s1", None, " "])})
    return rows


def test_row_path_and_frame_path_give_the_same_verdicts():
    """The collector validates posted rows without pandas (`first_broken_rule_rows`); file ingest runs the
    same rule functions inside pandera (`split_valid_rows`). Same rows in, same verdicts out."""
    from recsys.features.posted_rows import first_broken_rule_rows
    from recsys.features.validation import first_broken_rule

    rows = messy_rows()
    frame = pd.DataFrame(rows)
    by_rows = first_broken_rule_rows(rows, NOW)
    assert by_rows == first_broken_rule(frame, NOW)
    # ingest (pandera + the cross-row duplicate rule): the same verdict wherever ingest does not call it a duplicate
    valid, rejected = split_valid_rows(frame, now=NOW)
    by_ingest = [None] * len(rows)
    for row, rule in zip(rejected[SOURCE_ROW], rejected[REJECT_RULE]):
        by_ingest[row] = rule
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(by_rows, by_ingest)) if a != b and b != "duplicate"]
    assert differ == []
    assert {r for r in by_rows if r} >= set(RULES_WITHOUT_DUPLICATE)  # every rule is exercised
    assert by_rows.count(None) > 20  # and plenty of rows pass


RULES_WITHOUT_DUPLICATE = ("empty_user_id", "id_too_long", "id_control_character", "unknown_event_type",
                           "unparseable_timestamp", "timestamp_in_future", "empty_item_id", "non_numeric_quantity",
                           "non_positive_quantity", "non_numeric_price", "non_positive_price")


def test_row_path_costs_no_dataframe_per_batch():
    import time

    from recsys.features.posted_rows import first_broken_rule_rows
    from recsys.features.validation import first_broken_rule

    rows = messy_rows(50)[-50:]
    frame = pd.DataFrame(rows)
    first_broken_rule(frame, NOW), first_broken_rule_rows(rows, NOW)

    def cpu(fn) -> float:
        t0 = time.process_time()
        for _ in range(20):
            fn()
        return time.process_time() - t0

    assert cpu(lambda: first_broken_rule_rows(rows, NOW)) * 3 < cpu(lambda: first_broken_rule(frame, NOW))
