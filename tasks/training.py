"""Prefect tasks of the training flow: load -> split -> train -> evaluate -> log -> register -> gate."""

from __future__ import annotations

import getpass
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from recsys.features import schema as S
from recsys.features.event_stats import profile_frame
from recsys.features.exposure import EXPOSURE_FEATURES, shown_lists
from recsys.features.lineage import Lineage
from recsys.features.interactions import InteractionData, build_interaction_data
from recsys.features.split import Split, SplitParams, temporal_split, window
from recsys.models.config import TrainConfig
from recsys.models.evaluation import Evaluation, EvaluationParams, data_profile, evaluate
from recsys.models.gate import data_identity_mismatch
from recsys.models import progress
from recsys.models.ranker import RankerResult
from recsys.models.search import search_metrics, search_quality
from recsys.models.search_ranker import SearchRankerParams, search_sessions, train_search_model
from recsys.models.semantic import load_encoder
from recsys.models.two_stage import TwoStageRecommender
from recsys.models.two_stage_training import train_two_stage
from recsys.tasks import caching, plots, tracking
from recsys.tasks.retry import retry_transient
from recsys.tasks.reporting import markdown_table, metric_rows, text_table
from recsys.models.distributed import recommend_on_cluster
from recsys.tasks.cluster import cluster_client
from recsys.tasks.cluster_events import ClusterEvents
from recsys.tasks.data import (dataset_digest, is_remote, quarantine, read_catalog, read_events,
                               validate_and_quarantine)
from recsys.tasks.logs import run_logger
from recsys.tasks.impressions import on_event_clock, read_impressions
from recsys.tasks.paths import data_dir, recsys_home


CURVE_MAX_K = 20  # metric@k curves are logged for k = 1..CURVE_MAX_K


@dataclass
class LoadedData:
    """A run's validated events: the frame in this process, or (`dask:` set) a handle on the blocks the Dask
    workers read and validated (`cluster`; `events` is None: the driver never holds them). Counts, time
    range, digest and profile are reduced on the workers; consumers ask for windows and subsets."""

    events: pd.DataFrame | None
    catalog: pd.DataFrame
    digest: str
    rejected: dict[str, int]
    data_dir: str = ""
    cluster: ClusterEvents | None = None
    n_events: int = 0
    n_users: int = 0
    ts_min: pd.Timestamp | None = None
    ts_max: pd.Timestamp | None = None

    @classmethod
    def of_frame(cls, events: pd.DataFrame, catalog: pd.DataFrame, rejected: dict[str, int],
                 data_dir: str = "") -> "LoadedData":
        ts = events[S.TS]
        return cls(events, catalog, dataset_digest(events), rejected, data_dir, None, len(events),
                   int(events[S.USER_ID].nunique()), ts.min() if len(ts) else None, ts.max() if len(ts) else None)

    def window(self, start: pd.Timestamp | None, end: pd.Timestamp) -> pd.DataFrame:
        """Events with start <= ts < end (gathered from the workers on Dask: a label or test window)."""
        return window(self.events, start, end) if self.cluster is None else self.cluster.window(start, end)

    def window_stats(self, windows: dict[str, tuple]) -> tuple[pd.DataFrame, dict[str, str]]:
        """The data profile (`recsys.models.evaluation.data_profile`'s table) and the digest of each window."""
        if self.cluster is None:
            return (data_profile(self.events, self.catalog, windows),
                    {name: dataset_digest(window(self.events, start, end)) for name, (start, end) in windows.items()})
        numbers, digests = self.cluster.stats(windows)
        return profile_frame(numbers, len(self.catalog)), digests

    def search_events(self) -> pd.DataFrame:
        """What `search_sessions` needs: every event here, the search sessions' events on Dask."""
        return self.events if self.cluster is None else self.cluster.search_events()

    def seen_before(self, user_ids: list[str], start: pd.Timestamp) -> np.ndarray:
        """Which of `user_ids` have an event before `start`."""
        if self.cluster is not None:
            return self.cluster.seen_before(user_ids, start)
        seen = pd.Index(self.events.loc[self.events[S.TS] < start, S.USER_ID].unique()).astype(str)
        return pd.Index(user_ids).isin(seen)

    def head(self, n: int) -> pd.DataFrame:
        return self.events.head(n) if self.cluster is None else self.cluster.head(n)

    def close(self) -> None:
        """Release the workers' blocks and the connection (Dask); nothing in one process."""
        if self.cluster is not None:
            self.cluster.close()


