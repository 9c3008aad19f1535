"""Training-pipeline benchmark: each stage inside the pipeline vs the plain library call it wraps,
the whole Prefect + MLflow flow vs the same pure functions in a plain script, and wall time /
peak RSS of the whole flow at several data sizes.

    python bench/pipeline.py                       # 1M events, all comparisons
    python bench/pipeline.py --sizes 1e6,3e6,1e7   # + scaling table (each size in its own process)
    python bench/pipeline.py --flow-only           # only the whole flow vs the plain script
    python bench/pipeline.py --json                # the same as one JSON object
    python bench/pipeline.py --scaling-only --sizes 1e6 --dask-workers 2   # + the flow on 2 Dask workers
    python bench/pipeline.py --scaling-only --sizes 3e6 --dask-workers 2 --dask-only --data /tmp/scale-bench
    python bench/pipeline.py --scaling-only --sizes 1e6 --tune off,quick   # the flow per tuning mode (wall + CPU s)

Ratios are measured in the same run on the same machine (no stored baselines): pipeline / plain.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"als_fit": 1.05, "candidates": 1.2, "ranker_fit": 1.05, "flow_vs_script": 1.15}


def synthetic_params(n_events: float, seed: int = 7):
    from recsys.features.synthetic import SyntheticParams, events_per_day_estimate

    days = 56
    base = SyntheticParams(n_users=1000, n_items=500, n_days=days, seed=seed)
    per_user_day = events_per_day_estimate(base) / base.n_users
    n_users = max(500, int(n_events / (days * per_user_day)))
    return SyntheticParams(n_users=n_users, n_items=max(500, n_users // 4), n_days=days, seed=seed)


def timed(fn, *args, repeat: int = 1, **kwargs):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best, out


def timed_pair(plain_fn, pipeline_fn, repeat: int):
    """Best-of-`repeat` seconds of both, alternating plain and pipeline so drift and warm-up hit both alike."""
    best_plain = best_pipe = float("inf")
    out_plain = out_pipe = None
    for _ in range(repeat):
        t, out_plain = timed(plain_fn)
        best_plain = min(best_plain, t)
        t, out_pipe = timed(pipeline_fn)
        best_pipe = min(best_pipe, t)
    return best_plain, out_plain, best_pipe, out_pipe


def stage_benchmarks(data_dir: Path, repeat: int) -> dict:
    """ALS, candidate generation and ranker training: pipeline code vs the plain library."""
    import lightgbm as lgb
    import numpy as np
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from recsys.features import schema as S
    from recsys.features.interactions import build_interaction_data
    from recsys.features.split import SplitParams, temporal_split
    from recsys.models.recall import ALSParams, ALSSource
    from recsys.models.two_stage import TwoStageParams, TwoStageRecommender, fit_sources
    from recsys.models.ranker import RankerParams, train_ranker
    from recsys.tasks.data import read_catalog, read_events

    events, catalog = read_events(data_dir), read_catalog(data_dir)
    split = temporal_split(events[S.TS].max(), SplitParams())
    t_state, data = timed(build_interaction_data, events, catalog, split.train_end)
    p = ALSParams(device="cpu", iterations=10)
    out: dict = {"events": len(events), "users": data.n_users, "items": data.n_items,
                 "interaction_state_s": t_state}

    def plain_als(use_cg: bool = True):
        with threadpool_limits(1, "blas"):
            m = AlternatingLeastSquares(factors=p.factors, regularization=p.regularization, alpha=p.alpha,
                                        iterations=p.iterations, use_cg=use_cg, random_state=p.random_state,
                                        calculate_training_loss=False, num_threads=p.num_threads)
            m.fit(data.weighted, show_progress=False)
        return m

    # sub-second fits: more (cheap) repeats so one scheduler hiccup does not decide the ratio
    t_plain, plain_model, t_pipe, source = timed_pair(plain_als, lambda: ALSSource(p).fit(data), max(repeat, 5))
    t_chol, _ = timed(plain_als, False)
    out["als"] = {"pipeline_s": t_pipe, "plain_s": t_plain, "ratio": t_pipe / t_plain,
                  "cholesky_s": t_chol, "s_per_iteration": t_pipe / p.iterations}
    from recsys.models.gpu import cuda_status

    if cuda_status()[0]:
        gp = ALSParams(device="gpu", iterations=p.iterations)
        t_gpu, _ = timed(lambda: ALSSource(gp).fit(data), repeat=repeat)
        out["als"]["gpu_s"], out["als"]["gpu_s_per_iteration"] = t_gpu, t_gpu / gp.iterations

    users = np.arange(data.n_users)
    n = TwoStageParams().recall.als

    def plain_recommend():
        return plain_model.recommend(users, data.weighted[users], N=n, filter_already_liked_items=False)

    t_plain_rec, _, t_pipe_rec, _ = timed_pair(plain_recommend, lambda: source.candidates(users, n), repeat)
    out["candidates"] = {"pipeline_s": t_pipe_rec, "plain_s": t_plain_rec, "ratio": t_pipe_rec / t_plain_rec,
                         "users": len(users), "n": n}

    params = TwoStageParams(als=p)
    rec = TwoStageRecommender(data, fit_sources(data, params), params)
    label = events.loc[(events[S.TS] >= split.train_end) & (events[S.TS] < split.label_end)]
    label_users = np.unique(data.users.index_of(label[S.USER_ID].unique()))
    label_users = label_users[label_users >= 0]
    t_table, table = timed(rec.candidate_table, label_users)
    t_feat, x = timed(rec.features, table)
    out["features"] = {"pairs": len(table.users), "candidate_table_s": t_table, "pair_features_s": t_feat,
                       "rows_per_s": len(table.users) / max(t_table + t_feat, 1e-9)}

    rs = rec.ranking_set(label, label_users)
    rp = RankerParams(n_estimators=100, early_stopping_rounds=10_000)  # fixed rounds on both sides

    def plain_lgb():
        ds = lgb.Dataset(rs.x, rs.y, group=rs.groups, feature_name=rec.feature_names)
        return lgb.train({"objective": "lambdarank", "learning_rate": rp.learning_rate,
                          "num_leaves": rp.num_leaves, "min_child_samples": rp.min_child_samples,
                          "colsample_bytree": rp.colsample_bytree, "label_gain": list(rp.label_gain),
                          "seed": rp.seed, "verbose": -1, "eval_at": [rp.eval_at],
                          "lambdarank_truncation_level": max(rp.eval_at * 2, 20)}, ds,
                         num_boost_round=rp.n_estimators)

    empty = np.zeros((0, rs.x.shape[1])), np.zeros(0, int), np.zeros(0, int)
    t_plain_lgb, _, t_pipe_lgb, _ = timed_pair(
        plain_lgb, lambda: train_ranker(rs.x, rs.y, rs.groups, *empty, rec.feature_names, rp), repeat)
    out["ranker"] = {"pipeline_s": t_pipe_lgb, "plain_s": t_plain_lgb, "ratio": t_pipe_lgb / t_plain_lgb,
                     "rows": len(rs.y), "groups": len(rs.groups)}
    return out


# The same pure work the flow does, without Prefect and MLflow: load + validate, split, train, evaluate
# (metrics, baselines, curves), save the model and load it back (the registry round trip), score the loaded
# model on the test users as served (the gate) and time a fixed sample of one-user calls (its latency guardrail).
PLAIN_SCRIPT = """
import sys, time, tempfile
from pathlib import Path
sys.path.insert(0, {root!r})
from recsys.features import schema as S
from recsys.features.split import temporal_split, window
from recsys.models.config import TrainConfig
from recsys.models.evaluation import evaluate, evaluation_truth, score_users
from recsys.models.two_stage import TwoStageRecommender
from recsys.models.two_stage_training import train_two_stage
from recsys.features.validation import split_valid_rows
from recsys.tasks.data import read_catalog, read_events
import pandas as pd
t0 = time.perf_counter()
config = TrainConfig(**{config!r})
base = Path({data!r})
events = read_events(base)
events, _ = split_valid_rows(events, now=pd.Timestamp.now(tz="UTC"))
catalog = read_catalog(base)
split = temporal_split(events[S.TS].max(), config.split)
rec, _ = train_two_stage(events, catalog, split.train_end, split.label_end, config.model)
test = window(events, split.label_end, split.test_end)
evaluate(rec, test, config.k, curve_max_k=20, params=config.evaluation)
with tempfile.TemporaryDirectory() as tmp:
    rec.save(Path(tmp) / "model")
    loaded = TwoStageRecommender.load(Path(tmp) / "model")
