"""The MLflow record of a training run: the run opened with its data profile and inputs, the results
logged (metrics, curves, plots, tuning), the model registered with its description, the run closed."""

from __future__ import annotations

import getpass
import subprocess
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from recsys.features.exposure import EXPOSURE_FEATURES
from recsys.features.lineage import Lineage
from recsys.features.split import Split
from recsys.models.config import TrainConfig
from recsys.models.evaluation import Evaluation
from recsys.models.ranker import RankerResult
from recsys.models.two_stage import TwoStageRecommender
from recsys.tasks import plots, tracking
from recsys.tasks.retry import retry_transient
from recsys.tasks.reporting import markdown_table, metric_rows, text_table
from recsys.tasks.logs import run_logger
from recsys.tasks.training import LoadedData, store_base


def git_commit(short: bool = True) -> str:
    args = ["git", "rev-parse", "--short", "HEAD"] if short else ["git", "rev-parse", "HEAD"]
    try:
        return subprocess.run(args, capture_output=True, text=True, cwd=Path(__file__).parent,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def best_baseline(metrics: dict[str, float], k: int) -> str | None:
    """The baseline with the highest NDCG@k on the test window."""
    key = f".ndcg_at_{k}"
    names = {m.split(".")[1]: v for m, v in metrics.items() if m.startswith("baseline.") and m.endswith(key)
             and m.count(".") == 2}
    return max(names, key=names.get) if names else None


def summary_metrics(metrics: dict[str, float], k: int) -> dict[str, float]:
    """`0_summary.*`: the numbers that decide, sorted first in MLflow's metric lists and charts (the UI
    sorts keys; digits come before `baseline.*`): the model and the best baseline on NDCG@k, their ratio."""
    key = f"ndcg_at_{k}"
    model, best = metrics.get(f"test.{key}"), best_baseline(metrics, k)
    out: dict[str, float] = {} if model is None else {f"0_summary.model.{key}": model}
    if best:
        base = metrics[f"baseline.{best}.{key}"]
        out[f"0_summary.best_baseline.{key}"] = base
        if model is not None and base > 0:
            out["0_summary.model_vs_best_baseline"] = model / base
    return out


def _windows(split: Split) -> dict[str, tuple]:
    return {"train": (None, split.train_end), "label": (split.train_end, split.label_end),
            "test": (split.label_end, split.test_end)}


def _dataset_inputs(config: TrainConfig, data: LoadedData, profile: pd.DataFrame, digests: dict[str, str],
                    windows: dict[str, tuple]) -> list[dict]:
    """train / label / test windows as MLflow dataset inputs: real digest and profile, schema from a sample."""
    source = f"{str(store_base(config)).rstrip('/')}/events"
    sample = data.head(5)
    out = []
    for row in profile.to_dict("records"):
        context, end = row["window"], windows[row["window"]][1]
        stats = {"num_rows": int(row["events"]), "users": int(row["users"]), "items": int(row["items"]),
                 "from": str(row["from"]) if row["events"] else None, "to_exclusive": str(end)}
        out.append({"name": f"events-{context}", "context": context, "sample": sample,
                    "digest": digests[context], "source": source, "profile": stats})
    return out


@task(name="start-mlflow-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_transient)
def start_run(config: TrainConfig, split: Split, data: LoadedData, flow_run_id: str | None,
              flow_run_url: str | None) -> str:
    """The parent run of this flow run (params, lineage tags, dataset inputs) and its `data` child run."""
    commit = git_commit()
    full_commit = git_commit(short=False)
    tags = {"flow": "train", "data_window": f"..{split.test_end:%Y-%m-%d}", "dataset_digest": data.digest,
            "code_version": commit, "config_hash": config.config_hash(), "als_device.requested": config.model.als.device,
            "train.runner": "dask" if config.dask.enabled else "single-process",
            "split.train_end": f"{split.train_end:%Y-%m-%d}", "split.label_end": f"{split.label_end:%Y-%m-%d}",
            "split.test_end": f"{split.test_end:%Y-%m-%d}", "registered_model": config.registered_model}
    if full_commit != "unknown":
        tags["mlflow.source.git.commit"] = full_commit  # the UI links and compares full SHAs
    # what the UI shows as Source / Created by
    tags.update({"mlflow.source.type": "JOB", "mlflow.source.name": "prefect flow train (flows/train.py)",
                 "mlflow.user": getpass.getuser()})
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    if flow_run_url and flow_run_url.startswith(("http://", "https://")):  # no UI (temporary API): "None/..."
        tags["prefect.flow_run_url"] = flow_run_url
    # the verdict goes first once the gate decided (see run_title): the runs table cuts long names
    name = run_title("training", split)
    run_id = tracking.start_run(config.experiment, name, tags)
    tracking.log_params(run_id, config.flat_params())
    data_metrics = {"data.events": data.n_events, "data.users": data.n_users,
                    "data.items": len(data.catalog), **{f"data.rejected.{rule}": n for rule, n in data.rejected.items()}}
    tracking.log_metrics(run_id, data_metrics)
    windows = _windows(split)
    profile, digests = data.window_stats(windows)  # reduced on the workers on Dask
    inputs = _dataset_inputs(config, data, profile, digests, windows)
    tracking.log_dataset_inputs(run_id, inputs)
    with tracking.child_run(run_id, "data") as child:
        tracking.log_metrics(child, data_metrics)
        tracking.log_dataset_inputs(child, inputs)
        tracking.log_text(child, profile.to_csv(index=False), "data_profile.csv")
        md = ("# Data profile\n\n" + markdown_table(profile.to_dict("records")) +
              f"\nRejected rows by rule: {data.rejected or 'none'}\n")
        tracking.log_text(child, md, "data_profile.md")
        tracking.log_text(run_id, md, "data_profile.md")
    return run_id




@task(name="log-results", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_transient)
def log_results(run_id: str, rec: TwoStageRecommender, result: RankerResult, evaluation: Evaluation, k: int,
                data: LoadedData | None = None, split: Split | None = None) -> None:
    """Comparable metrics + plots on the parent; the recall, rank and evaluate stages as child runs."""
    tracking.log_tags(run_id, {"als_device": rec.sources["als"].device})
    tracking.log_metrics(run_id, {**evaluation.metrics, **summary_metrics(evaluation.metrics, k),
                                  "rank.best_iteration": result.best_iteration})
    best = best_baseline(evaluation.metrics, k)
    if best:
        tracking.log_tags(run_id, {"summary.best_baseline": best})
    tracking.log_history(run_id, result.history, prefix="rank")
    if rec.exposure is not None:
        tracking.log_metrics(run_id, feedback_metrics(rec))
    gains = rec.booster.feature_importance(importance_type="gain")
    recall = {key.removeprefix("recall."): v for key, v in evaluation.metrics.items() if key.startswith("recall.")}
    recall_table = pd.DataFrame({"source": list(recall), "recall": list(recall.values())})
    figures = [(plots.feature_importance_figure(rec.feature_names, gains), "plots/feature_importance.png", "rank"),
               (plots.model_vs_baselines_figure(evaluation.metrics, k), "plots/model_vs_baselines.png", "evaluate"),
               (plots.history_figure(result.history), "plots/ranker_validation.png", "rank")]
    if recall:
        figures.append((plots.recall_by_source_figure(recall), "plots/recall_by_source.png", "recall"))
    curves = evaluation.curves
    if curves is not None:
        figures.append((plots.metric_at_k_figure(curves), "plots/metric_at_k.png", "evaluate"))
    with tracking.child_run(run_id, "recall") as recall_run, tracking.child_run(run_id, "rank") as rank_run, \
            tracking.child_run(run_id, "evaluate") as eval_run:
        stage_runs = {"recall": recall_run, "rank": rank_run, "evaluate": eval_run}
        for fig, name, stage in figures:
            tracking.log_figure(run_id, fig, name)
            tracking.log_figure(stage_runs[stage], fig, name)
            plots.close(fig)
        tracking.log_dict(run_id, evaluation.metrics, "metrics.json")
        # recall: per-source candidate recall
        tracking.log_metrics(recall_run, {f"recall.{n}": v for n, v in recall.items()})
        md = "# Candidate recall by source\n\n" + markdown_table(recall_table.to_dict("records")) if recall else "no purchases\n"
        for target in (run_id, recall_run):
            tracking.log_text(target, recall_table.to_csv(index=False), "tables/recall_by_source.csv")
            tracking.log_text(target, md, "tables/recall_by_source.md")
        # rank: validation curve per iteration, importance
        tracking.log_metrics(rank_run, {"rank.best_iteration": result.best_iteration})
        tracking.log_history(rank_run, result.history, prefix="rank")
        importance = pd.DataFrame({"feature": rec.feature_names, "gain": gains}).sort_values("gain", ascending=False)
        tracking.log_text(rank_run, importance.to_csv(index=False), "tables/feature_importance.csv")
        log_baseline_tuning(run_id, eval_run, rec)
        # evaluate: test.* and baseline.* at k, and metric@k curves with step = k
        tracking.log_metrics(eval_run, {m: v for m, v in evaluation.metrics.items() if not m.startswith("recall.")})
        tracking.log_text(eval_run, metric_table(evaluation.metrics, k), "tables/model_vs_baselines.txt")
        if curves is not None:
            for target in (run_id, eval_run):
                tracking.log_text(target, curves.to_csv(index=False), "tables/metric_at_k.csv")
            series = {}
            for (model, metric), g in curves.groupby(["model", "metric"], sort=False):
                prefix = "test" if model == "two-stage" else f"baseline.{model}"
                series[f"curve.{prefix}.{metric}_at_k"] = list(zip(g["k"].astype(int), g["value"]))
            tracking.log_series(eval_run, series)


def feedback_metrics(rec: TwoStageRecommender) -> dict[str, float]:
    """The served model's exposure snapshot and its ranker's use of the exposure features."""
    ex = rec.exposure
    gains = dict(zip(rec.feature_names, rec.booster.feature_importance(importance_type="gain")))
    total = sum(gains.values()) or 1.0
    out = {"feedback.pairs_shown": len(ex.pairs), "feedback.items_in_state": len(ex.items),
           "feedback.global_ctr": ex.global_ctr,
           "feedback.negatives": float(getattr(rec, "feedback_negatives", 0)),
           "feedback.exposure_gain_share": sum(gains.get(f, 0.0) for f in EXPOSURE_FEATURES) / total}
    out.update({f"feedback.gain_share.{f}": gains.get(f, 0.0) / total for f in EXPOSURE_FEATURES})
    return out


def log_baseline_tuning(run_id: str, eval_run: str, rec: TwoStageRecommender) -> None:
    """The settings chosen on the label window (popularity list, EASE, RP3beta, whether seen items are
    dropped): params `tuned.<model>.<name>` / `tuned.seen_items` on the parent, every grid point's
    validation NDCG@10 as a table on the evaluate run."""
    tuning = getattr(rec, "baseline_tuning", {})
    tracking.log_params(run_id, {"tuned.seen_items": rec.params.seen_items,
                                 **{f"tuned.{name}.{key}": v for name, t in tuning.items()
                                    for key, v in asdict(t.params).items()}})
    if not tuning:
        return
    rows = [{"model": name, **point, "validation_ndcg_at_10": score}
            for name, t in tuning.items() for point, score in t.scores]
    tracking.log_text(eval_run, pd.DataFrame(rows).to_csv(index=False), "tables/baseline_tuning.csv")


@task(name="register-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10],
      retry_condition_fn=retry_transient)
def register_model(run_id: str, rec: TwoStageRecommender, evaluation: Evaluation, config: TrainConfig,
                   split: Split, lineage: Lineage | None = None) -> str:
    """Log and register the model; the version records its lineage (data identity, training end)."""
    model_uri = tracking.log_model(run_id, rec, evaluation.user_ids or rec.data.users.ids[:3].tolist(), config.k)
    lineage_tags = lineage.as_tags() if lineage is not None else {}
    if lineage_tags:
        tracking.log_tags(run_id, lineage_tags)
    version = tracking.register(model_uri, config.registered_model, run_id,
                                {"train_cutoff": f"{split.label_end:%Y-%m-%d}",
                                 "test_end": f"{split.test_end:%Y-%m-%d}", **lineage_tags})
    tracking.describe_version(config.registered_model, version, version_description(evaluation.metrics, config.k,
                                                                                    split, run_id))
    run_logger().info("registered %s version %s", config.registered_model, version)
    return version


def run_title(verdict: str, split: Split) -> str:
    """Short enough for the runs table: verdict first, then the cutoff (the start time has its own column)."""
    return f"{verdict} (cutoff {split.test_end:%Y-%m-%d})"


def version_description(metrics: dict[str, float], k: int, split: Split, run_id: str, verdict: str = "") -> str:
    """Verdict and numbers first: the registry's versions table shows only the description's start."""
    key = f"ndcg_at_{k}"
    best = best_baseline(metrics, k)
    lines = [f"Gate: {verdict}"] if verdict else []
    if f"test.{key}" in metrics:
        line = f"NDCG@{k} {metrics[f'test.{key}']:.4f}"
        if best:
            line += f" vs best baseline {best} {metrics[f'baseline.{best}.{key}']:.4f}"
        lines.append(line + ".")
    lines.append(f"Two-stage recommender (implicit ALS + candidate sources, LightGBM LambdaRank) trained on events "
                 f"before {split.label_end:%Y-%m-%d}, evaluated on {split.label_end:%Y-%m-%d}..{split.test_end:%Y-%m-%d}; "
                 f"MLflow run {run_id}.")
    return "\n\n".join(lines)


def metric_table(metrics: dict[str, float], k: int) -> str:
    """A plain-text table (`rich`): two-stage vs baselines on the same window."""
    return text_table(metric_rows(metrics, k))


def finish_run(run_id: str, error: BaseException | None = None) -> None:
    """Close the MLflow run; a failed run records why (the champion alias was not touched). On failure this
    never raises over the original error, and it tries a few times: after a full disk, the failed write's
    temporary files are gone a moment later and the store can take the status again."""
    if error is None:
        tracking.end_run(run_id, "FINISHED")
        return
    if tracking.close_failed(run_id, error):
        try:
            name = tracking.run_name(run_id)
            tracking.rename_run(run_id, "FAILED " + name.removeprefix("training "))
        except Exception:  # noqa: BLE001 - the status is what matters
            pass
