"""The Dask cluster a training run uses when `dask` is configured: an existing scheduler, or a LocalCluster
started for the run and closed after it. The flow holds it open across tasks; each task connects by address.

Workers of a remote cluster need what the tasks they run import: this repository (the same commit and pinned
requirements.lock) and read access to the event store (the same local path, or the AWS_* variables of an S3
store): they read and validate the events (`recsys.tasks.cluster_events`); the model state is sent to them
by the driver, the finished booster comes back, and only the driver talks to MLflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from recsys.models.dask_options import DaskOptions
from recsys.tasks.logs import run_logger


@contextmanager
def dask_cluster(options: DaskOptions) -> Iterator[str | None]:
    """The scheduler address of the configured cluster (None when Dask is off), open while in the block."""
    if not options.enabled:
        yield None
        return
    if options.address:
        yield options.address
        return
    from distributed import LocalCluster

    with LocalCluster(n_workers=options.local_workers, threads_per_worker=1, processes=options.processes,
                      dashboard_address=None) as cluster:
        run_logger().info("dask: local cluster of %d workers at %s", options.local_workers, cluster.scheduler_address)
        yield cluster.scheduler_address


def cluster_client(address: str | None):
    """A `distributed.Client` on `address` (a context manager), or a null context yielding None."""
    if not address:
        return nullcontext(None)
    from distributed import Client

    return Client(address, set_as_default=False)
