"""`POST /events` (the storefront's behaviour events) and the real-time user state the other endpoints
read: `attach_events(app, ...)` adds the route and returns the `LiveEvents` that the recommendation
handlers ask for a user's recent events.

The answer to a batch lists, per event in order, `accepted` or `rejected` with the contract rule it
broke (the same rule code as file ingest, `recsys.features.validation`). It is sent only once every event of
the batch is durably written: accepted ones to the good stream (picked up into the event store by the
`collect` flow), rejected ones to the failed stream with their rule. A batch that cannot be written
gets a 503 and nothing of it is acknowledged: send it again.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from recsys.features import schema as S
from recsys.serving.collector import CollectorParams, EventCollector
from recsys.serving.schemas import EventsAnswer, error_responses
from recsys.serving.user_state import LiveStateParams, open_user_state

log = logging.getLogger("recsys.serving.events")

MAX_BATCH = 1000
MAX_FIELD = 1024  # structural bound; the id contract itself is a validation rule

class EventIn(BaseModel):
    """One behaviour event. Values are checked by the ingest rules, per event, not here: a bad value
    rejects that event with its rule, not the batch."""

    model_config = ConfigDict(extra="forbid")
    user_id: str | None = Field(None, max_length=MAX_FIELD)
    event_type: str | None = Field(None, max_length=MAX_FIELD, description="view, add_to_cart, purchase, search")
    item_id: str | None = Field(None, max_length=MAX_FIELD, description="required except for search")
    ts: str | None = Field(None, max_length=64, description="ISO 8601 time of the event (default: when received)")
    session_id: str | None = Field(None, max_length=MAX_FIELD)
    query: str | None = Field(None, max_length=MAX_FIELD, description="the search text (search events)")
    # strict: JSON `true`/`false` is not a number (pydantic's lax mode would take it as 1.0/0.0)
    quantity: StrictFloat | StrictInt | StrictStr | None = Field(None, description="number or numeric text")
    price: StrictFloat | StrictInt | StrictStr | None = Field(None, description="number or numeric text")
    request_id: str | None = Field(None, max_length=MAX_FIELD,
                                   description="the request_id of the response that led to this event")

class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(..., min_length=1, max_length=MAX_BATCH)

def batch_error_message(err: dict) -> str:
    """One line per structural error of a POST /events body (values are the rules' business)."""
    where = ".".join(str(p) for p in err.get("loc", ()))
    if err.get("type") == "json_invalid":
        return ("the request body is not valid JSON; send {\"events\": [{\"user_id\": \"...\", \"event_type\": "
                "\"view\", \"item_id\": \"...\"}]} with Content-Type: application/json")
    if err.get("type") == "extra_forbidden":
        return f"{where}: unknown field; an event has {', '.join(EventIn.model_fields)}"
    return f"{where}: {err.get('msg')}"

class LiveEvents:
    """The collector, the real-time user state and the user-id mapping of one service process."""

    def __init__(self, collector_dir: Path, state_url: str, salt: str | None,
                 params: LiveStateParams = LiveStateParams(), collector: CollectorParams = CollectorParams()):
        self.salt, self.params = salt, params
        self.state_url = state_url
        self.state = None
        self.collector = EventCollector(collector_dir, collector,
                                        user_key=self._stored_id if salt else None, on_written=self._on_written)
        self.user_key = lru_cache(maxsize=200_000)(self._user_key)

    def start(self) -> None:
        self.state = open_user_state(self.state_url, self.params)
        self.collector.start()

    def close(self) -> None:
        self.collector.close()
        if self.state is not None:
            self.state.close()

    def pseudonyms(self, ids: pd.Series) -> pd.Series:
        from recsys.features.mapping import pseudonymise

        return pseudonymise(ids, self.salt)

    def _user_key(self, user_id: str) -> str:
        """The id the event store, the model and the state know a user by (the pseudonym when configured)."""
        if not self.salt:
            return user_id
        out = self.pseudonyms(pd.Series([user_id]))[0]
        return user_id if pd.isna(out) else str(out)

    def _stored_id(self, user_id: str | None) -> str | None:
        """The collector's view of `user_key`: a missing or blank id stays missing (its rule rejects it)."""
        return self.user_key(user_id) if user_id is not None and user_id.strip() else None

    def _on_written(self, events: list[dict]) -> None:
        self.state.append(events)

    def session(self, rec, user_key: str) -> tuple[np.ndarray, list[str]]:
        """The user's recent events as (known item indices, event types), oldest first."""
        recent = self.state.recent(user_key) if self.state is not None else []
        if not recent:
            return np.zeros(0, np.int64), []
        pos = rec.data.items.position
        items = [(pos(item), etype) for item, etype in recent]
        items = [(i, t) for i, t in items if i >= 0]
        return np.array([i for i, _ in items], dtype=np.int64), [t for _, t in items]

def attach_events(app, collector_dir: str | os.PathLike, state_url: str, pseudonymise: bool,
                  rotate_s: float = CollectorParams.rotate_s) -> LiveEvents:
    """Add `POST /events` to `app`; the caller starts/closes the returned `LiveEvents` in its lifespan."""
    salt = None
    if pseudonymise:
        from recsys.tasks.ingest import SALT_ENV

        salt = os.environ.get(SALT_ENV, "")
        if not salt:
            raise ValueError(f"--pseudonymise needs the salt in the environment variable {SALT_ENV} "
                             "(the same one ingest used)")
    live = LiveEvents(Path(collector_dir), state_url, salt, collector=CollectorParams(rotate_s=rotate_s))
    router = APIRouter()

    @router.post("/events", response_model=EventsAnswer, responses=error_responses(400, 413, 415, 422, 503))
    async def post_events(request: Request, body: EventBatch):
        """Collect a batch of behaviour events; answered once they are durably written."""
        rows = [e.model_dump() for e in body.events]
        sent = None
        for row in rows:
            if row[S.TS] is None:  # an event without a time happened when it was sent
                sent = sent or pd.Timestamp.now(tz="UTC").isoformat()
                row[S.TS] = sent
        try:
            rules = await live.collector.collect(rows)
        except Exception as exc:
            raise HTTPException(503, detail=f"events not stored ({type(exc).__name__}); nothing of this "
                                            "batch is acknowledged, send it again") from None
        results = [{"index": i, "status": "accepted"} if r is None else
                   {"index": i, "status": "rejected", "rule": r} for i, r in enumerate(rules)]
        accepted = sum(r is None for r in rules)
        return {"request_id": request.state.request_id, "accepted": accepted, "rejected": len(rules) - accepted,
                "results": results}

    app.include_router(router)
    return live
