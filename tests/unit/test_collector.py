"""The collector's log writer and the real-time user state store, on a temp directory."""

import json
import time

import pandas as pd

from recsys.serving.collector import CollectorParams, EventCollector
from recsys.serving.user_state import LiveStateParams, SqliteUserState
from recsys.tasks.collected_log import read_segment


def ev(user, item, etype="view", **kw):
    return {"user_id": user, "item_id": item, "event_type": etype, "ts": "2026-01-10T10:00:00Z", **kw}


def pseudo(user: str | None) -> str | None:  # like LiveEvents._stored_id: blank stays missing
    return "p-" + user if user is not None and user.strip() else None


def test_accepted_and_rejected_events_are_written_before_the_answer_and_sealed_at_close(tmp_path):
    seen = []
    c = EventCollector(tmp_path, CollectorParams(), user_key=pseudo,
                       on_written=seen.extend).start()
    first = c.submit([ev("a", "i1"), ev("a", "i2", "like"), ev("", "i3")])
    second = c.submit([ev("b", None, "search", query="red"), ev("b", "i4", "purchase", price="0")])
    assert first.result(10) == [None, "unknown_event_type", "empty_user_id"]
    assert second.result(10) == [None, "non_positive_price"]
    # when the future resolves, the lines are on disk already (fsync'd): read them without closing
    (segment,) = (tmp_path / "open").glob("*.jsonl")
    good, torn = read_segment(segment)
    assert torn == 0 and [e["user_id"] for e in good] == ["p-a", "p-b"]
    failed = [json.loads(line) for p in (tmp_path / "failed").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert {(f["user_id"], f["reject_rule"]) for f in failed} == {("p-a", "unknown_event_type"),
                                                                  ("p-b", "non_positive_price"),
                                                                  (None, "empty_user_id")}
    assert [e["item_id"] for e in seen] == ["i1", None]
    c.close()
    assert not list((tmp_path / "open").glob("*.jsonl"))
    assert [e["item_id"] for e in read_segment(next((tmp_path / "sealed").glob("*.jsonl")))[0]] == ["i1", None]


def test_a_torn_last_line_is_counted_not_read(tmp_path):
    p = tmp_path / "seg.jsonl"
    p.write_bytes(b'{"user_id": "a"}\n{"user_id": "b"}\n{"user_')
    events, torn = read_segment(p)
    assert [e["user_id"] for e in events] == ["a", "b"] and torn == 1


def test_sqlite_state_is_shared_windowed_and_capped(tmp_path):
    params = LiveStateParams(window_s=60, max_events=3)
    writer, reader = SqliteUserState(tmp_path / "s.sqlite", params), SqliteUserState(tmp_path / "s.sqlite", params)
    now = time.time()
    writer.append([{"user_id": "u", "item_id": f"i{n}", "event_type": "view", "_t": now - 10 + n} for n in range(5)]
                  + [{"user_id": "u", "item_id": "old", "event_type": "view", "_t": now - 120},
                     {"user_id": "u", "item_id": None, "event_type": "search", "_t": now},
                     {"user_id": "v", "item_id": "x", "event_type": "purchase", "_t": now}])
    assert reader.recent("u") == [("i2", "view"), ("i3", "view"), ("i4", "view")]  # newest 3, oldest first
    assert reader.recent("v") == [("x", "purchase")] and reader.recent("w") == []


def test_sqlite_state_prunes_expired_rows_in_time_order(tmp_path):
    store = SqliteUserState(tmp_path / "s.sqlite", LiveStateParams(window_s=60, prune_every_s=0))
    now = time.time()

    def rows() -> list:
        return store._con().execute("SELECT item_id FROM recent ORDER BY rowid").fetchall()

    store.append([{"user_id": "u", "item_id": f"old{n}", "event_type": "view", "_t": now - 200 + n} for n in range(3)])
    assert rows() == []  # every row expired: all pruned (by the append itself)
    store.append([{"user_id": "u", "item_id": f"old{n}", "event_type": "view", "_t": now - 200 + n} for n in range(3)])
    store.append([{"user_id": "u", "item_id": "new", "event_type": "view", "_t": now}])
    assert rows() == [("new",)]  # the expired rows below the first live one are gone, the live one stays
    store.append([{"user_id": "v", "item_id": "x", "event_type": "view", "_t": now}])
    assert rows() == [("new",), ("x",)]


def test_first_broken_rule_takes_raw_frames_like_ingest():
    from recsys.features.validation import first_broken_rule

    frame = pd.DataFrame([ev("a", "i1"), ev("a", "i1", ts="tomorrow-ish")])
    assert first_broken_rule(frame, pd.Timestamp("2026-02-01", tz="UTC")) == [None, "unparseable_timestamp"]
