"""Which failures are retried, and how they read."""

from __future__ import annotations

import zlib

import pytest
from obstore.exceptions import GenericError, PermissionDeniedError, PreconditionError

from kelpie.storage.errors import is_transient, summarize

NO_SUCH_BUCKET = (
    "Generic S3 error: Error performing list request: Error performing GET "
    "http://127.0.0.1:1/missing?list-type=2 in 782µs - Server returned non-2xx status code: "
    '404 Not Found: <?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchBucket</Code>'
    "<Message>The specified bucket does not exist</Message></Error>\n\nDebug source:\nGeneric {"
)


@pytest.mark.parametrize(
    "error",
    [
        GenericError(
            "Error performing PUT http://h/b/k - Server returned non-2xx status code: 503"
        ),
        GenericError("Error performing PUT - Server returned non-2xx status code: 429 Too Many"),
        GenericError("Error performing PUT http://h/b/k - HTTP error: operation timed out"),
        GenericError("error decoding response body: connection reset"),
        PreconditionError("the object changed: status code: 412"),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_transient_failures_are_retried(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        GenericError(NO_SUCH_BUCKET),
        PermissionDeniedError("Server returned non-2xx status code: 403 Forbidden"),
        FileNotFoundError("Object at location k not found"),
        OSError(28, "No space left on device"),
        zlib.error("incorrect header check"),
        GenericError("Error performing PUT after 40 retries - HTTP error: error sending request"),
        KeyError("a bug, not a transfer failure"),
    ],
)
def test_permanent_failures_are_not_retried(error: BaseException) -> None:
    assert not is_transient(error)


def test_summary_names_the_s3_code_with_a_hint() -> None:
    assert summarize(GenericError(NO_SUCH_BUCKET)) == (
        "NoSuchBucket: The specified bucket does not exist (the bucket does not exist)"
    )


def test_summary_drops_obstores_debug_dump_and_stays_short() -> None:
    error = GenericError("HTTP error:   error sending request\n\nDebug source:\n" + "x" * 5000)
    assert summarize(error) == "HTTP error: error sending request"
    assert len(summarize(GenericError("y" * 5000))) <= 400