truth, _ = evaluation_truth(test, config.evaluation)
users = truth.index.astype(str).tolist()
score_users(loaded, users, truth.tolist(), config.k)
for u in users[:config.gate.latency_users]:
    loaded.recommend_ids([u], config.k)
print(time.perf_counter() - t0)
"""

INIT_TRACKING = """
import sys, time
sys.path.insert(0, {root!r})
from recsys.tasks.paths import prepare_environment
prepare_environment()
from recsys.tasks.tracking import ensure_experiment
ensure_experiment("recsys")
print(0.0)
"""

FLOW_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from recsys.tasks.paths import prepare_environment
prepare_environment()
from recsys.models.config import TrainConfig
from recsys.flows.train import train
t0 = time.perf_counter()
train(config=TrainConfig(**{config!r}))
print(time.perf_counter() - t0)
"""


def run_child(code: str, env: dict) -> tuple[float, float, float]:
    """(seconds reported by the child, wall seconds, peak RSS GiB of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all waited-for children: run the biggest last
    return float(proc.stdout.strip().splitlines()[-1]), wall, max(peak, before) / 1024 ** 2


def flow_env(home: Path) -> dict:
    (home / "prefect").mkdir(parents=True, exist_ok=True)  # Prefect's sqlite file lives here
    env = {**os.environ, "RECSYS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
           "PREFECT_HOME": str(home / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    return env


def start_prefect_server(home: Path) -> tuple[subprocess.Popen, str]:
    """A local Prefect server on a free loopback port, as a deployment would have (scripts/prefect_up.sh)."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).parent / "prefect"
    proc = subprocess.Popen([str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=flow_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the Prefect server did not start")


def flow_vs_script(data_dir: Path, work: Path, repeat: int = 2) -> dict:
    """Plain script vs the flow with a running Prefect server (how deployments run) and with the temporary
    local API a bare `recsys train` starts. Each flow gets a fresh MLflow store, so all do the same work.
    The three run interleaved `repeat` times and the best of each is kept: on a shared 2-core machine the
    same script varied by 18% between runs, more than the flow's overhead."""
    import signal

    config = {"data_dir": str(data_dir), "model": {"als": {"device": "cpu"}}}
    runs: dict[str, list[float]] = {"script": [], "flow": [], "eph": []}
    walls, peak = [], 0.0
    for r in range(repeat):
        runs["script"].append(run_child(PLAIN_SCRIPT.format(root=str(ROOT), config=config, data=str(data_dir)),
                                        flow_env(work / f"script-{r}"))[0])
        # a deployment's tracking store already exists: create it (schema migrations) before timing the flow
        for home in (f"flow-server-{r}", f"flow-eph-{r}"):
            run_child(INIT_TRACKING.format(root=str(ROOT)), flow_env(work / home))
        server, url = start_prefect_server(work / f"server-{r}")
        try:
            flow_s, flow_wall, peak = run_child(FLOW_SCRIPT.format(root=str(ROOT), config=config),
                                                {**flow_env(work / f"flow-server-{r}"), "PREFECT_API_URL": url})
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        runs["flow"].append(flow_s)
        walls.append(flow_wall)
        runs["eph"].append(run_child(FLOW_SCRIPT.format(root=str(ROOT), config=config),
                                     flow_env(work / f"flow-eph-{r}"))[0])
    script_s, flow_s, eph_s = (min(runs[k]) for k in ("script", "flow", "eph"))
    return {"script_s": script_s, "flow_s": flow_s, "flow_wall_s": min(walls), "ratio": flow_s / script_s,
            "flow_ephemeral_s": eph_s, "ratio_ephemeral": eph_s / script_s, "peak_rss_gib": peak,
            "runs_s": runs}


# the same flow with `dask.address` set to a LocalCluster of worker processes started here: this process is
# the driver (and the scheduler); each worker reports its own peak RSS once the flow is done
DASK_FLOW_SCRIPT = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from recsys.tasks.paths import prepare_environment
prepare_environment()
from distributed import Client, LocalCluster
from recsys.models.config import TrainConfig
from recsys.flows.train import train

def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

if __name__ == "__main__":
    with LocalCluster(n_workers={workers}, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster) as client:
        config = {config!r}
        config["dask"] = {{"address": cluster.scheduler_address}}
        t0 = time.perf_counter()
        train(config=TrainConfig(**config))
        seconds = time.perf_counter() - t0
        workers = client.run(peak_kib)
    print(json.dumps({{"flow_s": seconds, "driver_peak_gib": peak_kib() / 1024 ** 2,
                      "worker_peak_gib": [v / 1024 ** 2 for v in workers.values()]}}))
"""


def dask_flow(config: dict, workers: int, env: dict, work: Path) -> dict:
    """The train flow on `workers` local worker processes: seconds, driver peak RSS, each worker's peak RSS."""
    script = work / "dask_flow.py"  # a file, not -c: worker processes are spawned and re-import __main__
    script.write_text(DASK_FLOW_SCRIPT.format(root=str(ROOT), config=config, workers=workers))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:], "wall_s": time.perf_counter() - t0}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t0
    return out


