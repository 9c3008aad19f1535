"""The team setup for real: a PostgreSQL backend store and an S3-compatible artifact store (moto's S3
server, the same wire protocol as AWS S3 or MinIO) behind `mlflow/start-team.sh`, the train flow talking to
it over HTTP, the run, model version and alias read back through the REST API and the artifacts found in
the bucket."""

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


S3_BUCKET = "recsys-artifacts"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_endpoint(tmp_path):
    """moto's standalone S3 server on a free loopback port, with an empty bucket."""
    boto3 = pytest.importorskip("boto3", reason="boto3 is the S3 client of the MLflow server")
    pytest.importorskip("moto.server", reason="moto[server] provides the local S3-compatible server")
    port = free_port()
    proc = start_logged([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], tmp_path / "s3.log",
                        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/moto-api/", proc, timeout=60)
        boto3.client("s3", endpoint_url=url, **_boto_credentials()).create_bucket(Bucket=S3_BUCKET)
        yield url
    finally:
        _stop(proc)


def _boto_credentials() -> dict:
    return {"aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"]}


def test_train_flow_against_a_postgres_and_s3_backed_tracking_server(recsys_home, postgres_uri, s3_endpoint,
                                                                     tmp_path, monkeypatch):
    import boto3

    from recsys.flows.train import train

    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_PORT": str(port), "MLFLOW_HOST": "127.0.0.1",
           "MLFLOW_WORKERS": "1", "MLFLOW_BACKEND_STORE_URI": postgres_uri,
           "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{S3_BUCKET}/mlflow", "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           **S3_CREDENTIALS}
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
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, **_boto_credentials())
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix="mlflow/")
                for o in page.get("Contents", [])]
        assert any(k.endswith("/plots/gate.png") for k in keys), f"gate.png not in the bucket: {keys[:20]}"
        assert any(k.endswith("/MLmodel") for k in keys), f"the registered model not in the bucket: {keys[:20]}"
        # the champion loads back through the server's artifact proxy, as `recsys serve` on another machine would
        import mlflow.pyfunc
        import pandas as pd

        served = mlflow.pyfunc.load_model("models:/recsys-pg@champion")
        top = served.predict(pd.DataFrame({"user_id": ["u000001"]}), params={"k": 5})
        assert len(top) == 5
    finally:
        _stop(proc)
