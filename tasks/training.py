"""Prefect tasks of the training flow: load -> split -> train -> evaluate -> log -> register -> gate."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task

from features import schema as S
from features.split import Split, SplitParams, temporal_split, window
from models.config import TrainConfig
from models.evaluation import Evaluation, evaluate, relevant_items, score_users
from models.gate import GateDecision, decide_promotion
from models.ranker import RankerResult
from models.two_stage import FEATURE_NAMES, TwoStageRecommender, train_two_stage
from tasks import caching, plots, tracking
from tasks.data import dataset_digest, read_catalog, read_events, validate_and_quarantine
from tasks.paths import data_dir

log = logging.getLogger(__name__)


@dataclass
class LoadedData:
    events: pd.DataFrame
    catalog: pd.DataFrame
    digest: str
    rejected: dict[str, int]


def _logger():
    try:
        return get_run_logger()
    except Exception:  # called outside a flow run (plain script / benchmark)
        return log


@task(name="load-data", retries=2, retry_delay_seconds=[2, 10])
def load_data(config: TrainConfig) -> LoadedData:
    base = Path(config.data_dir) if config.data_dir else data_dir()
    end = None
    if config.split.cutoff is not None:
        end = temporal_split(pd.Timestamp.now(tz="UTC"), config.split).test_end
    events = read_events(base, end=end)
    events, rejected = validate_and_quarantine(events, base, source=str(base / "events"),
                                               max_rejected_share=config.max_rejected_share)
    catalog = read_catalog(base)
    _logger().info("loaded %d events (%d rejected), %d catalog items from %s",
                   len(events), sum(rejected.values()), len(catalog), base)
    return LoadedData(events, catalog, dataset_digest(events), rejected)


@task(name="split")
def split_data(events: pd.DataFrame, params: SplitParams) -> Split:
    split = temporal_split(events[S.TS].max(), params)
    if (events[S.TS] < split.train_end).sum() == 0:
        raise ValueError(f"no training events before {split.train_end:%Y-%m-%d}: the data covers "
                         f"{events[S.TS].min():%Y-%m-%d}..{events[S.TS].max():%Y-%m-%d}; "
                         "use fewer label/test days or more data")
    _logger().info("split: train < %s <= label < %s <= test < %s",
                   split.train_end.date(), split.label_end.date(), split.test_end.date())
    return split


@task(name="train-two-stage", cache_key_fn=caching.train_key, persist_result=True, result_storage=caching.RESULTS)
def train_model(data: LoadedData, split: Split, config: TrainConfig) -> tuple[TwoStageRecommender, RankerResult]:
    rec, result = train_two_stage(data.events, data.catalog, split.train_end, split.label_end, config.model)
    _logger().info("ranker: best iteration %d, ALS on %s", result.best_iteration, rec.sources["als"].device)
    return rec, result


@task(name="evaluate", cache_key_fn=caching.evaluate_key, persist_result=True, result_storage=caching.RESULTS)
def evaluate_model(rec: TwoStageRecommender, data: LoadedData, split: Split, k: int) -> Evaluation:
    test = window(data.events, split.label_end, split.test_end)
    result = evaluate(rec, test, k)
    _logger().info("test.ndcg_at_%d = %.4f over %d users", k, result.metrics.get(f"test.ndcg_at_{k}", 0.0),
                   len(result.user_ids))
    return result


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@task(name="start-mlflow-run", retries=2, retry_delay_seconds=[2, 10])
def start_run(config: TrainConfig, split: Split, data: LoadedData, flow_run_id: str | None,
              flow_run_url: str | None) -> str:
    tags = {"data_window": f"..{split.test_end:%Y-%m-%d}", "dataset_digest": data.digest,
            "code_version": git_commit(), "config_hash": config.config_hash(),
            "split.train_end": f"{split.train_end:%Y-%m-%d}", "split.label_end": f"{split.label_end:%Y-%m-%d}",
            "split.test_end": f"{split.test_end:%Y-%m-%d}"}
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    if flow_run_url:
        tags["prefect.flow_run_url"] = flow_run_url
    name = f"train cutoff={split.test_end:%Y-%m-%d} at {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M}"
    run_id = tracking.start_run(config.experiment, name, tags)
    tracking.log_params(run_id, config.flat_params())
    tracking.log_metrics(run_id, {"data.events": len(data.events), "data.users": data.events[S.USER_ID].nunique(),
                                  "data.items": len(data.catalog),
                                  **{f"data.rejected.{rule}": n for rule, n in data.rejected.items()}})
    return run_id


@task(name="log-results", retries=2, retry_delay_seconds=[2, 10])
def log_results(run_id: str, rec: TwoStageRecommender, result: RankerResult, evaluation: Evaluation, k: int) -> None:
    tracking.log_tags(run_id, {"als_device": rec.sources["als"].device})
    tracking.log_metrics(run_id, {**evaluation.metrics, "rank.best_iteration": result.best_iteration})
    tracking.log_history(run_id, result.history, prefix="rank")
    gains = rec.booster.feature_importance(importance_type="gain")
    for fig, name in ((plots.feature_importance_figure(FEATURE_NAMES, gains), "plots/feature_importance.png"),
                      (plots.model_vs_baselines_figure(evaluation.metrics, k), "plots/model_vs_baselines.png"),
                      (plots.history_figure(result.history), "plots/ranker_validation.png")):
        tracking.log_figure(run_id, fig, name)
        plots.close(fig)
    tracking.log_dict(run_id, evaluation.metrics, "metrics.json")


@task(name="register-model", retries=2, retry_delay_seconds=[2, 10])
def register_model(run_id: str, rec: TwoStageRecommender, evaluation: Evaluation, config: TrainConfig,
                   split: Split) -> str:
    model_uri = tracking.log_model(run_id, rec, evaluation.user_ids or rec.data.users.ids[:3].tolist(), config.k)
    version = tracking.register(model_uri, config.registered_model, run_id,
                                {"train_cutoff": f"{split.label_end:%Y-%m-%d}",
                                 "test_end": f"{split.test_end:%Y-%m-%d}"})
    _logger().info("registered %s version %s", config.registered_model, version)
    return version


# tag: a Prefect tag concurrency limit `promotion-gate` = 1 (scripts/prefect_up.sh) serialises gates across
# runs and machines, on top of the file lock below
@task(name="promotion-gate", tags=["promotion-gate"])
def promotion_gate(run_id: str, version: str, data: LoadedData, split: Split, config: TrainConfig) -> GateDecision:
    """Champion and challenger, both loaded from the registry, scored on the same newest window."""
    name, metric = config.registered_model, config.gate.metric
    test = window(data.events, split.label_end, split.test_end)
    truth = relevant_items(test)
    user_ids, relevant = truth.index.astype(str).tolist(), truth.tolist()
    with tracking.gate_lock(name):
        champion = tracking.alias_version(name)
        challenger_scores = score_users(tracking.load_recommender(name, version), user_ids, relevant, config.k)
        if metric not in challenger_scores:
            raise ValueError(f"gate metric '{metric}' is not one of {sorted(challenger_scores)}")
        champion_scores = None
        if champion is not None and champion != version:
            champion_scores = score_users(tracking.load_recommender(name, champion), user_ids, relevant,
                                          config.k)[metric]
        decision = decide_promotion(challenger_scores[metric], champion_scores, config.gate)
        promoted = decision.promote and config.promote
        reason = decision.reason if config.promote or not decision.promote else \
            f"{decision.reason} (promotion disabled for this run)"
        tracking.log_metrics(run_id, {f"gate.{k}": v for k, v in decision.as_dict().items()
                                      if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None})
        tracking.log_tags(run_id, {"gate.decision": "promoted" if promoted else "rejected", "gate.reason": reason,
                                   "gate.champion_version": champion or "none", "gate.challenger_version": version})
        tracking.log_dict(run_id, {**decision.as_dict(), "champion_version": champion,
                                   "challenger_version": version, "promoted": promoted,
                                   "window": split.as_dict()}, "gate_report.json")
        tracking.set_version_tags(name, version, {"gate.decision": "promoted" if promoted else "rejected",
                                                  "gate.reason": reason})
        if champion is not None and champion != version:
            tracking.set_version_tags(name, champion, {f"gate.vs_v{version}": "kept" if not promoted else "replaced"})
        if promoted:
            tracking.move_champion(name, version, reason, actor="promotion-gate")
    _logger().info("gate: %s", reason)
    return decision if config.promote else GateDecision(**{**decision.as_dict(), "promote": promoted,
                                                          "reason": reason})


def metric_table(metrics: dict[str, float], k: int) -> str:
    """A plain-text table: two-stage vs baselines on the same window."""
    names = ["ndcg", "map", "recall", "hitrate"]
    rows = [("two-stage", "test.")] + [(b, f"baseline.{b}.") for b in
                                       sorted({key.split(".")[1] for key in metrics if key.startswith("baseline.")})]
    header = f"{'model':<12}" + "".join(f"{n + '@' + str(k):>12}" for n in names)
    lines = [header, "-" * len(header)]
    for label, prefix in rows:
        lines.append(f"{label:<12}" + "".join(f"{metrics.get(f'{prefix}{n}_at_{k}', float('nan')):>12.4f}"
                                             for n in names))
    return "\n".join(lines)


__all__ = ["load_data", "split_data", "train_model", "evaluate_model", "start_run", "log_results",
           "register_model", "promotion_gate", "metric_table"]


def finish_run(run_id: str, error: BaseException | None = None) -> None:
    """Close the MLflow run; a failed run records why (the champion alias was not touched)."""
    if error is not None:
        tracking.log_tags(run_id, {"failure": f"{type(error).__name__}: {error}"[:4000]})
    tracking.end_run(run_id, "FAILED" if error is not None else "FINISHED")
