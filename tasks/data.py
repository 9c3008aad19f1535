"""Event store I/O: Parquet partitioned by UTC day, a catalog table, quarantine of bad rows."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recsys.features import schema as S
from recsys.features.event_stats import events_digest
from recsys.features.synthetic import SyntheticParams, SyntheticWorld
from recsys.features.validation import split_valid_rows
from recsys.tasks.paths import catalog_path, events_dir, quarantine_dir, recsys_home

log = logging.getLogger(__name__)

EVENT_ARROW_SCHEMA = pa.schema([
    (S.USER_ID, pa.string()), (S.ITEM_ID, pa.string()), (S.EVENT_TYPE, pa.string()),
    (S.TS, pa.timestamp("us", tz="UTC")), (S.SESSION_ID, pa.string()), (S.QUERY, pa.string()),
    (S.QUANTITY, pa.int64()), (S.PRICE, pa.float64()),
])


def write_day_partition(events: pd.DataFrame, base: Path, day: pd.Timestamp, part: str = "part-0") -> Path:
    """Write one day's events as events/day=YYYY-MM-DD/<part>.parquet (replacing that part)."""
    directory = events_dir(base) / f"{S.DAY}={day:%Y-%m-%d}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{part}.parquet"
    table = pa.Table.from_pandas(events[list(S.EVENT_COLUMNS)], schema=EVENT_ARROW_SCHEMA, preserve_index=False)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def write_catalog(catalog: pd.DataFrame, base: Path) -> Path:
    path = catalog_path(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    catalog.to_parquet(path, index=False)
    return path


def write_synthetic_dataset(base: Path, params: SyntheticParams,
                            progress: Callable[[int, int, int], None] | None = None) -> dict:
    """Generate the synthetic data set day by day into `base` (memory stays flat)."""
    world = SyntheticWorld(params)
    write_catalog(world.catalog(), base)
    n_events = 0
    for d, (day, events) in enumerate(world.iter_days()):
        write_day_partition(events, base, day)
        n_events += len(events)
        if progress:
            progress(d + 1, params.n_days, n_events)
    return {"events": n_events, "items": params.n_items, "users": params.n_users, "days": params.n_days,
            "path": str(base)}


# text columns read as pandas categoricals: one int32 code per row and each distinct string once (Parquet
# stores them dictionary-encoded already), instead of a string per row
COMPACT_COLUMNS = (S.USER_ID, S.ITEM_ID, S.EVENT_TYPE, S.SESSION_ID, S.QUERY)
COMPACT_ARROW_SCHEMA = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string()))
                                  if f.name in COMPACT_COLUMNS else f for f in EVENT_ARROW_SCHEMA])


def event_dataset(path, compact: bool = True, filesystem=None) -> ds.Dataset:
    """The event store as a pyarrow dataset (hive `day=` partitions), text columns dictionary-encoded
    when `compact`. `path` may be a local directory or a path on `filesystem` (e.g. S3)."""
    if not compact:
        return ds.dataset(path, format="parquet", partitioning="hive", schema=EVENT_ARROW_SCHEMA,
                          filesystem=filesystem)
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(COMPACT_COLUMNS)))
    return ds.dataset(path, format=fmt, partitioning="hive", schema=COMPACT_ARROW_SCHEMA, filesystem=filesystem)


def compact_frame(table: pa.Table) -> pd.DataFrame:
    """A dictionary-encoded table as pandas, categoricals with one dictionary per column whose
    categories are sorted (so grouping and sorting by an id give the order the strings would)."""
    frame = table.unify_dictionaries().to_pandas()
    for col in frame.columns:
        if isinstance(frame[col].dtype, pd.CategoricalDtype):
            cats = frame[col].cat.categories
            frame[col] = frame[col].cat.set_categories(cats.sort_values())
    return frame


def is_remote(base) -> bool:
    """An object-store location (s3://bucket/prefix), not a local directory."""
    return "://" in str(base)


def store_location(base) -> tuple[pafs.FileSystem | None, str]:
    """(filesystem, root path) of a store: None + the local directory, or pyarrow's filesystem for a URL
    (S3 credentials and endpoint from the standard AWS_* variables, e.g. AWS_ENDPOINT_URL for MinIO/moto)."""
    if not is_remote(base):
        return None, str(base)
    try:
        fs, root = pafs.FileSystem.from_uri(str(base))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"cannot open the event store {base}: {' '.join(str(exc).split())[:300]}") from exc
    return fs, root.rstrip("/")


def _store_path(base, name: str) -> tuple[pafs.FileSystem | None, str]:
    fs, root = store_location(base)
    return fs, f"{root}/{name}"


