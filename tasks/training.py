"""Prefect tasks of the training flow: load -> split -> train -> evaluate (the MLflow record of the run:
recsys.tasks.run_record; the promotion gate: recsys.tasks.gate)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from recsys.features import schema as S
from recsys.features.event_stats import profile_frame
from recsys.features.exposure import shown_lists
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
from recsys.tasks import caching, tracking
from recsys.tasks.retry import retry_transient
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
