"""Prefect tasks of the training flow: load -> split -> train -> evaluate -> log -> register -> gate."""

from __future__ import annotations

import getpass
import logging
import subprocess
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from recsys.features import schema as S
from recsys.features.lineage import Lineage
from recsys.features.interactions import build_interaction_data
from recsys.features.split import Split, SplitParams, temporal_split, window
from recsys.models.config import TrainConfig
from recsys.models.evaluation import Evaluation, EvaluationParams, data_profile, evaluate, evaluation_truth, score_users
from recsys.models.gate import (NO_FAIR_WINDOW, GateDecision, GateParams, GuardrailMeasures, data_identity_mismatch,
                         decide_promotion, decide_with_guardrails, fair_window, latency_p95_ms,  # noqa: F401
                         no_fair_window)
from recsys.models import progress
from recsys.models.metrics import catalog_coverage, per_user_metrics
from recsys.models.ranker import RankerResult
from recsys.models.search import search_metrics, search_quality
from recsys.models.search_ranker import SearchRankerParams, search_sessions, train_search_model
from recsys.models.semantic import load_encoder
from recsys.models.two_stage import FEATURE_NAMES, TwoStageRecommender, train_two_stage
from recsys.tasks import caching, plots, tracking
from recsys.tasks.retry import retry_transient
from recsys.tasks.reporting import markdown_table, metric_rows, text_table
from recsys.tasks.data import dataset_digest, read_catalog, read_events, validate_and_quarantine
from recsys.tasks.paths import data_dir

log = logging.getLogger(__name__)

CURVE_MAX_K = 20  # metric@k curves are logged for k = 1..CURVE_MAX_K


@dataclass
class LoadedData:
    events: pd.DataFrame
    catalog: pd.DataFrame
    digest: str
    rejected: dict[str, int]
    data_dir: str = ""


def _logger():
    try:
        return get_run_logger()
    except Exception:  # called outside a flow run (plain script / benchmark)
        return log


