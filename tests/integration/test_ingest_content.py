"""Issue 13: the event store cannot be fooled. The same events in another byte form add nothing, ids the
service can never serve are quarantined by their own rule, a catalogue with other column names ingests
through a [catalog] mapping (and a bad one fails once, in preflight, before anything is staged)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.mapping import ColumnMapping, IngestParams, SourceKind
from tests.integration.test_ingest import HEADER, MAPPING, good_lines, params, store_rows, write

pytestmark = pytest.mark.integration


def _reexport(text: str, order: list[int]) -> str:
    """The same rows with CRLF line ends and the columns in another order."""
    rows = [line.split(",") for line in text.splitlines()]
    return "".join(",".join(r[i] for i in order) + "\r\n" for r in rows)


def test_a_crlf_reordered_reexport_adds_nothing_and_counts_add_up(tmp_path, recsys_home):
    from recsys.flows.ingest import ingest
    from recsys.tasks.ingest import format_summary

    data = tmp_path / "data"
    text = HEADER + good_lines("2026-01-05", 40) + good_lines("2026-01-06", 30)
    first = ingest(params=params(write(tmp_path / "a.csv", text), data))
    assert first["accepted"] == store_rows(data) == first["profile"]["rows"]
    copy = write(tmp_path / "b.csv", _reexport(text, [4, 3, 0, 2, 1]))
    assert copy.read_bytes() != (tmp_path / "a.csv").read_bytes()
    again = ingest(params=params(copy, data))
    assert again["accepted"] == 0 and again["already_stored"] == first["accepted"]
    assert store_rows(data) == first["accepted"]  # not doubled
    rejected = sum(again["rejected_by_validation"].values())
    assert again["accepted"] + rejected + again["already_stored"] == again["rows_read"] == 70
    assert f"0 new, {first['accepted']:,} already stored" in format_summary(again)
    # a file with the old events and some new ones: only the new ones are stored
    extra = write(tmp_path / "c.csv", HEADER + good_lines("2026-01-06", 30) + good_lines("2026-01-07", 5))
    third = ingest(params=params(extra, data))
    assert third["accepted"] == 5 and third["already_stored"] == 30 - third["rejected_by_validation"].get("duplicate", 0)
    assert store_rows(data) == first["accepted"] + 5


def test_synthetic_ingest_after_generate_does_not_double_the_store(tmp_path, recsys_home):
    from recsys.features.synthetic import SyntheticParams
    from recsys.flows.ingest import ingest
    from recsys.tasks.data import write_synthetic_dataset

    data = tmp_path / "data"
    generated = write_synthetic_dataset(data, SyntheticParams(n_users=60, n_items=40, n_days=3, seed=5))
    summary = ingest(params=IngestParams(source=SourceKind.synthetic, input="", data_dir=str(data), users=60,
                                         items=40, days=3, seed=5))
    assert summary["accepted"] == 0 and summary["already_stored"] == generated["events"]
    assert store_rows(data) == generated["events"]


def test_overlong_and_nul_ids_are_quarantined_by_their_own_rule(tmp_path, recsys_home):
    from recsys.flows.ingest import ingest

    data = tmp_path / "data"
    long_item = "x" * (S.MAX_ID_LENGTH + 1)
    bad = (f"v1,{long_item},2026-01-05 10:00,view,2.5\n"          # row 20
           "v\x00nul,i1,2026-01-05 10:00,view,2.5\n"              # row 21
           f"{'u' * S.MAX_ID_LENGTH},i2,2026-01-05 10:00,view,2.5\n")  # row 22: exactly the limit is fine
    summary = ingest(params=params(write(tmp_path / "ids.csv", HEADER + good_lines("2026-01-05") + bad), data,
                                   max_rejected_share=0.5))
    assert summary["rejected_by_validation"] == {"id_too_long": 1, "id_control_character": 1}
    q = pd.read_parquet(summary["quarantine_file"])
    assert dict(zip(q["source_row"], q["reject_rule"])) == {20: "id_too_long", 21: "id_control_character"}
    stored = pd.read_parquet(data / "events")
    assert stored[S.USER_ID].str.len().max() == S.MAX_ID_LENGTH and stored[S.ITEM_ID].str.len().max() <= 2
    assert not stored[S.USER_ID].str.contains("\x00").any()


def test_the_service_takes_its_id_limit_from_the_same_constant():
    import recsys.serving.app; from recsys import serving

    assert serving.app.MAX_ID_LENGTH is S.MAX_ID_LENGTH


def _recsys(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "recsys"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=os.environ.copy())


def test_a_renamed_column_catalogue_ingests_with_a_catalog_mapping_and_a_bad_one_fails_once(tmp_path, recsys_home):
    events = write(tmp_path / "ev.csv", HEADER + good_lines("2026-01-05"))
    products = write(tmp_path / "products.csv", "product_id,description,department\n" +
                     "".join(f"i{i},Product {i},dept {i % 2}\n" for i in range(5)))
    mapping = write(tmp_path / "map.toml", '[columns]\nuser_id = "visitor"\nitem_id = "sku"\nts = "when"\n'
                    'event_type = "what"\n[event_types]\nbuy = "purchase"\n'
                    '[catalog]\nitem_id = "product_id"\ntitle = "description"\n')
    data = tmp_path / "data"
    # no mapping for `category`: one line naming the file and the missing column, nothing staged
    proc = _recsys("ingest", "--input", str(events), "--catalog", str(products), "--mapping", str(mapping),
                   "--out", str(data), cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in (proc.stderr + proc.stdout).splitlines() if "catalog lacks" in line]
    assert len(errors) == 1 and str(products) in errors[0] and "'category'" in errors[0], proc.stderr[-2000:]
    assert "'title'" not in errors[0] and not (data / "events").exists()
    # --catalog-map completes the file's [catalog] section
    proc = _recsys("ingest", "--input", str(events), "--catalog", str(products), "--mapping", str(mapping),
                   "--catalog-map", "category=department", "--out", str(data), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    catalog = pd.read_parquet(data / "catalog.parquet").set_index(S.ITEM_ID)
    assert catalog.loc["i3", S.TITLE] == "Product 3" and catalog.loc["i3", S.CATEGORY] == "dept 1"
    assert store_rows(data) == 20


def test_catalog_mapping_is_validated():
    with pytest.raises(ValueError, match="unknown catalog column"):
        ColumnMapping.from_toml_dict({"catalog": {"sku": "product_id"}})
    assert MAPPING.catalog == {}
