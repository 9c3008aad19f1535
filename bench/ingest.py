"""Ingest benchmark: generate an event-log CSV of --rows rows (0.5% bad rows), run `recsys ingest`
on it as a separate process, print rows/s and the ingest process's peak RSS.

    .venv/bin/python bench/ingest.py --rows 10000000 [--json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]


def generate(path: Path, rows: int, seed: int = 0, batch: int = 1_000_000) -> None:
    """A plausible event log with the columns named differently from the contract (needs a mapping)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(rows // 20, 10), max(min(rows // 50, 200_000), 10)
    start = np.datetime64("2026-01-01T00:00:00", "s")
    kinds = np.array(["view", "cart", "order", "search"])
    with pacsv.CSVWriter(path, pa.schema([("visitor", pa.string()), ("sku", pa.string()), ("when", pa.string()),
                                          ("what", pa.string()), ("qty", pa.int64()), ("amount", pa.float64())])) as w:
        for lo in range(0, rows, batch):
            n = min(batch, rows - lo)
            users = rng.zipf(1.3, n) % n_users
            items = rng.zipf(1.2, n) % n_items
            ts = start + rng.integers(0, 30 * 86400, n).astype("timedelta64[s]")
            when = np.datetime_as_string(ts, unit="s").astype(object)
            what = kinds[rng.choice(4, n, p=[0.75, 0.12, 0.05, 0.08])].astype(object)
            bad = rng.random(n) < 0.005
            when[bad & (rng.random(n) < 0.5)] = "not-a-date"
            what[bad & (when != "not-a-date")] = "teleport"
            w.write_table(pa.table({
                "visitor": np.char.add("u", users.astype(str)).astype(object),
                "sku": np.char.add("i", items.astype(str)).astype(object), "when": when, "what": what,
                "qty": rng.integers(1, 4, n), "amount": np.round(rng.gamma(2.0, 8.0, n) + 0.5, 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--chunk-rows", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir, removed)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="recsys-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = work / "events.csv"
        t0 = time.perf_counter()
        generate(src, args.rows)
        gen_s = time.perf_counter() - t0
        mapping = work / "mapping.toml"
        mapping.write_text('[columns]\nuser_id = "visitor"\nitem_id = "sku"\nts = "when"\nevent_type = "what"\n'
                           'quantity = "qty"\nprice = "amount"\n\n[event_types]\ncart = "add_to_cart"\n'
                           'order = "purchase"\n')
        # a loaded machine can take longer than Prefect's default 20 s to start its temporary API
        env = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180", **os.environ, "RECSYS_HOME": str(work / "home")}
        exe = Path(sys.executable).parent / "recsys"
        t0 = time.perf_counter()
        proc = subprocess.run([str(exe), "ingest", "--source", "events", "--input", str(src), "--mapping", str(mapping),
                               "--chunk-rows", str(args.chunk_rows), "--json"], env=env, capture_output=True, text=True)
        ingest_s = time.perf_counter() - t0
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            sys.exit(f"ingest failed ({proc.returncode}): {errors[-1] if errors else proc.stderr[-3000:]}")
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # largest child process (Linux: KiB)
        result = {"rows": args.rows, "csv_mb": round(src.stat().st_size / 2**20, 1), "generate_s": round(gen_s, 1),
                  "ingest_s": round(ingest_s, 1), "rows_per_s": round(args.rows / ingest_s),
                  "stage_s": summary["stage_seconds"], "stage_rows_per_s": round(args.rows / summary["stage_seconds"]),
                  "peak_rss_mib": round(peak_kib / 1024), "accepted": summary["accepted"],
                  "rejected": summary["rejected_by_validation"], "chunk_rows": args.chunk_rows,
                  "cpus": os.cpu_count()}
        if args.json:
            print(json.dumps(result))
        else:
            print(f"ingested {args.rows:,} rows ({result['csv_mb']} MB CSV) in {ingest_s:.1f}s = "
                  f"{result['rows_per_s']:,} rows/s end to end (process start, Prefect, MLflow included; "
                  f"read+validate+stage alone {summary['stage_seconds']:.1f}s = {result['stage_rows_per_s']:,} rows/s); "
                  f"peak RSS {result['peak_rss_mib']:,} MiB; accepted {summary['accepted']:,}; "
                  f"rejected {summary['rejected_by_validation']}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
