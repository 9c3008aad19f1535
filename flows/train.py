"""The training flow: one Prefect flow run = one parent MLflow run (child runs per stage: data, recall, rank,
evaluate, gate) = (maybe) one new champion."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from recsys.models.config import TrainConfig
from recsys.tasks.cluster import dask_cluster
from recsys.tasks.gate import promotion_gate
from recsys.tasks.run_record import finish_run, log_results, metric_table, register_model, start_run
from recsys.tasks.training import (check_data_identity, evaluate_model, load_impressions, loaded_data, split_data,
                                   train_model)
from recsys.tasks.reporting import publish_summary
from recsys.tasks.tuning import tune_settings


@flow(name="train", log_prints=True)
def train(config: TrainConfig = TrainConfig()) -> dict:
    """Load and validate events, split at the cutoff, train ALS recall + LambdaRank, evaluate against
    baselines, log to MLflow, register the model and let the promotion gate decide on `champion`."""
    with dask_cluster(config.dask) as address, loaded_data(config, address) as data:  # None: one process
        # on Dask the workers hold the events: the driver gets counts, digests and windows, never the frame
        split = split_data(data, config.split)
        lineage = check_data_identity(config, data, split)  # another data set's champion: fail before training
        run_id = start_run(config, split, data, flow_run.id, flow_run.ui_url)
        try:
            config = tune_settings(run_id, data, split, config)  # --tune full: settings chosen on earlier windows
            impressions = load_impressions(run_id, config, split)  # None: feedback off or nothing shown yet
            rec, ranker = train_model(data, split, config, dask_address=address, impressions=impressions)
            evaluation = evaluate_model(rec, data, split, config.k, config.evaluation, dask_address=address)
            log_results(run_id, rec, ranker, evaluation, config.k, data, split)
            version = register_model(run_id, rec, evaluation, config, split, lineage)
            decision = promotion_gate(run_id, version, data, split, config, dask_address=address)
        except BaseException as exc:
            finish_run(run_id, exc)
            raise
    finish_run(run_id)
    print("\n" + metric_table(evaluation.metrics, config.k))
    print(f"\nMLflow run {run_id}; model {config.registered_model} version {version}; gate: {decision.reason}")
    publish_summary(f"train: {config.registered_model} v{version}", run_id, evaluation.metrics, config.k,
                    config.registered_model, version, decision.as_dict())
    return {"run_id": run_id, "version": version, "promoted": decision.promote, "reason": decision.reason,
            "metrics": evaluation.metrics}
