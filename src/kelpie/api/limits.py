"""The request body cap (`KELPIE_MAX_BODY_BYTES`), enforced before a body is read whole.

A declared `Content-Length` above the cap is answered 413 at once, without calling the app;
a body without one (chunked) is counted as it streams in, and the request fails with 413 as
soon as the count passes the cap. Either way at most the cap is ever held in memory; uvicorn
reads and discards whatever the client still sends.

Starlette's `RequestBodyLimitMiddleware` does the same counting, but answers in plain text
and calls the app first; kelpie answers in its one error shape.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kelpie.api.errors import error_body


class BodySizeLimit:
    """ASGI middleware answering 413 to a request whose body is larger than `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = (
            f"the request body is larger than {max_bytes} bytes (KELPIE_MAX_BODY_BYTES); "
            "split a large batch into several"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = JSONResponse(error_body(413, self.message), status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes through FastAPI's body parsing untouched and
                    # is answered by the error handlers, in the one error shape.
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, receive_within_limit, send)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None  # uvicorn's parser refuses such a request before it gets here
