"""Manual `recsys promote` / `recsys rollback` emit the gate's `recsys.champion.promoted` event, the one the
`batch-score-on-promotion` deployment (prefect.yaml) is triggered by, to the Prefect server in use."""

import fnmatch
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.integration
NAME = "recsys-events"
ROOT = Path(__file__).resolve().parents[2]


def recsys(*args: str, env: dict) -> str:
    out = subprocess.run([str(Path(sys.executable).parent / "recsys"), *args], capture_output=True, text=True,
                         timeout=180, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def promoted_events(api: str, timeout: float = 60.0, want: int = 2) -> list[dict]:
    body = {"filter": {"event": {"name": ["recsys.champion.promoted"]},
                       "any_resource": {"id": [f"recsys.model.{NAME}"]}}, "limit": 50}
    deadline = time.monotonic() + timeout
    while True:  # the server persists events in batches
        events = httpx.post(f"{api}/events/filter", json=body, timeout=10).json()["events"]
        if len(events) >= want or time.monotonic() > deadline:
            return sorted(events, key=lambda e: e["occurred"])
        time.sleep(0.5)


def test_manual_promote_and_rollback_emit_the_promotion_event(first_run):
    import mlflow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from recsys.tasks import tracking
    from recsys.tasks.reporting import PROMOTED_EVENT, announce_champion_move

    source = tracking.client().get_model_version("recsys", first_run["version"]).source
    v1, v2 = (str(mlflow.register_model(source, NAME).version) for _ in range(2))
    api = PREFECT_API_URL.value()
    env = {**os.environ, "PREFECT_API_URL": api}
    tracking.move_champion(NAME, v1, "first")
    # without a Prefect server configured there is no automation to trigger: nothing sent, and it says so
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert announce_champion_move(NAME, v1, "first", "ops").startswith(
            "PREFECT_API_URL is not set: no recsys.champion.promoted event sent")

    out = recsys("promote", "--model-name", NAME, "--version", v2, "--reason", "second", "--who", "ops", env=env)
    assert f"{PROMOTED_EVENT} event" in out and f"sent to {api}" in out, out
    out = recsys("rollback", "--model-name", NAME, "--reason", "bad numbers", env=env)
    assert f"champion {v2} -> {v1}" in out and "sent to" in out, out

    events = promoted_events(api)
    assert [e["payload"]["version"] for e in events] == [v2, v1]
    assert [e["payload"]["reason"] for e in events] == ["manual: second", "rollback: bad numbers"]
    assert [e["payload"]["actor"] for e in events] == ["ops", "recsys rollback"]
    assert {e["payload"]["run_id"] for e in events} == {first_run["run_id"]}
    # what the deployment's trigger expects
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    trigger = next(d for d in deployments if d["name"] == "batch-score-on-promotion")["triggers"][0]
    assert trigger["expect"] == [PROMOTED_EVENT]
    assert all(fnmatch.fnmatch(e["resource"]["prefect.resource.id"], trigger["match"]["prefect.resource.id"])
               for e in events)
