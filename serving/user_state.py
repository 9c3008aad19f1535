"""Real-time user state: each user's recent collected events, shared by every worker that may answer.

Two stores behind one interface (`append(events)`, `recent(user_id)`):
- `SqliteUserState`: the embedded default, a SQLite file in WAL mode, so the worker processes of
  `recsys serve --workers N` on one machine share it (readers never wait for the writer);
- `RedisUserState`: a Redis server for several service machines (a list per user, trimmed to the cap,
  expiring after the window).
The durable record of events is the collector's log (`recsys.serving.collector`); this is a cache of the
last `window_s` seconds, at most `max_events` per user, read on every recommendation request.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from recsys.features import schema as S

# what feeds the session fold: events that name an item
LIVE_EVENT_TYPES = S.ITEM_EVENT_TYPES


@dataclass(frozen=True)
class LiveStateParams:
    window_s: float = 1800.0  # 30 minutes: a session
    max_events: int = 50  # recsys.models.session.SessionParams.max_session_events
    prune_every_s: float = 5.0  # expired rows deleted this often (a few thousand at most: no long write lock)


def _live(events: list[dict]) -> list[tuple[str, float, str, str]]:
    """(user, received time, item, type) of the events that feed the session fold."""
    return [(e[S.USER_ID], e["_t"], e[S.ITEM_ID], e[S.EVENT_TYPE]) for e in events
            if e.get(S.EVENT_TYPE) in LIVE_EVENT_TYPES and e.get(S.ITEM_ID) and e.get(S.USER_ID)]


class SqliteUserState:
    """One table (user_id, t, item_id, event_type) in WAL mode; old rows pruned by the writer."""

    def __init__(self, path: Path, params: LiveStateParams = LiveStateParams()):
        self.path, self.params = Path(path), params
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._last_prune = 0.0
        con = self._con()
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE IF NOT EXISTS recent (user_id TEXT NOT NULL, t REAL NOT NULL, "
                    "item_id TEXT NOT NULL, event_type TEXT NOT NULL)")
        con.execute("CREATE INDEX IF NOT EXISTS recent_user_t ON recent (user_id, t)")
        con.commit()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:  # one connection per thread (the request loop reads, the collector writes)
            con = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            # the collector's log is the durable record: the cache need not fsync every transaction
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def append(self, events: list[dict]) -> int:
        rows = _live(events)
        if not rows:
            return 0
        con = self._con()
        now = time.time()
        with con:
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT INTO recent VALUES (?, ?, ?, ?)", rows)
            if now - self._last_prune > self.params.prune_every_s:
                # rows are appended in time order, so the expired ones are the lowest rowids: find the first
                # live row by rowid and delete the range below it (cost ~ the expired rows, not the table)
                con.execute("DELETE FROM recent WHERE rowid < coalesce((SELECT rowid FROM recent WHERE t >= ? "
                            "ORDER BY rowid LIMIT 1), (SELECT max(rowid) + 1 FROM recent), 0)",
                            (now - self.params.window_s,))
                self._last_prune = now
        return len(rows)

    def recent(self, user_id: str) -> list[tuple[str, str]]:
        """(item_id, event_type) of the user's events in the window, oldest first, at most the cap."""
        rows = self._con().execute(
            "SELECT item_id, event_type FROM recent WHERE user_id = ? AND t >= ? ORDER BY t DESC, rowid DESC "
            "LIMIT ?", (user_id, time.time() - self.params.window_s, self.params.max_events)).fetchall()
        return rows[::-1]

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


class RedisUserState:
    """A list per user (`<prefix><user_id>`) of [t, item_id, event_type], trimmed to the cap and
    expiring `window_s` after the user's last event."""

    def __init__(self, url: str, params: LiveStateParams = LiveStateParams(), prefix: str = "recsys:recent:"):
        import redis

        self.params, self.prefix = params, prefix
        self.client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.client.ping()  # fail at start, with the URL, rather than on the first request

    def append(self, events: list[dict]) -> int:
        rows = _live(events)
        if not rows:
            return 0
        pipe = self.client.pipeline(transaction=False)
        by_user: dict[str, list[bytes]] = {}
        for user, t, item, etype in rows:
            by_user.setdefault(user, []).append(orjson.dumps([t, item, etype]))
        ttl = max(1, int(self.params.window_s))
        for user, values in by_user.items():
            key = self.prefix + user
            pipe.rpush(key, *values)
            pipe.ltrim(key, -self.params.max_events, -1)
            pipe.expire(key, ttl)
        pipe.execute()
        return len(rows)

    def recent(self, user_id: str) -> list[tuple[str, str]]:
        since = time.time() - self.params.window_s
        out = []
        for raw in self.client.lrange(self.prefix + user_id, -self.params.max_events, -1):
            t, item, etype = orjson.loads(raw)
            if t >= since:
                out.append((item, etype))
        return out

    def close(self) -> None:
        self.client.close()


def open_user_state(url: str, params: LiveStateParams = LiveStateParams()):
    """`redis://host:port/db` (also rediss://, unix://) or `sqlite:///path/to/file.sqlite`."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisUserState(url, params)
    if url.startswith("sqlite:///"):
        return SqliteUserState(Path(url[len("sqlite:///"):]), params)
    raise ValueError(f"state store {url!r}: expected sqlite:///PATH or redis://HOST:PORT/DB")
