"""Ingest I/O: read a raw file (CSV / CSV.gz / Parquet, streamed in chunks by `recsys.tasks.raw_files`),
map/transform it, validate it, quarantine rejected rows, stage day partitions, then commit them into the event store.

Idempotency is by event content, not by file bytes: every valid row's content key (recsys.features.validation.
event_keys: user, item, type, ts, session, quantity, price after normalisation) is looked up in the
keys of the store's day partition it falls in; rows already stored are counted (`already stored`) and
not staged. So the same events in any byte form (CRLF, other column order, a re-export, the synthetic
generator run twice) add nothing, and rows read = accepted + quarantined + already stored (+ rows the
source adapter excluded). Partition files are named `src-<digest>-<stamp>-c<chunk>.parquet` (digest of
the input bytes, a unique stamp per ingest), moved in by atomic renames. A run that fails (bad file,
too many rejected rows) leaves the event store untouched. Raw inputs are only ever read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from recsys.features import schema as S
from recsys.features.mapping import IngestParams, SourceKind, map_catalog, map_columns, pseudonymise
from recsys.features.online_retail import (ADAPTER_RULES, CUSTOMER, STRING_COLUMNS, customer_ids, check_raw,
                                    transform_online_retail)
from recsys.features.synthetic import SyntheticParams
from recsys.features.validation import (DUPLICATE_KEY, REJECT_RULE, RULES, SOURCE_ROW, SchemaError, event_keys,
                                 id_rule_violations, is_known, merge_keys, normalise_ids, sorted_unique,
                                 split_valid_rows)
from recsys.tasks import tracking
from recsys.tasks.retry import retry_transient
from recsys.tasks.data import write_catalog, write_day_partition, write_synthetic_dataset
from recsys.tasks.logs import run_logger
from recsys.tasks.paths import catalog_path, data_dir, events_dir, quarantine_dir
from recsys.tasks.raw_files import IngestError, InputInfo, inspect_input, iter_chunks


SALT_ENV = "RECSYS_PSEUDONYM_SALT"
SOURCE_FILE = "source_file"
STAGE = "stage"  # "adapter" (a source-specific decision) or "validation" (a contract rule)



# ---------------------------------------------------------------- preflight (reading: recsys.tasks.raw_files)


def preflight(params: IngestParams) -> InputInfo | None:
    """Fail fast, before any flow run starts, on what the file's start can tell: missing, empty,
    truncated gzip, undecodable, wrong delimiter, a required column missing."""
    if params.source == SourceKind.synthetic:
        return None
    _salt(params)
    info = inspect_input(params.input, params.encoding, params.delimiter)
    dtype = {c: "string" for c in STRING_COLUMNS} if params.source == SourceKind.online_retail else "string"
    head = next(iter_chunks(info, 1000, dtype=dtype), None)
    if head is None or not len(head):
        raise IngestError(f"{info.path}: a header but no data rows")
    if params.source == SourceKind.online_retail:
        try:
            check_raw(head, str(info.path))
        except SchemaError as exc:
            raise IngestError(str(exc)) from None
    else:
        try:
            map_columns(head, params.mapping, str(info.path))
        except SchemaError as exc:
            raise IngestError(str(exc)) from None
    if params.catalog:  # the catalogue's columns too, before any event is staged
        cat_info = inspect_input(params.catalog, params.encoding, None)
        cat_head = next(iter_chunks(cat_info, 1000), None)
        if cat_head is None or not len(cat_head):
            raise IngestError(f"{cat_info.path}: a header but no catalogue rows")
        try:
            map_catalog(cat_head.drop(columns=[SOURCE_ROW]), params.mapping, str(cat_info.path))
        except SchemaError as exc:
            raise IngestError(str(exc)) from None
    return info


# ---------------------------------------------------------------- staging, quarantine, profile


class _Quarantine:
    """Rejected rows streamed to quarantine/<source>-<digest>.parquet (all values as text)."""

    def __init__(self, base: Path, name: str, source_file: str):
        self.path = quarantine_dir(base) / f"{name}.parquet"
        self.tmp = self.path.with_suffix(".tmp")
        self.source_file = source_file
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.rows = 0

    def add(self, rejected: pd.DataFrame, stage: str) -> None:
        if not len(rejected):
            return
        out = rejected.copy()
        for col in out.columns:
            if col not in (SOURCE_ROW,):
                out[col] = out[col].astype("string")
        out[SOURCE_ROW] = out[SOURCE_ROW].astype("int64")
        out[SOURCE_FILE] = self.source_file
        out[STAGE] = stage
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cols = [c for c in out.columns if c not in (SOURCE_ROW, REJECT_RULE, SOURCE_FILE, STAGE)]
            self.schema = pa.schema([(REJECT_RULE, pa.string()), (STAGE, pa.string()), (SOURCE_FILE, pa.string()),
                                     (SOURCE_ROW, pa.int64())] + [(c, pa.string()) for c in cols])
            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        for col in self.schema.names:
            if col not in out:
                out[col] = pd.NA
        self.writer.write_table(pa.Table.from_pandas(out[self.schema.names], schema=self.schema, preserve_index=False))
        self.rows += len(out)

    def close(self) -> str | None:
        if self.writer is None:
            if self.path.exists():  # an earlier ingest of the same file had rejects; this one has none
                self.path.unlink()
            return None
        self.writer.close()
        self.tmp.replace(self.path)
        return str(self.path)


class _Profile:
    """Streaming profile of the accepted events: rows, users, items, date range, sparsity."""

    def __init__(self):
        self.rows = 0
        self.users: list[np.ndarray] = []
        self.items: list[np.ndarray] = []
        self.pairs: list[np.ndarray] = []
        self.types: dict[str, int] = {}
        self.ts_min = self.ts_max = None
        self.days: set[str] = set()

    def add(self, ev: pd.DataFrame) -> None:
        if not len(ev):
            return
        self.rows += len(ev)
        u = pd.util.hash_array(ev[S.USER_ID].to_numpy(dtype=object))
        i = pd.util.hash_array(ev[S.ITEM_ID].fillna("").to_numpy(dtype=object))
        self.users.append(sorted_unique(u))
        self.items.append(sorted_unique(i))
        self.pairs.append(sorted_unique(u * np.uint64(1000003) ^ i))
        for k, v in ev[S.EVENT_TYPE].value_counts().items():
            self.types[str(k)] = self.types.get(str(k), 0) + int(v)
        lo, hi = ev[S.TS].min(), ev[S.TS].max()
        self.ts_min = lo if self.ts_min is None else min(lo, self.ts_min)
        self.ts_max = hi if self.ts_max is None else max(hi, self.ts_max)
        # keep the partial unions small
        if len(self.users) > 8:
            self.users = [sorted_unique(np.concatenate(self.users))]
            self.items = [sorted_unique(np.concatenate(self.items))]
            self.pairs = [sorted_unique(np.concatenate(self.pairs))]

    def as_dict(self) -> dict:
        n_users = len(sorted_unique(np.concatenate(self.users))) if self.users else 0
        n_items = len(sorted_unique(np.concatenate(self.items))) if self.items else 0
        n_pairs = len(sorted_unique(np.concatenate(self.pairs))) if self.pairs else 0
        cells = n_users * n_items
        return {"rows": self.rows, "users": n_users, "items": n_items, "user_item_pairs": n_pairs,
                "sparsity": (1.0 - n_pairs / cells) if cells else None,
                "events_per_user": self.rows / n_users if n_users else None,
                "ts_min": str(self.ts_min) if self.ts_min is not None else None,
                "ts_max": str(self.ts_max) if self.ts_max is not None else None,
                "event_types": self.types}


class _StoreKeys:
    """Content keys of the events already in the store, read per day partition on first use (an event's
    day partition is the UTC day of its ts, so a stored copy can only be in that one partition)."""

    def __init__(self, base: Path):
        self.root = events_dir(base)
        self.days: dict[str, np.ndarray] = {}

    def _day(self, day: str) -> np.ndarray:
        if day not in self.days:
            files = sorted((self.root / f"{S.DAY}={day}").glob("*.parquet"))
            keys = [event_keys(pq.read_table(f, columns=list(DUPLICATE_KEY)).to_pandas()) for f in files]
            self.days[day] = sorted_unique(np.concatenate(keys)) if keys else np.empty(0, dtype=np.uint64)
        return self.days[day]

    def known(self, events: pd.DataFrame, keys: np.ndarray) -> np.ndarray:
        """Which rows of `events` (with their `event_keys`) the store already holds."""
        out = np.zeros(len(events), dtype=bool)
        if not len(events) or not self.root.exists():
            return out
        for day, rows in events.groupby(events[S.TS].dt.floor("D").to_numpy(), sort=False).indices.items():
            out[rows] = is_known(keys[rows], self._day(f"{pd.Timestamp(day):%Y-%m-%d}"))
        return out


@dataclass
class StagedIngest:
    """What a staged (not yet committed) ingest produced: small, passed between tasks."""

    source: str
    input: str
    digest: str
    data_dir: str
    staging_dir: str
    rows_read: int = 0
    rows_validated: int = 0  # rows that reached contract validation
    accepted: int = 0  # new events staged (not in the store yet)
    already_stored: int = 0  # valid rows whose event (by content) the store already holds
    adapter_counts: dict[str, int] = field(default_factory=dict)
    validation_counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    quarantine_file: str | None = None
    catalog_file: str | None = None
    catalog_items: int = 0
    days: list[str] = field(default_factory=list)
    profile: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    encoding: str = ""
    delimiter: str = ""
    seconds: float = 0.0  # reading + transform + validation + staging

    @property
    def rejected_share(self) -> float:
        return sum(self.validation_counts.values()) / max(self.rows_validated, 1)

    def summary(self) -> dict:
        return {"source": self.source, "input": self.input, "digest": self.digest, "data_dir": self.data_dir,
                "rows_read": self.rows_read, "accepted": self.accepted, "already_stored": self.already_stored,
                "excluded_by_adapter": self.adapter_counts, "rejected_by_validation": self.validation_counts,
                "rejected_share": round(self.rejected_share, 6), "quarantine_file": self.quarantine_file,
                "catalog_items": self.catalog_items, "days": len(self.days), "profile": self.profile,
                "notes": self.notes, "stage_seconds": round(self.seconds, 2)}


def _add_counts(target: dict[str, int], rejected: pd.DataFrame) -> None:
    if len(rejected):
        for k, v in rejected[REJECT_RULE].value_counts().items():
            target[str(k)] = target.get(str(k), 0) + int(v)


def _add_examples(target: dict[str, list[dict]], rejected: pd.DataFrame, limit: int = 3) -> None:
    if not len(rejected):
        return
    for rule, rows in rejected.groupby(REJECT_RULE, sort=False):
        have = target.setdefault(str(rule), [])
        for rec in rows.head(limit - len(have)).to_dict("records"):
            have.append({k: (None if pd.isna(v) else (v if isinstance(v, (int, float)) else str(v)))
                         for k, v in rec.items() if k != REJECT_RULE})


def _stage_events(valid: pd.DataFrame, staging: Path, prefix: str, chunk: int, days: set[str]) -> None:
    if not len(valid):
        return
    day = valid[S.TS].dt.floor("D")
    for d, part in valid.groupby(day, sort=True):
        write_day_partition(part, staging, pd.Timestamp(d), part=f"{prefix}-c{chunk:05d}")
        days.add(f"{pd.Timestamp(d):%Y-%m-%d}")


def _now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


def _salt(params: IngestParams) -> str | None:
    if not params.pseudonymise:
        return None
    salt = os.environ.get(SALT_ENV, "")
    if not salt:
        raise IngestError(f"--pseudonymise needs a salt in the environment variable {SALT_ENV}")
    return salt


def _base(params: IngestParams) -> Path:
    return Path(params.data_dir) if params.data_dir else data_dir()


@task(name="stage-input")
def stage_input(params: IngestParams) -> StagedIngest:
    """Read, transform, validate and quarantine; stage accepted events (nothing committed yet)."""
    t0 = time.perf_counter()
    base = _base(params)
    base.mkdir(parents=True, exist_ok=True)
    salt = _salt(params)
    if params.source == SourceKind.synthetic:
        staged = _stage_synthetic(params, base)
        staged.seconds = time.perf_counter() - t0
        return staged
    info = inspect_input(params.input, params.encoding, params.delimiter)
    name = f"{params.source.value}-{info.digest}"
    staging = base / ".staging" / f"{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staged = StagedIngest(params.source.value, str(info.path), info.digest, str(base), str(staging),
                          encoding=info.encoding, delimiter=info.delimiter if info.kind == "csv" else "")
    store, part = _StoreKeys(base), f"src-{info.digest}-{uuid.uuid4().hex[:8]}"
    quarantine = _Quarantine(base, name, str(info.path))
    profile, days = _Profile(), set()
    now, tol = _now(), pd.Timedelta(hours=params.future_tolerance_hours)
    seen = np.empty(0, dtype=np.uint64)
    try:
        if params.source == SourceKind.online_retail:
            chunks = _online_retail_chunks(info, params, staged, quarantine, salt, base, staging)
        else:
            chunks = _event_chunks(info, params, staged, salt)
        for c, (events, raw) in enumerate(chunks):
            valid, rejected = split_valid_rows(events, now, tol, source=str(info.path), seen_keys=seen)
            if raw is not None and len(rejected):  # quarantine the row as it was in the file
                rejected = raw.loc[rejected.index].assign(**{REJECT_RULE: rejected[REJECT_RULE]})
            staged.rows_validated += len(events)
            n_stored = 0
            if len(valid):
                keys = event_keys(valid)
                seen = merge_keys(seen, keys)
                stored = store.known(valid, keys)
                n_stored = int(stored.sum())
                staged.already_stored += n_stored
                valid = valid.loc[~stored]
            _add_counts(staged.validation_counts, rejected)
            _add_examples(staged.examples, rejected)
            quarantine.add(rejected, "validation")
            staged.accepted += len(valid)
            profile.add(valid)
            _stage_events(valid, staging, part, c, days)
            run_logger().info("chunk %d: %d rows, %d new, %d already stored; %d rows so far, %.0f rows/s", c, len(events),
                           len(valid), n_stored, staged.rows_validated,
                           staged.rows_validated / max(time.perf_counter() - t0, 1e-9))
    except BaseException:
        quarantine.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staged.quarantine_file = quarantine.close()
    staged.days = sorted(days)
    staged.profile = profile.as_dict()
    if staged.catalog_file is None:
        staged.catalog_file, staged.catalog_items = _stage_catalog(params, staging, base)
    staged.seconds = time.perf_counter() - t0
    return staged


def _event_chunks(info: InputInfo, params: IngestParams, staged: StagedIngest, salt: str | None):
    user_col = params.mapping.source_column(S.USER_ID)
    for raw in iter_chunks(info, params.chunk_rows):
        staged.rows_read += len(raw)
        if salt and user_col in raw:
            raw[user_col] = pseudonymise(raw[user_col], salt)
        yield map_columns(raw, params.mapping, str(info.path)), raw


def _online_retail_chunks(info: InputInfo, params: IngestParams, staged: StagedIngest, quarantine: _Quarantine,
                          salt: str | None, base: Path, staging: Path):
    """The whole file at once: netting cancellations and the catalog need every line (541,909 lines,
    about 300 MB in memory); the accepted events are then validated in chunks."""
    raw = pd.concat(list(iter_chunks(info, 200_000, dtype={c: "string" for c in STRING_COLUMNS})),
                    ignore_index=True)
    staged.rows_read = len(raw)
    result = transform_online_retail(raw, params.source_timezone, source=str(info.path))
    if salt:  # events, rejected and raw lines all carry the pseudonym, never the CustomerID
        result.events[S.USER_ID] = pseudonymise(result.events[S.USER_ID], salt)
        raw[CUSTOMER] = pseudonymise(customer_ids(raw[CUSTOMER]), salt)
        result.rejected[CUSTOMER] = raw.loc[result.rejected.index, CUSTOMER]
    _add_counts(staged.adapter_counts, result.rejected)
    _add_examples(staged.examples, result.rejected)
    quarantine.add(result.rejected, "adapter")
    staged.notes = dict(result.notes)
    staging.mkdir(parents=True, exist_ok=True)
    write_catalog(result.catalog, staging)
    staged.catalog_file, staged.catalog_items = str(catalog_path(staging)), len(result.catalog)
    events = result.events
    for start in range(0, len(events), params.chunk_rows):
        chunk = events.iloc[start:start + params.chunk_rows]
        # raw lines of this chunk, indexed like the events, so rejects are quarantined as read
        yield chunk, raw.loc[chunk[SOURCE_ROW].to_numpy()].set_axis(chunk.index)


def _stage_catalog(params: IngestParams, staging: Path, base: Path) -> tuple[str | None, int]:
    """A catalog for the `events` source: the given file, else one row per new item seen."""
    staging.mkdir(parents=True, exist_ok=True)
    if params.catalog:
        info = inspect_input(params.catalog, params.encoding, None)
        catalog = pd.concat(list(iter_chunks(info, 1_000_000)), ignore_index=True).drop(columns=[SOURCE_ROW])
        try:
            catalog = map_catalog(catalog, params.mapping, str(info.path))
        except SchemaError as exc:
            raise IngestError(str(exc)) from None
        catalog[S.ITEM_ID] = normalise_ids(catalog[S.ITEM_ID])  # the same id contract as the events
        too_long, control = id_rule_violations(catalog[S.ITEM_ID])
        for bad, what in ((catalog[S.ITEM_ID].isna(), "without item_id"),
                          (too_long, f"with an item_id over {S.MAX_ID_LENGTH} characters"),
                          (control, "with a control character in item_id")):
            if bad.any():
                raise IngestError(f"{info.path}: {int(bad.sum())} catalog row(s) {what}, "
                                  f"e.g. row {int(np.flatnonzero(bad.to_numpy())[0])}")
        if S.PRICE in catalog:
            catalog[S.PRICE] = pd.to_numeric(catalog[S.PRICE], errors="coerce")
        catalog = catalog.drop_duplicates(S.ITEM_ID, keep="last")
    else:
        files = list(events_dir(staging).glob("day=*/*.parquet"))
        if not files:
            return None, 0
        table = pq.ParquetDataset(files).read(columns=[S.ITEM_ID, S.PRICE])
        ev = table.to_pandas()
        ev = ev[ev[S.ITEM_ID].notna()]
        catalog = ev.groupby(S.ITEM_ID)[S.PRICE].median().rename(S.PRICE).reset_index()
        catalog[S.TITLE] = catalog[S.ITEM_ID]
        catalog[S.CATEGORY] = "unknown"
        existing = catalog_path(base)
        if existing.exists():  # never overwrite richer entries with placeholders
            known = set(pd.read_parquet(existing, columns=[S.ITEM_ID])[S.ITEM_ID].astype(str))
            catalog = catalog[~catalog[S.ITEM_ID].astype(str).isin(known)]
    write_catalog(catalog, staging)
    return str(catalog_path(staging)), len(catalog)


def _stage_synthetic(params: IngestParams, base: Path) -> StagedIngest:
    sp = SyntheticParams(n_users=params.users, n_items=params.items, n_days=params.days, seed=params.seed)
    digest = hashlib.sha256(repr(sp).encode()).hexdigest()[:16]
    staging = base / ".staging" / f"synthetic-{digest}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    summary = write_synthetic_dataset(staging, sp)
    staged = StagedIngest("synthetic", f"synthetic:{sp}", digest, str(base), str(staging),
                          rows_read=summary["events"], rows_validated=summary["events"])
    profile, days, store = _Profile(), set(), _StoreKeys(base)
    part = f"src-{digest}-{uuid.uuid4().hex[:8]}-c00000.parquet"
    for f in sorted(events_dir(staging).glob("day=*/part-0.parquet")):
        ev = pd.read_parquet(f)
        stored = store.known(ev, event_keys(ev))
        staged.already_stored += int(stored.sum())
        if stored.all():  # the generator already wrote this day into the store (`recsys generate`)
            f.unlink()
            continue
        if stored.any():
            ev = ev.loc[~stored]
            write_day_partition(ev, staging, pd.Timestamp(f.parent.name.split("=", 1)[1], tz="UTC"))
        staged.accepted += len(ev)
        profile.add(ev)
        days.add(f.parent.name.split("=", 1)[1])
        f.replace(f.with_name(part))
    staged.profile, staged.days = profile.as_dict(), sorted(days)
    staged.catalog_file, staged.catalog_items = str(catalog_path(staging)), params.items
    return staged


@task(name="check-rejected-share")
def check_rejected_share(staged: StagedIngest, max_share: float) -> None:
    """Fail the run (nothing committed) when too many rows broke a contract rule."""
    share = staged.rejected_share
    if share <= max_share or not staged.validation_counts:
        return
    counts = staged.validation_counts
    worst = max(counts, key=counts.get)
    examples = staged.examples.get(worst, [])
    rows = [e.get(SOURCE_ROW) for e in examples]
    first = {k: v for k, v in (examples[0].items() if examples else []) if k not in (SOURCE_ROW,)}
    raise IngestError(
        f"{staged.input}: {sum(counts.values()):,} of {staged.rows_validated:,} rows ({share:.1%}) broke contract "
        f"rules, over the {max_share:.1%} threshold; most common rule '{worst}' ({counts[worst]:,} rows), e.g. "
        f"source rows {rows}: {first}. Nothing was committed; rejected rows are in {staged.quarantine_file}.")


@task(name="commit-events")
def commit_staged(staged: StagedIngest) -> dict:
    """Move the staged partitions (new events only) in, merge the catalog; returns what the store now holds."""
    base, staging = Path(staged.data_dir), Path(staged.staging_dir)
    target = events_dir(base)
    moved = 0
    for f in sorted(events_dir(staging).glob("day=*/*.parquet")):
        dest = target / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        f.replace(dest)
        moved += 1
    if staged.catalog_file:
        new = pd.read_parquet(staged.catalog_file)
        path = catalog_path(base)
        if path.exists():
            old_cat = pd.read_parquet(path)
            new = pd.concat([old_cat[~old_cat[S.ITEM_ID].astype(str).isin(set(new[S.ITEM_ID].astype(str)))], new],
                            ignore_index=True)
        tmp = path.with_name("catalog.parquet.tmp")
        new.to_parquet(tmp, index=False)
        tmp.replace(path)
    shutil.rmtree(staging, ignore_errors=True)
    _cleanup_staging_root(base)
    store_files = list(target.glob("day=*/*.parquet"))
    store_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in store_files)
    return {"files_written": moved, "store_rows": store_rows,
            "store_days": len({f.parent.name for f in store_files})}


def _cleanup_staging_root(base: Path) -> None:
    root = base / ".staging"
    if root.exists() and not any(root.iterdir()):
        root.rmdir()


@task(name="discard-staged")
def discard_staged(staged: StagedIngest) -> None:
    shutil.rmtree(staged.staging_dir, ignore_errors=True)
    _cleanup_staging_root(Path(staged.data_dir))


@task(name="log-ingest", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def log_ingest(params: IngestParams, staged: StagedIngest, store: dict | None, error: str | None = None) -> str:
    """One MLflow run per ingest: parameters, counts per rule, the data profile as an artifact."""
    run_id = tracking.start_run(params.experiment, f"ingest {staged.source} {Path(staged.input).name}",
                                {"source": staged.source, "input": staged.input, "input_digest": staged.digest,
                                 "data_dir": staged.data_dir})
    try:
        tracking.log_params(run_id, {"source": staged.source, "input": staged.input,
                                     "max_rejected_share": params.max_rejected_share,
                                     "chunk_rows": params.chunk_rows, "encoding": staged.encoding,
                                     "delimiter": staged.delimiter, "pseudonymise": params.pseudonymise,
                                     "future_tolerance_hours": params.future_tolerance_hours})
        metrics = {"ingest.rows_read": staged.rows_read, "ingest.accepted": staged.accepted,
                   "ingest.already_stored": staged.already_stored,
                   "ingest.rejected_share": staged.rejected_share, "ingest.stage_seconds": staged.seconds,
                   **{f"ingest.excluded.{k}": v for k, v in staged.adapter_counts.items()},
                   **{f"ingest.rejected.{k}": v for k, v in staged.validation_counts.items()},
                   **{f"profile.{k}": v for k, v in staged.profile.items() if isinstance(v, (int, float))},
                   **{f"store.{k}": v for k, v in (store or {}).items()}}
        tracking.log_metrics(run_id, metrics)
        tracking.log_dict(run_id, staged.profile, "profile.json")
        tracking.log_dict(run_id, {**staged.summary(), "store": store, "examples": staged.examples}, "ingest_summary.json")
        if error:
            tracking.log_tags(run_id, {"failure": error[:4000]})
    finally:
        tracking.end_run(run_id, "FAILED" if error else "FINISHED")
    return run_id


__all__ = ["IngestError", "inspect_input", "preflight", "iter_chunks", "stage_input", "check_rejected_share", "commit_staged",
           "discard_staged", "log_ingest", "StagedIngest", "RULES", "ADAPTER_RULES"]


def format_summary(summary: dict) -> str:
    """The run summary the CLI prints: counts per rule, where the rejected rows are, the profile."""
    quarantined = sum(summary["rejected_by_validation"].values()) + sum(summary["excluded_by_adapter"].values())
    lines = [f"ingested {summary['input']} ({summary['source']}) into {summary['data_dir']}: "
             f"{summary['rows_read']:,} rows read: {summary['accepted']:,} new, "
             f"{summary.get('already_stored', 0):,} already stored, {quarantined:,} quarantined"]
    for title, counts in (("excluded by the source adapter", summary["excluded_by_adapter"]),
                          ("rejected by contract validation", summary["rejected_by_validation"])):
        if counts:
            lines.append(f"  {title}:")
            lines += [f"    {rule:<26}{n:>10,}" for rule, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    lines.append(f"  rejected share (validation): {summary['rejected_share']:.2%}")
    if summary.get("quarantine_file"):
        lines.append(f"  quarantine: {summary['quarantine_file']}")
    p = summary.get("profile") or {}
    if p.get("rows"):
        lines.append(f"  profile: {p['users']:,} users, {p['items']:,} items, {p['ts_min']} .. {p['ts_max']}, "
                     f"sparsity {p['sparsity']:.5f}")
    store = summary.get("store") or {}
    if store:
        lines.append(f"  event store: {store['store_rows']:,} events in {store['store_days']} day partitions "
                     f"({store['files_written']} files written); "
                     f"catalog items from this input: {summary['catalog_items']:,}")
    if summary.get("mlflow_run_id"):
        lines.append(f"  MLflow run {summary['mlflow_run_id']}")
    return "\n".join(lines)