@task(name="load-data", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
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
    return LoadedData(events, catalog, dataset_digest(events), rejected, str(base))


class DataIdentityError(ValueError):
    """This run's data is another data set than the champion's: it must not be gated against it."""


def data_identity_message(name: str, champion: str, why: str, dataset: str | None) -> str:
    suggestion = f"{name}-{dataset}" if dataset else f"{name}-<data set>"
    return (f"this data is not the data set of champion v{champion} of registered model '{name}': {why}; a model "
            f"of another data set is never gated against it: give it its own registered model, e.g. "
            f"--registered-model {suggestion}")


@task(name="check-data-identity", cache_policy=NO_CACHE)
def check_data_identity(config: TrainConfig, data: LoadedData, split: Split) -> Lineage:
    """This run's lineage (data identity + training end); fails in one line, before any training, when the
    registered model's champion was trained on another data set."""
    lineage = Lineage.of(data.data_dir or data_dir(), data.catalog[S.ITEM_ID], split.label_end)
    champion = tracking.alias_version(config.registered_model, tracking.CHAMPION)
    if champion is not None:
        champ = Lineage.from_tags(tracking.version_tags(config.registered_model, champion))
        why = data_identity_mismatch(lineage, champ, config.gate.min_catalog_overlap)
        if why:
            raise DataIdentityError(data_identity_message(config.registered_model, champion, why, lineage.dataset))
    return lineage


# NO_CACHE on tasks that take the events or the model: Prefect's default policy hashes every input
# (cloudpickle of 1M events: ~1.5 s per flow) for a key that includes the flow run id and so never hits
@task(name="split", cache_policy=NO_CACHE)
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
    with progress.reporting(_logger().info):  # ALS iterations, candidate blocks, ranker iterations
        rec, result = train_two_stage(data.events, data.catalog, split.train_end, split.label_end, config.model)
    _logger().info("ranker: best iteration %d, ALS on %s", result.best_iteration, rec.sources["als"].device)
    rec.search_model, search = train_search(data, split, config, rec)
    _logger().info("search: %s; ranker %s", rec.search_model.describe()["retrieval"],
                   f"best iteration {search.best_iteration}" if search else "not trained (no search with a click)")
    return rec, result


def train_search(data: LoadedData, split: Split, config: TrainConfig, rec: TwoStageRecommender):
    """The search model of `rec`: learned on the label window's searches with the state at `train_end`."""
    data_train = build_interaction_data(data.events, data.catalog, split.train_end, config.model.interactions)
    return train_search_model(data.events, data.catalog, data_train, rec.data, split.train_end, split.label_end,
                              SearchRankerParams(), encoder=load_encoder())


@task(name="evaluate", cache_key_fn=caching.evaluate_key, persist_result=True, result_storage=caching.RESULTS)
def evaluate_model(rec: TwoStageRecommender, data: LoadedData, split: Split, k: int,
                   params: EvaluationParams = EvaluationParams()) -> Evaluation:
    test = window(data.events, split.label_end, split.test_end)
    with progress.reporting(_logger().info):
        result = evaluate(rec, test, k, curve_max_k=CURVE_MAX_K, params=params)
    result.metrics.update(search_metrics(search_quality(rec, search_sessions(test), k)))
    _logger().info("test.ndcg_at_%d = %.4f over %d of the window's %d users", k,
                   result.metrics.get(f"test.ndcg_at_{k}", 0.0), len(result.user_ids),
                   int(result.metrics["test.n_users_in_window"]))
    return result


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


def _dataset_inputs(config: TrainConfig, split: Split, data: LoadedData) -> list[dict]:
    """train / label / test windows as MLflow dataset inputs: real digest and profile, schema from a sample."""
    source = str((Path(config.data_dir) if config.data_dir else data_dir()) / "events")
    out = []
    for context, (start, end) in _windows(split).items():
        ts = data.events[S.TS]
        w = data.events.loc[(ts < end) if start is None else ((ts >= start) & (ts < end))]
        profile = {"num_rows": len(w), "users": int(w[S.USER_ID].nunique()), "items": int(w[S.ITEM_ID].nunique()),
                   "from": str(w[S.TS].min()) if len(w) else None, "to_exclusive": str(end)}
        out.append({"name": f"events-{context}", "context": context, "sample": data.events.head(5),
                    "digest": dataset_digest(w), "source": source, "profile": profile})
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
    data_metrics = {"data.events": len(data.events), "data.users": data.events[S.USER_ID].nunique(),
                    "data.items": len(data.catalog), **{f"data.rejected.{rule}": n for rule, n in data.rejected.items()}}
    tracking.log_metrics(run_id, data_metrics)
    inputs = _dataset_inputs(config, split, data)
    tracking.log_dataset_inputs(run_id, inputs)
    with tracking.child_run(run_id, "data") as child:
        tracking.log_metrics(child, data_metrics)
        tracking.log_dataset_inputs(child, inputs)
        profile = data_profile(data.events, data.catalog, _windows(split))
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
    gains = rec.booster.feature_importance(importance_type="gain")
    recall = {key.removeprefix("recall."): v for key, v in evaluation.metrics.items() if key.startswith("recall.")}
    recall_table = pd.DataFrame({"source": list(recall), "recall": list(recall.values())})
    figures = [(plots.feature_importance_figure(FEATURE_NAMES, gains), "plots/feature_importance.png", "rank"),
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
        importance = pd.DataFrame({"feature": FEATURE_NAMES, "gain": gains}).sort_values("gain", ascending=False)
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
    _logger().info("registered %s version %s", config.registered_model, version)
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


@dataclass
class _Scored:
    per_user: dict[str, np.ndarray]
    coverage: float
    new_user_ndcg: float | None


def _score(rec: TwoStageRecommender, user_ids: list[str], relevant: list[set], new_mask: np.ndarray, k: int,
           n_items: int) -> _Scored:
    """Per-user metrics, catalog coverage and new-user NDCG of one model, through `recommend_ids` (as served)."""
    lists = [r["items"] for r in rec.recommend_ids(user_ids, k)]
    per_user = per_user_metrics(lists, relevant, k)
    ndcg = per_user[f"ndcg_at_{k}"]
    return _Scored(per_user, catalog_coverage(lists, n_items),
                   float(ndcg[new_mask].mean()) if new_mask.any() else None)


def _search_ndcg(rec: TwoStageRecommender, searches) -> float | None:
    """Mean search NDCG@10 of a model as served on the window's searches (None: no search to score)."""
    ndcg = search_quality(rec, searches, 10)["ndcg_at_10"]
    return float(ndcg.mean()) if len(ndcg) else None


def _latencies(models: list[TwoStageRecommender], user_ids: list[str], k: int) -> list[np.ndarray]:
    """Seconds per one-user `recommend_ids` call on a fixed sample, models interleaved so load hits both alike."""
    for m in models:  # warm caches / lazy state once
        m.recommend_ids(user_ids[:1], k)
    out = [np.empty(len(user_ids)) for _ in models]
    for i, u in enumerate(user_ids):
        for j, m in enumerate(models):
            t0 = time.perf_counter()
            m.recommend_ids([u], k)
            out[j][i] = time.perf_counter() - t0
    return out


def gate_report_markdown(report: dict) -> str:
    verdict = "PROMOTED" if report["promoted"] else "NOT PROMOTED"
    w = report["window"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    scored = (f"{w.get('start')} .. {w.get('end')} ({report['n_users']} of the window's {report['users_in_window']} "
              "users scored, both models on the same users)" if w.get("start") else "none: not compared")
    lines = [f"# Promotion gate: {verdict}", "",
             f"**Reason:** {report['reason']}", "",
             f"- model: `{report['model']}`, challenger v{report['challenger_version']}, "
             f"champion before: {('v' + report['champion_version']) if report['champion_version'] else 'none'}",
             f"- training end (exclusive): challenger {report.get('challenger_train_end') or 'unknown'}, champion "
             f"{report.get('champion_train_end') or ('n/a' if not report['champion_version'] else 'unknown')}",
             f"- challenger's test window: {w.get('label_end')} .. {w.get('test_end')}",
             f"- window scored: {scored}",
             f"- comparison: {report.get('comparison', 'compared')}",
             f"- primary metric `{report['metric']}`: challenger {fmt(report.get('challenger'))}"
             + (f", champion {report['champion']:.4f}, diff {report['diff']:+.4f}, "
                f"CI [{report['ci_low']:+.4f}, {report['ci_high']:+.4f}], margin {report['margin']:+.4f}"
                if report.get("champion") is not None else ""), ""]
    if report.get("guardrails"):
        lines += ["| guardrail | passed | challenger | champion | limit | detail |", "|---|---|---|---|---|---|"]
    for g in report.get("guardrails", []):
        lines.append(f"| {g['name']} | {'yes' if g['passed'] else '**VETO**'} | {fmt(g['challenger'])} | "
                     f"{fmt(g['champion'])} | {fmt(g['limit'])} | {g['detail']} |")
    return "\n".join(lines) + "\n"


@dataclass
class _GateWindow:
    """One scoring window of the gate: its users, what they bought, who is new, the challenger's scores."""
    start: pd.Timestamp
    end: pd.Timestamp
    user_ids: list[str]
    relevant: list[set]
    new_mask: np.ndarray
    n_window: int
    latency_users: list[str]
    searches: object  # the window's search sessions (recsys.models.search_ranker.SearchSessions)
    challenger: _Scored | None = None
    challenger_search: float | None = None


def _gate_window(data: LoadedData, start: pd.Timestamp, end: pd.Timestamp, config: TrainConfig) -> _GateWindow:
    events = window(data.events, start, end)
    truth, n_window = evaluation_truth(events, config.evaluation)
    user_ids, relevant = truth.index.astype(str).tolist(), truth.tolist()
    seen_before = pd.Index(data.events.loc[data.events[S.TS] < start, S.USER_ID].unique()).astype(str)
    new_mask = ~pd.Index(user_ids).isin(seen_before)
    latency_users = user_ids[:config.gate.latency_users] or [str(u) for u in data.events[S.USER_ID].head(5)]
    return _GateWindow(start, end, user_ids, relevant, new_mask, n_window, latency_users, search_sessions(events))


def _ts(value: pd.Timestamp | None) -> str | None:
    return value.isoformat() if value is not None else None


# tag: a Prefect tag concurrency limit `promotion-gate` = 1 (scripts/prefect_up.sh) serialises gates across
# runs and machines, on top of the file lock below
@task(name="promotion-gate", tags=["promotion-gate"], cache_policy=NO_CACHE)
def promotion_gate(run_id: str, version: str, data: LoadedData, split: Split, config: TrainConfig) -> GateDecision:
    """Champion and challenger, both loaded from the registry, scored on the same users of a fair window: it
    starts at or after both models' training ends (no model is scored on events it learnt from); without such
    a window, or when the champion was trained on another data set, they are not compared and the champion
    stays. Otherwise: primary metric by paired bootstrap, then guardrails (coverage, new users, latency) that
    can veto. The decision is serialized (gate lock + compare-and-set of the alias) and recorded in a `gate`
    child run, on the parent run and on both model versions."""
    name, metric, params = config.registered_model, config.gate.metric, config.gate
    chal_lineage = Lineage.from_tags(tracking.version_tags(name, version))
    windows: dict[pd.Timestamp, _GateWindow] = {}
    seen: dict = {}

    with tracking.child_run(run_id, "gate", {"gate.challenger_version": version}) as gate_run:
        challenger_rec = tracking.load_recommender(name, version)
        n_items = challenger_rec.data.n_items  # the newest catalog: one denominator for both models

        def scored_window(start: pd.Timestamp) -> _GateWindow:
            if start not in windows:
                w = _gate_window(data, start, split.test_end, config)
                w.challenger = _score(challenger_rec, w.user_ids, w.relevant, w.new_mask, config.k, n_items)
                w.challenger_search = _search_ndcg(challenger_rec, w.searches)
                if metric not in w.challenger.per_user:
                    raise ValueError(f"gate metric '{metric}' is not one of {sorted(w.challenger.per_user)}")
                windows[start] = w
            return windows[start]

        def decide(champion: str | None):
            champ_lineage = (Lineage.from_tags(tracking.version_tags(name, champion))
                             if champion is not None and champion != version else None)
            seen.update(champion_lineage=champ_lineage, window=None, comparison="compared")
            if champ_lineage is not None:
                why = data_identity_mismatch(chal_lineage, champ_lineage, params.min_catalog_overlap)
                if why:
                    seen["comparison"] = "different data set"
                    reason = (f"different data set, not compared: "
                              f"{data_identity_message(name, champion, why, chal_lineage.dataset)}; kept champion")
                    return False, reason, GateDecision(False, reason, metric, None, None, None, None, None, 0)
            span = fair_window(split.label_end, split.test_end, chal_lineage.train_end,
                               champ_lineage.train_end if champ_lineage else None)
            if span is None and champ_lineage is not None:
                seen["comparison"] = NO_FAIR_WINDOW
                decision = no_fair_window(params, champion, split.label_end, split.test_end, champ_lineage.train_end)
                return False, decision.reason, decision
            w = scored_window(span[0] if span else split.label_end)
            seen["window"] = w
            chal, chal_search, champ, champ_rec, champ_search = w.challenger, w.challenger_search, None, None, None
            if champ_lineage is not None:
                champ_rec = tracking.load_recommender(name, champion)
                champ = _score(champ_rec, w.user_ids, w.relevant, w.new_mask, config.k, n_items)
                champ_search = _search_ndcg(champ_rec, w.searches)
            lat = _latencies([challenger_rec] + ([champ_rec] if champ_rec is not None else []), w.latency_users,
                             config.k)
            chal_m = GuardrailMeasures(chal.coverage, chal.new_user_ndcg, latency_p95_ms(lat[0]), chal_search)
            champ_m = GuardrailMeasures(champ.coverage, champ.new_user_ndcg, latency_p95_ms(lat[1]),
                                        champ_search) if champ else None
            decision = decide_with_guardrails(chal.per_user[metric], champ.per_user[metric] if champ else None,
                                              params, chal_m, champ_m)
            promoted = decision.promote and config.promote
            if decision.promote and not config.promote:
                decision = replace(decision, reason=f"{decision.reason} (promotion disabled for this run)")
            return promoted, decision.reason, replace(decision, promote=promoted)

        champion, promoted, decision = tracking.gate_and_promote(name, version, decide)
        w: _GateWindow | None = seen["window"]
        champ_lineage: Lineage | None = seen["champion_lineage"]
        compared = seen["comparison"] == "compared"
        report = {**decision.as_dict(), "model": name, "champion_version": champion, "challenger_version": version,
                  "promoted": promoted, "margin": params.margin, "params": asdict(params),
                  "comparison": seen["comparison"],
                  "challenger_train_end": _ts(chal_lineage.train_end),
                  "champion_train_end": _ts(champ_lineage.train_end) if champ_lineage else None,
                  "challenger_data": chal_lineage.identity,
                  "champion_data": champ_lineage.identity if champ_lineage else None,
                  "window": {**{k_: str(v) for k_, v in split.as_dict().items()},
                             "start": _ts(w.start) if w else None, "end": _ts(w.end) if w else None},
                  "users_in_window": w.n_window if w else 0,
                  "new_users_scored": int(w.new_mask.sum()) if w else 0,
                  "latency_users": len(w.latency_users) if w else 0}
        decision = replace(decision, lineage={
            "comparison": seen["comparison"], "window_start": report["window"]["start"],
            "window_end": report["window"]["end"], "test_start": _ts(split.label_end), "test_end": _ts(split.test_end),
            "challenger_train_end": report["challenger_train_end"], "champion_train_end": report["champion_train_end"]})
        report["lineage"] = decision.lineage
        gate_metrics = {f"gate.{k_}": v for k_, v in decision.as_dict().items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}
        gate_metrics["gate.promoted"] = float(promoted)
        for g in decision.guardrails:
            for side in ("challenger", "champion"):
                if getattr(g, side) is not None:
                    gate_metrics[f"gate.guardrail.{g.name}.{side}"] = getattr(g, side)
            gate_metrics[f"gate.guardrail.{g.name}.passed"] = float(g.passed)
        outcome = ("promoted" if promoted else "rejected") if compared else seen["comparison"].replace(" ", "_")
        gate_tags = {"gate.decision": outcome, "gate.reason": decision.reason, "gate.comparison": seen["comparison"],
                     "gate.champion_version": champion or "none", "gate.challenger_version": version,
                     "gate.window": f"{w.start.isoformat()}..{w.end.isoformat()}" if w else "none",
                     "gate.vetoed_by": ",".join(decision.vetoed_by) or "none"}
        md = gate_report_markdown(report)
        fig = plots.gate_figure(report)
        for target in (gate_run, run_id):
            tracking.log_metrics(target, gate_metrics)
            tracking.log_tags(target, gate_tags)
            tracking.log_dict(target, report, "gate_report.json")
            tracking.log_text(target, md, "gate_report.md")
            tracking.log_figure(target, fig, "plots/gate.png")
        plots.close(fig)
        tracking.set_note(run_id, md)
        summary = {"0_summary.gate.promoted": float(promoted)}
        for field in ("diff", "ci_low", "ci_high"):
            if getattr(decision, field) is not None:
                summary[f"0_summary.gate.{field}"] = getattr(decision, field)
        tracking.log_metrics(run_id, summary)
        # the outcome first in the name: the runs table reads "v3 champion (cutoff ...)" / "v4 rejected, v3 kept" /
        # "v5 no fair window, v3 kept"
        verdict = (f"v{version} champion" if promoted
                   else f"v{version} {seen['comparison']}, v{champion} kept" if champion and not compared
                   else f"v{version} rejected, v{champion} kept" if champion else f"v{version} not promoted")
        tracking.rename_run(run_id, run_title(verdict, split))
        evaluated = tracking.client().get_run(run_id).data.metrics
        tracking.describe_version(name, version, version_description(evaluated, config.k, split, run_id,
                                                                     decision.reason))
        tracking.set_version_tags(name, version, {"gate.decision": gate_tags["gate.decision"],
                                                  "gate.reason": decision.reason[:5000], "gate.run_id": gate_run,
                                                  "gate.window": gate_tags["gate.window"],
                                                  "gate.vs_champion": (champion or "none") if compared else "none"})
        # only a real comparison is written on the champion: no `vs` numbers from an unfair window
        if compared and champion is not None and champion != version:
            tracking.set_version_tags(name, champion, {f"gate.vs_v{version}": "replaced" if promoted else "kept",
                                                       f"gate.vs_v{version}.reason": decision.reason[:5000]})
    _logger().info("gate: %s", decision.reason)
    return decision


def metric_table(metrics: dict[str, float], k: int) -> str:
    """A plain-text table (`rich`): two-stage vs baselines on the same window."""
    return text_table(metric_rows(metrics, k))


__all__ = ["load_data", "split_data", "check_data_identity", "train_model", "evaluate_model", "start_run",
           "log_results", "register_model", "promotion_gate", "metric_table"]


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