TUNE_FULL_ON_DASK = ("--tune full is not available on a Dask cluster: its trials refit the model on earlier "
                     "windows from the events in one process; use --tune quick (the default) or off with Dask, "
                     "or tune in one process")


def store_base(config: TrainConfig) -> Path | str:
    """The event store of a run: config.data_dir (a directory or s3://bucket/prefix), else $RECSYS_HOME/data."""
    if config.data_dir and is_remote(config.data_dir):
        return config.data_dir
    return Path(config.data_dir) if config.data_dir else data_dir()


def store_end(config: TrainConfig) -> pd.Timestamp | None:
    """The end (exclusive) of the events a run reads: the test window's end with a cutoff, else none."""
    return temporal_split(pd.Timestamp.now(tz="UTC"), config.split).test_end if config.split.cutoff is not None else None


@task(name="load-data", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def load_data(config: TrainConfig, dask_address: str | None = None) -> LoadedData:
    """The run's validated events: read into this process, or with a Dask cluster at `dask_address` read
    and validated by its workers (the handle holds a connection: `close()` it, see `loaded_data`)."""
    base = store_base(config)
    source = f"{str(base).rstrip('/')}/events"
    if not dask_address:
        events = read_events(base, end=store_end(config))
        events, rejected = validate_and_quarantine(events, base, source=source,
                                                   max_rejected_share=config.max_rejected_share)
        data = LoadedData.of_frame(events, read_catalog(base), rejected, str(base))
    else:
        if config.tuning.mode == "full":
            raise ValueError(TUNE_FULL_ON_DASK)
        catalog = read_catalog(base)
        client = cluster_client(dask_address)  # a connected distributed.Client, closed by `close()`
        try:
            cluster = ClusterEvents.load(client, base, catalog, end=store_end(config))
            rejected_rows = cluster.rejected()
            rejected = quarantine(rejected_rows, cluster.n_events + len(rejected_rows), base, source,
                                  config.max_rejected_share)
            if cluster.n_events == 0:
                raise ValueError(f"the event store at {source} has no valid events")
            numbers, digests = cluster.stats({"all": (None, None)})
        except BaseException:
            client.close()
            raise
        data = LoadedData(None, catalog, digests["all"], rejected, str(base), cluster, cluster.n_events,
                          numbers["all"].users, cluster.ts_min, cluster.ts_max)
    run_logger().info("loaded %d events (%d rejected), %d catalog items from %s%s", data.n_events,
                      sum(data.rejected.values()), len(data.catalog), base,
                      " on the Dask workers" if data.cluster is not None else "")
    return data


@contextmanager
def loaded_data(config: TrainConfig, dask_address: str | None = None) -> Iterator[LoadedData]:
    """`load_data` for the length of a block: on Dask, the workers' blocks are released after it."""
    data = load_data(config, dask_address)
    try:
        yield data
    finally:
        data.close()


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
def split_data(data: LoadedData, params: SplitParams) -> Split:
    split = temporal_split(data.ts_max, params)
    if data.ts_min >= split.train_end:  # no event before the training end
        raise ValueError(f"no training events before {split.train_end:%Y-%m-%d}: the data covers "
                         f"{data.ts_min:%Y-%m-%d}..{data.ts_max:%Y-%m-%d}; "
                         "use fewer label/test days or more data")
    run_logger().info("split: train < %s <= label < %s <= test < %s",
                   split.train_end.date(), split.label_end.date(), split.test_end.date())
    return split


@task(name="load-impressions", cache_policy=NO_CACHE)
def load_impressions(run_id: str, config: TrainConfig, split: Split) -> pd.DataFrame | None:
    """With `config.feedback.enabled`: the service's recommendation impressions before the test window's end,
    on the events' clock; None when feedback is off or nothing was logged (training is then unchanged).
    Logs `feedback.*` metrics (impressions read, users and items shown)."""
    fb = config.feedback
    if not fb.enabled:
        return None
    directory = Path(fb.impressions_dir) if fb.impressions_dir else recsys_home() / "impressions"
    imp = read_impressions(directory) if directory.is_dir() else None
    if imp is not None:
        imp = shown_lists(on_event_clock(imp), fb)
        imp = imp[imp[S.TS] < split.test_end]
    n = 0 if imp is None else len(imp)
    metrics = {"feedback.impressions": n, "feedback.used": float(n > 0)}
    if n:
        metrics.update({"feedback.impressions_before_train_end": int((imp[S.TS] < split.train_end).sum()),
                        "feedback.impressions_in_label_window": int(((imp[S.TS] >= split.train_end)
                                                                     & (imp[S.TS] < split.label_end)).sum()),
                        "feedback.users_shown": imp[S.USER_ID].nunique(),
                        "feedback.items_shown": imp[S.ITEM_ID].nunique()})
    tracking.log_metrics(run_id, metrics)
    run_logger().info("feedback: %d recommendation impressions from %s%s", n, directory,
                      "" if n else " (none: training without exposure features)")
    return imp.reset_index(drop=True) if n else None


@task(name="train-two-stage", cache_key_fn=caching.train_key, persist_result=True, result_storage=caching.RESULTS,
      result_serializer=caching.StreamedPickle())
def train_model(data: LoadedData, split: Split, config: TrainConfig,
                dask_address: str | None = None, impressions: pd.DataFrame | None = None
                ) -> tuple[TwoStageRecommender, RankerResult]:
    """The two-stage model (+ search model); with a Dask cluster at `dask_address` the workers read, validate
    and reduce the store into the feature states (recsys.tasks.cluster_events: only the reduced states and
    the label windows reach this process), build the ranking sets and train the ranker. With `impressions`
    (and `config.feedback` on) the ranker learns from what was shown (recsys.features.exposure)."""
    on_dask = data.cluster is not None
    with progress.reporting(run_logger().info), cluster_client(None if on_dask else dask_address) as own:
        client, source = (data.cluster.client, data.cluster) if on_dask else (own, None)
        if client is not None and source is None:  # a frame loaded here, the states built on the workers
            source = ClusterEvents.load(client, data.data_dir or store_base(config), data.catalog, end=store_end(config))
        rec, result = train_two_stage(data.events if source is None else None, data.catalog, split.train_end,
                                      split.label_end, config.model, client=client, source=source,
                                      impressions=impressions, feedback=config.feedback)
        data_train = source.state(split.train_end, config.model.interactions) if source is not None else None
    run_logger().info("ranker: best iteration %d, ALS on %s", result.best_iteration, rec.sources["als"].device)
    rec.search_model, search = train_search(data, split, config, rec, data_train)
    run_logger().info("search: %s; ranker %s", rec.search_model.describe()["retrieval"],
                   f"best iteration {search.best_iteration}" if search else "not trained (no search with a click)")
    return rec, result


def train_search(data: LoadedData, split: Split, config: TrainConfig, rec: TwoStageRecommender,
                 data_train: InteractionData | None = None):
    """The search model of `rec`: learned on the label window's searches with the state at `train_end`
    (on Dask from the events of the sessions with a search only: what the search sessions are built of)."""
    if data_train is None:
        data_train = build_interaction_data(data.events, data.catalog, split.train_end, config.model.interactions)
    return train_search_model(data.search_events(), data.catalog, data_train, rec.data, split.train_end,
                              split.label_end, SearchRankerParams(), encoder=load_encoder())


@task(name="evaluate", cache_key_fn=caching.evaluate_key, persist_result=True, result_storage=caching.RESULTS)
def evaluate_model(rec: TwoStageRecommender, data: LoadedData, split: Split, k: int,
                   params: EvaluationParams = EvaluationParams(), dask_address: str | None = None) -> Evaluation:
    """Metrics on the test window (the only events it gathers); the model's lists scored on the Dask cluster
    at `dask_address` if given (the data's own connection when it is held there)."""
    test = data.window(split.label_end, split.test_end)
    own_address = dask_address if data.cluster is None else None
    with progress.reporting(run_logger().info), cluster_client(own_address) as own:
        client = data.cluster.client if data.cluster is not None else own
        on_cluster = (lambda users, depth: recommend_on_cluster(client, rec, users, depth)) if client else None
        result = evaluate(rec, test, k, curve_max_k=CURVE_MAX_K, params=params, recommend=on_cluster)
    result.metrics.update(search_metrics(search_quality(rec, search_sessions(test), k)))
    run_logger().info("test.ndcg_at_%d = %.4f over %d of the window's %d users", k,
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


__all__ = ["load_data", "loaded_data", "split_data", "check_data_identity", "train_model", "evaluate_model", "start_run",
           "log_results", "register_model", "metric_table"]  # the promotion gate: recsys.tasks.gate


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
