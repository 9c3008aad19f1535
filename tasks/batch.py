"""Batch scoring: top-k for every recently active user into a Parquet table and a SQLite table.

Layout under `$RECSYS_HOME/batch` (or `output_dir`):
  recommendations.parquet   user_id, rank, item_id, score, strategy, model_version, scored_at
  recommendations.db        SQLite: table `recommendations` (same columns, index on user_id) + table `batch_meta`
Both are replaced atomically, so a reader (cache warmer, the service) sees the old or the new table, never half.
"""

from __future__ import annotations

import functools
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
from prefect import task

from recsys.features import schema as S
from recsys.models import progress
from recsys.tasks import tracking
from recsys.tasks.retry import retry_transient
from recsys.tasks.data import EVENT_ARROW_SCHEMA
from recsys.tasks.paths import data_dir, events_dir, recsys_home
from recsys.tasks.logs import run_logger

TABLE = "recommendations"
COLUMNS = ["user_id", "rank", "item_id", "score", "strategy", "model_version", "scored_at"]


def batch_dir(output_dir: str | None = None) -> Path:
    return Path(output_dir) if output_dir else recsys_home() / "batch"


@task(name="active-users", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def active_users(active_days: int, data_dir_: str | None = None) -> list[str]:
    """Users with at least one event in the last `active_days` days of the store, sorted."""
    base = Path(data_dir_) if data_dir_ else data_dir()
    path = events_dir(base)
    if not path.exists():
        raise FileNotFoundError(f"no event store at {path}: run `recsys generate` or ingest first")
    dataset = ds.dataset(path, format="parquet", partitioning="hive", schema=EVENT_ARROW_SCHEMA)
    last = pd.Timestamp(dataset.to_table(columns=[S.TS]).column(S.TS).to_pandas().max())
    since = last.normalize() - pd.Timedelta(days=active_days - 1)
    flt = ds.field(S.TS) >= pa.scalar(since.to_pydatetime(), pa.timestamp("us", tz="UTC"))
    users = dataset.to_table(columns=[S.USER_ID], filter=flt).column(S.USER_ID).to_pandas().dropna().unique()
    run_logger().info("%d users active since %s", len(users), since.date())
    return sorted(str(u) for u in users)


@functools.lru_cache(maxsize=4)
def _recommender(name: str, version: str):
    """One model load per process (and per Dask worker) per version."""
    return tracking.load_recommender(name, version)


def recommend_frame(rec, user_ids: list[str], k: int, batch_size: int, version: str,
                    scored_at: pd.Timestamp) -> pd.DataFrame:
    frames = []
    for i in range(0, len(user_ids), batch_size):
        progress.step(f"batch scoring ({len(user_ids):,} users)", min(i + batch_size, len(user_ids)),
                      len(user_ids), "users", rows=min(i + batch_size, len(user_ids)))
        for row in rec.recommend_ids(user_ids[i:i + batch_size], k):
            n = len(row["items"])
            frames.append(pd.DataFrame({"user_id": row["user_id"], "rank": range(1, n + 1), "item_id": row["items"],
                                        "score": row["scores"], "strategy": row["strategy"]}))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS[:5])
    return out.assign(model_version=str(version), scored_at=scored_at)[COLUMNS].astype(
        {"user_id": "string", "item_id": "string", "strategy": "string", "model_version": "string",
         "rank": "int64", "score": "float64"})


@task(name="score-partition", retries=1, retry_delay_seconds=[5], retry_condition_fn=retry_transient)
def score_partition(name: str, version: str, user_ids: list[str], k: int, batch_size: int, part: int,
                    staging: str, scored_at: str) -> str:
    """Score one user partition with the given model version; writes and returns a Parquet part."""
    rec = _recommender(name, str(version))
    with progress.reporting(run_logger().info):
        frame = recommend_frame(rec, user_ids, k, batch_size, version, pd.Timestamp(scored_at))
    path = Path(staging) / f"part-{part:05d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return str(path)


@task(name="staging-dir")
def staging_dir(output_dir: str | None, flow_run_id: str | None) -> dict:
    """A fresh staging folder for this run's parts, and the run's scoring timestamp."""
    now = pd.Timestamp.now(tz="UTC")
    path = batch_dir(output_dir) / "staging" / (flow_run_id or f"{now:%Y%m%dT%H%M%S}")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return {"path": str(path), "scored_at": now.isoformat()}


@task(name="publish-batch-tables", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def publish_tables(parts: list[str], output_dir: str | None, name: str, version: str, k: int) -> dict:
    """Merge the parts and atomically replace the Parquet table and the SQLite table."""
    out = batch_dir(output_dir)
    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True) if parts else \
        pd.DataFrame(columns=COLUMNS)
    parquet_path = out / f"{TABLE}.parquet"
    tmp = parquet_path.with_suffix(".parquet.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(parquet_path)

    db_path = out / f"{TABLE}.db"
    scored_at = str(frame["scored_at"].iloc[0]) if len(frame) else pd.Timestamp.now(tz="UTC").isoformat()
    with sqlite3.connect(db_path) as con:  # one transaction: readers see old or new
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"DROP TABLE IF EXISTS {TABLE}_new")
        frame.assign(scored_at=frame["scored_at"].astype(str)).to_sql(f"{TABLE}_new", con, index=False)
        con.execute(f"DROP TABLE IF EXISTS {TABLE}")
        con.execute(f"ALTER TABLE {TABLE}_new RENAME TO {TABLE}")
        con.execute(f"CREATE INDEX IF NOT EXISTS idx_{TABLE}_user ON {TABLE}(user_id, rank)")
        con.execute("CREATE TABLE IF NOT EXISTS batch_meta (model TEXT, model_version TEXT, k INTEGER, "
                    "users INTEGER, rows INTEGER, scored_at TEXT)")
        con.execute("DELETE FROM batch_meta")
        con.execute("INSERT INTO batch_meta VALUES (?, ?, ?, ?, ?, ?)",
                    (name, str(version), k, int(frame["user_id"].nunique()), len(frame), scored_at))
    if parts:  # all parts of a run share one staging folder
        shutil.rmtree(Path(parts[0]).parent, ignore_errors=True)
    summary = {"users": int(frame["user_id"].nunique()), "rows": len(frame), "model_version": str(version),
               "parquet": str(parquet_path), "sqlite": str(db_path)}
    run_logger().info("batch scores: %s", summary)
    return summary
