"""Simulation I/O: the service process, the shoppers' HTTP traffic (`GET /recommendations/{user}`,
`GET /search`, `POST /events` with the answer's `request_id`), the collector's sealing, the registry
aliases and the MLflow record of each simulated day. The shoppers' choices are pure
(`recsys.models.shopper`); the day-by-day sequencing is `recsys.flows.simulate`.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from recsys.features import schema as S
from recsys.features.synthetic import SyntheticParams, SyntheticWorld
from recsys.models.shopper import (ARMS, ArmTally, Reaction, Session, ShopperParams, faulty_events, plan_sessions,
                                   react, reaction_events)
from recsys.tasks import tracking
from recsys.tasks.collected_log import OPEN
from recsys.tasks.impressions import EVENT_TIME_HEADER
from recsys.tasks.logs import run_logger
from recsys.tasks.paths import catalog_path, events_dir

EXPERIMENT = "simulate"
EVENTS_PER_POST = 200


class SimulationError(RuntimeError):
    """A simulation that cannot go on (service down, events not sealed, figures that do not add up)."""


# ---- the service ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(port: int, log_path: Path, model_name: str, ab_share: float, collector_dir: Path,
                  impressions_dir: Path, timeout_s: float = 180.0) -> subprocess.Popen:
    """`recsys serve` as its own process: alias polled every second and collected events sealed every
    second, so a simulated night's collect and promotion take effect at once."""
    cmd = [sys.executable, "-m", "recsys.flows.cli", "serve", "--port", str(port), "--model-name", model_name,
           "--poll-interval", "1", "--collector-rotate-s", "1", "--ab-share", str(ab_share),
           "--collector-dir", str(collector_dir), "--impressions-dir", str(impressions_dir),
           "--log-level", "warning"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SimulationError(f"the service exited with {proc.returncode} before it was ready; "
                                  f"see {log_path}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_service(proc)
    raise SimulationError(f"the service on {url} was not ready after {timeout_s:.0f}s; see {log_path}")


def stop_service(proc: subprocess.Popen) -> None:
    """SIGTERM (the collector seals its segment on shutdown), then SIGKILL if it hangs."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _get(client: httpx.Client, path: str, headers: dict | None = None, **params) -> dict:
    r = client.get(path, params=params, headers=headers)
    if r.status_code != 200:
        raise SimulationError(f"GET {path} answered {r.status_code}: {r.text[:300]}")
    return r.json()


@task(name="wait-for-versions", cache_policy=NO_CACHE)
def wait_for_versions(url: str, model_name: str, ab: bool, timeout_s: float = 120.0) -> dict:
    """Until the service serves what the registry's aliases name (a new champion is picked up by the
    service's own poller); returns {arm: version}."""
    want = {"champion": tracking.alias_version(model_name, "champion")}
    if ab:
        want["challenger"] = tracking.alias_version(model_name, "challenger")
    deadline = time.monotonic() + timeout_s
    while True:
        info = httpx.get(f"{url}/version", timeout=10).json()
        have = {"champion": info.get("version")}
        if ab:
            have["challenger"] = (info.get("challenger") or {}).get("version")
        if all(want[a] is None or have[a] == want[a] for a in want):
            return have
        if time.monotonic() > deadline:
            raise SimulationError(f"the service at {url} serves {have}, the registry names {want} "
                                  f"(after {timeout_s:.0f}s); is it following model '{model_name}'?")
        time.sleep(0.5)


def alias_exists(model_name: str, alias: str) -> bool:
    return tracking.alias_version(model_name, alias) is not None


@task(name="set-challenger", cache_policy=NO_CACHE)
def set_challenger(model_name: str, version: str) -> None:
    tracking.client().set_registered_model_alias(model_name, "challenger", version)


# ---- one simulated day of shoppers --------------------------------------------------------------------
def item_index(world: SyntheticWorld) -> dict[str, int]:
    return {iid: i for i, iid in enumerate(world.item_ids)}


def fetch_list(get, world: SyntheticWorld, index: dict[str, int], session: Session, k: int) -> tuple[dict, np.ndarray]:
    """The list a session sees: `/search` for a searching shopper, else `/recommendations/{user}`; the
    answer and its items as world indices (-1: unknown). `get(path, **params)` does the HTTP GET."""
    user = str(world.user_ids[session.user])
    if session.query is not None:
        answer = get("/search", q=session.query, user_id=user, k=k)
    else:
        answer = get(f"/recommendations/{user}", k=k)
    return answer, np.array([index.get(it["item_id"], -1) for it in answer["items"]], dtype=np.int64)


def shop_list(world: SyntheticWorld, session: Session, answer: dict, items: np.ndarray, params: ShopperParams,
              rng: np.random.Generator, tallies: dict[str, ArmTally]) -> Reaction:
    """The shopper's reaction to a list, counted in the arm that served it."""
    reaction = react(world, session.user, items, params, rng)
    prices = world.item_price[np.where(items >= 0, items, 0)]
    tallies[answer["variant"]].add(session.user, answer["model_version"], reaction, prices)
    return reaction


@task(name="shop-one-day", cache_policy=NO_CACHE)
def shop_one_day(url: str, world: SyntheticWorld, day: int, date: str, n_sessions: int, seed: int,
                 params: ShopperParams, faulty: int) -> dict:
    """Every session of the day against the live service: fetch a list (search or recommendations), react
    to it, post the events (with the list's request_id) plus `faulty` known-bad ones. Returns per-arm
    figures and the door's counts (sent, accepted, rejected)."""
    rng = np.random.default_rng([seed, day])
    index = item_index(world)
    midnight = pd.Timestamp(date, tz="UTC")
    tallies = {arm: ArmTally() for arm in ARMS}
    outbox: list[dict] = []
    sent = accepted = rejected = 0

    def flush(client: httpx.Client) -> None:
        nonlocal outbox, sent, accepted, rejected
        while outbox:
            batch, outbox = outbox[:EVENTS_PER_POST], outbox[EVENTS_PER_POST:]
            r = client.post("/events", json={"events": batch})
            if r.status_code != 200:  # nothing of the batch is stored (the contract of POST /events)
                raise SimulationError(f"POST /events answered {r.status_code}: {r.text[:300]}")
            answer = r.json()
            sent += len(batch)
            accepted += answer["accepted"]
            rejected += answer["rejected"]

    with httpx.Client(base_url=url, timeout=30) as client:
        for n, s in enumerate(plan_sessions(world, day, n_sessions, rng)):
            user = str(world.user_ids[s.user])
            session_id = f"sim-{seed}-{date}-{n}"
            start = midnight + pd.Timedelta(seconds=s.start_s)
            # the world's clock rides along, so the impressions log can be joined with the world's events
            clock = {EVENT_TIME_HEADER: start.isoformat()}
            answer, items = fetch_list(lambda path, **q: _get(client, path, headers=clock, **q), world, index, s,
                                       params.k)
            if s.query is not None:
                outbox.append({S.USER_ID: user, S.EVENT_TYPE: S.SEARCH, S.QUERY: s.query, S.SESSION_ID: session_id,
                               S.TS: start.isoformat(), "request_id": answer["request_id"]})
            reaction = shop_list(world, s, answer, items, params, rng, tallies)
            outbox += reaction_events(world, s.user, reaction, answer["request_id"], session_id, start)
            if len(outbox) >= EVENTS_PER_POST:
                flush(client)
        if faulty:
            good = next((e for e in outbox if e[S.EVENT_TYPE] != S.SEARCH), None) or {
                S.USER_ID: str(world.user_ids[0]), S.ITEM_ID: str(world.item_ids[0]), S.EVENT_TYPE: S.VIEW,
                S.TS: (midnight + pd.Timedelta(hours=23, minutes=59)).isoformat()}
            outbox += faulty_events(good, faulty)
        flush(client)
    arms = {arm: t.figures() for arm, t in tallies.items()}
    run_logger().info("day %s: %d sessions, %d events sent (%d accepted, %d rejected at the door)", date,
                      n_sessions, sent, accepted, rejected)
    return {"date": date, "sessions": n_sessions, "arms": arms, "sent": sent, "door_accepted": accepted,
            "door_rejected": rejected, "per_user": {arm: t.per_user for arm, t in tallies.items()}}


def _written_by_a_live_service(segment: Path) -> bool:
    """An open segment with events whose writer still holds its lock (a dead writer's segment is sealed by
    the collect flow itself)."""
    try:
        fd = os.open(segment, os.O_RDONLY)
    except FileNotFoundError:  # sealed meanwhile
        return False
    try:
        if os.fstat(fd).st_size == 0:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@task(name="wait-until-sealed", cache_policy=NO_CACHE)
def wait_until_sealed(collector_dir: str, timeout_s: float = 150.0) -> None:
    """Until no open segment holds events: the service seals a segment `--collector-rotate-s` after it
    opened it (1 s when the simulation starts the service; 60 s by default)."""
    open_dir = Path(collector_dir) / OPEN
    deadline = time.monotonic() + timeout_s
    while True:
        busy = [p for p in open_dir.glob("*.jsonl") if _written_by_a_live_service(p)] if open_dir.exists() else []
        if not busy:
            return
        if time.monotonic() > deadline:
            raise SimulationError(f"{len(busy)} collected-events segment(s) in {open_dir} still open after "
                                  f"{timeout_s:.0f}s: start the service with a short --collector-rotate-s")
        time.sleep(0.25)


def store_counts(collected: dict) -> dict:
    """What the collect flow did with the collected events: stored, quarantined (by rule), and already stored."""
    stored = quarantined = already = 0
    rules: dict[str, int] = {}
    for b in collected["batches"]:
        stored += b.get("accepted", 0)
        for rule, n in (b.get("quarantined") or {}).items():
            rules[rule] = rules.get(rule, 0) + n
            quarantined += n
        already += b.get("already_stored", 0)
    return {"collected": collected["events"], "stored": stored, "quarantined_at_ingest": quarantined,
            "already_stored": already, "ingest_rules": rules}


@task(name="prepare-world", cache_policy=NO_CACHE)
def prepare_world(users: int, items: int, world_days: int, world_seed: int, start: str, days: int,
                  data_dir: str) -> tuple[SyntheticWorld, int, list[str]]:
    """The generator's world as it was at the end of the stored data (checked against the store's
    catalogue), the world-day index of the first simulated day and the simulated dates."""
    world = SyntheticWorld(SyntheticParams(n_users=users, n_items=items, n_days=world_days, seed=world_seed,
                                           start=start))
    cat_file = catalog_path(Path(data_dir))
    if not cat_file.exists():
        raise FileNotFoundError(f"{cat_file}: no catalogue; generate the world first (`recsys generate`)")
    catalog = pd.read_parquet(cat_file, columns=[S.ITEM_ID, S.TITLE])
    if len(catalog) != items or not (catalog[S.TITLE].to_numpy() == world.item_title).all():
        raise ValueError(f"{cat_file}: the catalogue is not the synthetic world of --users {users} --items "
                         f"{items} --seed {world_seed}; simulate with the settings `recsys generate` used")
    world.advance(world_days)
    # the world's clock: the day after the last stored day before today (events a storefront posted
    # today are not the world's; earlier simulations are, and are continued, not repeated)
    today = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d")
    stored = sorted(d for d in (p.name.removeprefix("day=") for p in events_dir(Path(data_dir)).glob("day=*"))
                    if d < today)
    if not stored:
        raise FileNotFoundError(f"{events_dir(Path(data_dir))}: no stored days before today; generate the world "
                                "first (`recsys generate`)")
    first = pd.Timestamp(stored[-1], tz="UTC") + pd.Timedelta(days=1)
    dates = [(first + pd.Timedelta(days=d)).strftime("%Y-%m-%d") for d in range(days)]
    if pd.Timestamp(dates[-1], tz="UTC") + pd.Timedelta(days=1) > pd.Timestamp.now(tz="UTC"):
        raise ValueError(f"simulated days would reach {dates[-1]}, past today: the service refuses events from "
                         "the future; generate the world with an earlier --start or simulate fewer days")
    return world, int((first - world.start).days), dates


def per_user_stats(per_user: dict):
    """Cumulative per-user sums -> {arm: {metric: ArmStats}} for `recsys.models.ab_test.decide`."""
    from recsys.models.ab_test import ArmStats

    out = {}
    for arm, users in per_user.items():
        rows = np.array(list(users.values()), float).reshape(-1, 4)
        out[arm] = {"ctr": ArmStats.from_users(rows[:, 1], rows[:, 0]),
                    "purchase_conversion": ArmStats.from_users(rows[:, 2], rows[:, 0]),
                    "revenue_per_impression": ArmStats.from_users(rows[:, 3], rows[:, 0])}
    return out


def arm_intervals(per_user: dict, compare: bool = False) -> dict:
    """{arm: {metric: [rate, ci_low, ci_high], "users": n}} with 95% per-user delta-method intervals; with
    `compare` also "difference": challenger - champion per metric [diff, ci_low, ci_high] (independent arms)."""
    from recsys.models.ab_test import rate_summary

    stats = per_user_stats(per_user)
    out: dict = {}
    for arm, metrics in stats.items():
        if metrics["ctr"].users == 0:
            continue
        out[arm] = {"users": metrics["ctr"].users}
        for name, st in metrics.items():
            r = rate_summary(st)
            out[arm][name] = [r.rate, r.ci_low, r.ci_high]
    if compare and all(a in stats and stats[a]["ctr"].users > 1 for a in ARMS):
        out["difference"] = {}
        for name in stats[ARMS[0]]:
            a, b = stats[ARMS[0]][name], stats[ARMS[1]][name]
            diff, half = b.rate - a.rate, 1.959964 * float(np.sqrt(a.variance + b.variance))
            out["difference"][name] = [diff, diff - half, diff + half]
    return out


@task(name="set-arms", cache_policy=NO_CACHE)
def set_arms(model_name: str, champion: str, challenger: str) -> None:
    """Both aliases at once (the feedback comparison: each night's model without / with feedback)."""
    tracking.move_champion(model_name, champion, "compare_feedback: the night's model without feedback",
                           actor="simulate")
    tracking.client().set_registered_model_alias(model_name, "challenger", challenger)


@task(name="online-decision", cache_policy=NO_CACHE)
def online_decision(per_user: dict, history: list, model_name: str, ab_share: float, alpha: float, min_lift: float,
                    challenger: str | None) -> tuple[dict, dict]:
    """The sequential A/B decision on the experiment so far (`history`: the earlier looks); a promotion
    moves `champion` to the challenger. Returns the decision and this look (for the next day's history)."""
    from recsys.models.ab_test import ABConfig, decide

    arms = per_user_stats(per_user)
    decision = decide(arms, ABConfig(alpha=alpha, min_lift=min_lift, challenger_share=ab_share), history)
    out = {"outcome": decision.outcome, "promote": decision.promote, "reason": decision.reason,
           "lift": decision.lift, "p_value": decision.p_value, "srm_p": decision.srm_p}
    if decision.promote and challenger:
        tracking.move_champion(model_name, challenger, f"online A/B: {decision.reason}", actor="simulate")
    return out, arms


# ---- MLflow ---------------------------------------------------------------------------------------------
@task(name="start-simulation-run", cache_policy=NO_CACHE)
def start_simulation_run(params: dict) -> str:
    run_id = tracking.start_run(EXPERIMENT, f"simulate {params['days']} days", {"flow": "simulate"})
    tracking.log_params(run_id, params)
    return run_id


def day_metrics(day: dict) -> dict[str, float]:
    """The day's figures as MLflow metrics (step = day number)."""
    out = {"sessions": day["sessions"], "impressions": sum(a["impressions"] for a in day["arms"].values()),
           "events.sent": day["sent"], "events.stored": day["stored"], "events.quarantined": day["quarantined"],
           "champion_version": float(day["versions"]["champion"] or 0)}
    for arm, fig in day["arms"].items():
        for key in ("sessions", "impressions", "ctr", "conversion", "revenue_per_impression"):
            out[f"{arm}.{key}"] = fig[key]
    return out


@task(name="log-simulated-day", cache_policy=NO_CACHE)
def log_day(run_id: str, step: int, day: dict) -> None:
    tracking.log_metrics(run_id, day_metrics(day), step=step)


@task(name="finish-simulation-run", cache_policy=NO_CACHE)
def finish_simulation_run(run_id: str, days: list[dict], error: BaseException | None = None,
                          pooled: dict | None = None) -> None:
    tracking.log_dict(run_id, {"days": days, "pooled": pooled or {}}, "simulation/days.json")
    if pooled:
        tracking.log_metrics(run_id, {f"pooled.{arm}.{m}{suffix}": v[i] for arm, ms in pooled.items()
                                      for m, v in ms.items() if isinstance(v, list)
                                      for i, suffix in enumerate(("", ".ci_low", ".ci_high"))})
    if days:
        from recsys.tasks.plots import simulation_figure

        tracking.log_figure(run_id, simulation_figure(days), "plots/simulation.png")
    if error is None:
        tracking.end_run(run_id)
    else:
        tracking.close_failed(run_id, error)
