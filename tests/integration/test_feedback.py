"""The online loop end to end: the real service process splits users between champion and challenger and logs
impressions; shoppers' events reach it over POST /events (with and without request_id); the collect flow
stores them with their request_id side table; the online-metrics and ab-decision flows (real Prefect runs,
real MLflow sqlite registry) measure the arms, stop on a sample-ratio mismatch, and promote the better arm."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import small_config, wait_ready
from tests.integration.test_cli_failures import one_error_line

pytestmark = pytest.mark.integration

MODEL = "recsys-ab"
USERS = [f"u{n:06d}" for n in range(1, 321)]


def _recsys(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "recsys"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=180, env=os.environ.copy())


@pytest.fixture(scope="module")
def two_versions(recsys_home):
    """v1 champion, v2 registered but not promoted, on their own registered model."""
    from recsys.flows.train import train

    train(config=small_config(registered_model=MODEL))
    train(config=small_config(registered_model=MODEL, promote=False))
    from recsys.tasks import tracking

    assert tracking.alias_version(MODEL) == "1" and tracking.version_numbers(MODEL) == ["1", "2"]
    return recsys_home


def test_ab_experiment_from_service_to_promotion(two_versions, service, tmp_path):
    from recsys.flows.collect import CollectParams, collect
    from recsys.flows.feedback import ab_decision, online_metrics
    from recsys.models.online_config import ABDecisionParams, OnlineParams
    from recsys.tasks import tracking

    started = _recsys("ab-start", "--version", "2", "--share", "0.5", "--model-name", MODEL)
    assert started.returncode == 0, started.stderr
    assert tracking.alias_version(MODEL, "challenger") == "2"
    bad = _recsys("ab-decision", "--model-name", MODEL, "--metric", "clicks")
    assert "metric" in one_error_line(bad) and "clicks" in bad.stderr
    missing = _recsys("online-metrics", "--impressions-dir", str(tmp_path / "nowhere"))
    assert f"--impressions-dir {tmp_path / 'nowhere'}: no such directory" in one_error_line(missing)

    # the collected events go to a store of their own: events dated today in the session's shared store would
    # move the newest day, and with it the split, of every later training test
    imp, coll, data = tmp_path / "impressions", tmp_path / "collector", tmp_path / "data"
    url, proc = service("--model-name", MODEL, "--ab-share", "0.5", "--impressions-dir", str(imp),
                        "--collector-dir", str(coll), "--poll-interval", "0")
    wait_ready(f"{url}/ready", proc)
    # /ready means the champion is loaded; the challenger is loaded next, by the same loader (a poll, not a sleep)
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/version").json()["challenger"]["version"] is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert httpx.get(f"{url}/version").json()["challenger"]["version"] == "2"

    # shoppers: the challenger's buy the item it shows first (with the request_id), the champion's one in five
    # buys its first item and sends no request_id (attributed by user, item and time)
    arms, buyers, sent = {"champion": 0, "challenger": 0}, {"champion": 0, "challenger": 0}, 0
    with httpx.Client(base_url=url, timeout=30) as http:
        for n, user in enumerate(USERS):
            answer = http.get(f"/recommendations/{user}", params={"k": 10}).json()
            arm, top = answer["variant"], answer["items"][0]["item_id"]
            arms[arm] += 1
            if arm == "challenger" or n % 5 == 0:
                rid = answer["request_id"] if arm == "challenger" else None
                events = [{"user_id": user, "event_type": t, "item_id": top, "request_id": rid, "price": 10.0,
                           "quantity": 1} for t in ("view", "purchase")]
                assert http.post("/events", json={"events": events}).json()["accepted"] == 2
                sent, buyers[arm] = sent + 2, buyers[arm] + 1
    assert min(arms.values()) > 100, arms
    proc.terminate()  # seals the open segment and flushes the impressions
    proc.wait(timeout=30)

    collected = collect(params=CollectParams(collector_dir=str(coll), data_dir=str(data)))
    assert len(list((data / "request_links").glob("*.parquet"))) == 1
    assert collected["events"] == sent
    assert sum(b["request_links"] for b in collected["batches"]) == 2 * arms["challenger"]

    report = online_metrics(params=OnlineParams(model_name=MODEL, impressions_dir=str(imp), data_dir=str(data)))
    rows = {(r["variant"], r["metric"]): r for r in report["rows"]}
    chal, champ = rows[("challenger", "purchase_conversion")], rows[("champion", "purchase_conversion")]
    assert chal["rate"] == pytest.approx(0.1)  # one of 10 shown items bought by every challenger user
    assert champ["rate"] == pytest.approx(buyers["champion"] / (10 * arms["champion"]))  # without request_id
    assert chal["ci_low"] <= chal["rate"] <= chal["ci_high"] and rows[("challenger", "ctr")]["rate"] == 0.1
    assert report["users"] == arms and report["srm_p"] > 0.001
    metrics = tracking.client().get_run(report["run_id"]).data.metrics
    assert metrics["online.challenger.v2.purchase_conversion"] == pytest.approx(0.1)
    assert metrics["online.challenger.v2.revenue_per_impression"] == pytest.approx(1.0)
    artifacts = {a.path for a in tracking.client().list_artifacts(report["run_id"], "plots")}
    assert "plots/online_by_day.png" in artifacts

    # a configured share the split does not match: the sample-ratio check stops the decision, nothing moves
    where = dict(model_name=MODEL, impressions_dir=str(imp), data_dir=str(data))
    srm = ab_decision(params=ABDecisionParams(**where, challenger_share=0.9))
    assert srm["outcome"] == "stop_srm" and not srm["promoted"]
    assert tracking.alias_version(MODEL) == "1" and tracking.alias_version(MODEL, "challenger") == "2"

    decided = ab_decision(params=ABDecisionParams(**where))
    assert decided["outcome"] == "promoted", decided["reason"]
    assert decided["lift"] > 1 and decided["p_value"] <= 0.05 and decided["ci_low"] > 0
    assert tracking.alias_version(MODEL) == "2" and tracking.alias_version(MODEL, "challenger") is None
    assert tracking.alias_version(MODEL, "previous") == "1"
    v2, v1 = tracking.version_tags(MODEL, "2"), tracking.version_tags(MODEL, "1")
    assert v2["ab.decision"] == "promoted" and v2["ab.run_id"] == decided["run_id"] and v2["ab.vs_champion"] == "1"
    assert v1["ab.vs_v2"] == "replaced" and "clears the margin" in v1["ab.vs_v2.reason"]
    assert v1["ab.vs_v2.run_id"] == decided["run_id"]
    # no challenger any more: the next daily decision says so and changes nothing
    assert ab_decision(params=ABDecisionParams(**where))["outcome"] == "no_experiment"
