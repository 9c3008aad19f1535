"""The team setup for real: a PostgreSQL backend store behind `mlflow/start-team.sh`, the train flow
talking to it over HTTP, and the run, model version and alias read back through the REST API."""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port, small_config, start_logged, wait_ready
from tests.integration.test_mlflow_server import BIN, ROOT, _stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture
def postgres_uri():
    """A throwaway PostgreSQL cluster on a free loopback port (as user `postgres` when we are root)."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install -y postgresql")
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2-binary is needed for a postgresql:// store")
    run_as: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="recsys-pg-", dir="/tmp"))
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pg = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        if not shutil.which("runuser"):
            pytest.skip("running as root without `runuser` to drop to the postgres user")
        os.chown(workdir, pg.pw_uid, pg.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = workdir / "data", free_port()
    subprocess.run(run_as + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "mlflow", "-E", "UTF8",
                             "--no-sync"], check=True, capture_output=True)
    subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(workdir / "pg.log"), "-w", "-t", "60",
                             "-o", f"-h 127.0.0.1 -p {port} -k {workdir} -F", "start"], check=True, capture_output=True)
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="mlflow", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def test_train_flow_against_a_postgres_backed_tracking_server(recsys_home, postgres_uri, tmp_path, monkeypatch):
    from flows.train import train

    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_PORT": str(port), "MLFLOW_HOST": "127.0.0.1",
           "MLFLOW_WORKERS": "1", "MLFLOW_BACKEND_STORE_URI": postgres_uri,
           # the S3 flag, pointed at a local directory: same proxying code path without an object store
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts")}
    proc = start_logged(["bash", str(ROOT / "mlflow" / "start-team.sh")], tmp_path / "mlflow-server.log",
                        env=env, cwd=tmp_path, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health", proc, timeout=120)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        # a stuck server fails the test in minutes instead of retrying a 120 s read seven times per request
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        result = train(config=small_config(experiment="recsys-pg", registered_model="recsys-pg"))
        assert result["promoted"] and result["version"] == "1"
        api = f"{url}/api/2.0/mlflow"
        with httpx.Client(timeout=30) as http:
            run = http.get(f"{api}/runs/get", params={"run_id": result["run_id"]}).json()["run"]
            assert run["info"]["status"] == "FINISHED"
            assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:")  # proxied by the server
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            assert 0 < metrics["test.ndcg_at_10"] <= 1
            children = http.post(f"{api}/runs/search", json={
                "experiment_ids": [run["info"]["experiment_id"]],
                "filter": f"tags.mlflow.parentRunId = '{result['run_id']}'"}).json()["runs"]
            assert len(children) == 5
            alias = http.get(f"{api}/registered-models/alias",
                             params={"name": "recsys-pg", "alias": "champion"}).json()["model_version"]
            assert alias["version"] == "1" and alias["run_id"] == result["run_id"]
            plots = http.get(f"{api}/artifacts/list", params={"run_id": result["run_id"], "path": "plots"}).json()
            assert "plots/gate.png" in {f["path"] for f in plots["files"]}
        assert list((tmp_path / "artifacts").rglob("gate.png")), "artifacts landed in the server's destination"
    finally:
        _stop(proc)
