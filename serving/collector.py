"""The service's event collector: validates posted events with the ingest rules and appends them to a
durable log, good and failed events in separate streams (Snowplow's collector has the same split).

Durability: a batch is acknowledged only after its lines are written and `os.fsync`ed. Requests hand
their events to one writer thread (group commit): the thread takes every batch waiting, validates them
together (one call of the shared rule code, whose fixed cost is per call, not per event), writes each
stream with one `write` and one `fsync`, feeds the real-time user state, then answers every waiting
request. An acknowledged event therefore survives `kill -9` of the service right after the ack.

Segments: each worker process appends good events to its own segment `open/seg-<utc>-<host>-<pid>-<n>.jsonl`,
holding an exclusive `flock` on it while it writes. A segment is sealed (moved to `sealed/`) by its
writer when it is `rotate_s` old or `rotate_bytes` big, at shutdown, or by the pickup
(`recsys.tasks.collector`) once its writer is gone (the lock is free again: the kernel drops it when the
process dies, also on kill -9). Failed events go to `failed/failed-<utc day>-<host>-<pid>.jsonl` with
their `reject_rule`. Layout and pickup: `recsys.tasks.collector`.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import orjson
import pandas as pd

from recsys.features import schema as S
from recsys.features.posted_rows import first_broken_rule_rows
from recsys.features.validation import REJECT_RULE
from recsys.tasks.collected_log import FAILED, OPEN, RECEIVED_AT, SEALED, fsync_dir

log = logging.getLogger("recsys.serving.collector")

@dataclass(frozen=True)
class CollectorParams:
    future_tolerance_hours: float = 1.0  # as ingest's default
    rotate_s: float = 60.0
    rotate_bytes: int = 64 << 20


def _utc(ts: float, fmt: str) -> str:
    return time.strftime(fmt, time.gmtime(ts))


class _Segment:
    """One open good-events segment of this process, exclusively locked while open."""

    def __init__(self, directory: Path, n: int):
        now = time.time()
        name = f"seg-{_utc(now, '%Y%m%dT%H%M%S')}-{socket.gethostname()}-{os.getpid()}-{n:06d}.jsonl"
        # created under a dot name and renamed once locked: the pickup never sees an unlocked live segment
        tmp = directory / OPEN / f".{name}"
        self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = directory / OPEN / name
        os.rename(tmp, self.path)
        fsync_dir(self.path.parent)
        self.sealed_path = directory / SEALED / name
        self.opened, self.size = now, 0

    def seal(self) -> Path | None:
        """Move to sealed/ (an empty segment is removed); the lock goes with the descriptor."""
        os.fsync(self.fd)
        if self.size == 0:
            self.path.unlink()
            os.close(self.fd)
            return None
        os.rename(self.path, self.sealed_path)
        fsync_dir(self.sealed_path.parent)
        fsync_dir(self.path.parent)
        os.close(self.fd)
        return self.sealed_path


class EventCollector:
    """`submit(events)` -> a Future of the first broken rule per event (None = accepted), resolved only
    once the batch is durably written. `user_key` maps one raw user id to what is stored (the pseudonym;
    None for a missing or blank id)."""

    def __init__(self, directory: Path, params: CollectorParams = CollectorParams(), user_key=None,
                 on_written=None):
        self.directory = Path(directory)
        self.params = params
        self.user_key = user_key
        self.on_written = on_written  # called with the accepted events after they are durable
        self._pending: list[tuple[list[dict], Future]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._segment: _Segment | None = None
        self._n = 0
        self._failed: tuple[str, int] | None = None  # (day, fd)
        self._thread = threading.Thread(target=self._run, daemon=True, name="event-collector")
        self.written = self.rejected = 0

    def start(self) -> "EventCollector":
        for sub in (OPEN, SEALED, FAILED):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)

    def submit(self, events: list[dict]) -> Future:
        fut: Future = Future()
        with self._cond:
            if self._stop:
                raise RuntimeError("the collector is shut down")
            self._pending.append((events, fut))
            self._cond.notify()
        return fut

    async def collect(self, events: list[dict]) -> list[str | None]:
        return await asyncio.wrap_future(self.submit(events))

    # ---- the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._stop:
                    self._cond.wait(timeout=1.0)
                batch, self._pending = self._pending, []
                stopping = self._stop
            if batch:
                self._commit(batch)
            try:
                self._maybe_rotate(force=stopping)
            except OSError:
                log.exception("sealing the collector segment failed")
            if stopping and not self._pending:
                if self._failed:
                    os.close(self._failed[1])
                return

    def _commit(self, batch: list[tuple[list[dict], Future]]) -> None:
        try:
            rules, good, bad = self._validate_and_write([e for events, _ in batch for e in events])
        except BaseException as exc:  # nothing acknowledged: every waiting request gets the error
            log.exception("writing %d collected events failed", sum(len(e) for e, _ in batch))
            for _, fut in batch:
                fut.set_exception(exc)
            return
        if self.on_written is not None and good:
            try:
                self.on_written(good)
            except Exception:  # the log is the record; the live state catches up with the next events
                log.exception("updating the real-time user state failed")
        at = 0
        for events, fut in batch:
            fut.set_result(rules[at:at + len(events)])
            at += len(events)

    def _validate_and_write(self, events: list[dict]) -> tuple[list, list[dict], list[dict]]:
        now = time.time()
        received = _utc(now, "%Y-%m-%dT%H:%M:%S") + f".{int(now % 1 * 1e6):06d}Z"
        if self.user_key is not None:  # pseudonymised before anything is written
            events = [{**e, S.USER_ID: self.user_key(e.get(S.USER_ID))} for e in events]
        rules = first_broken_rule_rows(events, pd.Timestamp(now, unit="s", tz="UTC"),
                                       pd.Timedelta(hours=self.params.future_tolerance_hours))
        good, bad = [], []
        for e, rule in zip(events, rules):
            row = {**e, RECEIVED_AT: received, "_t": now}
            if rule is None:
                good.append(row)
            else:
                row[REJECT_RULE] = rule
                bad.append(row)
        if good:
            self._append_good(b"".join(orjson.dumps({k: v for k, v in r.items() if k != "_t"}) + b"\n"
                                       for r in good))
        if bad:
            self._append_failed(now, b"".join(orjson.dumps({k: v for k, v in r.items() if k != "_t"}) + b"\n"
                                              for r in bad))
        self.written += len(good)
        self.rejected += len(bad)
        return rules, good, bad

    def _append_good(self, data: bytes) -> None:
        if self._segment is None:
            self._n += 1
            self._segment = _Segment(self.directory, self._n)
        _write_all(self._segment.fd, data)
        os.fsync(self._segment.fd)
        self._segment.size += len(data)

    def _append_failed(self, now: float, data: bytes) -> None:
        day = _utc(now, "%Y-%m-%d")
        if self._failed is None or self._failed[0] != day:
            if self._failed:
                os.close(self._failed[1])
            path = self.directory / FAILED / f"failed-{day}-{socket.gethostname()}-{os.getpid()}.jsonl"
            created = not path.exists()
            self._failed = (day, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
            if created:
                fsync_dir(path.parent)
        _write_all(self._failed[1], data)
        os.fsync(self._failed[1])

    def _maybe_rotate(self, force: bool = False) -> None:
        seg = self._segment
        if seg is None:
            return
        if force or time.time() - seg.opened >= self.params.rotate_s or seg.size >= self.params.rotate_bytes:
            self._segment = None
            seg.seal()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
