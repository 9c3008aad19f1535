"""POST /events against the real service process: per-event answers, durable acks (kill -9), real-time
user state across workers and through Redis, pseudonyms at the door, and the pickup flow (exactly once)."""

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.integration.conftest import free_port, start_logged, wait_ready

pytestmark = pytest.mark.integration

USER = "u000001"
ITEMS = [f"i{n:06d}" for n in (250, 251, 252, 253)]


def views(user: str, items: list[str], session: str = "s1") -> list[dict]:
    return [{"user_id": user, "event_type": "add_to_cart", "item_id": i, "session_id": session} for i in items]


def item_ids(resp: dict) -> list[str]:
    return [i["item_id"] for i in resp["items"]]


def post(url: str, events: list[dict]) -> dict:
    r = httpx.post(f"{url}/events", json={"events": events}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def recs(url: str, user: str, fresh: bool = False) -> dict:
    # a new connection per request: with several workers, any of them may answer
    headers = {"Connection": "close"} if fresh else None
    return httpx.get(f"{url}/recommendations/{user}", params={"k": 10}, headers=headers, timeout=30).json()


def read_lines(directory: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(directory.glob("*.jsonl")) for line in p.read_text().splitlines()]


def store_rows(data: Path) -> pd.DataFrame:
    files = sorted((data / "events").glob("day=*/*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def test_posted_events_change_the_next_answers_and_bad_events_are_rejected_with_their_rule(
        first_run, service, tmp_path):
    coll = tmp_path / "collector"
    url, proc = service("--collector-dir", str(coll), "--poll-interval", "0")
    wait_ready(f"{url}/ready", proc)
    before = recs(url, USER)
    search_before = httpx.get(f"{url}/search", params={"q": "red", "user_id": USER, "k": 10}).json()
    assert before["strategy"] == "model" and before["live_events"] == 0

    batch = views(USER, ITEMS[:2]) + [{"user_id": USER, "event_type": "teleport", "item_id": ITEMS[2]}] \
        + views(USER, ITEMS[2:]) + [{"user_id": USER, "event_type": "search", "query": "red shoes"}]
    answer = post(url, batch)
    t_ack = time.monotonic()
    assert answer["accepted"] == 5 and answer["rejected"] == 1
    assert answer["results"][2] == {"index": 2, "status": "rejected", "rule": "unknown_event_type"}
    assert [r["status"] for r in answer["results"]].count("accepted") == 5

    after = recs(url, USER)
    assert time.monotonic() - t_ack < 1.0
    assert after["live_events"] == 4 and after["strategy"] == "session"
    assert item_ids(after) != item_ids(before)
    found = httpx.get(f"{url}/search", params={"q": "red", "user_id": USER, "k": 10}).json()
    assert found["live_events"] == 4 and item_ids(found) != item_ids(search_before)
    assert recs(url, "u000002")["live_events"] == 0  # nobody else's answer moved

    # the good stream holds the accepted events, the failed stream the rejected one with its rule
    good = read_lines(coll / "open")
    assert [e["item_id"] for e in good if e["event_type"] != "search"] == ITEMS
    failed = read_lines(coll / "failed")
    assert len(failed) == 1 and failed[0]["reject_rule"] == "unknown_event_type" and failed[0]["user_id"] == USER

    bad = httpx.post(f"{url}/events", json={"events": [{"user": "x"}]})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("body.events.0.user: unknown field; an event "
                                                                      "has user_id, event_type, item_id")
    assert "not valid JSON" in httpx.post(f"{url}/events", content=b"{", headers={"Content-Type":
                                                                                 "application/json"}).json()["detail"]


def test_two_workers_share_the_user_state(first_run, service, tmp_path):
    url, proc = service("--collector-dir", str(tmp_path / "collector"), "--workers", "2", "--poll-interval", "0")
    wait_ready(f"{url}/ready", proc, timeout=120)
    deadline, streak = time.monotonic() + 120, 0
    while streak < 20:  # both workers have loaded the model: 20 answers in a row on fresh connections
        assert time.monotonic() < deadline, "the second worker never loaded the model"
        streak = streak + 1 if recs(url, USER, fresh=True).get("strategy") == "model" else 0
    post(url, views(USER, ITEMS))
    seen = [recs(url, USER, fresh=True) for _ in range(20)]
    assert all(r["live_events"] == 4 and r["strategy"] == "session" for r in seen)
    # each worker writes its own segment; with two answering, usually both exist, and all events are there
    assert sorted(e["item_id"] for e in read_lines(tmp_path / "collector" / "open")) == ITEMS


@pytest.fixture
def redis_url(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does it as root)")
    port = free_port()
    proc = start_logged([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                         "--dir", str(tmp_path)], tmp_path / "redis.log")
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start: {(tmp_path / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0", client
    proc.terminate()
    proc.wait(timeout=10)


def test_redis_state_shared_by_two_services_with_pseudonyms(first_run, service, tmp_path, redis_url,
                                                            monkeypatch):
    from recsys.features.mapping import pseudonymise

    url_redis, client = redis_url
    monkeypatch.setenv("RECSYS_PSEUDONYM_SALT", "s3cret")
    common = ("--state-store", url_redis, "--pseudonymise", "--poll-interval", "0")
    a, pa_ = service("--collector-dir", str(tmp_path / "a"), *common)
    b, pb = service("--collector-dir", str(tmp_path / "b"), "--impressions-dir", str(tmp_path / "imp"), *common)
    wait_ready(f"{a}/ready", pa_)
    wait_ready(f"{b}/ready", pb)
    raw = "shopper@example.com"
    assert recs(b, raw)["live_events"] == 0
    post(a, views(raw, ITEMS))  # machine A collects, machine B answers
    seen = recs(b, raw)
    # a new visitor with live events gets the path tuned for new users (recsys.models.cold_start), named in /version
    tuned = httpx.get(f"{b}/version").json()["cold_start"]["session"].split(",")[0]
    assert seen["live_events"] == 4 and seen["strategy"] == tuned
    pseudonym = pseudonymise(pd.Series([raw]), "s3cret")[0]
    assert client.exists(f"recsys:recent:{pseudonym}") and not client.keys(f"*{raw}*")
    logged = read_lines(tmp_path / "a" / "open")
    assert {e["user_id"] for e in logged} == {pseudonym}
    assert raw not in "".join(p.read_text() for p in (tmp_path / "a").rglob("*.jsonl"))
    deadline = time.monotonic() + 10
    while not list((tmp_path / "imp").glob("*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.2)  # the impressions writer flushes every 0.25 s
    shown = "".join(p.read_text() for p in (tmp_path / "imp").glob("*.jsonl"))
    assert pseudonym in shown and raw not in shown


def test_kill_9_after_acks_loses_nothing_and_pickup_twice_stores_each_event_once(first_run, service, tmp_path):
    from recsys.flows.collect import CollectParams, collect

    coll, store = tmp_path / "collector", tmp_path / "store"
    url, proc = service("--collector-dir", str(coll), "--poll-interval", "0")
    wait_ready(f"{url}/ready", proc)
    marker = uuid.uuid4().hex[:8]
    acked = []
    for b in range(10):
        events = [{"user_id": f"u{n:06d}", "event_type": "view", "item_id": ITEMS[n % 4],
                   "session_id": f"{marker}-{b}-{n}"} for n in range(1, 21)]
        answer = post(url, events)
        acked += [e["session_id"] for e, r in zip(events, answer["results"]) if r["status"] == "accepted"]
    os.kill(proc.pid, signal.SIGKILL)  # right after the last ack
    proc.wait(timeout=10)
    assert len(acked) == 200

    params = CollectParams(collector_dir=str(coll), data_dir=str(store))
    first = collect(params=params)
    assert first["orphans_sealed"] == 1 and first["events"] == 200
    rows = store_rows(store)
    assert sorted(rows["session_id"]) == sorted(acked)  # every acknowledged event, once
    assert collect(params=params)["events"] == 0  # nothing new: nothing added
    assert len(store_rows(store)) == 200

    # a pickup that crashed after planning and ingesting, before marking the batch done: the rerun
    # re-ingests the same input, which the ingest path turns into a replace
    url2, proc2 = service("--collector-dir", str(coll), "--poll-interval", "0")
    wait_ready(f"{url2}/ready", proc2)
    post(url2, [{"user_id": "u000003", "event_type": "view", "item_id": ITEMS[0], "session_id": f"{marker}-late"}])
    proc2.terminate()  # a clean stop seals its segment
    proc2.wait(timeout=15)
    from recsys.features.mapping import IngestParams
    from recsys.flows.ingest import ingest
    from recsys.tasks.collector import build_batch_input, plan_batches

    manifest = plan_batches.fn(str(coll))[0]
    ingest(IngestParams(input=build_batch_input.fn(manifest, str(coll))["input"], data_dir=str(store),
                        max_rejected_share=1.0))
    again = collect(params=params)
    assert again["events"] == 1
    rows = store_rows(store)
    assert len(rows) == 201 and rows["session_id"].is_unique
    assert not list((coll / "sealed").glob("*")) and len(list((coll / "done").glob("*.jsonl"))) == 2


def test_an_unreachable_state_store_is_one_line_at_start(recsys_home):
    import sys

    exe = Path(sys.executable).parent / "recsys"
    port = free_port()
    proc = subprocess.run([str(exe), "serve", "--port", str(port), "--state-store", f"redis://127.0.0.1:{port}/0"],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: --state-store redis://127.0.0.1:{port}/0: ConnectionError: Error 111 connecting to "
        f"127.0.0.1:{port}. Connection refused."]
