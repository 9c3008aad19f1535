"""Read back the service's impressions log (what was shown to whom, by which model and strategy).

The service appends one JSON object per response to `$RECSYS_HOME/impressions/impressions-YYYY-MM-DD.jsonl`
(UTC day of the response; a new file each day). `read_impressions` flattens it to one row per shown item:

| column         | type              | meaning                                                        |
| -------------- | ----------------- | -------------------------------------------------------------- |
| request_id     | str               | id returned to the caller (also the `X-Request-ID` header)      |
| ts             | datetime64[UTC]   | when the response was produced                                  |
| endpoint       | str               | recommendations / session / search / similar                    |
| user_id        | str or None       | caller's user id (None for /similar or anonymous search)        |
| item_id        | str               | the shown item                                                  |
| position       | int               | 1-based slot in the list                                        |
| score          | float             | score the service returned                                      |
| strategy       | str               | model / session / popular / content / search / als_similar ... |
| model_version  | str               | registry version that produced the list                         |
| variant        | str               | A/B arm: champion or challenger                                 |
| query          | str or None       | search query (search only)                                      |
| event_ts       | datetime64[UTC]   | the caller's clock (`X-Event-Time` header) when it sent one, else NaT |

A client replaying past days (`recsys simulate`: the world's clock is not the wall clock) sends the time of
its events in `X-Event-Time`; `on_event_clock` puts the impressions on that clock for joins with events.

Malformed lines (a crash mid-write) are skipped and counted in `frame.attrs["bad_lines"]`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

IMPRESSION_COLUMNS = ("request_id", "ts", "endpoint", "user_id", "item_id", "position", "score", "strategy",
                      "model_version", "variant", "query", "event_ts")
EVENT_TIME_HEADER = "x-event-time"
FILE_GLOB = "impressions-*.jsonl"


def impressions_file(directory: Path, day: str) -> Path:
    return Path(directory) / f"impressions-{day}.jsonl"


def read_impressions(directory: Path, since: str | None = None) -> pd.DataFrame:
    """One row per shown item from every daily file in `directory` (optionally days >= `since`, YYYY-MM-DD)."""
    rows, bad = [], 0
    for path in sorted(Path(directory).glob(FILE_GLOB)):
        day = path.stem.removeprefix("impressions-")
        if since is not None and day < since:
            continue
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                    base = (rec["request_id"], rec["ts"], rec["endpoint"], rec.get("user_id"))
                    tail = (rec["model_version"], rec.get("variant", "champion"), rec.get("query"),
                            rec.get("event_ts"))
                    for pos, it in enumerate(rec["items"], start=1):
                        rows.append((*base, it["item_id"], pos, float(it["score"]), it["strategy"], *tail))
                except (ValueError, KeyError, TypeError):
                    bad += 1
    frame = pd.DataFrame(rows, columns=list(IMPRESSION_COLUMNS))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["event_ts"] = pd.to_datetime(frame["event_ts"], utc=True, errors="coerce", format="ISO8601")
    frame["position"] = frame["position"].astype("int64")
    frame["score"] = frame["score"].astype("float64")
    frame.attrs["bad_lines"] = bad
    return frame


def on_event_clock(frame: pd.DataFrame) -> pd.DataFrame:
    """The impressions with `ts` on the events' clock: the caller's `event_ts` where it sent one."""
    if "event_ts" not in frame or frame["event_ts"].isna().all():
        return frame
    return frame.assign(ts=frame["event_ts"].fillna(frame["ts"]))
