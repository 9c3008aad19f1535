"""The train flow on a Dask LocalCluster against the single-process run of the same data and config: a
registered model and the same metrics within the tolerance of distributed LightGBM."""

import pytest
from mlflow import MlflowClient

from recsys.models.dask_options import DaskOptions
from recsys.tasks.paths import tracking_uri
from tests.integration.conftest import small_config
from tests.unit.test_distributed import METRIC_TOLERANCE

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Parameter n_jobs will be ignored")]


def test_train_flow_on_a_local_dask_cluster_matches_the_single_process_run(first_run):
    from recsys.flows.train import train

    # its own registered model: the versions of `recsys` are counted by the other train-flow tests
    result = train(config=small_config(registered_model="recsys-dask", dask=DaskOptions(local_workers=2)))
    client = MlflowClient(tracking_uri())
    single = client.get_run(first_run["run_id"]).data.metrics
    on_dask = client.get_run(result["run_id"])
    assert on_dask.info.status == "FINISHED" and on_dask.data.tags["train.runner"] == "dask"
    assert result["version"] == "1" and result["promoted"]
    assert str(client.get_model_version_by_alias("recsys-dask", "champion").version) == "1"
    m = on_dask.data.metrics
    for key in ("test.ndcg_at_10", "test.map_at_10", "test.recall_at_10", "test.hitrate_at_10"):
        assert abs(m[key] - single[key]) <= METRIC_TOLERANCE, (key, m[key], single[key])
    # candidates and baselines do not depend on where the ranker was trained: equal
    for key in single:
        if key.startswith(("recall.", "baseline.")):
            assert m[key] == pytest.approx(single[key], abs=1e-12), key
    assert m["rank.best_iteration"] >= 1
