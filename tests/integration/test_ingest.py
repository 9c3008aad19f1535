"""`recsys ingest`: bad files fail with one clear line, bad rows go to quarantine with their rule and
source row, re-ingesting is idempotent, the threshold stops a bad file, MLflow gets counts + profile."""

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from recsys.features import schema as S
from recsys.features.mapping import ColumnMapping, IngestParams, SourceKind
from recsys.tasks.paths import tracking_uri

pytestmark = pytest.mark.integration

MAPPING = ColumnMapping(columns={"user_id": "visitor", "item_id": "sku", "ts": "when", "event_type": "what"},
                        event_types={"buy": "purchase"})
HEADER = "visitor,sku,when,what,price\n"


def good_lines(day: str, n: int = 20) -> str:
    return "".join(f"v{i % 7},i{i % 5},{day} {10 + i % 10}:{i:02d}:00,{'buy' if i % 3 == 0 else 'view'},2.5\n"
                   for i in range(n))


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def params(path, data_dir, **kw) -> IngestParams:
    return IngestParams(source=kw.pop("source", SourceKind.events), input=str(path), data_dir=str(data_dir),
                        mapping=kw.pop("mapping", MAPPING), **kw)


def store_rows(data_dir: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in (data_dir / "events").glob("day=*/*.parquet"))


# ---------------------------------------------------------------- malformed files: one clear line


