"""Which failures are retried, and how they read."""

from __future__ import annotations

import zlib

import pytest
from obstore.exceptions import GenericError, PermissionDeniedError, PreconditionError

from kelpie.backoff import Backoff
from kelpie.storage import s3
from kelpie.storage.errors import StorageError, is_transient, summarize
from kelpie.storage.settings import S3Settings

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
        # obstore stopped early on a transport error it does not retry (seen when a
        # connection is reset as it opens): its budget is not spent, so try again.
        GenericError(
            "Error performing GET http://h/b/k in 102.74505ms, after 1 retries, max_retries: "
            "40, retry_timeout: 120s  - HTTP error: error sending request"
        ),
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
        GenericError(
            "Error performing PUT http://h/b/k in 2.1s, after 40 retries, max_retries: 40, "
            "retry_timeout: 120s  - HTTP error: error sending request"
        ),
        GenericError(
            "Error performing GET http://h/b/k in 120.000913s, after 17 retries, max_retries: "
            "40, retry_timeout: 120s  - HTTP error: error sending request"
        ),
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


class Flaky:
    """An operation that fails with `error` `failures` times, then answers "done"."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3, "OPERATION_BACKOFF", Backoff(base=0.001, cap=0.002))


def storage() -> s3.ObjectStorage:
    return s3.ObjectStorage(S3Settings.from_env({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}))


@pytest.mark.usefixtures("quick_backoff")
async def test_transient_failures_are_retried_for_as_long_as_the_window_lasts() -> None:
    flaky = Flaky(12, ConnectionResetError())
    assert await storage()._retrying("get", "b", "k", flaky) == "done"
    assert flaky.calls == 13


@pytest.mark.usefixtures("quick_backoff")
async def test_transient_failures_give_up_once_the_window_has_passed_as_an_outage() -> None:
    quick = s3.ObjectStorage(
        S3Settings.from_env({"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}), retry_window_s=0.05
    )
    flaky = Flaky(10**9, ConnectionResetError("reset by peer"))
    with pytest.raises(StorageError, match=r"get s3://b/k failed: reset by peer") as caught:
        await quick._retrying("get", "b", "k", flaky)
    assert flaky.calls > 1
    assert caught.value.transient  # unreachable storage: the job is handed back, not failed


async def test_a_permanent_failure_is_not_retried() -> None:
    flaky = Flaky(1, GenericError(NO_SUCH_BUCKET))
    with pytest.raises(StorageError, match="the bucket does not exist") as caught:
        await storage()._retrying("list", "b", "", flaky)
    assert flaky.calls == 1
    assert not caught.value.transient  # a mistake no retry fixes: the job fails
