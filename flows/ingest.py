"""The ingest flow: raw file -> (adapter) -> contract validation -> quarantine -> event store + catalog."""

from __future__ import annotations

from prefect import flow

from features.mapping import IngestParams
from tasks.ingest import check_rejected_share, commit_staged, discard_staged, log_ingest, stage_input


@flow(name="ingest", log_prints=True)
def ingest(params: IngestParams) -> dict:
    """Stage the input (read in chunks, transform, validate, quarantine rejected rows), fail without
    committing when the rejected share passes the threshold, else commit the day partitions
    idempotently and log counts + profile to MLflow. Returns the run summary."""
    staged = stage_input(params)
    try:
        check_rejected_share(staged, params.max_rejected_share)
    except Exception as exc:
        discard_staged(staged)
        log_ingest(params, staged, None, error=str(exc))
        raise
    store = commit_staged(staged)
    run_id = log_ingest(params, staged, store)
    return {**staged.summary(), "store": store, "mlflow_run_id": run_id}