def _truncated_gzip(tmp: Path) -> Path:
    data = gzip.compress((HEADER + good_lines("2026-01-05", 5000)).encode())
    return Path(tmp / "cut.csv.gz").write_bytes(data[: len(data) // 2]) and tmp / "cut.csv.gz"


BAD_FILES = {
    "missing file": (lambda t: t / "nope.csv", {}, "no such file"),
    "directory": (lambda t: t, {}, "is a directory"),
    "empty file": (lambda t: write(t / "e.csv", ""), {}, "the file is empty"),
    "empty gzip": (lambda t: Path(t / "e.csv.gz").write_bytes(gzip.compress(b"")) and t / "e.csv.gz", {},
                   "the file is empty"),
    "header only": (lambda t: write(t / "h.csv", HEADER), {}, "no data rows"),
    "wrong delimiter": (lambda t: write(t / "semi.csv", HEADER.replace(",", ";") +
                                        good_lines("2026-01-05").replace(",", ";")),
                        {"delimiter": ","}, "seems to use ';'"),
    "wrong encoding": (lambda t: write(t / "l1.csv", HEADER + "vé,i1,2026-01-05 10:00,view,1\n", "latin-1"),
                       {"encoding": "utf-8"}, "not utf-8 text.*--encoding latin-1"),
    "required column missing": (lambda t: write(t / "m.csv", "sku,when,what\ni1,2026-01-05,view\n"), {},
                                r"required column\(s\) \['visitor'\]"),
    "truncated gzip": (_truncated_gzip, {}, "truncated or corrupt gzip"),
    "corrupt parquet": (lambda t: Path(t / "x.parquet").write_bytes(b"PAR1" + b"\0" * 64) and t / "x.parquet", {},
                        "unreadable Parquet"),
    "not online retail": (lambda t: write(t / "o.csv", HEADER + good_lines("2026-01-05")),
                          {"source": SourceKind.online_retail}, "not the Online Retail layout"),
    "pseudonymise without salt": (lambda t: write(t / "p.csv", HEADER + good_lines("2026-01-05")),
                                  {"pseudonymise": True}, "RECSYS_PSEUDONYM_SALT"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_malformed_files_fail_with_a_clear_message(case, tmp_path, monkeypatch):
    from recsys.tasks.ingest import IngestError, preflight

    monkeypatch.delenv("RECSYS_PSEUDONYM_SALT", raising=False)
    make, kw, message = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(IngestError, match=message) as err:
        preflight(params(path, tmp_path / "data", **kw))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "data" / "events").exists()


def test_sniffed_delimiter_and_latin1_fallback(tmp_path):
    from recsys.tasks.raw_files import inspect_input, iter_chunks

    path = write(tmp_path / "l1.csv", (HEADER + "vé,i1,2026-01-05 10:00,view,1\n").replace(",", ";"), "latin-1")
    info = inspect_input(path)
    assert (info.delimiter, info.encoding) == (";", "latin-1")
    assert next(iter_chunks(info, 10))["visitor"].tolist() == ["vé"]


def test_cli_prints_one_line_and_no_traceback(tmp_path, recsys_home):
    from typer.testing import CliRunner

    from recsys.flows.cli import app

    exe = Path(sys.executable).parent / "recsys"  # once as a real process ...
    proc = subprocess.run([str(exe), "ingest", "--input", str(tmp_path / "nope.csv")], capture_output=True,
                          text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope.csv'}: no such file"]
    bad = write(tmp_path / "m.csv", "a,b\n1,2\n")  # ... then in-process (cheaper)
    result = CliRunner().invoke(app, ["ingest", "--input", str(bad), "--map", "user_id=visitor"])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "'visitor'" in lines[0], result.output


# ---------------------------------------------------------------- the flow


@pytest.fixture
def messy_csv(tmp_path):
    bad = ("v1,i1,not a date,view,2.5\n"     # row 20: unparseable_timestamp
           "v1,i1,2026-01-05 11:00,jump,2.5\n"  # row 21: unknown_event_type
           ",i1,2026-01-05 11:00,view,2.5\n")   # row 22: empty_user_id
    return write(tmp_path / "events.csv", HEADER + good_lines("2026-01-05") + bad + "v0,i0,2026-01-05 10:00:00,buy,2.5\n")


def test_bad_rows_are_quarantined_with_rule_file_and_row_and_counted_in_mlflow(messy_csv, tmp_path, recsys_home):
    from recsys.flows.ingest import ingest

    data = tmp_path / "data"
    summary = ingest(params=params(messy_csv, data, max_rejected_share=0.5))
    assert summary["rejected_by_validation"] == {"unparseable_timestamp": 1, "unknown_event_type": 1,
                                                 "empty_user_id": 1, "duplicate": 1}
    assert summary["accepted"] == 20 and summary["rows_read"] == 24
    assert store_rows(data) == 20
    q = pd.read_parquet(summary["quarantine_file"])
    assert dict(zip(q["source_row"], q["reject_rule"])) == {20: "unparseable_timestamp", 21: "unknown_event_type",
                                                           22: "empty_user_id", 23: "duplicate"}
    assert set(q["source_file"]) == {str(messy_csv)} and q.loc[q.source_row == 21, "what"].item() == "jump"
    stored = pd.read_parquet(data / "events")
    assert set(stored[S.EVENT_TYPE]) == {"view", "purchase"} and str(stored[S.TS].dt.tz) == "UTC"
    catalog = pd.read_parquet(data / "catalog.parquet")
    assert sorted(catalog[S.ITEM_ID]) == [f"i{i}" for i in range(5)]
    run = MlflowClient(tracking_uri()).get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["ingest.rejected.unparseable_timestamp"] == 1
    assert run.data.metrics["profile.users"] == 7 and run.data.metrics["profile.items"] == 5
    artifacts = {a.path for a in MlflowClient(tracking_uri()).list_artifacts(run.info.run_id)}
    assert {"profile.json", "ingest_summary.json"} <= artifacts


def test_reingesting_is_idempotent_and_a_new_day_appends(tmp_path, recsys_home):
    from recsys.flows.ingest import ingest

    data = tmp_path / "data"
    day1 = write(tmp_path / "day1.csv", HEADER + good_lines("2026-01-05"))
    first = ingest(params=params(day1, data))
    again = ingest(params=params(day1, data, chunk_rows=7))  # other chunking, same events
    assert first["store"]["store_rows"] == again["store"]["store_rows"] == store_rows(data) == 20
    assert again["accepted"] == 0 and again["already_stored"] == 20 and again["store"]["files_written"] == 0
    day2 = write(tmp_path / "day2.csv", HEADER + good_lines("2026-01-06", 11))
    third = ingest(params=params(day2, data))
    assert store_rows(data) == 31 and third["store"]["store_days"] == 2
    assert day1.read_text() == HEADER + good_lines("2026-01-05")  # raw input untouched


def test_too_many_bad_rows_fail_naming_file_rule_and_rows_and_commit_nothing(tmp_path, recsys_home):
    from recsys.flows.ingest import ingest
    from recsys.tasks.ingest import IngestError

    data = tmp_path / "data"
    good = write(tmp_path / "good.csv", HEADER + good_lines("2026-01-05"))
    ingest(params=params(good, data))
    bad = write(tmp_path / "bad.csv", HEADER + good_lines("2026-01-06", 4) +
                "".join(f"v{i},i1,2026-13-45 10:00,view,1\n" for i in range(6)))
    with pytest.raises(IngestError) as err:
        ingest(params=params(bad, data, max_rejected_share=0.2))
    msg = str(err.value)
    assert str(bad) in msg and "'unparseable_timestamp' (6 rows)" in msg and "source rows [4, 5, 6]" in msg
    assert "60.0%" in msg and "20.0% threshold" in msg
    assert store_rows(data) == 20 and not (data / "events" / "day=2026-01-06").exists()
    assert not (data / ".staging").exists()
    client = MlflowClient(tracking_uri())
    failed = client.search_runs([client.get_experiment_by_name("recsys-ingest").experiment_id],
                                filter_string="attributes.status = 'FAILED'")
    assert any("unparseable_timestamp" in r.data.tags.get("failure", "") for r in failed)


def test_pseudonymised_ids_and_the_salt_is_not_stored(tmp_path, recsys_home, monkeypatch):
    from recsys.flows.ingest import ingest

    salt = "s3cret-salt-value"
    monkeypatch.setenv("RECSYS_PSEUDONYM_SALT", salt)
    data = tmp_path / "data"
    ingest(params=params(write(tmp_path / "e.csv", HEADER + good_lines("2026-01-05")), data, pseudonymise=True))
    users = set(pd.read_parquet(data / "events")[S.USER_ID])
    assert len(users) == 7 and not users & {f"v{i}" for i in range(7)}
    for f in data.rglob("*"):
        if f.is_file():
            assert salt.encode() not in f.read_bytes(), f


def test_parquet_input_in_contract_shape_and_constant_event_type(tmp_path, recsys_home):
    from recsys.flows.ingest import ingest

    frame = pd.DataFrame({S.USER_ID: ["a", "b", "c"], S.ITEM_ID: ["x", "y", "x"],
                          S.TS: pd.to_datetime(["2026-01-05 10:00", "2026-01-05 11:00", "2026-01-06 09:00"], utc=True),
                          S.QUANTITY: [1, 2, 1], S.PRICE: [3.0, 4.0, 3.0]})
    path = tmp_path / "orders.parquet"
    frame.to_parquet(path)
    data = tmp_path / "data"
    summary = ingest(params=params(path, data, mapping=ColumnMapping(event_type="purchase")))
    assert summary["accepted"] == 3 and summary["store"]["store_days"] == 2
    assert set(pd.read_parquet(data / "events")[S.EVENT_TYPE]) == {"purchase"}


@pytest.mark.slow
def test_online_retail_ingests_and_trains(tmp_path, recsys_home):
    """The real file through the flow, then the train flow on it (about 2 minutes on 2 cores)."""
    from recsys.flows.ingest import ingest
    from recsys.flows.train import train
    from tests.integration.conftest import small_config
    from tests.unit.test_ingest_online_retail import REAL_FILE

    if not REAL_FILE.exists():
        pytest.skip(f"the real Online Retail file is not at {REAL_FILE}")
    data = tmp_path / "retail"
    summary = ingest(params=params(REAL_FILE, data, source=SourceKind.online_retail, mapping=ColumnMapping()))
    assert summary["accepted"] == 388_376 and summary["excluded_by_adapter"]["anonymous_customer"] == 134_005
    assert summary["rejected_by_validation"] == {"non_positive_price": 31, "duplicate": 6}
    result = train(config=small_config(data_dir=str(data), experiment="retail", registered_model="retail"))
    m = result["metrics"]
    assert m["test.ndcg_at_10"] > m["baseline.popularity.ndcg_at_10"] > 0


def test_synthetic_source_goes_through_the_same_store_idempotently(tmp_path, recsys_home):
    from recsys.flows.ingest import ingest

    data = tmp_path / "data"
    p = IngestParams(source=SourceKind.synthetic, input="", data_dir=str(data), users=60, items=40, days=3, seed=5)
    first = ingest(params=p)
    again = ingest(params=p)
    assert first["accepted"] > 0 and store_rows(data) == first["accepted"] == again["store"]["store_rows"]
    assert again["accepted"] == 0 and again["already_stored"] == first["accepted"]
    assert first["store"]["store_days"] == 3 and len(pd.read_parquet(data / "catalog.parquet")) == 40
    assert first["profile"]["users"] <= 60 and first["profile"]["items"] <= 40


def test_cli_threshold_failure_is_one_error_line_and_prefect_logs_no_traceback(tmp_path, recsys_home):
    import logging
    import sys as _sys

    from recsys.flows.cli_errors import _NoTraceback
    from recsys.tasks.ingest import IngestError

    bad = write(tmp_path / "bad.csv", HEADER + good_lines("2026-01-06", 2) + "v9,i1,garbage,view,1\n" * 2)
    exe = Path(_sys.executable).parent / "recsys"  # a real process: Prefect's console logs included
    proc = subprocess.run([str(exe), "ingest", "--input", str(bad), "--out", str(tmp_path / "data"),
                           "--map", "user_id=visitor", "--map", "item_id=sku", "--map", "ts=when",
                           "--map", "event_type=what"], capture_output=True, text=True, timeout=300,
                          env=os.environ.copy())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    last = errors[0]
    assert last.startswith(f"error: {bad}: 3 of 4 rows (75.0%) broke")  # "buy" is not mapped here
    assert "'unparseable_timestamp' (2 rows)" in last
    # the traceback is in the log file the line names, not on the terminal
    log = Path(last.rsplit("(full traceback: ", 1)[1].rstrip(")"))
    assert "Traceback (most recent call last)" in log.read_text()
    # the filter the CLI puts on console handlers drops every traceback (the file handler saw it first)
    records = []
    for exc in (IngestError("bad file"), KeyError("a bug")):
        try:
            raise exc
        except Exception:
            records.append(logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "failed", None,
                                             _sys.exc_info()))
    drop = _NoTraceback()
    assert all(drop.filter(r) for r in records)
    assert all(r.exc_info is None for r in records)
