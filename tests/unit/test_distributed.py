"""The Dask path (recsys.models.distributed) against the single-process path on a LocalCluster: the same
ranking-set rows (candidates + features + labels), the same lists, metrics within a stated tolerance."""

import numpy as np
import pandas as pd
import pytest

from recsys.features import schema as S
from recsys.features.interactions import InteractionData, build_interaction_data
from recsys.features.split import SplitParams, temporal_split, window
from recsys.features.synthetic import SyntheticParams
from recsys.features.validation import split_valid_rows
from recsys.models.evaluation import evaluate
from recsys.models.ranker import RankerParams
from recsys.models.recall import ALSParams
from recsys.models.two_stage import TwoStageParams, TwoStageRecommender, fit_sources
from recsys.models.two_stage_training import train_two_stage
from recsys.tasks.data import read_catalog, read_events, write_day_partition, write_synthetic_dataset

distributed = pytest.importorskip("distributed")

# distributed LightGBM (data-parallel tree learner, no early stopping: best iteration read from the recorded
# validation curve) may grow other trees than the serial learner; on this data it grows the same ones, and the
# metrics may differ by at most this much (absolute, on [0, 1] metrics)
METRIC_TOLERANCE = 0.02
PARAMS = TwoStageParams(als=ALSParams(factors=8, iterations=3, device="cpu", num_threads=1),
                        ranker=RankerParams(n_estimators=40, num_threads=1), tune_baselines=False)