# seconds per task of the train flow, read back from the Prefect database of that run's home
STAGE_SECONDS_SCRIPT = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as c:
    runs = c.read_task_runs()
out = {}
for r in runs:
    stage = r.name.rsplit("-", 1)[0]
    out[stage] = out.get(stage, 0.0) + (r.total_run_time.total_seconds() if r.total_run_time else 0.0)
print(json.dumps(out))
"""
MAIN_STAGES = ("load-data", "tune-settings", "train-two-stage", "evaluate", "log-results", "register-model", "promotion-gate")


def stage_seconds(env: dict) -> dict[str, float]:
    """{task name: seconds} of the flow runs recorded under `env`'s PREFECT_HOME ({} if unreadable)."""
    proc = subprocess.run([sys.executable, "-c", STAGE_SECONDS_SCRIPT], env=env, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {}


def generate(n_events: float, target: Path) -> dict:
    from recsys.tasks.data import write_synthetic_dataset

    return write_synthetic_dataset(target, synthetic_params(n_events))


# `--tune` entries besides off/quick/full: quick with the model defaults before two stacked windows and
# min_child_samples 100 (what the flow cost before them)
PREVIOUS_DEFAULTS = {"quick-1w": {"train_windows": 1, "ranker": {"min_child_samples": 20}}}


def tune_config(mode: str) -> dict:
    """The config fields `recsys train --tune MODE` sets (off also turns the quick grids off)."""
    off = mode == "off"
    return {"tuning": {"mode": mode.split("-")[0]},
            "model": {"als": {"device": "cpu"}, "tune_popularity": not off, "tune_baselines": not off,
                      **PREVIOUS_DEFAULTS.get(mode, {})}}


def store_for(n: float, work: Path, data_root: Path | None) -> tuple[Path, dict]:
    """The store of `n` events: `data_root/store-<n>` (kept, reused when present: the stores
    `bench/data_stage.py --data` writes), else a fresh one in `work`; with its events, users and items."""
    base = data_root / f"store-{int(n)}" if data_root else work / f"data-{int(n)}"
    if not (base / "events").exists():
        return base, generate(n, base)
    import pyarrow.dataset as ds

    params = synthetic_params(n)
    return base, {"events": ds.dataset(base / "events", format="parquet", partitioning="hive").count_rows(),
                  "users": params.n_users, "items": params.n_items}


def scaling(sizes: list[float], work: Path, dask_workers: int = 0, tunes: tuple[str, ...] = ("quick",),
            data_root: Path | None = None, dask_only: bool = False) -> list[dict]:
    """Whole flow (as `recsys train` would run it) per size and tuning mode, each in a fresh process and
    home (wall seconds, and the CPU seconds of the flow's process tree: steadier on a shared machine); with
    `dask_workers`, the same flow again on that many local worker processes (a fresh home); `dask_only`:
    that one alone (the last tuning mode)."""
    rows = []
    for n in sizes:
        store, info = store_for(n, work, data_root)
        for tune in tunes:
            home = work / f"scale-{int(n)}-{tune}"
            config = {"data_dir": str(store), **tune_config(tune)}
            if dask_only:
                rows.append({"events": info["events"], "users": info.get("users"), "items": info.get("items"),
                             "tune": tune})
                continue
            env = flow_env(home)
            code = ("import resource, subprocess, sys; p = subprocess.run([sys.executable, '-c', sys.argv[1]]); "
                    "r = resource.getrusage(resource.RUSAGE_CHILDREN); print(r.ru_utime + r.ru_stime); "
                    "print(r.ru_maxrss); sys.exit(p.returncode)")
            inner = FLOW_SCRIPT.format(root=str(ROOT), config=config)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", code, inner], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:  # recorded, not raised: the sizes (and stages) measured so far still print
                rows.append({"events": info["events"], "tune": tune, "wall_s": wall, "error": proc.stderr[-3000:]})
                print(f"the flow at {info['events']:,} events failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                break
            lines = proc.stdout.strip().splitlines()
            rows.append({"events": info["events"], "users": info.get("users"), "items": info.get("items"),
                         "tune": tune, "flow_s": float(lines[-3]), "cpu_s": float(lines[-2]), "wall_s": wall,
                         "peak_rss_gib": int(lines[-1]) / 1024 ** 2, "stage_s": stage_seconds(env)})
            print("\n".join(scaling_table(rows[-1:])), file=sys.stderr)
        if rows and "error" in rows[-1]:
            break
        if dask_workers:
            dask_home = work / f"scale-{int(n)}-dask"
            rows[-1]["dask"] = dask_flow(config, dask_workers, flow_env(dask_home), dask_home)
            rows[-1]["dask"]["stage_s"] = stage_seconds(flow_env(dask_home))
            print("\n".join(scaling_table(rows[-1:])), file=sys.stderr)
            if "error" in rows[-1]["dask"]:
                print(f"the Dask flow at {info['events']:,} events failed:\n{rows[-1]['dask']['error']}",
                      file=sys.stderr)
    done = [r for r in rows if "error" not in r and "flow_s" in r]
    for tune in tunes:
        same = [r for r in done if r["tune"] == tune]
        for prev, cur in zip(same, same[1:]):
            cur["events_ratio"] = cur["events"] / prev["events"]
            cur["time_ratio"] = cur["flow_s"] / prev["flow_s"]
            cur["rss_ratio"] = cur["peak_rss_gib"] / prev["peak_rss_gib"]
    for r in done:  # each mode against `--tune off` at the same size
        off = next((o for o in done if o["events"] == r["events"] and o["tune"] == "off"), None)
        if off is not None and r is not off:
            r["vs_off"] = {"flow_s": r["flow_s"] / off["flow_s"], "cpu_s": r["cpu_s"] / off["cpu_s"]}
    return rows


def table(result: dict) -> str:
    lines: list[str] = []
    if "stages" in result:
        lines += stage_table(result)
    elif result.get("flow"):
        lines += flow_rows(result["flow"])
    if result.get("scaling"):
        lines += scaling_table(result["scaling"])
    return "\n".join(lines)


def stage_table(result: dict) -> list[str]:
    s, lines = result["stages"], []
    lines.append(f"data: {s['events']:,} events, {s['users']:,} users, {s['items']:,} items "
                 f"(interaction state built in {s['interaction_state_s']:.2f}s)")
    lines.append(f"{'comparison':<44}{'pipeline':>10}{'plain':>10}{'ratio':>8}{'target':>8}")
    rows = [("ALS fit (CG), same matrix/threads/params", s["als"], "als_fit"),
            ("candidates for all users vs model.recommend", s["candidates"], "candidates"),
            ("ranker fit vs lightgbm.train lambdarank", s["ranker"], "ranker_fit")]
    for label, r, key in rows:
        lines.append(f"{label:<44}{r['pipeline_s']:>9.2f}s{r['plain_s']:>9.2f}s{r['ratio']:>8.3f}"
                     f"{'<=' + str(TARGETS[key]):>8}")
    if result.get("flow"):
        lines += flow_rows(result["flow"])
    gpu = (f"; GPU {s['als']['gpu_s_per_iteration']:.3f}s/iteration" if "gpu_s" in s["als"]
           else "; GPU: not available here")
    lines.append(f"ALS Cholesky (use_cg=False) reference: {s['als']['cholesky_s']:.2f}s; "
                 f"CPU CG {s['als']['s_per_iteration']:.3f}s/iteration{gpu}")
    lines.append(f"feature building: {s['features']['pairs']:,} pairs at {s['features']['rows_per_s']:,.0f} rows/s "
                 f"(candidates {s['features']['candidate_table_s']:.2f}s + features "
                 f"{s['features']['pair_features_s']:.2f}s)")
    return lines


def flow_rows(f: dict) -> list[str]:
    return [f"{'whole flow (Prefect server + MLflow) vs script':<44}{f['flow_s']:>9.2f}s"
            f"{f['script_s']:>9.2f}s{f['ratio']:>8.3f}{'<=' + str(TARGETS['flow_vs_script']):>8}",
            f"{'  same, temporary local Prefect API':<44}{f['flow_ephemeral_s']:>9.2f}s"
            f"{f['script_s']:>9.2f}s{f['ratio_ephemeral']:>8.3f}"]


def scaling_table(rows: list[dict]) -> list[str]:
    lines = [f"{'events':>12}{'users':>9}{'items':>8}{'tune':>9}{'flow s':>10}{'CPU s':>9}{'peak RSS GiB':>14}"
             f"{'x events':>10}{'x time':>8}{'x RSS':>8}{'vs off (wall/CPU)':>20}"]
    if rows:
        for r in rows:
            if "flow_s" not in r and "error" not in r:  # --dask-only
                continue
            if "error" in r:
                lines.append(f"{r['events']:>12,}  FAILED after {r['wall_s']:.0f}s: {r['error'].strip().splitlines()[-1]}")
                continue
            vs = r.get("vs_off")
            lines.append(f"{r['events']:>12,}{r.get('users') or 0:>9,}{r.get('items') or 0:>8,}{r.get('tune', ''):>9}"
                         f"{r['flow_s']:>10.1f}{r.get('cpu_s', float('nan')):>9.1f}{r['peak_rss_gib']:>14.2f}"
                         f"{r.get('events_ratio', float('nan')):>10.2f}{r.get('time_ratio', float('nan')):>8.2f}"
                         f"{r.get('rss_ratio', float('nan')):>8.2f}"
                         + (f"{vs['flow_s']:>12.2f} / {vs['cpu_s']:.2f}" if vs else ""))
        for r in rows:  # the same flow on Dask workers
            d = r.get("dask")
            if d and "error" not in d:
                single = "flow_s" in r
                lines.append(f"{r['events']:>12,}  on {len(d['worker_peak_gib'])} Dask workers: flow {d['flow_s']:.1f}s"
                             + (f" (single process {r['flow_s']:.1f}s)" if single else "") +
                             f", driver peak {d['driver_peak_gib']:.2f} GiB, "
                             f"largest worker peak {max(d['worker_peak_gib']):.2f} GiB"
                             + (f" (single process {r['peak_rss_gib']:.2f} GiB)" if single else ""))
                if d.get("stage_s"):
                    lines.append(f"{r['events']:>12,} dask: " + ", ".join(
                        f"{name} {d['stage_s'][name]:.0f}s" for name in MAIN_STAGES if name in d["stage_s"]))
            elif d:
                lines.append(f"{r['events']:>12,}  on Dask: FAILED: {d['error'].strip().splitlines()[-1]}")
        for r in rows:  # the issue's bar: a worker at a larger size against one process at a smaller one
            d = r.get("dask") or {}
            for s in rows:
                if "worker_peak_gib" in d and "peak_rss_gib" in s and s["events"] < r["events"]:
                    lines.append(f"largest worker at {r['events']:,} events {max(d['worker_peak_gib']):.2f} GiB vs one "
                                 f"process at {s['events']:,} {s['peak_rss_gib']:.2f} GiB: "
                                 f"{max(d['worker_peak_gib']) / s['peak_rss_gib']:.2f}x")
        for r in rows:  # where each size spent its time
            stages = r.get("stage_s") or {}
            if stages:
                lines.append(f"{r['events']:>12,} {r.get('tune', '')}: " + ", ".join(
                    f"{name} {stages[name]:.0f}s" for name in MAIN_STAGES if name in stages))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=float, default=1e6, help="events for the stage and flow comparisons")
    ap.add_argument("--sizes", default="", help="comma-separated event counts for the scaling table, e.g. 1e6,3e6,1e7")
    ap.add_argument("--repeat", type=int, default=2, help="repeat each timed stage, keep the best")
    ap.add_argument("--skip-flow", action="store_true", help="skip the whole-flow vs script comparison")
    ap.add_argument("--flow-repeat", type=int, default=2,
                    help="run script and flows interleaved this many times, keep the best of each")
    ap.add_argument("--flow-only", action="store_true", help="only the whole-flow vs script comparison")
    ap.add_argument("--scaling-only", action="store_true", help="only the --sizes table (no stage/flow comparisons)")
    ap.add_argument("--dask-workers", type=int, default=0,
                    help="with --sizes: also run each size's flow on this many local Dask worker processes")
    ap.add_argument("--tune", default="quick",
                    help="with --sizes: comma-separated tuning modes to run the flow with (off, quick, full; "
                         "quick-1w: quick with the earlier one-window defaults)")
    ap.add_argument("--data", default=None, help="folder of the --sizes stores (store-<events>, as "
                    "bench/data_stage.py --data writes them): reused when present, written there (kept) when not")
    ap.add_argument("--dask-only", action="store_true", help="with --sizes and --dask-workers: the Dask flow only")
    ap.add_argument("--workdir", default=None, help="where to write generated data (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        result: dict = {"targets": TARGETS}
        if not args.scaling_only:
            print(f"generating {args.events:,.0f} events ...", file=sys.stderr)
            generate(args.events, work / "data")
        if not args.scaling_only and not args.flow_only:
            result["stages"] = stage_benchmarks(work / "data", args.repeat)
            print("\n".join(stage_table(result)), file=sys.stderr)  # kept in the log if a later part fails
        if not args.skip_flow and not args.scaling_only:
            print("whole flow vs plain script ...", file=sys.stderr)
            result["flow"] = flow_vs_script(work / "data", work, args.flow_repeat)
            print("\n".join(flow_rows(result["flow"])), file=sys.stderr)
        sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
        if sizes:
            print(f"scaling over {sizes} ...", file=sys.stderr)
            result["scaling"] = scaling(sizes, work, args.dask_workers,
                                        tuple(t for t in args.tune.split(",") if t),
                                        Path(args.data) if args.data else None, args.dask_only and args.dask_workers > 0)
    print(json.dumps(result, indent=2) if args.json else table(result))
    if any("error" in r or "error" in r.get("dask", {}) for r in result.get("scaling", [])):
        sys.exit(1)


if __name__ == "__main__":
    main()
