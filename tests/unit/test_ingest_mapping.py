"""The generic column mapping and pseudonymisation (pure)."""

import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.mapping import ColumnMapping, map_columns, pseudonymise
from recsys.features.validation import REJECT_RULE, SOURCE_ROW, SchemaError, split_valid_rows

NOW = pd.Timestamp("2026-02-01", tz="UTC")


def retailrocket_like():
    return pd.DataFrame({"timestamp": ["1433221332117", "1433224214164", "1433221999827", "x"],
                         "visitorid": ["257597", "992329", "111016", "5"], "event": ["view", "addtocart",
                                                                                     "transaction", "view"],
                         "itemid": ["355908", "248676", "318965", "1"], SOURCE_ROW: [0, 1, 2, 3]})


def test_mapping_file_shape_renames_translates_and_parses_epochs():
    mapping = ColumnMapping.from_toml_dict({
        "columns": {"user_id": "visitorid", "item_id": "itemid", "ts": "timestamp", "event_type": "event"},
        "event_types": {"addtocart": "add_to_cart", "transaction": "purchase"}, "options": {"ts_unit": "ms"}})
    out = map_columns(retailrocket_like(), mapping, "f.csv")
    assert out[S.EVENT_TYPE].tolist() == ["view", "add_to_cart", "purchase", "view"]
    assert out[S.TS].iloc[0] == pd.Timestamp("2015-06-02 05:02:12.117", tz="UTC")
    assert pd.isna(out[S.TS].iloc[3])
    valid, rejected = split_valid_rows(out, now=NOW)
    assert len(valid) == 3 and rejected[SOURCE_ROW].tolist() == [3]
    assert rejected[REJECT_RULE].tolist() == ["unparseable_timestamp"]


def test_constant_event_type_and_local_timezone():
    raw = pd.DataFrame({"cust": ["a"], "sku": ["x"], "when": ["2026-07-01 12:00"], "qty": ["2"]})
    mapping = ColumnMapping(columns={"user_id": "cust", "item_id": "sku", "ts": "when", "quantity": "qty"},
                            event_type="purchase", timezone="Europe/Berlin")
    out = map_columns(raw, mapping, "f.csv")
    assert out[S.EVENT_TYPE].tolist() == ["purchase"]
    assert out[S.TS].iloc[0] == pd.Timestamp("2026-07-01 10:00", tz="UTC")
    valid, _ = split_valid_rows(out, now=pd.Timestamp("2026-08-01", tz="UTC"))
    assert valid[S.QUANTITY].tolist() == [2]


@pytest.mark.parametrize("mapping, message", [
    (dict(columns={"user_id": "nope", "item_id": "sku", "ts": "when"}, event_type="view"), "nope"),
    (dict(columns={"user_id": "cust", "item_id": "sku", "ts": "when"}), "event_type"),  # no column, no constant
    (dict(columns={"user_id": "cust", "item_id": "sku", "ts": "when", "price": "cost"}, event_type="view"), "cost"),
])
def test_a_mapped_column_missing_from_the_file_names_it(mapping, message):
    raw = pd.DataFrame({"cust": ["a"], "sku": ["x"], "when": ["2026-01-01"]})
    with pytest.raises(SchemaError, match=message):
        map_columns(raw, ColumnMapping(**mapping), "f.csv")


@pytest.mark.parametrize("kwargs, message", [
    (dict(columns={"userid": "u"}), "unknown contract column"),
    (dict(event_type="buy"), "unknown event type"),
    (dict(event_types={"t": "bought"}), "unknown event type"),
])
def test_bad_mappings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ColumnMapping(**kwargs)


def test_unknown_section_in_the_mapping_file_is_refused():
    with pytest.raises(ValueError, match="unknown section"):
        ColumnMapping.from_toml_dict({"colums": {}})


def test_pseudonymise_is_salted_stable_and_keeps_missing_ids_missing():
    ids = pd.Series(["17850", "13047", "17850", None, ""])
    a = pseudonymise(ids, "salt-1")
    assert a[0] == a[2] and a[0] != a[1] and len(a[0]) == 16 and "17850" not in a[0]
    assert a[3:].isna().all()
    assert pseudonymise(ids, "salt-2")[0] != a[0]
    import hashlib
    import hmac

    assert a[0] == hmac.new(b"salt-1", b"17850", hashlib.sha256).hexdigest()[:16]  # HMAC-SHA256, salt as key
    with pytest.raises(ValueError):
        pseudonymise(ids, "")
