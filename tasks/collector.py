"""Pickup of the service's collected events into the event store, exactly once.

Layout under the collector directory (default $RECSYS_HOME/collector, written by `recsys.serving.collector`):

    open/     segments being written, one per service worker, each locked (flock) by its writer
    sealed/   complete segments waiting for pickup
    batches/  batch-<hash>.json: which segments (name + SHA-256) one pickup brings in;
              batch-<hash>.parquet: those events as one ingest input; batch-<hash>.done.json: finished
    done/     segments that are in the event store (kept: the raw record is never deleted)
    failed/   events rejected at the door, one JSON line each with its `reject_rule`

Exactly once: a pickup first finishes any batch an earlier (crashed) pickup planned, then plans one
batch from the sealed segments no batch claims. A batch's manifest is written (fsync + rename) before
anything else; its Parquet input is written once and never rewritten, so the ingest path's own
idempotency (partitions named by the input's digest, replaced on re-ingest) makes re-running a batch
replace rather than add. Only then are its segments moved to done/ and the manifest marked done.
A crash at any point leaves a state from which the next run stores each event once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task

from recsys.tasks.collected_log import (BATCHES, COLLECTED_FIELDS, DONE, OPEN, RECEIVED_AT, SEALED, collector_dir, fsync_dir,
                                 read_segment)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@task(name="seal-orphan-segments")
def seal_orphans(directory: str | None = None) -> int:
    """Seal the open segments whose writer is gone (their lock is free): a service killed mid-segment."""
    base = collector_dir(directory)
    sealed = 0
    for path in sorted((base / OPEN).glob("*.jsonl")) if (base / OPEN).exists() else []:
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer; it seals the segment itself when it rotates
            target = base / SEALED / path.name.lstrip(".")
            if os.fstat(fd).st_size == 0:
                path.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.rename(path, target)
                fsync_dir(target.parent)
                sealed += 1
        finally:
            os.close(fd)
    return sealed


@task(name="plan-batches")
def plan_batches(directory: str | None = None) -> list[str]:
    """Manifests to bring in, oldest first: unfinished ones of earlier runs, then one new batch of the
    sealed segments no manifest claims (none when there is nothing new)."""
    base = collector_dir(directory)
    batches = base / BATCHES
    batches.mkdir(parents=True, exist_ok=True)
    pending, claimed = [], set()
    for m in sorted(batches.glob("batch-*.json")):
        if m.name.endswith(".done.json"):
            continue
        pending.append(str(m))
        claimed |= {s["name"] for s in json.loads(m.read_text())["segments"]}
    fresh = [p for p in sorted((base / SEALED).glob("*.jsonl")) if p.name not in claimed] \
        if (base / SEALED).exists() else []
    if fresh:
        segments = [{"name": p.name, "sha256": _sha256(p)} for p in fresh]
        key = hashlib.sha256("".join(s["sha256"] for s in segments).encode()).hexdigest()[:16]
        manifest = batches / f"batch-{key}.json"
        if not manifest.exists():
            _write_atomic(manifest, json.dumps({"batch": key, "segments": segments}, indent=1).encode())
            pending.append(str(manifest))
    return pending


@task(name="build-batch-input")
def build_batch_input(manifest: str, directory: str | None = None) -> dict:
    """The batch's events as one Parquet ingest input (text columns, as the storefront sent them),
    written once: a re-run reuses the same file, so ingest sees the same digest."""
    base = collector_dir(directory)
    m = json.loads(Path(manifest).read_text())
    out = Path(manifest).with_suffix(".parquet")
    rows, torn = [], 0
    for seg in m["segments"]:
        path = next((p for p in (base / SEALED / seg["name"], base / DONE / seg["name"]) if p.exists()), None)
        if path is None:
            raise FileNotFoundError(f"{manifest}: segment {seg['name']} is neither in sealed/ nor done/")
        if _sha256(path) != seg["sha256"]:
            raise ValueError(f"{path}: content changed since batch {m['batch']} was planned")
        events, n_torn = read_segment(path)
        rows += events
        torn += n_torn
    if not out.exists():
        columns = [*COLLECTED_FIELDS, RECEIVED_AT]
        frame = pd.DataFrame.from_records(rows, columns=columns).astype("string")
        tmp = out.with_name(f".{out.name}.tmp")
        frame.to_parquet(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    if torn:
        get_run_logger().warning("batch %s: %d torn last line(s) skipped (writes never acknowledged)", m["batch"], torn)
    return {"batch": m["batch"], "input": str(out), "events": len(rows), "segments": len(m["segments"]),
            "torn_lines": torn}


@task(name="finish-batch")
def finish_batch(manifest: str, directory: str | None = None) -> None:
    """Segments to done/, then the manifest marked done (in that order: a crash in between re-runs
    the batch, which the ingest path turns into a replace)."""
    base = collector_dir(directory)
    m = json.loads(Path(manifest).read_text())
    (base / DONE).mkdir(parents=True, exist_ok=True)
    for seg in m["segments"]:
        src = base / SEALED / seg["name"]
        if src.exists():
            os.rename(src, base / DONE / seg["name"])
    fsync_dir(base / DONE)
    fsync_dir(base / SEALED)
    os.rename(manifest, Path(manifest).with_name(f"batch-{m['batch']}.done.json"))
    fsync_dir(Path(manifest).parent)
