"""Latency/throughput of `recsys serve` on loopback under an open-loop load (one command).

    .venv/bin/python bench/serve.py [--home DIR] [--rate 200] [--duration 10] [--json]

Without --home it makes a throwaway RECSYS_HOME, generates the default synthetic data set and trains
once (Prefect + MLflow). Then it starts the service as its own process and, per scenario, sends
requests at a FIXED arrival rate (open loop: request i is due at t0 + i/rate whether or not earlier
ones finished) from a raw-asyncio HTTP/1.1 keep-alive client, and measures latency from the due time,
so a stalled server shows up as queueing delay instead of a slower send rate (no coordinated
omission). Scenarios: /health (baseline on the same server), GET /recommendations (known users, k=10),
POST /recommendations (3-5 event sessions), /search (title words, half of them with a user), and
`events`: POST /events batches (--event-rate events/s in batches of --event-batch) and GET
/recommendations at --rate for the same users, both at once, each with its own latency figures; then
`recommendations-live`, GET /recommendations alone for those users (their real-time state now full),
whose server CPU per request minus the plain scenario's is the cost of the real-time state
(--search-distinct N cycles N distinct /search requests: the warm query-vector cache). Finally a
rate ladder for GET /recommendations finds the highest rate whose p99 stays under 50 ms with no errors.
Only 127.0.0.1 is ever contacted. The client shares the CPU with the server: each scenario reports the
client's own CPU (ms per request, and cores used) and the 1-minute load average next to its latencies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---- a minimal HTTP/1.1 keep-alive client ------------------------------------------------------
class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.last_used = time.monotonic()

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def post(path: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def open_loop(port: int, requests: list[bytes], rate: float, duration: float, warmup: float) -> dict:
    """Send `requests` (cycled) at `rate`/s for warmup+duration s; stats over the post-warm-up part."""
    pool: list[Conn] = []
    lat: list[float] = []
    errors: dict[str, int] = {}
    n_total = int((warmup + duration) * rate)
    n_warm = int(warmup * rate)
    loop = asyncio.get_running_loop()
    tasks = []

    async def one(i: int, due: float) -> None:
        conn = pool.pop() if pool else None
        if conn is not None and time.monotonic() - conn.last_used > 2.0:
            conn.writer.close()  # uvicorn closes keep-alive connections idle for 5 s: never race that
            conn = None
        try:
            if conn is None:
                conn = Conn(*await asyncio.open_connection(HOST, port))
            status = await conn.request(requests[i % len(requests)])
            done = loop.time()
            conn.last_used = time.monotonic()
            pool.append(conn)
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
        except Exception as exc:  # a broken connection is an error; do not reuse it
            done = loop.time()
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        if i >= n_warm:
            lat.append(done - due)

    t0 = loop.time() + 0.05
    for i in range(n_total):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, due)))
    t_sent = loop.time()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    wall = loop.time() - (t0 + warmup)
    for c in pool:
        c.writer.close()
    a = np.array(lat) * 1000.0
    n = len(a)
    return {"rate": rate, "requests": n, "errors": sum(errors.values()), "error_kinds": errors,
            "throughput_rps": round(n / max(wall, 1e-9), 1),
            "send_lag_ms": round((t_sent - (t0 + (n_total - 1) / rate)) * 1000, 1),
            "p50_ms": round(float(np.percentile(a, 50)), 2) if n else None,
            "p95_ms": round(float(np.percentile(a, 95)), 2) if n else None,
            "p99_ms": round(float(np.percentile(a, 99)), 2) if n else None,
            "max_ms": round(float(a.max()), 2) if n else None}


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process and its descendants (Linux /proc; 0.0 elsewhere)."""
    total, todo = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def measured(port: int, pid: int, requests: list[bytes], rate: float, duration: float, warmup: float) -> dict:
    """`open_loop` plus the server's CPU ms per request: what a request costs regardless of how much
    of the machine other processes take (wall-clock latency on a shared box does not say that)."""
    c0, p0 = cpu_seconds(pid), time.process_time()
    r = asyncio.run(open_loop(port, requests, rate, duration, warmup))
    sent = int((warmup + duration) * rate)
    r["server_cpu_ms_per_req"] = round((cpu_seconds(pid) - c0) * 1000 / max(sent, 1), 3)
    r["client_cpu_ms_per_req"] = round((time.process_time() - p0) * 1000 / max(sent, 1), 3)
    r["client_cpu_share"] = round((time.process_time() - p0) / (warmup + duration), 3)  # cores the bench itself ate
    r["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return r


# ---- setup --------------------------------------------------------------------------------------
def run(cmd: list[str], env: dict) -> None:
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def prepare_home(home: Path | None, env: dict, log) -> Path:
    if home is not None and (home / "mlflow.db").exists():
        return home
    home = home or Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    env["RECSYS_HOME"] = str(home)
    log(f"generating the default data set and training once into {home} (takes a few minutes) ...")
    run([str(BIN / "recsys"), "generate"], env)
    run([str(BIN / "recsys"), "train", "--device", "cpu"], env)
    return home


def workloads(home: Path, n: int, seed: int = 0, event_batch: int = 50,
              search_distinct: int = 0) -> dict[str, list[bytes]]:
    import pandas as pd

    rng = random.Random(seed)
    catalog = pd.read_parquet(home / "data" / "catalog.parquet")
    item_ids = catalog["item_id"].astype(str).tolist()
    words = sorted({w for t in catalog["title"].astype(str) for w in t.lower().split() if len(w) > 2})
    users = pd.read_parquet(home / "data" / "events", columns=["user_id"])["user_id"].astype(str).unique()
    user_ids = sorted(users.tolist())
    out = {"health": [get("/health")],
           "recommendations": [get(f"/recommendations/{rng.choice(user_ids)}?k=10") for _ in range(n)],
           "session": [post("/recommendations", {
               "user_id": rng.choice(user_ids) if rng.random() < 0.5 else None,
               "events": [{"item_id": rng.choice(item_ids), "event_type": rng.choice(["view", "view", "add_to_cart"])}
                          for _ in range(rng.randint(3, 5))], "k": 10}) for _ in range(n)],
           "search": [get(f"/search?q={quote(' '.join(rng.sample(words, rng.randint(1, 2))))}&k=10"
                          + (f"&user_id={rng.choice(user_ids)}" if rng.random() < 0.5 else ""))
                      for _ in range(search_distinct or n)]}
    hot = rng.sample(user_ids, min(300, len(user_ids)))  # the users that are shopping right now
    batches = []
    for _ in range(max(1, n // 20)):
        batch = []
        for _ in range(event_batch):
            kind = rng.choices(["view", "add_to_cart", "purchase", "search"], [80, 12, 3, 5])[0]
            e = {"user_id": rng.choice(hot), "event_type": kind, "session_id": f"s{rng.randrange(10**6)}"}
            if kind == "search":
                e["query"] = " ".join(rng.sample(words, 2))
            else:
                e["item_id"] = rng.choice(item_ids)
            if kind == "purchase":
                e.update(quantity=1, price=round(rng.uniform(1, 100), 2))
            batch.append(e)
        batches.append(post("/events", {"events": batch}))
    out["events"] = batches
    out["recommendations-live"] = [get(f"/recommendations/{rng.choice(hot)}?k=10") for _ in range(n)]
    return out


async def together(port: int, streams: dict[str, tuple[list[bytes], float]], duration: float, warmup: float) -> dict:
    """Several open-loop streams at once, each with its own statistics."""
    names = list(streams)
    results = await asyncio.gather(*(open_loop(port, streams[n][0], streams[n][1], duration, warmup) for n in names))
    return dict(zip(names, results))


def state_lookup_us(home: Path, users: list[str], n: int = 2000) -> float:
    """Microseconds per real-time state lookup on the service's SQLite store (what every GET adds)."""
    from recsys.serving.user_state import SqliteUserState

    store = SqliteUserState(home / "collector" / "user_state.sqlite")
    t0 = time.perf_counter()
    for i in range(n):
        store.recent(users[i % len(users)])
    store.close()
    return round((time.perf_counter() - t0) / n * 1e6, 1)


def start_service(env: dict, port: int, workers: int = 1) -> subprocess.Popen:
    cmd = [str(BIN / "recsys"), "serve", "--port", str(port), "--poll-interval", "0", "--log-level", "warning",
           "--workers", str(workers)]
    # a log file, not an unread PIPE: a full pipe buffer would block the service on its next log line
    log = Path(env["RECSYS_HOME"]) / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc.log_path = log
    return proc


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {proc.log_path.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("service not ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, help="existing RECSYS_HOME with a trained champion (else a temp one)")
    ap.add_argument("--rate", type=float, default=200.0, help="arrival rate per scenario (req/s)")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each scenario")
    ap.add_argument("--ladder", default="200,250,300,400,500,650,800",
                    help="rates tried for GET /recommendations to find the highest with p99 < 50 ms ('' = skip)")
    ap.add_argument("--ladder-duration", type=float, default=5.0)
    ap.add_argument("--scenarios", default="health,recommendations,session,search,events",
                    help="comma-separated subset of health,recommendations,session,search,events")
    ap.add_argument("--event-rate", type=float, default=1000.0, help="events/s in the events scenario")
    ap.add_argument("--event-batch", type=int, default=50, help="events per POST /events")
    ap.add_argument("--workers", type=int, default=1, help="`recsys serve --workers`")
    ap.add_argument("--search-distinct", type=int, default=0,
                    help="cycle this many distinct /search requests (0 = every request new: a cold query-vector "
                         "cache; N: after the first N requests every query repeats, the warm case)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    env = os.environ.copy()
    home = prepare_home(args.home.resolve() if args.home else None, env, log)
    env["RECSYS_HOME"] = str(home)
    env.pop("MLFLOW_TRACKING_URI", None)
    port = free_port()
    proc = start_service(env, port, args.workers)
    try:
        wait_ready(port, proc)
        loads = workloads(home, 4000, event_batch=args.event_batch, search_distinct=args.search_distinct)
        results: dict[str, dict] = {}
        for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            if name == "events":
                batch_rate = args.event_rate / args.event_batch
                log(f"events: {args.event_rate:g} events/s ({batch_rate:g} batches/s of {args.event_batch}) with "
                    f"GET /recommendations at {args.rate:g} req/s, {args.duration:g}s ...")
                c0, p0 = cpu_seconds(proc.pid), time.process_time()
                both = asyncio.run(together(port, {"events": (loads["events"], batch_rate),
                                                   "recommendations-during-events": (loads["recommendations-live"],
                                                                                     args.rate)},
                                            args.duration, args.warmup))
                both["events"]["events_per_s"] = round(both["events"]["throughput_rps"] * args.event_batch, 1)
                both["events"]["server_cpu_s_per_s_both_streams"] = round(
                    (cpu_seconds(proc.pid) - c0) / (args.duration + args.warmup), 3)
                both["events"]["client_cpu_s_per_s_both_streams"] = round(
                    (time.process_time() - p0) / (args.duration + args.warmup), 3)
                both["events"]["load_avg_1m"] = round(os.getloadavg()[0], 2)
                results.update(both)
                log(f"recommendations-live: {args.rate:g} req/s for {args.duration:g}s ...")
                results["recommendations-live"] = measured(port, proc.pid, loads["recommendations-live"], args.rate,
                                                           args.duration, args.warmup)
                results["recommendations-live"]["state_lookup_us"] = state_lookup_us(
                    home, [r.split(b" ")[1].split(b"/")[2].split(b"?")[0].decode()
                           for r in loads["recommendations-live"][:300]])
                continue
            log(f"{name}: {args.rate:g} req/s for {args.duration:g}s ...")
            results[name] = measured(port, proc.pid, loads[name], args.rate, args.duration, args.warmup)
        ladder, best = [], None
        for rate in [float(r) for r in args.ladder.split(",") if r.strip()]:
            log(f"ladder: recommendations at {rate:g} req/s ...")
            r = measured(port, proc.pid, loads["recommendations"], rate, args.ladder_duration, 1.0)
            ladder.append(r)
            if r["errors"] == 0 and r["p99_ms"] is not None and r["p99_ms"] < 50.0:
                best = rate
            else:
                break
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = {"host": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}, "workers": args.workers,
           "rate": args.rate, "duration_s": args.duration, "scenarios": results, "ladder": ladder,
           "max_rate_p99_under_50ms": best}
    if args.json:
        print(json.dumps(out))
        return
    print(f"open loop, {args.rate:g} req/s, {args.duration:g}s measured per scenario, {args.workers} worker(s), "
          f"{out['host']['cpus']} cpus, load avg {out['host']['load_avg_1m']}")
    print(f"{'scenario':<30}{'req':>7}{'err':>5}{'rps':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'srv cpu ms/req':>16}{'client cpu':>12}")
    for name, r in results.items():
        # the two streams of the events scenario share one CPU figure (server_cpu_s_per_s_both_streams)
        print(f"{name:<30}{r['requests']:>7}{r['errors']:>5}{r['throughput_rps']:>8}{r['p50_ms']:>9}"
              f"{r['p95_ms']:>9}{r['p99_ms']:>9}{r['max_ms']:>9}{r.get('server_cpu_ms_per_req', '-'):>16}"
              f"{r.get('client_cpu_ms_per_req', '-'):>12}{r.get('load_avg_1m', '-'):>7}")
    if "events" in results:
        ev, rl = results["events"], results.get("recommendations-live", {})
        print(f"events: {ev['events_per_s']} events/s in batches of {args.event_batch}, p99 {ev['p99_ms']} ms; "
              f"GET /recommendations meanwhile p99 {results['recommendations-during-events']['p99_ms']} ms; "
              f"CPU cores used: server {ev['server_cpu_s_per_s_both_streams']}, this bench (client) "
              f"{ev['client_cpu_s_per_s_both_streams']}; load avg {ev['load_avg_1m']}")
        if "recommendations" in results and rl:
            print(f"real-time state per recommendation request: {rl['state_lookup_us']} us lookup; server CPU "
                  f"{rl['server_cpu_ms_per_req']} ms/req with live events vs "
                  f"{results['recommendations']['server_cpu_ms_per_req']} ms/req without")
    for r in ladder:
        print(f"ladder {r['rate']:>6g}/s: p50 {r['p50_ms']} p99 {r['p99_ms']} ms, errors {r['errors']}, "
              f"{r['throughput_rps']} rps, server cpu {r['server_cpu_ms_per_req']} ms/req")
    print(f"highest rate with p99 < 50 ms and no errors: {best}")


if __name__ == "__main__":
    main()
