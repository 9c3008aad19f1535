"""The data stage alone (read the event store + validate + build the feature state at the training cutoff,
co-visitation included): one process vs the same on Dask worker processes (recsys.tasks.cluster_events),
where the driver receives only the reduced state. Each run in a fresh process; peak RSS per process.

    python bench/data_stage.py --sizes 1e6 --dask-workers 2
    python bench/data_stage.py --sizes 1e7 --single-only        # one process only (peak RSS)
    python bench/data_stage.py --sizes 1e6 --data /tmp/store    # reuse (or keep) the generated store

Driver peak includes the Dask scheduler (a LocalCluster runs it in the driver process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCRIPT = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import pandas as pd

def peak_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2

if __name__ == "__main__":
    from recsys.features import schema as S
    from recsys.features.split import SplitParams, temporal_split
    from recsys.tasks.data import read_catalog
    base, workers = {base!r}, {workers}
    catalog = read_catalog(base)
    t0 = time.perf_counter()
    if not workers:
        from recsys.features.interactions import build_interaction_data
        from recsys.tasks.data import read_events
        from recsys.features.validation import split_valid_rows
        events, _ = split_valid_rows(read_events(base), now=pd.Timestamp.now(tz="UTC"))
        t_read = time.perf_counter() - t0
        split = temporal_split(events[S.TS].max(), SplitParams())
        state = build_interaction_data(events, catalog, split.train_end)
        n, out = len(events), {{}}
    else:
        from distributed import Client, LocalCluster
        from recsys.tasks.cluster_events import ClusterEvents
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          memory_limit=0) as cluster, Client(cluster) as client:
            t0 = time.perf_counter()
            events = ClusterEvents.load(client, base, catalog)
            t_read = time.perf_counter() - t0
            split = temporal_split(events.ts_max, SplitParams())
            state = events.state(split.train_end)
            n = events.n_events
            out = {{"worker_peak_gib": sorted(v for v in client.run(peak_gib).values())}}
    out.update(events=n, users=state.n_users, items=state.n_items, covis_nnz=int(state.covis.nnz),
               weighted_nnz=int(state.weighted.nnz), read_validate_s=t_read, total_s=time.perf_counter() - t0,
               driver_peak_gib=peak_gib())
    print(json.dumps(out))
"""


def run(base: Path, workers: int, work: Path) -> dict:
    script = work / f"data_stage_{workers}.py"  # a file: spawned workers re-import __main__
    script.write_text(SCRIPT.format(root=str(ROOT), base=str(base), workers=workers))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "wall_s": time.perf_counter() - t0}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e6")
    ap.add_argument("--dask-workers", type=int, default=2)
    ap.add_argument("--single-only", action="store_true")
    ap.add_argument("--dask-only", action="store_true")
    ap.add_argument("--data", default="", help="folder for the generated stores (kept; reused when present)")
    args = ap.parse_args()
    from bench.pipeline import generate

    work = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="data-stage-"))
    print(f"{'events':>12}{'runner':>12}{'total s':>9}{'read+valid s':>13}{'driver GiB':>11}{'worker GiB':>11}")
    for size in (float(s) for s in args.sizes.split(",")):
        base = work / f"store-{int(size)}"
        if not (base / "events").exists():
            generate(size, base)
        runs = ([] if args.dask_only else [("1 process", 0)]) + ([] if args.single_only else
                                                               [(f"dask x{args.dask_workers}", args.dask_workers)])
        for label, workers in runs:
            r = run(base, workers, work)
            if "error" in r:
                print(f"{label} at {size:g} failed:\n{r['error']}", file=sys.stderr)
                continue
            wk = f"{max(r['worker_peak_gib']):>11.2f}" if "worker_peak_gib" in r else f"{'-':>11}"
            print(f"{r['events']:>12,}{label:>12}{r['total_s']:>9.1f}{r['read_validate_s']:>13.1f}"
                  f"{r['driver_peak_gib']:>11.2f}{wk}", flush=True)
            print(json.dumps({"size": size, "runner": label, **r}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
