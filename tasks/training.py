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

from features import schema as S
from features.split import Split, SplitParams, temporal_split, window
from models.config import TrainConfig
from models.evaluation import Evaluation, EvaluationParams, data_profile, evaluate, evaluation_truth, score_users
from models.gate import (GateDecision, GuardrailMeasures, decide_promotion, decide_with_guardrails,  # noqa: F401
                         latency_p95_ms)
from models.metrics import catalog_coverage, per_user_metrics
from models.ranker import RankerResult
from models.two_stage import FEATURE_NAMES, TwoStageRecommender, train_two_stage
from tasks import caching, plots, tracking
from tasks.data import dataset_digest, read_catalog, read_events, validate_and_quarantine
from tasks.paths import data_dir

log = logging.getLogger(__name__)

CURVE_MAX_K = 20  # metric@k curves are logged for k = 1..CURVE_MAX_K


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
    rec, result = train_two_stage(data.events, data.catalog, split.train_end, split.label_end, config.model)
    _logger().info("ranker: best iteration %d, ALS on %s", result.best_iteration, rec.sources["als"].device)
    return rec, result


@task(name="evaluate", cache_key_fn=caching.evaluate_key, persist_result=True, result_storage=caching.RESULTS)
def evaluate_model(rec: TwoStageRecommender, data: LoadedData, split: Split, k: int,
                   params: EvaluationParams = EvaluationParams()) -> Evaluation:
    test = window(data.events, split.label_end, split.test_end)
    result = evaluate(rec, test, k, curve_max_k=CURVE_MAX_K, params=params)
    _logger().info("test.ndcg_at_%d = %.4f over %d of the window's %d users", k,
                   result.metrics.get(f"test.ndcg_at_{k}", 0.0), len(result.user_ids),
                   int(result.metrics["test.n_users_in_window"]))
    return result


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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


