"""HTTP service for the registry's champion. Follows the alias by polling and swaps atomically.

Endpoints: GET /recommendations/{user_id}, POST /recommendations (live session), GET /search,
GET /similar/{item_id}, GET /health, /ready, /version, /metrics. Every list response carries a
`request_id` (also the `X-Request-ID` header), the serving `model_version` and `variant`, and a
`strategy` per item. The per-request logic lives in `recsys.models.session` / `recsys.models.search` (pure).

Handlers are `async def` on purpose: the work is short, CPU-bound numpy/LightGBM under the GIL, so
running it on the event loop avoids a thread-pool hop per request; model loading runs in its own
thread and never on the request path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
import uuid
from pathlib import Path as FsPath
from typing import Annotated, Literal

import numpy as np
import orjson
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.features.schema import MAX_ID_LENGTH  # the id contract shared with ingest and training
from recsys.tasks.impressions import EVENT_TIME_HEADER
from recsys.serving.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit
from recsys.serving.metrics import MetricsResponse, ServiceMetrics
from recsys.serving.model_state import LoadedModel, ModelHolder
from recsys.serving.schemas import (Health, ItemList, Ready, SearchItemList, SessionItemList, SimilarItemList, VersionInfo,
                             error_responses, json_integer)

log = logging.getLogger("recsys.serving")

MAX_K = 100
MAX_QUERY_LENGTH = 256
MAX_SESSION_EVENTS = 50
SESSION_EVENT_TYPES = ("view", "add_to_cart", "purchase")


class FastJSON(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class SessionEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(..., min_length=1, max_length=MAX_ID_LENGTH)
    event_type: Literal["view", "add_to_cart", "purchase"] = "view"


CATEGORY_HELP = ("the category of the page a visitor landed on: a user the model does not know (and who has no "
                 "usable session events) gets the recent best sellers of this category blended with the overall "
                 "ones (strategy `popular_category`); ignored for known users and for categories the model "
                 "does not know (plain `popular`)")


class SessionRequest(BaseModel):
    """A shopper's recent events, oldest first; `user_id` may be omitted for an anonymous visitor."""

    model_config = ConfigDict(extra="forbid")
    user_id: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH)
    events: list[SessionEvent] = Field(default_factory=list, max_length=MAX_SESSION_EVENTS)
    k: Annotated[int, BeforeValidator(json_integer)] = Field(10, ge=1, le=MAX_K)
    category: str | None = Field(None, min_length=1, max_length=MAX_ID_LENGTH, description=CATEGORY_HELP)


def ab_bucket(user_id: str) -> float:
    """Stable position of a user in [0, 1): the same user always lands in the same arm."""
    h = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def _where(loc) -> str:
    return ".".join(str(p) for p in loc)