def _exists(fs: pafs.FileSystem | None, path: str) -> bool:
    return Path(path).exists() if fs is None else fs.get_file_info(path).type != pafs.FileType.NotFound


def read_events(base: Path | str, end: pd.Timestamp | None = None, columns: list[str] | None = None,
                compact: bool = True, start: pd.Timestamp | None = None) -> pd.DataFrame:
    """All events (start <= ts < end, each bound when given) from the store (a directory or
    s3://bucket/prefix), with contract dtypes; text columns as categoricals (`compact`, the default) or strings."""
    fs, path = _store_path(base, "events") if is_remote(base) else (None, str(events_dir(base)))
    if not _exists(fs, path):
        where = f"{str(base).rstrip('/')}/events" if fs is not None else path
        raise FileNotFoundError(f"no event store at {where}: run `recsys generate` or `recsys ingest` first")
    dataset = event_dataset(path, compact, filesystem=fs)
    flt = ds.field(S.TS) < pa.scalar(end.to_pydatetime(), pa.timestamp("us", tz="UTC")) if end is not None else None
    if start is not None:  # the scan skips row groups (and their bytes) outside the range
        low = ds.field(S.TS) >= pa.scalar(start.to_pydatetime(), pa.timestamp("us", tz="UTC"))
        flt = low if flt is None else flt & low
    try:
        table = dataset.to_table(columns=columns or list(S.EVENT_COLUMNS), filter=flt)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException):
            raise
        # a truncated or foreign file in a partition: name it, say what to do (retrying cannot help)
        raise ValueError(f"unreadable file in the event store {path} (move it out of the store, or re-ingest "
                         f"its source, and rerun): {' '.join(str(exc).split())[:400]}") from exc
    if table.num_rows == 0:
        raise ValueError(f"the event store at {path} has no events" + (f" before {end}" if end is not None else "")
                         + (f" since {start}" if start is not None else ""))
    return compact_frame(table) if compact else table.to_pandas()


def read_catalog(base: Path | str) -> pd.DataFrame:
    fs, path = _store_path(base, "catalog.parquet") if is_remote(base) else (None, str(catalog_path(base)))
    if not _exists(fs, path):
        raise FileNotFoundError(f"no catalog at {path}: run `recsys generate` or `recsys ingest` first")
    return pd.read_parquet(path, filesystem=fs)


def local_side(base) -> Path:
    """Where a store's local by-products go (quarantine): the store itself, or for an object-store
    location (read-only to training) a folder named after it under RECSYS_HOME/remote."""
    if not is_remote(base):
        return Path(base)
    return recsys_home() / "remote" / str(base).replace("://", "/").strip("/")


def validate_and_quarantine(events: pd.DataFrame, base: Path, source: str,
                            max_rejected_share: float) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep valid rows; write rejected ones with their rule to quarantine; fail past the threshold."""
    valid, rejected = split_valid_rows(events, now=pd.Timestamp.now(tz="UTC"))
    return valid, quarantine(rejected, len(events), base, source, max_rejected_share)


def quarantine(rejected: pd.DataFrame, n_read: int, base: Path | str, source: str,
               max_rejected_share: float) -> dict[str, int]:
    """Write the rejected rows (of `n_read` read) with their rule to quarantine; fail past the threshold;
    the counts by rule."""
    counts = rejected["reject_rule"].value_counts().to_dict() if len(rejected) else {}
    if len(rejected):
        qdir = quarantine_dir(local_side(base))
        qdir.mkdir(parents=True, exist_ok=True)
        out = rejected.assign(source_file=source)
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
        out.astype({c: "string" for c in out.columns if out[c].dtype == object}).to_parquet(
            qdir / f"rejected-{digest}.parquet", index=False)
    share = len(rejected) / max(n_read, 1)
    if share > max_rejected_share:
        worst = max(counts, key=counts.get)
        examples = rejected.loc[rejected["reject_rule"] == worst].head(3)
        raise ValueError(
            f"{source}: {len(rejected)} of {n_read} rows ({share:.1%}) were rejected, over the "
            f"{max_rejected_share:.1%} threshold; most common rule '{worst}' ({counts[worst]} rows), "
            f"e.g. source rows {examples['source_row'].tolist()}. Rejected rows are in "
            f"{quarantine_dir(local_side(base))}.")
    return {str(k): int(v) for k, v in counts.items()}


def dataset_digest(events: pd.DataFrame) -> str:
    """A cheap content digest of an events frame (row count, time range, hashed sample of ids); the same
    value combined from blocks of it on Dask (`recsys.features.event_stats`)."""
    return events_digest(events)
