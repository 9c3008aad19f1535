"""The service's HTTP contract: response models and the error responses every route declares.

Handlers return `FastJSON` (orjson) bodies built by hand for speed; these models document what those bodies
hold (`/openapi.json`, `/docs`) and schemathesis checks the two agree (tests/integration/test_serve_contract.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Item(BaseModel):
    item_id: str
    score: float
    strategy: str = Field(..., description="what produced this item (model, session, search, popular, ...)")


class ItemList(BaseModel):
    request_id: str = Field(..., description="also the X-Request-ID header; impressions carry it")
    user_id: str | None
    model_version: str = Field(..., description="registry version that answered")
    variant: Literal["champion", "challenger"]
    strategy: str = Field(..., description="how the list was built; `popular` is the cold-start fallback")
    items: list[Item]


class SessionItemList(ItemList):
    session_events: int


class SearchItemList(ItemList):
    query: str


class SimilarItemList(ItemList):
    item_id: str


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    version: str


class ModelState(BaseModel):
    model_name: str
    alias: str
    version: str | None = Field(..., description="version being served; null until one loaded")
    run_id: str | None
    loaded_at: str | None = Field(..., description="UTC, ISO 8601")
    last_error: str | None = Field(..., description="why the alias's version is not served, if it is not")
    failed_version: str | None = Field(..., description="version that failed to load (retried with backoff)")
    retry_in_s: float | None = Field(None, description="seconds until the failed version is tried again")
    search: dict[str, str] | None = Field(None, description="how /search answers for this version: retrieval "
                                                            "(lexical or hybrid), ranker, semantic (on, or why off)")
    cold_start: dict[str, str] | None = Field(None, description="what a user the model does not know gets: with "
                                                                "session events, with a category, with nothing")


class VersionInfo(ModelState):
    ab_share: float | None = Field(None, description="share of users served by the challenger (A/B only)")
    challenger: ModelState | None = None


class EventResult(BaseModel):
    index: int = Field(..., description="position of the event in the posted batch")
    status: Literal["accepted", "rejected"]
    rule: str | None = Field(None, description="the contract rule a rejected event broke (same rules as ingest)")


class EventsAnswer(BaseModel):
    request_id: str
    accepted: int = Field(..., description="events durably written to the collected log")
    rejected: int = Field(..., description="events kept in the failed stream with their rule")
    results: list[EventResult]


class ErrorBody(BaseModel):
    detail: str = Field(..., description="what was wrong and what to send instead")
    request_id: str | None
    errors: list[str] | None = Field(None, description="one line per invalid field (422 only)")


def json_integer(value: object) -> object:
    """An integer as JSON Schema means it (1 and 1.0, never `true` or `"1"`): pydantic's lax mode would take
    `"k": true` as k=1, its strict mode would refuse 45.0, which the documented schema allows."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected an integer, got {type(value).__name__} {value!r}")
    return value


def error_responses(*codes: int) -> dict:
    """OpenAPI `responses` for the error statuses a route can answer, all with the ErrorBody shape."""
    text = {400: "body could not be read", 404: "unknown id or path", 405: "method not allowed",
            413: "request body too large", 415: "body is not application/json", 422: "invalid input",
            500: "internal error", 503: "not available: no model loaded yet, or events could not be stored"}
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}
