"""The collect flow: the service's collected events (serving/collector.py) into the event store, once."""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from recsys.features.mapping import IngestParams, SourceKind
from recsys.flows.ingest import ingest
from recsys.tasks.collector import build_batch_input, finish_batch, plan_batches, seal_orphans
from recsys.tasks.feedback import store_request_links


class CollectParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collector_dir: str | None = Field(None, description="the service's collector directory; default "
                                                        "$RECSYS_HOME/collector")
    data_dir: str | None = Field(None, description="event store; default $RECSYS_HOME/data")
    # the events were validated at the door by the same rules; what ingest still rejects (duplicates of a
    # retried batch) goes to its quarantine, and failing the pickup would only hold the stream back
    max_rejected_share: float = Field(1.0, ge=0.0, le=1.0)
    experiment: str = Field("recsys-ingest", min_length=1)


@flow(name="collect", log_prints=True)
def collect(params: CollectParams = CollectParams()) -> dict:
    """Seal segments whose writer died, finish batches an earlier run left, then bring the new sealed
    segments in through the ingest flow (validation, quarantine, idempotent partitions, MLflow run)."""
    orphans = seal_orphans(params.collector_dir)
    batches = []
    for manifest in plan_batches(params.collector_dir):
        built = build_batch_input(manifest, params.collector_dir)
        if built["events"]:
            # already pseudonymised at the door: ingest must not hash the pseudonyms again
            summary = ingest(IngestParams(source=SourceKind.events, input=built["input"], data_dir=params.data_dir,
                                          max_rejected_share=params.max_rejected_share, pseudonymise=False,
                                          experiment=params.experiment))
            built.update(accepted=summary["accepted"], already_stored=summary["already_stored"],
                         quarantined={**summary["excluded_by_adapter"], **summary["rejected_by_validation"]},
                         store=summary["store"], mlflow_run_id=summary["mlflow_run_id"])
            # request_id is not a store column: a side table keyed like the stored events (tasks/feedback.py)
            built["request_links"] = store_request_links(built["input"], params.data_dir)
        finish_batch(manifest, params.collector_dir)
        batches.append(built)
    events = sum(b["events"] for b in batches)
    print(f"collected {events} events from {sum(b['segments'] for b in batches)} segments in {len(batches)} "
          f"batch(es); {orphans} orphaned segment(s) sealed")
    return {"orphans_sealed": orphans, "batches": batches, "events": events}
