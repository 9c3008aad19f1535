"""Progress of long steps, for a person watching a terminal or the Prefect UI, without flooding CI logs.

Pure: the code doing the work calls `step(...)`; whoever runs it (a Prefect task, a script) decides where
the lines go with `reporting(callback)` (e.g. Prefect's run logger). With no reporter, `step` is a no-op.
A stage that runs longer than `RECSYS_PROGRESS_SECONDS` (default 10 s) reports once per interval and at its
end; a shorter one prints nothing: a 2-minute training run prints a few dozen lines, not one per iteration.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

_REPORTER: contextvars.ContextVar["_Reporter | None"] = contextvars.ContextVar("recsys_progress", default=None)


@dataclass
class _Reporter:
    emit: Callable[[str], None]
    every_s: float
    started: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("RECSYS_PROGRESS_SECONDS", "10")))
    except ValueError:
        return 10.0


@contextlib.contextmanager
def reporting(emit: Callable[[str], None], every_s: float | None = None) -> Iterator[None]:
    """Send progress lines of the code run inside this block to `emit` (one formatted line each)."""
    token = _REPORTER.set(_Reporter(emit, _interval() if every_s is None else every_s))
    try:
        yield
    finally:
        _REPORTER.reset(token)


def note(message: str) -> None:
    """A one-off line (a stage begins or ends)."""
    rep = _REPORTER.get()
    if rep is not None:
        rep.emit(message)


def step(stage: str, done: int, total: int, unit: str = "", rows: int | None = None, extra: str = "") -> None:
    """`done` of `total` units of `stage` are finished; `rows` (optional) processed so far gives rows/s.
    At most one line per interval (done/total, %, rows/s, ETA), and the last one if any was printed."""
    rep = _REPORTER.get()
    if rep is None:
        return
    now = time.monotonic()
    start = rep.started.setdefault(stage, now)
    final = done >= total
    spoke = stage in rep.last
    if final and not spoke and now - start < rep.every_s:  # a short stage: no line at all
        rep.started.pop(stage, None)
        return
    if not final and now - rep.last.get(stage, start) < rep.every_s:
        return
    rep.last[stage] = now
    elapsed = now - start
    parts = [f"{stage}: {done}/{total}{(' ' + unit) if unit else ''} ({100 * done / max(total, 1):.0f}%)"]
    if rows is not None and elapsed > 0:
        parts.append(f"{rows / elapsed:,.0f} rows/s")
    if not final and done > 0 and elapsed > 0:
        parts.append(f"ETA {elapsed / done * (total - done):.0f}s")
    elif final:
        parts.append(f"done in {elapsed:.1f}s")
        rep.started.pop(stage, None)
        rep.last.pop(stage, None)
    if extra:
        parts.append(extra)
    rep.emit(", ".join(parts))
