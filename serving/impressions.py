"""Append-only impressions log written off the request path. Format and reader: `recsys.tasks.impressions`.

The request path only serialises the record (orjson, a few microseconds) and appends the bytes to a
deque (atomic under the GIL, no lock, never blocks). One writer thread wakes every `flush_every_s`,
takes everything queued and writes it with one call per day file. An earlier version used
`queue.Queue` and per-record JSON in the writer: profiling showed the handlers waiting on the queue's
lock and on the GIL while the writer serialised, ~8% of request time under load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path

import orjson

from recsys.tasks.impressions import impressions_file

log = logging.getLogger("recsys.serving.impressions")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


class ImpressionLogger:
    """`log(record)` serialises and enqueues; drops (and counts) when `max_queue` records are waiting."""

    def __init__(self, directory: Path, max_queue: int = 200_000, flush_every_s: float = 0.25):
        self.directory = Path(directory)
        self.flush_every_s = flush_every_s
        self.max_queue = max_queue
        self._q: deque = deque()
        self._stop = threading.Event()
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="impressions-writer")
        self._started = False

    def start(self) -> "ImpressionLogger":
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        self._started = True
        return self

    def log(self, record: dict) -> bool:
        if len(self._q) >= self.max_queue:
            self.dropped += 1
            return False
        ts = record.get("ts") or time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(ts))
        self._q.append((day, orjson.dumps({**record, "ts": _iso(ts)}) + b"\n"))
        return True

    def close(self, timeout: float = 5.0) -> None:
        if self._started:
            self._stop.set()
            self._thread.join(timeout)

    def flush(self) -> None:
        """Write everything queued now (the writer thread calls this; tests may too)."""
        batch: dict[str, list[bytes]] = {}
        q = self._q
        for _ in range(len(q)):
            day, line = q.popleft()
            batch.setdefault(day, []).append(line)
        for day, lines in batch.items():  # daily rotation: the record's UTC day names the file
            # unbuffered O_APPEND: one write() per batch, so several worker processes can share a file
            with impressions_file(self.directory, day).open("ab", buffering=0) as fh:
                fh.write(b"".join(lines))
            self.written += len(lines)

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.flush_every_s)
            try:
                self.flush()
            except Exception:  # never take the service down for the log; say so loudly
                log.exception("writing impressions failed; %d records waiting", len(self._q))
            if stopping:
                return
