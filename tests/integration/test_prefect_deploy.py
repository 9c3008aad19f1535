"""The real thing: a local Prefect server + process worker (scripts/prefect_up.sh), `prefect deploy` from
prefect.yaml, a backfill deployment run to completion, a rerun that duplicates nothing. Slow (minutes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import TINY, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


def _sh(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def prefect_stack(tmp_path):
    """A local server + worker in a throwaway RECSYS_HOME holding the tiny data set; stopped afterwards."""
    from recsys.tasks.data import write_synthetic_dataset

    home = tmp_path / "home"
    write_synthetic_dataset(home / "data", TINY)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_")) and k not in ("RECSYS_HOME",)}
    env.update(RECSYS_HOME=str(home), PREFECT_PORT=str(free_port()),
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    try:
        _sh(["bash", str(SCRIPTS / "prefect_up.sh")], env, timeout=240)
        yield home, env
    finally:
        subprocess.run(["bash", str(SCRIPTS / "prefect_down.sh")], cwd=ROOT, env=env, timeout=120)


def _mlflow_runs(home: Path) -> list[tuple[str, str]]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("recsys")
    runs = client.search_runs([exp.experiment_id])
    # one parent run per training; its per-stage child runs carry `mlflow.parentRunId`
    return sorted((r.data.tags["split.test_end"], r.info.status) for r in runs
                  if "mlflow.parentRunId" not in r.data.tags)


def test_deploy_and_run_the_backfill_deployment_on_a_local_server_and_worker(prefect_stack):
    home, env = prefect_stack
    deployed = _sh(["bash", str(SCRIPTS / "prefect_deploy.sh")], env, timeout=300)
    for name in ("train/train-nightly", "backfill/backfill-manual", "batch-score/batch-score-on-promotion",
                 "collect/collect-events",
                 "evaluate-and-promote/evaluate-and-promote-manual"):
        assert name in deployed.stdout, name
    prefect = str(Path(sys.executable).parent / "prefect")
    # the deployment's work pool, schedule and the gate's concurrency limit are on the server
    env_api = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{env['PREFECT_PORT']}/api", "COLUMNS": "200"}
    nightly = _sh([prefect, "deployment", "inspect", "train/train-nightly"], env_api, 60).stdout
    assert "0 2 * * *" in nightly and "'local'" in nightly
    limit = json.loads(_sh([prefect, "concurrency-limit", "inspect", "promotion-gate", "-o", "json"], env_api, 60).stdout)
    assert limit["tag"] == "promotion-gate" and limit["concurrency_limit"] == 1

    # the server checks parameters against the flow's schema before creating a run
    bad = subprocess.run([prefect, "deployment", "run", "backfill/backfill-manual", "--params",
                          json.dumps({"params": {"start": "2026-02-02", "end": "2026-02-09", "step_days": 0}})],
                         cwd=ROOT, env=env_api, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "step_days" in bad.stdout + bad.stderr, bad.stdout[-2000:]

    params = {"params": {"start": "2026-02-02", "end": "2026-02-09", "step_days": 7,
                         "config": {"model": {"als": {"factors": 16, "iterations": 5, "device": "cpu"}}}}}
    for attempt in range(2):
        run = _sh([prefect, "deployment", "run", "backfill/backfill-manual", "--params", json.dumps(params),
                   "--watch", "--watch-timeout", "400"], env_api, timeout=420)
        assert "Completed" in run.stdout, run.stdout[-3000:]
        # two cutoffs, one FINISHED MLflow run each, also after the rerun
        assert _mlflow_runs(home) == [("2026-02-02", "FINISHED"), ("2026-02-09", "FINISHED")], attempt
    log = (home / "logs" / "prefect-worker.log").read_text()
    assert log.count("skipped (already done)") == 2
