"""Impressions log: written off the request path, rotated by UTC day, read back flat."""

import calendar
import json

from recsys.serving.app import ab_bucket
from recsys.serving.impressions import ImpressionLogger
from recsys.tasks.impressions import IMPRESSION_COLUMNS, read_impressions


def record(rid, ts, items, **kw):
    return {"request_id": rid, "ts": ts, "endpoint": "recommendations", "user_id": "u1", "model_version": "3",
            "variant": "champion", "query": None,
            "items": [{"item_id": i, "score": 1.0 / (n + 1), "strategy": "model"} for n, i in enumerate(items)],
            **kw}


def test_written_by_day_and_read_back(tmp_path):
    day1 = calendar.timegm((2026, 3, 1, 23, 59, 0, 0, 0, 0))  # UTC 2026-03-01 23:59
    log = ImpressionLogger(tmp_path).start()
    assert log.log(record("a", day1, ["i1", "i2"]))
    assert log.log(record("b", day1 + 120, ["i3"], endpoint="search", query="red shoe"))
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["impressions-2026-03-01.jsonl",
                                                         "impressions-2026-03-02.jsonl"]
    (tmp_path / "impressions-2026-03-02.jsonl").open("a").write('{"request_id": "torn", "ite\n')
    frame = read_impressions(tmp_path)
    assert tuple(frame.columns) == IMPRESSION_COLUMNS and frame.attrs["bad_lines"] == 1
    assert list(frame["request_id"]) == ["a", "a", "b"] and list(frame["position"]) == [1, 2, 1]
    assert list(frame["item_id"]) == ["i1", "i2", "i3"]
    assert frame.loc[2, "query"] == "red shoe" and frame.loc[2, "endpoint"] == "search"
    assert str(frame["ts"].dt.tz) == "UTC" and frame["ts"].iloc[0].hour == 23
    assert list(read_impressions(tmp_path, since="2026-03-02")["request_id"]) == ["b"]
    line = json.loads((tmp_path / "impressions-2026-03-01.jsonl").read_text().splitlines()[0])
    assert line["model_version"] == "3" and line["ts"].endswith("Z")


def test_full_queue_drops_instead_of_blocking(tmp_path):
    log = ImpressionLogger(tmp_path, max_queue=1)  # not started: nothing drains the queue
    assert log.log(record("a", 0.0, ["i1"])) and not log.log(record("b", 0.0, ["i1"]))
    assert log.dropped == 1


def test_empty_directory_reads_as_an_empty_frame(tmp_path):
    frame = read_impressions(tmp_path)
    assert len(frame) == 0 and tuple(frame.columns) == IMPRESSION_COLUMNS


def test_ab_bucket_is_stable_and_splits_evenly():
    assert ab_bucket("u000001") == ab_bucket("u000001")
    share = sum(ab_bucket(f"u{i}") < 0.2 for i in range(10_000)) / 10_000
    assert 0.18 < share < 0.22