def _validation_message(err: dict) -> str:
    where = _where(err.get("loc", ()))
    if err.get("type") == "json_invalid":
        return (f"the request body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')}); send "
                '{"user_id": "...", "events": [{"item_id": "...", "event_type": "view"}], "k": 10} '
                "with Content-Type: application/json")
    if err.get("type") == "model_attributes_type" or err.get("type") == "dict_type":
        return f"{where}: expected a JSON object"
    if err.get("type") == "extra_forbidden":
        return f"{where}: unknown field; allowed fields are user_id, events, k (events: item_id, event_type)"
    if err.get("type") == "value_error":  # our own validators' messages, without pydantic's "Value error, "
        return f"{where}: {err.get('ctx', {}).get('error', err.get('msg'))}"
    if err.get("type") == "literal_error":
        return f"{where}: {err.get('msg')}"
    return f"{where}: {err.get('msg')}"


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def create_app(model_name: str = "recsys", alias: str = "champion", poll_interval_s: float = 30.0,
               impressions_dir: str | None = None, ab_share: float = 0.0,
               challenger_alias: str = "challenger", max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               load_retry_s: float = 60.0, collector_dir: str | None = None,
               state_store: str | None = None, pseudonymise: bool = False,
               collector_rotate_s: float = 60.0) -> FastAPI:
    from recsys.models.search import search, search_status, similar_items
    from recsys.models.cold_start import cold_start_status, new_user_recommendation
    from recsys.models.session import POPULAR, recommend_session, recommend_user, session_vector
    from recsys.serving.events import attach_events, batch_error_message
    from recsys.serving.impressions import ImpressionLogger

    metrics = ServiceMetrics()
    holder = ModelHolder(model_name, alias, metrics=metrics, retry_base_s=load_retry_s)
    challenger = ModelHolder(model_name, challenger_alias, metrics=metrics,
                             retry_base_s=load_retry_s) if ab_share > 0 else None
    stop = threading.Event()
    impressions = ImpressionLogger(FsPath(impressions_dir)) if impressions_dir else None

    async def lifespan(app: FastAPI):
        from threadpoolctl import threadpool_limits

        # per-request numpy/scipy work is tiny: BLAS/OpenMP thread pools only add contention
        app.state.thread_limits = threadpool_limits(1)
        # background threads (model loading during a swap, the impressions writer) hand the GIL back to
        # the event loop after 1 ms instead of the default 5 ms: bounds what a swap adds to tail latency
        sys.setswitchinterval(0.001)
        if impressions:
            impressions.start()
        if live:
            live.start()
        for h in filter(None, (holder, challenger)):
            threading.Thread(target=h.refresh, daemon=True, name=f"initial-load-{h.alias}").start()
            if poll_interval_s > 0:
                threading.Thread(target=h.poll_forever, args=(poll_interval_s, stop), daemon=True,
                                 name=f"alias-poller-{h.alias}").start()
        yield
        stop.set()
        if impressions:
            impressions.close()
        if live:
            live.close()

    # /docs and /redoc with their assets served from the installed package (fastapi-offline): they render
    # without internet access, unlike FastAPI's default pages that load Swagger UI from a CDN
    app = FastAPIOffline(title="recsys", description="Recommendations from the MLflow registry's champion.",
                         lifespan=lifespan, responses=error_responses(404, 405, 500))
    app.state.holder, app.state.challenger, app.state.metrics = holder, challenger, metrics
    app.state.impressions = impressions
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestContext, metrics=metrics)  # outermost: the request id exists for every answer
    # POST /events + real-time user state (serving/events.py); user ids become pseudonyms at the door
    live = attach_events(app, collector_dir, state_store, pseudonymise, collector_rotate_s) if collector_dir else None
    app.state.live = live
    user_key = live.user_key if live else (lambda u: u)

    # ---- errors: always JSON with a message that says what to fix, never a stack trace ----------
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        content_type = request.headers.get("content-type")
        if request.method == "POST" and not _is_json(content_type) and \
                any(tuple(e.get("loc", ()))[:1] == ("body",) for e in exc.errors()):
            return FastJSON({"detail": f"Content-Type {content_type!r} is not supported; send the body as JSON "
                                       "with Content-Type: application/json",
                             "request_id": request.state.request_id}, status_code=415)
        message = batch_error_message if request.url.path == "/events" else _validation_message
        errors = [message(e) for e in exc.errors()]
        return FastJSON({"detail": "; ".join(errors), "errors": errors,
                         "request_id": request.state.request_id}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = (f"no such endpoint: {request.method} {request.url.path}; see /docs for "
                      "/recommendations, /search, /similar, /health, /ready, /version, /metrics")
        if exc.status_code == 405:
            detail = f"method {request.method} not allowed on {request.url.path}"
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            cause = exc.__cause__
            detail = (f"the request body could not be read ({type(cause).__name__ if cause else 'unknown'}): "
                      "send UTF-8 JSON with Content-Type: application/json")
        return FastJSON({"detail": detail, "request_id": getattr(request.state, "request_id", None)},
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception):
        rid = getattr(request.state, "request_id", None)
        log.error("request %s %s failed (request_id=%s)", request.method, request.url.path, rid, exc_info=exc)
        return FastJSON({"detail": "internal error; the request id is in the service log", "request_id": rid},
                        status_code=500)

    # ---- helpers ---------------------------------------------------------------------------
    def pick(user_id: str | None) -> tuple[LoadedModel, str]:
        if challenger is not None and user_id is not None and challenger.current is not None \
                and ab_bucket(user_id) < ab_share:
            return challenger.current, "challenger"
        cur = holder.current
        if cur is None:
            raise HTTPException(503, detail="no model loaded yet: train and promote a champion first")
        return cur, "champion"

    def respond(request: Request, endpoint: str, cur: LoadedModel, variant: str, rec, user_id: str | None,
                extra: dict | None = None, query: str | None = None) -> Response:
        ids = cur.recommender.data.items.ids
        items = [{"item_id": ids[i], "score": round(float(s), 6), "strategy": st}
                 for i, s, st in zip(rec.items.tolist(), rec.scores.tolist(), rec.strategies)]
        rid = request.state.request_id
        body = {"request_id": rid, "user_id": user_id, "model_version": cur.version, "variant": variant,
                "strategy": rec.strategy, "items": items}
        if extra:
            body.update(extra)
        if rec.strategy == POPULAR or any(st == POPULAR for st in rec.strategies):
            metrics.fallbacks.labels(endpoint, POPULAR).inc()
        if impressions is not None:
            record = {"request_id": rid, "ts": time.time(), "endpoint": endpoint, "user_id": user_id,
                      "model_version": cur.version, "variant": variant, "query": query, "items": items}
            event_time = request.headers.get(EVENT_TIME_HEADER)
            if event_time:  # a replaying client's clock (the simulator), kept next to the service's own
                record["event_ts"] = event_time[:40]
            if not impressions.log(record):
                metrics.impressions_dropped.inc()
        return FastJSON(body)

    # ---- operational endpoints -------------------------------------------------------------
    @app.get("/health", response_model=Health)
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", response_model=Ready, responses=error_responses(503))
    async def ready() -> dict:
        if holder.current is None:
            raise HTTPException(503, detail=f"not ready: {holder.last_error or 'loading the champion'}")
        return {"status": "ready", "version": holder.current.version}

    def describe(h: ModelHolder) -> dict:
        cur = h.current
        return {"model_name": h.name, "alias": h.alias, "version": cur and cur.version,
                "run_id": cur and cur.run_id,
                "loaded_at": cur and time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cur.loaded_at)),
                "last_error": h.last_error, "failed_version": h.failed_version, "retry_in_s": h.retry_in_s(),
                "search": cur and search_status(cur.recommender),
                "cold_start": cur and cold_start_status(cur.recommender)}

    @app.get("/version", response_model=VersionInfo, response_model_exclude_unset=True)
    async def version() -> dict:
        out = describe(holder)
        if challenger is not None:
            out["ab_share"] = ab_share
            out["challenger"] = describe(challenger)
        return out

    @app.get("/metrics", response_class=MetricsResponse,
             responses={200: {"description": "Prometheus text format",
                              "content": {MetricsResponse.media_type: {"schema": {"type": "string"}}}}})
    async def prometheus() -> Response:
        return MetricsResponse(metrics.render())

    # ---- recommendations -------------------------------------------------------------------
    lists = error_responses(422, 503)

    @app.get("/recommendations/{user_id}", response_model=ItemList, responses=lists)
    async def recommendations(request: Request,
                              user_id: str = Path(..., min_length=1, max_length=MAX_ID_LENGTH),
                              k: int = Query(10, ge=1, le=MAX_K, description="number of items"),
                              category: str | None = Query(None, min_length=1, max_length=MAX_ID_LENGTH,
                                                           description=CATEGORY_HELP)) -> Response:
        user_id = user_key(user_id)
        cur, variant = pick(user_id)
        rec = cur.recommender
        s_items, s_types = live.session(rec, user_id) if live else ([], [])
        user = rec.data.users.position(user_id)
        if user < 0:  # a new user: the path tuned for their context (recsys.models.cold_start)
            out = new_user_recommendation(rec, cur.index, s_items, s_types, category, k)
        else:
            out = recommend_session(rec, cur.index, user, s_items, s_types, k)
        return respond(request, "recommendations", cur, variant, out, user_id,
                       extra={"live_events": len(s_items)} if live else None)

    @app.post("/recommendations", response_model=SessionItemList,
              responses=error_responses(400, 413, 415, 422, 503))
    async def session_recommendations(request: Request, body: SessionRequest) -> Response:
        if body.user_id:
            body.user_id = user_key(body.user_id)
        cur, variant = pick(body.user_id)
        rec = cur.recommender
        pos = rec.data.items.position
        items = [pos(e.item_id) for e in body.events]
        unknown = [e.item_id for e, i in zip(body.events, items) if i < 0]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise HTTPException(404, detail=f"unknown item_id in events: {shown}; send catalog item ids "
                                            f"(model version {cur.version} knows {rec.data.n_items} items)")
        user = rec.data.users.position(body.user_id) if body.user_id else -1
        s_items, s_types = np.asarray(items, dtype=np.int64), [e.event_type for e in body.events]
        if user < 0:
            out = new_user_recommendation(rec, cur.index, s_items, s_types, body.category, body.k)
        else:
            out = recommend_session(rec, cur.index, user, s_items, s_types, body.k)
        return respond(request, "session", cur, variant, out, body.user_id,
                       extra={"session_events": len(body.events)})

    @app.get("/search", response_model=SearchItemList, responses=lists)
    async def search_items(request: Request,
                           q: str = Query(..., min_length=1, max_length=MAX_QUERY_LENGTH, description="query"),
                           user_id: str | None = Query(None, min_length=1, max_length=MAX_ID_LENGTH),
                           k: int = Query(10, ge=1, le=MAX_K)) -> Response:
        user_id = user_key(user_id) if user_id else None
        cur, variant = pick(user_id)
        rec = cur.recommender
        user = rec.data.users.position(user_id) if user_id else -1
        s_items, s_types = live.session(rec, user_id) if live and user_id else ([], [])
        out = search(rec, cur.index, q, user, k, session=session_vector(rec, cur.index, user, s_items, s_types))
        if len(out.items) == 0:  # no catalog word matches (or no word at all): show what is popular
            out = recommend_user(rec, cur.index, -1, k)
        return respond(request, "search", cur, variant, out, user_id, query=q,
                       extra={"query": q, **({"live_events": len(s_items)} if live else {})})

    @app.get("/similar/{item_id}", response_model=SimilarItemList, responses=lists)
    async def similar(request: Request, item_id: str = Path(..., min_length=1, max_length=MAX_ID_LENGTH),
                      k: int = Query(10, ge=1, le=MAX_K)) -> Response:
        cur, variant = pick(None)
        rec = cur.recommender
        item = rec.data.items.position(item_id)
        if item < 0:
            raise HTTPException(404, detail=f"unknown item_id {item_id!r}: not in the catalog of model "
                                            f"version {cur.version}")
        out = similar_items(rec, cur.index, item, k)
        return respond(request, "similar", cur, variant, out, None, extra={"item_id": item_id})

    return app


CONFIG_ENV = "RECSYS_SERVE_CONFIG"


def app_from_env() -> FastAPI:
    """App factory for `uvicorn --workers N` (each worker process builds its own app from the JSON
    keyword arguments of `create_app` in $RECSYS_SERVE_CONFIG, loads and follows the alias itself)."""
    return create_app(**json.loads(os.environ[CONFIG_ENV]))


_ENDPOINTS = {"recommendations", "search", "similar", "health", "ready", "version", "metrics"}


class RequestContext:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): request id, X-Request-ID header,
    request counts and latency per endpoint."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        first = scope["path"].split("/", 2)[1] if scope["path"].count("/") else ""
        endpoint = first if first in _ENDPOINTS else "other"
        if endpoint == "recommendations" and scope["method"] == "POST":
            endpoint = "session"
        status = [500]
        header = (b"x-request-id", rid.encode())

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = list(message.get("headers", [])) + [header]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe(endpoint, status[0], time.perf_counter() - t0)
