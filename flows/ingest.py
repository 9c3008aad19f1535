"""The ingest flow: raw file -> (adapter) -> contract validation -> quarantine -> event store + catalog."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from recsys.features.mapping import IngestParams, SourceKind
from recsys.tasks.ingest import check_rejected_share, commit_staged, discard_staged, log_ingest, stage_input


@flow(name="ingest", log_prints=True)
def ingest(params: IngestParams) -> dict:
    """Stage the input (read in chunks, transform, validate, quarantine rejected rows), fail without
    committing when the rejected share passes the threshold, else commit the day partitions
    idempotently and log counts + profile to MLflow. Returns the run summary. With `skip_missing_input`
    (the daily deployment) an absent input file is a day without an export: logged, nothing done."""
    if params.skip_missing_input and params.source != SourceKind.synthetic and not Path(params.input).exists():
        get_run_logger().warning("no input file at %s: nothing to ingest this time (skip_missing_input)",
                                 params.input)
        return {"skipped": True, "input": params.input, "reason": "input file absent"}
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
