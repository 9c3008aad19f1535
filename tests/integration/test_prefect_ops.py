"""Operational flows under the shared Prefect harness: typed parameters, idempotent backfill, resumable
runs (cached stages after a crash), re-gating, batch scoring on a local Dask cluster, artifacts."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from recsys.models.recall import ALSParams
from recsys.models.two_stage import TwoStageParams
from recsys.tasks.paths import tracking_uri
from tests.integration.conftest import log_tail, small_config, start_logged

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
# own experiment + registered model: the version numbers test_train_flow asserts stay untouched
OPS = dict(experiment="recsys-ops", registered_model="recsys-ops")


def _active_runs(client, cutoff, config_hash):
    exp = client.get_experiment_by_name(OPS["experiment"])
    return client.search_runs([exp.experiment_id], filter_string=(
        f"tags.`split.test_end` = '{cutoff}' and tags.config_hash = '{config_hash}'"))


def _task_states(flow_run_id) -> dict[str, str]:
    """task name -> state name for every task run under a flow run (subflows included)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def test_a_bad_flow_parameter_is_rejected_before_any_work(recsys_home):
    from prefect.exceptions import ParameterTypeError

    from recsys.flows.backfill import backfill

    with pytest.raises(ParameterTypeError, match="end 2026-01-01 is before start 2026-02-01"):
        backfill(params={"start": "2026-02-01", "end": "2026-01-01"})
    with pytest.raises(ParameterTypeError, match="step_days"):
        backfill(params={"start": "2026-02-01", "end": "2026-02-08", "step_days": -7})


def test_backfill_is_idempotent_and_force_replaces_without_duplicates(first_run):
    from recsys.flows.backfill import backfill
    from recsys.models.ops_config import BackfillParams, DaskOptions

    client = MlflowClient(tracking_uri())
    params = BackfillParams(start="2026-02-02", end="2026-02-09", step_days=7, config=small_config(**OPS))
    first = backfill(params=params)
    assert [r["status"] for r in first["cutoffs"]] == ["trained", "trained"]
    assert not any(r["promoted"] for r in first["cutoffs"])  # promotion off by default
    for cutoff in params.cutoffs():
        runs = _active_runs(client, cutoff, params.config_at(cutoff).config_hash())
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert runs[0].data.tags["gate.decision"] == "rejected"

    again = backfill(params=params)
    assert again["trained"] == 0 and again["skipped"] == 2
    assert [r["run_id"] for r in again["cutoffs"]] == [r["run_id"] for r in first["cutoffs"]]

    # forced, fanned out on a local Dask cluster (in-process workers: they share the test's Prefect API)
    forced = backfill(params=params.model_copy(update={"start": params.end, "force": True,
                                                       "dask": DaskOptions(local_workers=1)}))
    assert [r["status"] for r in forced["cutoffs"]] == ["replaced"]
    runs = _active_runs(client, "2026-02-09", params.config_at("2026-02-09").config_hash())
    assert [r.info.run_id for r in runs] == [forced["cutoffs"][0]["run_id"]]
    # the forced retrain reused the cached model (same data, config and code)
    states = _task_states(_subflow_of(forced["flow_run_id"], "train"))
    assert states["train-two-stage"] == "Cached"