NOW = pd.Timestamp("2026-06-01", tz="UTC")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A synthetic store with a second file in one day: a copy of an event of the first file (the duplicate
    rule must see both files of the day) and an event without a user."""
    base = tmp_path_factory.mktemp("store")
    write_synthetic_dataset(base, SyntheticParams(n_users=600, n_items=300, n_days=28, seed=3))
    day_dir = sorted((base / "events").iterdir())[10]
    first = pd.read_parquet(day_dir / "part-0.parquet")
    extra = pd.concat([first.iloc[[3]], first.iloc[[4]].assign(**{S.USER_ID: ""})], ignore_index=True)
    write_day_partition(extra, base, pd.Timestamp(day_dir.name.split("=")[1]), part="part-1")
    return base


@pytest.fixture(scope="module")
def world(store):
    events, _ = split_valid_rows(read_events(store), NOW)
    return events, read_catalog(store), temporal_split(events[S.TS].max(), SplitParams())


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def test_ranking_sets_built_on_workers_equal_the_single_process_rows(world, client):
    from recsys.models.distributed import ranking_sets_on_cluster

    events, catalog, split = world
    data = build_interaction_data(events, catalog, split.train_end, PARAMS.interactions)
    learner = TwoStageRecommender(data, fit_sources(data, PARAMS), PARAMS)
    labels = window(events, split.train_end, split.label_end)
    users = learner.label_users(labels, seed=1)
    local = learner.ranking_set(labels, users)
    blocks = ranking_sets_on_cluster(client, learner, labels, users, block_users=60)
    assert len(blocks.futures) == -(-len(users) // 60) > 2
    x, y, groups = (a.compute() for a in blocks.dask_arrays())
    assert len(local.groups) > 20
    np.testing.assert_array_equal(x, local.x)
    np.testing.assert_array_equal(y, local.y)
    np.testing.assert_array_equal(groups, local.groups)


@pytest.mark.filterwarnings("ignore:Parameter n_jobs will be ignored")
def assert_same_state(a: InteractionData, b: InteractionData) -> None:
    np.testing.assert_array_equal(a.users.ids, b.users.ids)
    np.testing.assert_array_equal(a.items.ids, b.items.ids)
    for name in InteractionData._SPARSE:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        for part in ("indptr", "indices", "data"):  # exactly: the same entries (explicit zeros too), bit for bit
            np.testing.assert_array_equal(getattr(x, part), getattr(y, part), err_msg=name)
    for name in InteractionData._DENSE:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_store_read_validated_and_reduced_on_the_workers_gives_the_single_process_state(store, world, client):
    from recsys.tasks.cluster_events import ClusterEvents

    events, catalog, split = world
    on_cluster = ClusterEvents.load(client, store, catalog, now=NOW, block_bytes=1)  # a block per day
    assert len(on_cluster.blocks) == 28
    _, rejected = split_valid_rows(read_events(store), NOW)
    assert on_cluster.n_events == len(events)
    assert on_cluster.rejected_counts() == {"duplicate": 1, "empty_user_id": 1} == \
        rejected["reject_rule"].value_counts().to_dict()
    for cutoff in (split.train_end, split.label_end):
        local = build_interaction_data(events, catalog, cutoff, PARAMS.interactions)
        assert local.covis.nnz > 1000 and local.n_users > 300
        assert_same_state(on_cluster.state(cutoff, PARAMS.interactions, n_buckets=3), local)
    early = on_cluster.state(events[S.TS].min(), PARAMS.interactions)  # nothing before: an empty state
    assert early.n_users == 0 and early.n_items == len(catalog)
    labels = on_cluster.window(split.train_end, split.label_end)
    expected = window(events, split.train_end, split.label_end)
    assert len(labels) == len(expected) > 100
    for col in expected.columns:
        assert labels[col].astype(object).where(labels[col].notna(), None).tolist() == \
            expected[col].astype(object).where(expected[col].notna(), None).tolist(), col


def test_train_and_evaluate_on_the_cluster_match_the_single_process_run(store, world, client):
    from recsys.models.distributed import recommend_ids_on_cluster, recommend_on_cluster
    from recsys.tasks.cluster_events import ClusterEvents

    events, catalog, split = world
    test = window(events, split.label_end, split.test_end)
    # the driver never holds the events: states and label windows come from the workers' blocks of the store
    source = ClusterEvents.load(client, store, catalog, now=NOW)
    rec_d, res_d = train_two_stage(None, catalog, split.train_end, split.label_end, PARAMS, client=client,
                                   source=source)
    rec_l, res_l = train_two_stage(events, catalog, split.train_end, split.label_end, PARAMS)
    users = np.arange(rec_d.data.n_users)
    # the candidates do not depend on the ranker: the same table on both paths
    t_d, t_l = rec_d.candidate_table(users), rec_l.candidate_table(users)
    np.testing.assert_array_equal(t_d.items, t_l.items)
    np.testing.assert_array_equal(t_d.source_features, t_l.source_features)
    # scoring on the workers gives the driver's lists for the same model
    on_cluster = recommend_on_cluster(client, rec_d, np.r_[users[:50], -1], 10, block_users=16)
    local_lists = rec_d.recommend(np.r_[users[:50], -1], 10)
    np.testing.assert_array_equal(on_cluster[0], local_lists[0])
    # the gate's lists (as served, by external id; an unknown user gets the cold-start list) on the workers
    ids = rec_d.data.users.ids[:40].tolist() + ["nobody"]
    served = [r["items"] for r in rec_d.recommend_ids(ids, 10)]
    assert recommend_ids_on_cluster(client, rec_d, ids, 10, block_users=16) == served and len(served[-1]) == 10
    ev_d = evaluate(rec_d, test, 10, recommend=lambda u, k: recommend_on_cluster(client, rec_d, u, k, 64))
    ev_l = evaluate(rec_l, test, 10)
    assert ev_d.user_ids == ev_l.user_ids and len(ev_l.user_ids) > 20
    assert ev_l.metrics["test.ndcg_at_10"] > ev_l.metrics["baseline.popularity.ndcg_at_10"]
    for key in ("test.ndcg_at_10", "test.map_at_10", "test.recall_at_10", "test.hitrate_at_10"):
        assert abs(ev_d.metrics[key] - ev_l.metrics[key]) <= METRIC_TOLERANCE, key
    assert {k: v for k, v in ev_d.metrics.items() if k.startswith("recall.")} == \
        {k: v for k, v in ev_l.metrics.items() if k.startswith("recall.")}
    assert res_d.booster.num_trees() == PARAMS.ranker.n_estimators  # lightgbm.dask ran every round
    assert 1 <= res_d.best_iteration <= PARAMS.ranker.n_estimators


def test_what_the_flow_logs_is_reduced_on_the_workers_to_the_single_process_values(store, world, client):
    """Digests, data profile, rejected rows (their row numbers in the whole read), the search sessions and
    the users seen before a window: from the workers' blocks, equal to the one-process frame's."""
    from recsys.models.evaluation import data_profile
    from recsys.models.search_ranker import search_sessions
    from recsys.tasks.cluster_events import ClusterEvents
    from recsys.tasks.data import dataset_digest
    from recsys.features.event_stats import profile_frame

    events, catalog, split = world
    on_cluster = ClusterEvents.load(client, store, catalog, now=NOW, block_bytes=1)
    windows = {"train": (None, split.train_end), "label": (split.train_end, split.label_end),
               "test": (split.label_end, split.test_end), "all": (None, None)}
    numbers, digests = on_cluster.stats(windows)
    for name, (start, end) in windows.items():
        assert digests[name] == dataset_digest(events if end is None else window(events, start, end)), name
    assert numbers["all"].users == events[S.USER_ID].nunique() and numbers["all"].n == len(events)
    three = {k: v for k, v in windows.items() if k != "all"}
    assert profile_frame({k: numbers[k] for k in three}, len(catalog)).to_csv() == \
        data_profile(events, catalog, three).to_csv()
    _, rejected = split_valid_rows(read_events(store), NOW)
    assert sorted(on_cluster.rejected()["source_row"]) == sorted(rejected["source_row"])
    full, part = search_sessions(events), search_sessions(on_cluster.search_events())
    assert len(full.labels) > 20
    pd.testing.assert_frame_equal(part.labels, full.labels)
    assert part.searches.astype(str).equals(full.searches.astype(str))
    users = window(events, split.label_end, split.test_end)[S.USER_ID].astype(str).unique().tolist()
    expected = pd.Index(users).isin(pd.Index(events.loc[events[S.TS] < split.label_end, S.USER_ID].unique()).astype(str))
    assert 0 < expected.sum() < len(users)
    assert on_cluster.seen_before(users, split.label_end).tolist() == expected.tolist()
