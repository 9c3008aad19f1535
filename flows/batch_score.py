"""Batch-score: top-k for every recently active user from the champion, into Parquet + SQLite.

Users are split into `partitions`, each scored by its own task (threads, or Dask workers when
`dask` is set); the parts are merged and both tables replaced atomically at the end.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from recsys.flows.runners import task_runner
from recsys.models.ops_config import BatchScoreParams
from recsys.tasks.batch import active_users, publish_tables, score_partition, staging_dir
from recsys.tasks.ops import resolve_version


@flow(name="batch-score-partitions")
def score_partitions(name: str, version: str, chunks: list[list[str]], k: int, batch_size: int, staging: str,
                     scored_at: str) -> list[str]:
    futures = [score_partition.submit(name, version, chunk, k, batch_size, i, staging, scored_at)
               for i, chunk in enumerate(chunks)]
    return [f.result() for f in futures]


@flow(name="batch-score", log_prints=True)
def batch_score(params: BatchScoreParams = BatchScoreParams()) -> dict:
    version = resolve_version(params.registered_model, params.alias, params.version)
    users = active_users(params.active_days, params.data_dir)
    n = max(1, min(params.partitions, len(users)))
    size = -(-len(users) // n) if users else 0
    chunks = [users[i:i + size] for i in range(0, len(users), size)] if users else []
    stage = staging_dir(params.output_dir, flow_run.id)
    runner = task_runner(params.dask, max_parallel=min(len(chunks), 2) or 1)
    parts = score_partitions.with_options(task_runner=runner)(
        params.registered_model, version, chunks, params.k, params.batch_size, stage["path"], stage["scored_at"])
    summary = publish_tables(parts, params.output_dir, params.registered_model, version, params.k)
    print(f"scored {summary['users']} users with {params.registered_model} v{version}: "
          f"{summary['parquet']} and {summary['sqlite']}")
    return summary
