"""Errors raised by the client, each carrying the API's `{"error", "message"}` body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx


class KelpieError(Exception):
    """The API refused a call, or could not be reached.

    `status_code` is the HTTP status (None when no answer arrived), `error` the API's short
    error name, `message` its explanation, and `details` any other fields of the error body
    (a rejected batch names the offending item's `index`). `str(err)` is one clean line.
    """

    def __init__(
        self,
        status_code: int | None,
        error: str,
        message: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(status_code, error, message)
        self.status_code = status_code
        self.error = error
        self.message = message
        self.details: Mapping[str, Any] = details or {}

    def __str__(self) -> str:
        text = " ".join((self.message or self.error or "kelpie API error").split())
        index = self.details.get("index")
        return f"batch item {index}: {text}" if isinstance(index, int) else text


class BadRequest(KelpieError):
    """400: the request was invalid (a field, a query parameter, a batch item)."""


class Unauthorized(KelpieError):
    """401: no API key was sent."""


class Forbidden(KelpieError):
    """403: the API key is unknown or revoked, or the call needs an admin key."""


class NotFoundError(KelpieError):
    """404: no such job, user or rule, or it belongs to another user."""


class Conflict(KelpieError):
    """409: the state forbids it (cancelling a finished job; reporting a job not held)."""


class ApiUnavailable(KelpieError):
    """No usable answer: connection failures, timeouts, or a 5xx after the allowed retries."""


_BY_STATUS: dict[int, type[KelpieError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFoundError,
    409: Conflict,
}


def error_from_response(response: httpx.Response) -> KelpieError:
    """The error an unsuccessful answer stands for, with the API's own words when it sent JSON."""
    status = response.status_code
    error, message, details = _error_body(response)
    if status >= 500:
        where = f"{response.request.method} {response.request.url}"
        message = f"the kelpie API failed {where} ({status}): {message}"
        return ApiUnavailable(status, error, message, details)
    return _BY_STATUS.get(status, KelpieError)(status, error, message, details)


def _error_body(response: httpx.Response) -> tuple[str, str, dict[str, Any]]:
    reason = response.reason_phrase or f"HTTP {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.pop("error", None)
        message = body.pop("message", body.pop("detail", None))
        return (
            error if isinstance(error, str) else reason,
            message if isinstance(message, str) else str(message or error or reason),
            body,
        )
    text = response.text.strip()
    return reason, (text if text and len(text) < 200 else reason), {}
