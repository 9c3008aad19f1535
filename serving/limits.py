"""Request-body size limit as pure ASGI middleware: a body over the limit is refused with 413 before it
is buffered (from Content-Length at once; a chunked body as soon as the bytes received pass the limit)."""

from __future__ import annotations

import orjson
from starlette.exceptions import HTTPException

DEFAULT_MAX_BODY_BYTES = 1 << 20  # a full session request (50 events) is ~10 KB


def too_large_message(max_bytes: int) -> str:
    return f"request body larger than {max_bytes:,} bytes; send at most {max_bytes:,} bytes"


class BodyTooLarge(HTTPException):
    """Raised from `receive` while the app reads a chunked body; FastAPI re-raises HTTPExceptions met while
    reading the body, so the app's HTTP error handler answers it (with the request id)."""

    def __init__(self, max_bytes: int):
        super().__init__(413, detail=too_large_message(max_bytes), headers={"connection": "close"})


class BodySizeLimit:
    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, scope, send) -> None:
        body = orjson.dumps({"detail": too_large_message(self.max_bytes),
                             "request_id": scope.get("state", {}).get("request_id")})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    return await self._refuse(scope, send)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(scope, send)

