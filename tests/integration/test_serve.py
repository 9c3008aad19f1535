import time

import httpx
import pytest

from tests.integration.conftest import wait_ready

pytestmark = pytest.mark.integration


def test_service_serves_the_champion_over_loopback(first_run, service):
    url, proc = service()
    wait_ready(f"{url}/ready", proc)
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    known = httpx.get(f"{url}/recommendations/u000001", params={"k": 7}).json()
    assert known["strategy"] == "model" and len(known["items"]) == 7
    assert len({i["item_id"] for i in known["items"]}) == 7 and known["request_id"]
    cold = httpx.get(f"{url}/recommendations/somebody-new", params={"k": 5}).json()
    assert cold["strategy"] == "popular" and len(cold["items"]) == 5
    version = httpx.get(f"{url}/version").json()
    assert version["version"] == known["model_version"] and version["run_id"]
    bad = httpx.get(f"{url}/recommendations/u000001", params={"k": 0})
    assert bad.status_code == 422 and "greater than or equal to 1" in bad.text


def test_service_starts_without_a_champion_and_says_not_ready(recsys_home, service):
    url, proc = service("--model-name", "no-such-model")
    wait_ready(f"{url}/health", proc)
    deadline = time.monotonic() + 30
    while True:  # the first load attempt runs in the background
        r = httpx.get(f"{url}/ready")
        if "no-such-model" in r.json()["detail"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 503 and "no 'champion' alias for model 'no-such-model'" in r.json()["detail"]
    assert httpx.get(f"{url}/recommendations/u1").status_code == 503


def test_a_registry_outage_is_named_as_such(recsys_home, tmp_path):
    """MLflow unreachable (nothing listens on its port): /ready and /version say so, not 'no alias yet'."""
    import os
    import sys
    from pathlib import Path

    from tests.integration.conftest import free_port, start_logged

    port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    proc = start_logged([str(Path(sys.executable).parent / "recsys"), "serve", "--port", str(port),
                         "--log-level", "warning", "--poll-interval", "1"], tmp_path / "serve-outage.log", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health", proc)
        deadline = time.monotonic() + 30
        while (httpx.get(f"{url}/version").json()["last_error"] is None) and time.monotonic() < deadline:
            time.sleep(0.2)
        version, ready = httpx.get(f"{url}/version").json(), httpx.get(f"{url}/ready")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert version["last_error"].startswith("model registry unreachable, cannot read 'recsys@champion'"), version
    assert f"http://127.0.0.1:{mlflow_port}" in version["last_error"]  # where it looked
    assert ready.status_code == 503 and "model registry unreachable" in ready.json()["detail"]