def _markdown_table(frame: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(floatfmt.format(v) if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


@task(name="start-mlflow-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def start_run(config: TrainConfig, split: Split, data: LoadedData, flow_run_id: str | None,
              flow_run_url: str | None) -> str:
    """The parent run of this flow run (params, lineage tags, dataset inputs) and its `data` child run."""
    commit = git_commit()
    tags = {"flow": "train", "data_window": f"..{split.test_end:%Y-%m-%d}", "dataset_digest": data.digest,
            "code_version": commit, "config_hash": config.config_hash(), "als_device.requested": config.model.als.device,
            "split.train_end": f"{split.train_end:%Y-%m-%d}", "split.label_end": f"{split.label_end:%Y-%m-%d}",
            "split.test_end": f"{split.test_end:%Y-%m-%d}", "registered_model": config.registered_model}
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    # what the UI shows as Source / Created by
    tags.update({"mlflow.source.type": "JOB", "mlflow.source.name": "prefect flow train (flows/train.py)",
                 "mlflow.user": getpass.getuser()})
    if flow_run_id:
        tags["prefect.flow_run_id"] = flow_run_id
    if flow_run_url:
        tags["prefect.flow_run_url"] = flow_run_url
    name = f"train cutoff={split.test_end:%Y-%m-%d} at {pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M:%S}"
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
        md = ("# Data profile\n\n" + _markdown_table(profile) +
              f"\nRejected rows by rule: {data.rejected or 'none'}\n")
        tracking.log_text(child, md, "data_profile.md")
        tracking.log_text(run_id, md, "data_profile.md")
    return run_id




@task(name="log-results", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def log_results(run_id: str, rec: TwoStageRecommender, result: RankerResult, evaluation: Evaluation, k: int,
                data: LoadedData | None = None, split: Split | None = None) -> None:
    """Comparable metrics + plots on the parent; the recall, rank and evaluate stages as child runs."""
    tracking.log_tags(run_id, {"als_device": rec.sources["als"].device})
    tracking.log_metrics(run_id, {**evaluation.metrics, "rank.best_iteration": result.best_iteration})
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
        md = "# Candidate recall by source\n\n" + _markdown_table(recall_table) if recall else "no purchases\n"
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


@task(name="register-model", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def register_model(run_id: str, rec: TwoStageRecommender, evaluation: Evaluation, config: TrainConfig,
                   split: Split) -> str:
    model_uri = tracking.log_model(run_id, rec, evaluation.user_ids or rec.data.users.ids[:3].tolist(), config.k)
    version = tracking.register(model_uri, config.registered_model, run_id,
                                {"train_cutoff": f"{split.label_end:%Y-%m-%d}",
                                 "test_end": f"{split.test_end:%Y-%m-%d}"})
    _logger().info("registered %s version %s", config.registered_model, version)
    return version


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
    lines = [f"# Promotion gate: {verdict}", "",
             f"**Reason:** {report['reason']}", "",
             f"- model: `{report['model']}`, challenger v{report['challenger_version']}, "
             f"champion before: {('v' + report['champion_version']) if report['champion_version'] else 'none'}",
             f"- window: {report['window'].get('label_end')} .. {report['window'].get('test_end')} "
             f"({report['n_users']} of the window's {report['users_in_window']} users scored, both models on "
             "the same users)",
             f"- primary metric `{report['metric']}`: challenger {report['challenger']:.4f}"
             + (f", champion {report['champion']:.4f}, diff {report['diff']:+.4f}, "
                f"CI [{report['ci_low']:+.4f}, {report['ci_high']:+.4f}], margin {report['margin']:+.4f}"
                if report.get("champion") is not None else ""), "",
             "| guardrail | passed | challenger | champion | limit | detail |", "|---|---|---|---|---|---|"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    for g in report.get("guardrails", []):
        lines.append(f"| {g['name']} | {'yes' if g['passed'] else '**VETO**'} | {fmt(g['challenger'])} | "
                     f"{fmt(g['champion'])} | {fmt(g['limit'])} | {g['detail']} |")
    return "\n".join(lines) + "\n"


# tag: a Prefect tag concurrency limit `promotion-gate` = 1 (scripts/prefect_up.sh) serialises gates across
# runs and machines, on top of the file lock below
@task(name="promotion-gate", tags=["promotion-gate"], cache_policy=NO_CACHE)
def promotion_gate(run_id: str, version: str, data: LoadedData, split: Split, config: TrainConfig) -> GateDecision:
    """Champion and challenger, both loaded from the registry, scored on the same newest window: primary
    metric by paired bootstrap, then guardrails (coverage, new users, latency) that can veto. The decision
    is serialized (gate lock + compare-and-set of the alias) and recorded in a `gate` child run, on the
    parent run and on both model versions."""
    name, metric, params = config.registered_model, config.gate.metric, config.gate
    test = window(data.events, split.label_end, split.test_end)
    truth, n_window = evaluation_truth(test, config.evaluation)
    user_ids, relevant = truth.index.astype(str).tolist(), truth.tolist()
    seen_before = pd.Index(data.events.loc[data.events[S.TS] < split.label_end, S.USER_ID].unique()).astype(str)
    new_mask = ~pd.Index(user_ids).isin(seen_before)
    latency_users = user_ids[:params.latency_users] or [str(u) for u in data.events[S.USER_ID].head(5)]

    with tracking.child_run(run_id, "gate", {"gate.challenger_version": version}) as gate_run:
        challenger_rec = tracking.load_recommender(name, version)
        n_items = challenger_rec.data.n_items  # the newest catalog: one denominator for both models
        chal = _score(challenger_rec, user_ids, relevant, new_mask, config.k, n_items)
        if metric not in chal.per_user:
            raise ValueError(f"gate metric '{metric}' is not one of {sorted(chal.per_user)}")

        def decide(champion: str | None):
            champ, champ_rec = None, None
            if champion is not None and champion != version:
                champ_rec = tracking.load_recommender(name, champion)
                champ = _score(champ_rec, user_ids, relevant, new_mask, config.k, n_items)
            lat = _latencies([challenger_rec] + ([champ_rec] if champ_rec is not None else []), latency_users,
                             config.k)
            chal_m = GuardrailMeasures(chal.coverage, chal.new_user_ndcg, latency_p95_ms(lat[0]))
            champ_m = GuardrailMeasures(champ.coverage, champ.new_user_ndcg, latency_p95_ms(lat[1])) if champ else None
            decision = decide_with_guardrails(chal.per_user[metric], champ.per_user[metric] if champ else None,
                                              params, chal_m, champ_m)
            promoted = decision.promote and config.promote
            if decision.promote and not config.promote:
                decision = replace(decision, reason=f"{decision.reason} (promotion disabled for this run)")
            return promoted, decision.reason, replace(decision, promote=promoted)

        champion, promoted, decision = tracking.gate_and_promote(name, version, decide)
        report = {**decision.as_dict(), "model": name, "champion_version": champion, "challenger_version": version,
                  "promoted": promoted, "margin": params.margin, "params": asdict(params),
                  "window": {k_: str(v) for k_, v in split.as_dict().items()},
                  "users_in_window": n_window,
                  "new_users_scored": int(new_mask.sum()), "latency_users": len(latency_users)}
        gate_metrics = {f"gate.{k_}": v for k_, v in decision.as_dict().items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}
        gate_metrics["gate.promoted"] = float(promoted)
        for g in decision.guardrails:
            for side in ("challenger", "champion"):
                if getattr(g, side) is not None:
                    gate_metrics[f"gate.guardrail.{g.name}.{side}"] = getattr(g, side)
            gate_metrics[f"gate.guardrail.{g.name}.passed"] = float(g.passed)
        gate_tags = {"gate.decision": "promoted" if promoted else "rejected", "gate.reason": decision.reason,
                     "gate.champion_version": champion or "none", "gate.challenger_version": version,
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
        # the outcome in the name, so the runs table reads "... -> v3 champion" / "... -> v4 kept v3"
        base = tracking.run_name(run_id).split(" -> ")[0]
        tracking.rename_run(run_id, f"{base} -> v{version} " + (
            "champion" if promoted else f"rejected (champion v{champion})" if champion else "not promoted"))
        tracking.set_version_tags(name, version, {"gate.decision": gate_tags["gate.decision"],
                                                  "gate.reason": decision.reason[:5000], "gate.run_id": gate_run,
                                                  "gate.vs_champion": champion or "none"})
        if champion is not None and champion != version:
            tracking.set_version_tags(name, champion, {f"gate.vs_v{version}": "replaced" if promoted else "kept",
                                                       f"gate.vs_v{version}.reason": decision.reason[:5000]})
    _logger().info("gate: %s", decision.reason)
    return decision


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
