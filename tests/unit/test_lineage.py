"""Issue 13, the pure parts: the fair window, data identity, the id contract and the catalogue mapping."""

import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.lineage import Lineage, catalog_fingerprint, sketch_similarity
from recsys.features.mapping import ColumnMapping, map_catalog
from recsys.features.validation import SchemaError, event_keys, id_problem, normalise_ids, split_valid_rows
from recsys.models.gate import GateParams, data_identity_mismatch, fair_window, no_fair_window

T = lambda s: pd.Timestamp(s, tz="UTC")  # noqa: E731


def test_the_window_starts_after_both_training_ends_or_there_is_none():
    assert fair_window(T("2026-01-29"), T("2026-02-05"), T("2026-01-29"), T("2026-02-02")) == (T("2026-02-02"),
                                                                                               T("2026-02-05"))
    assert fair_window(T("2026-01-29"), T("2026-02-05"), T("2026-01-29"), T("2026-01-20")) == (T("2026-01-29"),
                                                                                               T("2026-02-05"))
    assert fair_window(T("2026-01-19"), T("2026-01-26"), T("2026-01-19"), T("2026-02-02")) is None
    assert fair_window(T("2026-01-19"), T("2026-01-26"), None, T("2026-01-26")) is None
    d = no_fair_window(GateParams(), "3", T("2026-01-19"), T("2026-01-26"), T("2026-02-02"))
    assert not d.promote and d.champion is None and d.diff is None and d.ci_low is None
    assert d.reason.startswith("no fair window") and "until 2026-02-02" in d.reason


def test_data_identity_survives_a_growing_catalogue_but_not_another_shop():
    base = Lineage.of("/x/data", [f"i{i}" for i in range(1000)], T("2026-01-01"))
    grown = Lineage.of("/y/data", [f"i{i}" for i in range(1200)], T("2026-01-08"))
    foreign = Lineage.of("/z/data", [f"sku-{i}" for i in range(1000)], T("2026-01-08"))
    renamed = Lineage.of("/z/retail", [f"i{i}" for i in range(1000)], T("2026-01-08"))
    assert data_identity_mismatch(grown, base, 0.5) is None
    assert 0.7 < sketch_similarity(grown.catalog_sketch, base.catalog_sketch) < 0.95
    assert "shares ~0% of item ids" in data_identity_mismatch(foreign, base, 0.5)
    assert "event store 'retail' is not the champion's 'data'" == data_identity_mismatch(renamed, base, 0.5)
    assert data_identity_mismatch(Lineage(), base, 0.5) is None  # a version without lineage tags is not judged
    assert Lineage.from_tags(base.as_tags()) == base
    assert catalog_fingerprint(["b", "a", "a"]) == catalog_fingerprint(["a", "b"])
    # versions registered before lineage tags: the old train_cutoff tag gives the training end
    assert Lineage.from_tags({"train_cutoff": "2026-02-02"}).train_end == T("2026-02-02")


def test_one_id_contract():
    assert id_problem("u1") is None and id_problem(" " + "a" * S.MAX_ID_LENGTH + " ") is None
    assert "longer than 128" in id_problem("a" * (S.MAX_ID_LENGTH + 1))
    assert "control character" in id_problem("a\x00b") and "control character" in id_problem("a\x85b")
    # NFC: a decomposed é is the same id as the composed one
    assert normalise_ids(pd.Series(["cafe\u0301 ", "café"])).tolist() == ["café", "café"]
    rows = pd.DataFrame({S.USER_ID: ["u1", "u\x00", "u3"], S.ITEM_ID: ["i1", "i2", "x" * 129],
                         S.EVENT_TYPE: "view", S.TS: "2026-01-05 10:00"})
    valid, rejected = split_valid_rows(rows, T("2026-02-01"))
    assert valid[S.USER_ID].tolist() == ["u1"]
    assert rejected["reject_rule"].tolist() == ["id_control_character", "id_too_long"]


def test_event_keys_do_not_depend_on_dtypes_or_column_order():
    a = pd.DataFrame({S.USER_ID: ["u1"], S.ITEM_ID: ["i1"], S.EVENT_TYPE: ["view"],
                      S.TS: pd.to_datetime(["2026-01-05 10:00"], utc=True).astype("datetime64[us, UTC]"),
                      S.SESSION_ID: [None], S.QUANTITY: pd.array([1], dtype="Int64"), S.PRICE: [2.5]})
    b = a[a.columns[::-1]].astype({S.USER_ID: "string", S.ITEM_ID: object, S.QUANTITY: "float64"})
    b[S.TS] = b[S.TS].astype("datetime64[ns, UTC]")
    assert (event_keys(a) == event_keys(b)).all()
    assert (event_keys(a) != event_keys(a.assign(**{S.PRICE: [2.6]}))).all()


def test_catalogue_mapping_renames_and_names_every_missing_column():
    raw = pd.DataFrame({"product_id": ["p1"], "description": ["Apple"], "department": ["fruit"]})
    mapping = ColumnMapping.from_toml_dict({"catalog": {"item_id": "product_id", "title": "description",
                                                        "category": "department"}})
    assert list(map_catalog(raw, mapping, "p.csv").columns) == [S.ITEM_ID, S.TITLE, S.CATEGORY]
    with pytest.raises(SchemaError) as err:
        map_catalog(raw, ColumnMapping(catalog={"item_id": "product_id"}), "p.csv")
    msg = str(err.value)
    assert msg.startswith("p.csv: catalog lacks required column(s) ['title', 'category']") and "\n" not in msg
    with pytest.raises(SchemaError, match=r"category \(mapped from 'dept'\)"):
        map_catalog(raw, mapping.model_copy(update={"catalog": {**mapping.catalog, "category": "dept"}}), "p.csv")
