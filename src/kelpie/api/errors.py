"""One error shape everywhere: `{"error": "<kind>", "message": "<what and why>"}`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kelpie.api.availability import RETRY_AFTER_S, STARTING_MESSAGE, UNAVAILABLE_MESSAGE
from kelpie.schemas import ErrorOut
from kelpie.store.protocol import StoreUnavailable

INVALID_REQUEST = "Invalid request"

_REASONS = {
    400: INVALID_REQUEST,
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: INVALID_REQUEST,
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ApiError(Exception):
    """Raised by routes and dependencies; rendered in the one error shape."""

    def __init__(self, status_code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.extra = extra


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route: these status codes answer in the one error shape."""
    return {code: {"model": ErrorOut} for code in status_codes}


def not_found(what: str, key: object) -> ApiError:
    """404 naming what was looked for: `Job 8b9c… not found`. Another user's job is not
    found either, so naming the id the caller sent tells it nothing new."""
    return ApiError(404, f"{what} {key} not found")


def error_body(status_code: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": _REASONS.get(status_code, "Error"), "message": message, **extra}


def _field_path(loc: Sequence[int | str]) -> tuple[str, int | None]:
    """`("body", 3, "sync", "before", 0, "direction")` → `"sync.before[0].direction"`, index 3
    when the body is a batch."""
    parts = list(loc)
    index: int | None = None
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    if parts and isinstance(parts[0], int) and loc[0] == "body":
        index = parts[0]
        parts = parts[1:]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith(("function-after", "function-before", "json-or-python")):
            continue
        else:
            text += ("." if text else "") + str(part)
    return text, index


def describe_validation_error(errors: Sequence[Any]) -> tuple[str, int | None]:
    """A one-line message naming the first offending field, and a batch item's index."""
    first = errors[0]
    field, index = _field_path(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return f"body is not valid JSON: {first.get('ctx', {}).get('error', msg)}", None
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    if first.get("type") == "missing":
        msg = "required field is missing"
    if not field and first.get("type") != "value_error":
        # The body (or a batch item) as a whole has the wrong shape. Cross-field rules
        # (value_error) name their fields in the message already.
        field = "body" if index is None else f"item {index}"
    return (f"{field}: {msg}" if field else msg), index


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, index = describe_validation_error(exc.errors())
    extra = {"index": index} if index is not None else {}
    return JSONResponse(error_body(400, message, **extra), status_code=400)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(error_body(exc.status_code, exc.message, **exc.extra), exc.status_code)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return JSONResponse(error_body(exc.status_code, message), exc.status_code, headers=exc.headers)


def store_unavailable_response(starting: bool) -> JSONResponse:
    """503 in the one error shape, telling the client when to try again."""
    return JSONResponse(
        error_body(503, STARTING_MESSAGE if starting else UNAVAILABLE_MESSAGE),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StoreUnavailable)
    availability = request.app.state.kelpie.availability
    availability.failed(exc)
    return store_unavailable_response(starting=not availability.ready)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette logs the traceback; the client gets the one error shape, without details.
    return JSONResponse(error_body(500, "internal error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(Exception, _unexpected_error)
