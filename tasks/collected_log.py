"""The collector's log on disk, shared by the writer (serving/collector.py) and the pickup
(tasks/collector.py): where segments live, what a line holds, how to read one back. No Prefect here.

One JSON object per line: the event contract's columns as the storefront sent them (the user id
already pseudonymised when configured), `request_id`, and `received_at` (UTC, when the service took
it); lines in the failed stream also carry `reject_rule`.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from recsys.features import schema as S
from recsys.tasks.paths import recsys_home

REQUEST_ID = "request_id"
RECEIVED_AT = "received_at"
COLLECTED_FIELDS = (*S.EVENT_COLUMNS, REQUEST_ID)
# sub-directories of the collector directory
OPEN, SEALED, FAILED, BATCHES, DONE = "open", "sealed", "failed", "batches", "done"


def collector_dir(directory: str | os.PathLike | None = None) -> Path:
    return Path(directory) if directory else recsys_home() / "collector"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (the directory entry, not only the data)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_segment(path: Path) -> tuple[list[dict], int]:
    """The events of one segment and the number of torn lines (a last line without its newline: a
    write the service never acknowledged because it was killed in the middle of it)."""
    lines = path.read_bytes().split(b"\n")
    torn = 1 if lines and lines[-1] else 0
    return [orjson.loads(line) for line in lines[:-1] if line], torn