def _subflow_of(parent_id, flow_name):
    """Id of the (nested) flow run named `flow_name` started under flow run `parent_id`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as c:
        queue = [parent_id]
        while queue:
            pid = queue.pop()
            for run in c.read_flow_runs(flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pid]))):
                if c.read_flow(run.flow_id).name == flow_name:
                    return run.id
                queue.append(run.id)
    raise AssertionError(f"no {flow_name} run under {parent_id}")


def test_a_crashed_run_resumes_from_its_finished_stages(recsys_home):
    """Kill the training process after its model was trained and evaluated (metrics in MLflow), rerun:
    train-two-stage and evaluate come back Cached and the results are identical."""
    from prefect.settings import PREFECT_API_URL

    from recsys.flows.train import train

    client = MlflowClient(tracking_uri())
    config = small_config(model=TwoStageParams(als=ALSParams(factors=12, iterations=4, device="cpu")),
                          promote=False, **OPS)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    code = ("from recsys.flows.train import train; from recsys.models.config import TrainConfig; "
            f"train(config=TrainConfig.model_validate_json({config.model_dump_json()!r}))")
    exp_id = None
    started = time.time()
    proc = start_logged([sys.executable, "-c", code], recsys_home / "crashed-run.log", cwd=ROOT, env=env,
                        start_new_session=True)
    killed_run = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            exp = client.get_experiment_by_name(OPS["experiment"])
            exp_id = exp.experiment_id if exp else exp_id
            if exp_id:
                runs = client.search_runs([exp_id], filter_string=(
                    f"tags.config_hash = '{config.config_hash()}' and attributes.status = 'RUNNING'"))
                runs = [r for r in runs if r.info.start_time / 1000 >= started - 1
                        and "test.ndcg_at_10" in r.data.metrics]
                if runs:  # trained + evaluated + logged: now kill it mid register/gate
                    killed_run = runs[0]
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.2)
    finally:
        if proc.poll() is None and killed_run is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert killed_run is not None, f"the run never reached its metrics (rc {proc.returncode}): {log_tail(proc, 2000)}"
    assert proc.returncode == -signal.SIGKILL
    results = list((recsys_home / "prefect" / "results").glob("train-two-stage-*"))
    assert results, "the trained model was not persisted under $RECSYS_HOME/prefect/results"

    state = train(config=config, return_state=True)
    resumed = state.result()
    states = _task_states(state.state_details.flow_run_id)
    assert states["train-two-stage"] == "Cached" and states["evaluate"] == "Cached", states
    assert states["start-mlflow-run"] == "Completed"  # the new attempt has its own MLflow run
    new_metrics = client.get_run(resumed["run_id"]).data.metrics
    for key, value in killed_run.data.metrics.items():
        if key.startswith(("test.", "baseline.", "recall.")):
            assert new_metrics[key] == value, key


def test_evaluate_and_promote_regates_a_registered_version(first_run):
    from recsys.flows.evaluate_promote import evaluate_and_promote
    from recsys.models.gate import GateParams
    from recsys.models.ops_config import EvaluatePromoteParams

    client = MlflowClient(tracking_uri())
    champion = str(client.get_model_version_by_alias("recsys", "champion").version)
    out = evaluate_and_promote(params=EvaluatePromoteParams(
        version=first_run["version"], config=small_config(gate=GateParams(margin=1.0))))
    assert out["version"] == first_run["version"]
    assert str(client.get_model_version_by_alias("recsys", "champion").version) == champion
    if out["version"] != champion:
        assert not out["promoted"]
    with pytest.raises(ValueError, match="has no version 999"):
        evaluate_and_promote(params=EvaluatePromoteParams(version="999", config=small_config()))
    assert str(client.get_model_version_by_alias("recsys", "champion").version) == champion


def test_batch_score_on_a_local_dask_cluster_writes_parquet_and_sqlite(first_run, recsys_home):
    from recsys.flows.batch_score import batch_score
    from recsys.models.ops_config import BatchScoreParams, DaskOptions

    out = batch_score(params=BatchScoreParams(k=5, active_days=14, partitions=3, batch_size=100,
                                              dask=DaskOptions(local_workers=2, processes=False)))
    champion = str(MlflowClient(tracking_uri()).get_model_version_by_alias("recsys", "champion").version)
    table = pd.read_parquet(out["parquet"])
    assert out["users"] == table["user_id"].nunique() > 50 and len(table) == out["rows"]
    assert set(table["model_version"]) == {champion}
    assert table.groupby("user_id")["rank"].max().max() == 5
    assert not table.duplicated(["user_id", "rank"]).any()
    with sqlite3.connect(out["sqlite"]) as con:
        n, = con.execute("select count(*) from recommendations").fetchone()
        meta = con.execute("select model_version, k, users from batch_meta").fetchone()
        first = con.execute("select item_id from recommendations where user_id = ? order by rank",
                            (table["user_id"].iloc[0],)).fetchall()
    assert n == len(table) and meta == (champion, 5, out["users"])
    assert [r[0] for r in first] == table.loc[table["user_id"] == table["user_id"].iloc[0], "item_id"].tolist()
    assert Path(out["parquet"]).parent == recsys_home / "batch"


def test_each_train_run_publishes_a_markdown_summary(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-summary"])))
    assert arts
    md = arts[0].data
    assert "| two-stage |" in md and "ndcg@10" in md and "**Gate:**" in md and "**MLflow run:**" in md


def test_the_gate_task_is_under_the_promotion_gate_concurrency_tag():
    from recsys.tasks.gate import promotion_gate

    assert "promotion-gate" in promotion_gate.tags
    assert "prefect concurrency-limit create promotion-gate 1" in (ROOT / "scripts" / "prefect_up.sh").read_text()
