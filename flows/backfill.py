"""Backfill: train + evaluate at a series of cutoffs, each with the data up to that date only.

Idempotent: a cutoff that already has a FINISHED MLflow run with the same config hash is skipped;
`force=True` retrains it and then retires the older run (and its unaliased model version), so a cutoff
never has two runs. Promotion is off unless asked for. Cutoffs fan out on threads (`max_parallel`) or
on a Dask cluster (`dask.address` / `dask.local_workers`); each cutoff is a `train` subflow run.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.runtime import flow_run

from recsys.flows.runners import task_runner
from recsys.models.config import TrainConfig
from recsys.models.ops_config import BackfillParams
from recsys.tasks.ops import find_finished_run, retire_runs
from recsys.tasks.reporting import publish_table


@task(name="train-at-cutoff")
def train_at_cutoff(config: TrainConfig) -> dict:
    """One cutoff = one `train` flow run (nested under this task, so it can run on a Dask worker)."""
    # imported here, not at module level: Dask ships this task by value (cloudpickle), and the flow must
    # resolve its `TrainConfig` annotation from the real module on the worker
    from recsys.flows.train import train

    result = train(config=config)
    return {k: v for k, v in result.items() if k != "metrics"} | {"ndcg": _ndcg(result, config.k)}


def _ndcg(result: dict, k: int) -> float | None:
    value = result.get("metrics", {}).get(f"test.ndcg_at_{k}")
    return round(float(value), 4) if value is not None else None


@flow(name="backfill-fan-out", log_prints=True)
def fan_out(configs: list[TrainConfig]) -> list[dict]:
    futures = [train_at_cutoff.submit(c) for c in configs]
    results = []
    for i, (config, future) in enumerate(zip(configs, futures), 1):
        results.append(future.result())
        print(f"backfill: cutoff {config.split.cutoff} done ({i}/{len(configs)}), "
              f"ndcg {results[-1].get('ndcg')}, v{results[-1].get('version')}")
    return results


@flow(name="backfill", log_prints=True)
def backfill(params: BackfillParams) -> dict:
    """Train and evaluate at every cutoff from `start` to `end` every `step_days` days."""
    rows, todo = [], []
    for cutoff in params.cutoffs():
        config = params.config_at(cutoff)
        done = find_finished_run(config.experiment, cutoff, config.config_hash())
        if done is not None and not params.force:
            rows.append({"cutoff": cutoff, "status": "skipped (already done)", "run_id": done["run_id"],
                         "ndcg": _round(done["metrics"].get(f"test.ndcg_at_{config.k}"))})
        else:
            todo.append((cutoff, config, done is not None))
    if todo:
        runner = task_runner(params.dask, params.max_parallel)
        results = fan_out.with_options(task_runner=runner)([c for _, c, _ in todo])
        for (cutoff, config, existed), result in zip(todo, results):
            if existed:
                retire_runs(config.experiment, config.registered_model, cutoff, config.config_hash(),
                            keep_run_id=result["run_id"])
            rows.append({"cutoff": cutoff, "status": "replaced" if existed else "trained", "run_id": result["run_id"],
                         "ndcg": result["ndcg"], "version": result["version"], "promoted": result["promoted"]})
    rows.sort(key=lambda r: r["cutoff"])
    publish_table(f"backfill {params.start}..{params.end} every {params.step_days}d", rows, key="backfill-summary")
    for r in rows:
        print(f"{r['cutoff']}: {r['status']:<24} run {r['run_id']} ndcg {r['ndcg']}")
    return {"cutoffs": rows, "trained": sum(r["status"] != "skipped (already done)" for r in rows),
            "skipped": sum(r["status"] == "skipped (already done)" for r in rows),
            "flow_run_id": flow_run.id}


def _round(value) -> float | None:
    return round(float(value), 4) if value is not None else None
