"""`--tune full` in the training flow: reuse the settings a previous run chose when the data still fits, else
the Optuna search on earlier windows (models/tuning.py), each trial an MLflow child run of this run."""

from __future__ import annotations

import json

import mlflow
from prefect import task
from prefect.cache_policies import NO_CACHE

from recsys.features import schema as S
from recsys.features.split import Split
from recsys.models import progress
from recsys.models.config import TrainConfig
from recsys.models.tuning import (SEARCH_SPACE, TrialRecord, data_fingerprint, earlier_window_problem,
                                  fingerprint_change, search_settings, tuned_params)
from recsys.tasks import tracking
from recsys.tasks.logs import run_logger

TUNED_ARTIFACT = "tuning/tuned.json"  # {"settings", "value", "start_value", "fingerprint", "trials"}
TAG_MODE, TAG_SOURCE = "tuning.mode", "tuning.settings_from"


def previous_tuning(experiment: str, registered_model: str, before_run: str) -> tuple[str, dict] | None:
    """(run id, tuned.json) of the newest finished run of this registered model that searched or reused."""
    c = tracking.client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id],
                         filter_string=f"tags.`{TAG_MODE}` = 'full' and tags.registered_model = '{registered_model}' "
                                       "and attributes.status = 'FINISHED'",
                         order_by=["attributes.start_time DESC"], max_results=5)
    for run in runs:
        if run.info.run_id == before_run:
            continue
        try:
            return run.info.run_id, mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{TUNED_ARTIFACT}")
        except Exception as exc:  # noqa: BLE001 - an unreadable record: search again, say why
            run_logger().warning("tuning: run %s has no readable %s (%s)", run.info.run_id, TUNED_ARTIFACT, exc)
    return None


def log_trial(run_id: str, record: TrialRecord) -> None:
    """One child run per trial: its settings as params, the validation NDCG@10, the seconds it took."""
    child = tracking.start_child_run(run_id, "tune", {"trial": str(record.number)},
                                     run_name=f"0 tune trial {record.number}")
    tracking.log_params(child, record.settings)
    tracking.log_metrics(child, {"trial.seconds": record.seconds,
                                 **({"validation.ndcg_at_10": record.value} if record.value is not None else {})})
    if record.error:
        tracking.log_tags(child, {"failure": record.error[:4000]})
    tracking.end_run(child, "FINISHED" if record.value is not None else "FAILED")
    progress.note(f"tuning trial {record.number}: " + (f"validation NDCG@10 {record.value:.4f}"
                                                       if record.value is not None else f"failed: {record.error}")
                  + f" in {record.seconds:.1f}s")


@task(name="tune-settings", cache_policy=NO_CACHE)
def tune_settings(run_id: str, data, split: Split, config: TrainConfig) -> TrainConfig:
    """The config the model is trained with: unchanged for off/quick; for full, the settings chosen on
    earlier windows (reused from the previous full run while `fingerprint_change` finds no reason to
    search again), logged as `tuned.*` params, `tuning.*` tags and `tuning/tuned.json`."""
    if config.tuning.mode != "full":
        return config
    if data.events is None:  # on Dask (checked by load_data before any work: here for direct callers)
        from recsys.tasks.training import TUNE_FULL_ON_DASK

        raise ValueError(TUNE_FULL_ON_DASK)
    log = run_logger()
    problem = earlier_window_problem(data.events, split.train_end, split.label_end)
    if problem:  # short data: the quick grids still run inside training
        log.warning("tuning: full search skipped, --tune quick instead: %s", problem)
        tracking.log_tags(run_id, {TAG_MODE: "quick", "tuning.decision": f"quick: {problem}"})
        return config
    seen = data.events.loc[data.events[S.TS] < split.label_end]  # the fingerprint of what tuning may see
    fingerprint = data_fingerprint(seen)
    record, why = None, "no earlier full tuning of this model"
    if config.tuning.reuse:
        previous = previous_tuning(config.experiment, config.registered_model, run_id)
        if previous is not None:
            why = fingerprint_change(previous[1].get("fingerprint", {}), fingerprint)
            if why is None and set(previous[1].get("settings", {})) != set(SEARCH_SPACE):
                why = "the search space changed since that run"
            if why is None:
                # the searched run's fingerprint stays the reference: slow drift adds up to a new search
                record = previous[1]
                tracking.log_tags(run_id, {TAG_SOURCE: previous[1].get("source_run", previous[0]),
                                           "tuning.decision": f"reused from run {previous[0]}: data still fits"})
                log.info("tuning: reusing the settings of run %s (the data changed too little to search again)",
                         previous[0])
    if record is None:
        log.info("tuning: Optuna search (%s); budget %.0fs, at most %d trials", why, config.tuning.budget_s,
                 config.tuning.max_trials)
        with progress.reporting(log.info):
            result = search_settings(data.events, data.catalog, split.train_end, split.label_end, config.model,
                                     config.tuning, on_trial=lambda r: log_trial(run_id, r))
        record = {"settings": result.settings, "value": result.value, "start_value": result.start_value,
                  "seconds": result.seconds, "trials": len(result.trials), "fingerprint": fingerprint,
                  "source_run": run_id}
        tracking.log_tags(run_id, {TAG_SOURCE: run_id, "tuning.decision": f"searched: {why}"})
        tracking.log_metrics(run_id, {"tuning.validation.ndcg_at_10": result.value, "tuning.seconds": result.seconds,
                                      "tuning.trials": len(result.trials),
                                      **({"tuning.validation.start_ndcg_at_10": result.start_value}
                                         if result.start_value is not None else {})})
        log.info("tuning: best validation NDCG@10 %.4f (configured settings %s) after %d trials in %.0fs",
                 result.value, "n/a" if result.start_value is None else f"{result.start_value:.4f}",
                 len(result.trials), result.seconds)
    tracking.log_tags(run_id, {TAG_MODE: "full"})
    tracking.log_params(run_id, {f"tuned.{name}": value for name, value in record["settings"].items()})
    tracking.log_dict(run_id, json.loads(json.dumps(record, default=str)), TUNED_ARTIFACT)
    return config.model_copy(update={"model": tuned_params(config.model, record["settings"])})
