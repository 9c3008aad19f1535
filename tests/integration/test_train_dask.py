"""The train flow on a Dask LocalCluster, its events in an S3-compatible object store (moto's server),
against the single-process run of the same data and config from a local store: a registered model and the
same metrics within the tolerance of distributed LightGBM."""

import pytest
from mlflow import MlflowClient

from recsys.models.dask_options import DaskOptions
from recsys.tasks.paths import data_dir, tracking_uri
from tests.integration.conftest import small_config
from tests.integration.test_mlflow_postgres import S3_BUCKET, S3_CREDENTIALS, _boto_credentials, s3_endpoint  # noqa: F401
from tests.unit.test_distributed import METRIC_TOLERANCE

# The whole flow's metrics on ~200 test users: the lightgbm.dask ranker's data-parallel histograms depend on
# which worker holds which block (the scheduler's choice), and with this stop's defaults (two stacked label
# windows, min_child_samples 100: fewer, coarser leaves) one split more or less moves NDCG@10 by up to ~0.025
# (seen once in four runs with these defaults: 0.0241). The unit test (same users, fixed blocks) keeps METRIC_TOLERANCE.
FLOW_METRIC_TOLERANCE = METRIC_TOLERANCE + 0.01

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Parameter n_jobs will be ignored")]


@pytest.fixture
def s3_store(s3_endpoint, monkeypatch):
    """The session's local event store copied into the bucket under `shop/`; the AWS_* variables set."""
    import boto3

    for name, value in {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **_boto_credentials())
    local = data_dir()
    files = [p for p in local.rglob("*.parquet") if "quarantine" not in p.parts]
    for path in files:
        s3.upload_file(str(path), S3_BUCKET, f"shop/{path.relative_to(local).as_posix()}")
    assert len(files) > 30
    return f"s3://{S3_BUCKET}/shop"


def test_train_flow_on_dask_with_events_on_s3_matches_the_single_process_run(first_run, s3_store, monkeypatch):
    from recsys.flows.train import train
    from recsys.tasks import training

    # the driver never reads the events: the one-process read fails here, and every LoadedData is recorded
    def no_driver_read(*args, **kwargs):
        raise AssertionError("the driver read the event store")

    made = []

    class Recorded(training.LoadedData):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(training, "read_events", no_driver_read)
    monkeypatch.setattr(training, "LoadedData", Recorded)
    # its own registered model: the versions of `recsys` are counted by the other train-flow tests
    result = train(config=small_config(data_dir=s3_store, registered_model="recsys-dask",
                                       dask=DaskOptions(local_workers=2)))
    assert len(made) == 1 and made[0].events is None and made[0].cluster is not None
    assert made[0].cluster.blocks == []  # released when the flow ended
    client = MlflowClient(tracking_uri())
    single = client.get_run(first_run["run_id"]).data.metrics
    on_dask = client.get_run(result["run_id"])
    assert on_dask.info.status == "FINISHED" and on_dask.data.tags["train.runner"] == "dask"
    assert on_dask.data.tags["dataset_digest"] == client.get_run(first_run["run_id"]).data.tags["dataset_digest"]
    assert result["version"] == "1" and result["promoted"]
    version = client.get_model_version_by_alias("recsys-dask", "champion")
    assert str(version.version) == "1" and version.tags["lineage.data_dir"] == s3_store
    m = on_dask.data.metrics
    assert m["data.events"] == single["data.events"] > 10_000
    for key in ("test.ndcg_at_10", "test.map_at_10", "test.recall_at_10", "test.hitrate_at_10"):
        assert abs(m[key] - single[key]) <= FLOW_METRIC_TOLERANCE, (key, m[key], single[key])
    # candidates and baselines do not depend on where the ranker was trained: equal
    compared = [key for key in single if key.startswith(("recall.", "baseline."))]
    assert len(compared) > 10
    for key in compared:
        assert m[key] == pytest.approx(single[key], abs=1e-12), key
