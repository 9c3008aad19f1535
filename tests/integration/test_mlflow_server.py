"""MLflow as servers: the tracking server's REST API shows runs, metrics, model versions and aliases;
`mlflow models serve` serves the registered champion as a second way to serve."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port, start_logged, wait_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _stop(proc: subprocess.Popen) -> None:
    """The server runs its workers as children: signal its whole process group (started as a new session)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def local_server(recsys_home):
    """mlflow/start-local.sh on a free loopback port over the session's sqlite store."""
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_PORT": str(port),
           "RECSYS_HOME": str(recsys_home)}
    proc = start_logged(["bash", str(ROOT / "mlflow" / "start-local.sh")], recsys_home / f"mlflow-{port}.log",
                        env=env, cwd=recsys_home, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health", proc, timeout=90)
        yield url
    finally:
        _stop(proc)


def test_tracking_server_rest_api_shows_runs_metrics_versions_and_aliases(first_run, local_server):
    api = f"{local_server}/api/2.0/mlflow"
    with httpx.Client(timeout=30) as http:
        exp = http.get(f"{api}/experiments/get-by-name", params={"experiment_name": "recsys"}).json()["experiment"]
        runs = http.post(f"{api}/runs/search", json={
            "experiment_ids": [exp["experiment_id"]], "filter": "tags.flow = 'train'", "max_results": 50}).json()
        parents = {r["info"]["run_id"]: r for r in runs["runs"]}
        assert first_run["run_id"] in parents
        run = parents[first_run["run_id"]]
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert 0 < metrics["test.ndcg_at_10"] <= 1 and "baseline.popularity.ndcg_at_10" in metrics
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["gate.decision"] == "promoted"
        children = http.post(f"{api}/runs/search", json={
            "experiment_ids": [exp["experiment_id"]],
            "filter": f"tags.mlflow.parentRunId = '{first_run['run_id']}'"}).json()["runs"]
        assert len(children) == 5
        model = http.get(f"{api}/registered-models/get", params={"name": "recsys"}).json()["registered_model"]
        aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
        assert "champion" in aliases
        mv = http.get(f"{api}/model-versions/get", params={"name": "recsys", "version": first_run["version"]}).json()
        mv_tags = {t["key"]: t["value"] for t in mv["model_version"]["tags"]}
        assert mv["model_version"]["run_id"] == first_run["run_id"] and mv_tags["gate.decision"] == "promoted"
        champ = http.get(f"{api}/registered-models/alias", params={"name": "recsys", "alias": "champion"}).json()
        assert champ["model_version"]["version"] == aliases["champion"]


def test_mlflow_models_serve_serves_the_champion(first_run, recsys_home, tmp_path):
    port = free_port()
    proc = start_logged([str(BIN / "mlflow"), "models", "serve", "-m", "models:/recsys@champion",
                         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], tmp_path / "models-serve.log",
                        cwd=recsys_home,  # not the repo: the model carries its own code
                        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/ping", proc, timeout=120)
        body = {"dataframe_split": {"columns": ["user_id"], "data": [["u000001"], ["nobody"]]}, "params": {"k": 5}}
        resp = httpx.post(f"{url}/invocations", json=body, timeout=60)
        assert resp.status_code == 200, resp.text
        rows = resp.json()["predictions"]
        by_user = {}
        for row in rows:
            by_user.setdefault(row["user_id"], []).append(row)
        assert {u: len(r) for u, r in by_user.items()} == {"u000001": 5, "nobody": 5}
        assert [r["rank"] for r in by_user["u000001"]] == [1, 2, 3, 4, 5]
        assert all(r["item_id"] for r in rows)
    finally:
        _stop(proc)
