"""MLflow look-ups for the operational flows: idempotent backfills and re-gating registered versions."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from prefect import task

from recsys.tasks import tracking
from recsys.tasks.retry import retry_transient
from recsys.tasks.logs import run_logger


def _experiment_id(experiment: str) -> str | None:
    exp = tracking.client().get_experiment_by_name(experiment)
    return exp.experiment_id if exp is not None else None


def runs_for_cutoff(experiment: str, test_end: str, config_hash: str, status: str = "FINISHED") -> list[dict]:
    """Active MLflow runs of `experiment` with tags split.test_end == test_end and config_hash, newest first."""
    exp = _experiment_id(experiment)
    if exp is None:
        return []
    flt = (f"tags.`split.test_end` = '{test_end}' and tags.config_hash = '{config_hash}' "
           f"and attributes.status = '{status}'")
    runs = tracking.client().search_runs([exp], filter_string=flt, order_by=["attributes.start_time DESC"])
    return [{"run_id": r.info.run_id, "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)} for r in runs]


@task(name="find-backfill-run", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def find_finished_run(experiment: str, test_end: str, config_hash: str) -> dict | None:
    """The newest FINISHED run already done for this cutoff with this config, if any."""
    runs = runs_for_cutoff(experiment, test_end, config_hash)
    return runs[0] if runs else None


@task(name="retire-backfill-runs", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def retire_runs(experiment: str, registered_model: str, test_end: str, config_hash: str,
                keep_run_id: str | None = None) -> list[str]:
    """Delete (MLflow soft delete) the FINISHED runs of this cutoff+config other than `keep_run_id`, and
    their registered versions unless an alias points at one. Used by `force=True` after the new run
    finished, so a cutoff is never duplicated and never left without a run."""
    c = tracking.client()
    aliased: set[str] = set()
    try:
        aliased = {str(v) for v in c.get_registered_model(registered_model).aliases.values()}
    except MlflowException:
        pass
    retired = []
    for run in runs_for_cutoff(experiment, test_end, config_hash):
        if run["run_id"] == keep_run_id:
            continue
        try:
            versions = c.search_model_versions(f"run_id = '{run['run_id']}'")
        except MlflowException:
            versions = []
        for mv in versions:
            if mv.name == registered_model and str(mv.version) not in aliased:
                c.delete_model_version(mv.name, mv.version)
        c.delete_run(run["run_id"])
        retired.append(run["run_id"])
    if retired:
        run_logger().info("cutoff %s: replaced MLflow runs %s", test_end, retired)
    return retired


@task(name="resolve-challenger", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def resolve_challenger(registered_model: str, version: str | None) -> dict:
    """The version to re-gate (default: the newest registered) and the MLflow run that produced it."""
    c = tracking.client()
    if version is None:
        versions = c.search_model_versions(f"name = '{registered_model}'")
        if not versions:
            raise ValueError(f"model '{registered_model}' has no registered versions; run `train` first")
        version = str(max(int(v.version) for v in versions))
    try:
        mv = c.get_model_version(registered_model, version)
    except MlflowException as exc:
        raise ValueError(f"model '{registered_model}' has no version {version}") from exc
    return {"version": str(mv.version), "run_id": mv.run_id}


@task(name="resolve-version", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def resolve_version(registered_model: str, alias: str, version: str | None) -> str:
    """A pinned version, or the one `alias` points at (fails clearly if the alias is unset)."""
    if version is not None:
        return str(version)
    found = tracking.alias_version(registered_model, alias)
    if found is None:
        raise ValueError(f"model '{registered_model}' has no '{alias}' alias; train and promote a model first")
    return found
