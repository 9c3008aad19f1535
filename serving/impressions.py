"""Append-only impressions log written off the request path (a queue drained by one thread).

Format and reader: `tasks.impressions`. One JSON line per response, one file per UTC day.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path

from tasks.impressions import impressions_file

log = logging.getLogger("recsys.serving.impressions")
_STOP = object()


class ImpressionLogger:
    """`log(record)` only enqueues (never blocks, drops when the queue is full and counts it)."""

    def __init__(self, directory: Path, max_queue: int = 100_000, flush_every_s: float = 0.5):
        self.directory = Path(directory)
        self.flush_every_s = flush_every_s
        self._q: queue.Queue = queue.Queue(maxsize=max_queue)
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
        try:
            self._q.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self, timeout: float = 5.0) -> None:
        if self._started:
            self._q.put(_STOP)
            self._thread.join(timeout)

    def _run(self) -> None:
        fh, day = None, None
        try:
            while True:
                item = self._q.get()
                batch = [item]
                while len(batch) < 1000:  # drain what is there; one write + flush per batch
                    try:
                        batch.append(self._q.get_nowait())
                    except queue.Empty:
                        break
                stop = any(b is _STOP for b in batch)
                for rec in batch:
                    if rec is _STOP:
                        continue
                    ts = rec.get("ts", time.time())
                    rec_day = time.strftime("%Y-%m-%d", time.gmtime(ts))
                    if rec_day != day:  # daily rotation
                        if fh is not None:
                            fh.close()
                        day = rec_day
                        fh = impressions_file(self.directory, day).open("a", encoding="utf-8")
                    rec = dict(rec, ts=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z")
                    fh.write(json.dumps(rec, separators=(",", ":")) + "\n")
                    self.written += 1
                if fh is not None:
                    fh.flush()
                if stop:
                    return
        except Exception:  # never take the service down for the log; say so loudly
            log.exception("impressions writer stopped")
        finally:
            if fh is not None:
                fh.close()
