"""Task runner choice for fan-out work: in-process threads by default, Dask when asked.

A remote cluster: pass its scheduler address (`dask.address = "tcp://scheduler:8786"`). Its workers must
have this repository importable (same pinned requirements) and the same environment as a local run:
PREFECT_API_URL (to report task runs), RECSYS_HOME or shared paths, MLFLOW_TRACKING_URI (a tracking
server, not a local sqlite file, once workers are on other machines).
"""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

from recsys.models.ops_config import DaskOptions


def task_runner(dask: DaskOptions, max_parallel: int = 1):
    """DaskTaskRunner on `dask.address` or on a throwaway LocalCluster; else a thread pool."""
    if not dask.enabled:
        return ThreadPoolTaskRunner(max_workers=max_parallel)
    from prefect_dask import DaskTaskRunner

    if dask.address:
        return DaskTaskRunner(address=dask.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": dask.local_workers, "threads_per_worker": 1,
                                          "processes": dask.processes, "dashboard_address": None})
