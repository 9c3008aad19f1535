"""The Dask ranker variant on a local in-process Dask cluster, on the planted-signal data of test_ranker."""

import numpy as np
import pytest

from recsys.models.ranker import RankerParams
from recsys.models.ranker_dask import group_partitions, train_ranker_dask


def test_group_partitions_never_split_a_group_and_cover_all_rows():
    groups = np.array([3, 5, 2, 7, 1, 4])
    parts = group_partitions(groups, 3)
    assert parts[0][0] == 0 and parts[-1][1] == groups.sum()
    assert all(a[1] == b[0] and a[3] == b[2] for a, b in zip(parts, parts[1:]))
    bounds = set(np.concatenate([[0], np.cumsum(groups)]).tolist())
    assert all(r0 in bounds and r1 in bounds for r0, r1, _, _ in parts)
    assert len(group_partitions(groups, 50)) <= len(groups)
    assert group_partitions(np.array([], dtype=int), 2) == []


@pytest.mark.filterwarnings("ignore:Parameter n_jobs will be ignored")
def test_dask_ranker_learns_the_planted_signal():
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(0)
    n_groups, size = 200, 20
    x = rng.normal(size=(n_groups * size, 3))
    y = (x[:, 0] > 1.0).astype(int) + (x[:, 0] > 1.8).astype(int)
    groups = np.full(n_groups, size)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        res = train_ranker_dask(x[:3000], y[:3000], groups[:150], x[3000:], y[3000:], groups[150:],
                                ["f0", "f1", "f2"], RankerParams(n_estimators=30, min_child_samples=5), client)
    gains = res.booster.feature_importance("gain")
    assert gains[0] > 10 * max(gains[1], gains[2])
    assert res.booster.num_trees() == 30
    curve = res.history["valid.ndcg_at_10"]
    assert len(curve) == 30 and max(curve) > 0.9 and 1 <= res.best_iteration <= 30
