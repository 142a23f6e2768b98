"""Which client calls are sent again after which failure: the retry decision matrix.

A `httpx.MockTransport` stands in for the network so each failure is exact; both clients run
the same matrix, proving they share one retry policy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from kelpie.client import (
    ApiUnavailable,
    AsyncKelpieClient,
    Backoff,
    KelpieClient,
    KelpieError,
)
from kelpie.client.retry import Retrying, retry_after_seconds

NO_WAIT = Backoff(base=0.0, cap=0.0)
MAX_ATTEMPTS = 3
JOB = {
    "id": "00000000-0000-0000-0000-000000000001",
    "user_id": "u1",
    "status": "running",
    "created": "2024-04-19T18:53:31.000Z",
    "command": "python",
    "container_group_id": "g1",
}
RULE = {
    "container_group_id": "g1",
    "user_id": "u1",
    "min_replicas": 0,
    "max_replicas": 3,
    "idle_threshold_seconds": 60,
    "created": "2024-04-19T18:53:31.000Z",
    "updated": "2024-04-19T18:53:31.000Z",
}

Failure = Callable[[httpx.Request], httpx.Response]


def _raise(error: type[httpx.TransportError]) -> Failure:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("simulated", request=request)

    return fail


def _status(code: int) -> Failure:
    return lambda request: httpx.Response(code, json={"error": "Oops", "message": f"status {code}"})


FAILURES: dict[str, Failure] = {
    "connect-refused": _raise(httpx.ConnectError),
    "connect-timeout": _raise(httpx.ConnectTimeout),
    "pool-timeout": _raise(httpx.PoolTimeout),
    "read-timeout": _raise(httpx.ReadTimeout),
    "write-timeout": _raise(httpx.WriteTimeout),
    "connection-dropped": _raise(httpx.RemoteProtocolError),
    "429": _status(429),
    "502": _status(502),
    "503": _status(503),
    "504": _status(504),
    "500": _status(500),
}
NEVER_SENT = {"connect-refused", "connect-timeout", "pool-timeout"}
TRANSIENT = set(FAILURES) - {"500"}

# (call name, how to make it, the answer it gets when the server succeeds)
CALLS: dict[str, tuple[Callable[[Any], Any], httpx.Response]] = {
    "get_job": (lambda c: c.get_job(JOB["id"]), httpx.Response(200, json=JOB)),
    "list_jobs": (lambda c: c.list_jobs(), httpx.Response(200, json={"_count": 1, "jobs": [JOB]})),
    "list_attempts": (lambda c: c.list_attempts(JOB["id"]), httpx.Response(200, json=[])),
    "cancel_job": (
        lambda c: c.cancel_job(JOB["id"]),
        httpx.Response(202, json={"message": "Job canceled"}),
    ),
    "purge_group": (lambda c: c.purge_group("g1"), httpx.Response(200, json={"count": 2})),
    "delete_all_jobs": (lambda c: c.delete_all_jobs(), httpx.Response(204)),
    "heartbeat": (
        lambda c: c.heartbeat(JOB["id"], "m1", "g1"),
        httpx.Response(200, json={"status": "running"}),
    ),
    "report_completed": (
        lambda c: c.report_completed(JOB["id"], "m1", "g1"),
        httpx.Response(200, json={"message": "ok"}),
    ),
    "report_failed": (
        lambda c: c.report_failed(JOB["id"], "m1", "g1", 1, "boom"),
        httpx.Response(202, json={"message": "ok"}),
    ),
    "report_interrupted": (
        lambda c: c.report_interrupted(JOB["id"], "m1", "g1"),
        httpx.Response(202, json={"message": "ok"}),
    ),
    "update_scaling_rule": (
        lambda c: c.update_scaling_rule("g1", max_replicas=3),
        httpx.Response(200, json=RULE),
    ),
    "delete_scaling_rule": (lambda c: c.delete_scaling_rule("g1"), httpx.Response(204)),
    "me": (
        lambda c: c.me(),
        httpx.Response(
            200,
            json={
                "id": "u1",
                "username": "ann",
                "created": JOB["created"],
                "is_admin": False,
                "webhook_secret": "s",
                "webhook_token": "t",
            },
        ),
    ),
    "submit_job": (
        lambda c: c.submit_job({"command": "python", "container_group_id": "g1"}),
        httpx.Response(202, json=JOB),
    ),
    "submit_batch": (
        lambda c: c.submit_batch([{"command": "python", "container_group_id": "g1"}]),
        httpx.Response(202, json=[JOB]),
    ),
    "poll_work": (lambda c: c.poll_work("m1", "g1"), httpx.Response(200, json=[JOB])),
    "create_user": (
        lambda c: c.create_user("ann"),
        httpx.Response(201, json={"id": "u1", "username": "ann", "created": JOB["created"]}),
    ),
    "create_token": (lambda c: c.create_token("u1"), httpx.Response(201, json={"token": "k"})),
    "create_scaling_rule": (
        lambda c: c.create_scaling_rule(
            "g1", min_replicas=0, max_replicas=3, idle_threshold_seconds=60
        ),
        httpx.Response(201, json=RULE),
    ),
}
# Creating things and claiming jobs must not happen twice. (Submissions carry an
# Idempotency-Key, which makes them safe to repeat: see the tests below.)
UNSENT_ONLY_CALLS = {
    "poll_work",
    "create_user",
    "create_token",
    "create_scaling_rule",
}


def expected_sends(call: str, failure: str) -> int:
    if call in UNSENT_ONLY_CALLS:
        return MAX_ATTEMPTS if failure in NEVER_SENT else 1
    return MAX_ATTEMPTS if failure in TRANSIENT else 1


class Recorder:
    """A transport handler that fails the first `failures` requests, then answers `success`."""

    def __init__(self, failure: Failure, success: httpx.Response, failures: int) -> None:
        self.failure = failure
        self.success = success
        self.failures = failures
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) <= self.failures:
            return self.failure(request)
        return httpx.Response(
            self.success.status_code, content=self.success.content, headers=self.success.headers
        )


def sync_run(recorder: Recorder, call: Callable[[Any], Any]) -> Any:
    transport = httpx.MockTransport(recorder)
    with KelpieClient(
        "http://kelpie.test", "key", max_attempts=MAX_ATTEMPTS, transport=transport, backoff=NO_WAIT
    ) as client:
        return call(client)


async def async_run(recorder: Recorder, call: Callable[[Any], Awaitable[Any]]) -> Any:
    transport = httpx.MockTransport(recorder)
    async with AsyncKelpieClient(
        "http://kelpie.test", "key", max_attempts=MAX_ATTEMPTS, transport=transport, backoff=NO_WAIT
    ) as client:
        return await call(client)


MATRIX = [(call, failure) for call in CALLS for failure in FAILURES]


@pytest.mark.parametrize(("call", "failure"), MATRIX)
def test_sync_client_retries_only_what_is_safe(call: str, failure: str) -> None:
    make, success = CALLS[call]
    recorder = Recorder(FAILURES[failure], success, failures=MAX_ATTEMPTS)
    with pytest.raises(KelpieError):
        sync_run(recorder, make)
    assert len(recorder.requests) == expected_sends(call, failure)


@pytest.mark.parametrize(("call", "failure"), MATRIX)
async def test_async_client_retries_only_what_is_safe(call: str, failure: str) -> None:
    make, success = CALLS[call]
    recorder = Recorder(FAILURES[failure], success, failures=MAX_ATTEMPTS)
    with pytest.raises(KelpieError):
        await async_run(recorder, make)
    assert len(recorder.requests) == expected_sends(call, failure)


@pytest.mark.parametrize("call", sorted(CALLS))
def test_a_retried_call_returns_the_answer_that_finally_came(call: str) -> None:
    make, success = CALLS[call]
    recorder = Recorder(FAILURES["connect-refused"], success, failures=MAX_ATTEMPTS - 1)
    sync_run(recorder, make)
    assert len(recorder.requests) == MAX_ATTEMPTS


async def test_async_heartbeat_recovers_from_a_503() -> None:
    make, success = CALLS["heartbeat"]
    recorder = Recorder(FAILURES["503"], success, failures=2)
    assert await async_run(recorder, make) == "running"
    assert len(recorder.requests) == 3


def test_a_creation_that_may_have_reached_the_server_says_so() -> None:
    make, success = CALLS["create_token"]
    recorder = Recorder(FAILURES["read-timeout"], success, failures=1)
    with pytest.raises(ApiUnavailable, match="may have processed"):
        sync_run(recorder, make)


@pytest.mark.parametrize("call", ["submit_job", "submit_batch"])
@pytest.mark.parametrize("failure", ["read-timeout", "connection-dropped", "503"])
def test_a_retried_submission_repeats_its_idempotency_key(call: str, failure: str) -> None:
    # The server answers a repeated key with the jobs of the first request, so a submission
    # whose answer was lost is sent again, with the same key, instead of given up.
    make, success = CALLS[call]
    recorder = Recorder(FAILURES[failure], success, failures=2)
    sync_run(recorder, make)
    keys = [request.headers.get("Idempotency-Key") for request in recorder.requests]
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1


async def test_each_submission_gets_its_own_key_unless_one_is_given() -> None:
    recorder = Recorder(FAILURES["503"], httpx.Response(202, json=JOB), failures=0)
    job = {"command": "python", "container_group_id": "g1"}

    async def submit_three(client: AsyncKelpieClient) -> None:
        await client.submit_job(job)
        await client.submit_job(job)
        await client.submit_job(job, idempotency_key="nightly-2025-03-14")

    await async_run(recorder, submit_three)
    keys = [request.headers["Idempotency-Key"] for request in recorder.requests]
    assert keys[0] != keys[1] and keys[2] == "nightly-2025-03-14"


def test_an_unreachable_api_is_named_in_the_error() -> None:
    make, success = CALLS["get_job"]
    recorder = Recorder(FAILURES["connect-refused"], success, failures=MAX_ATTEMPTS)
    with pytest.raises(ApiUnavailable) as caught:
        sync_run(recorder, make)
    assert str(caught.value) == "cannot reach the kelpie API at http://kelpie.test: simulated"
    assert caught.value.status_code is None


def test_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("kelpie.client.sync_client.time.sleep", slept.append)
    make, success = CALLS["get_job"]

    def throttle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "Slow down"})

    sync_run(Recorder(throttle, success, failures=2), make)
    assert slept == [7.0, 7.0]


def test_with_retries_overrides_the_budget_for_one_call() -> None:
    make, success = CALLS["heartbeat"]
    recorder = Recorder(FAILURES["503"], success, failures=10)
    transport = httpx.MockTransport(recorder)
    with KelpieClient(
        "http://kelpie.test", "key", max_attempts=2, transport=transport, backoff=NO_WAIT
    ) as client:
        with pytest.raises(ApiUnavailable):
            make(client.with_retries(6))
        assert len(recorder.requests) == 6
        with pytest.raises(ApiUnavailable):
            make(client)  # the original keeps its own budget
        assert len(recorder.requests) == 8


async def test_long_poll_waits_longer_than_the_server_does() -> None:
    seen: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append({"timeout": request.extensions["timeout"], "query": dict(request.url.params)})
        return httpx.Response(200, json=[])

    async with AsyncKelpieClient(
        "http://kelpie.test", "key", timeout=5.0, transport=httpx.MockTransport(answer)
    ) as client:
        assert await client.poll_work("m1", "g1", wait=20) is None
        assert await client.poll_work("m1", "g1") is None
    assert seen[0]["timeout"]["read"] == 30.0
    assert seen[0]["query"] == {"machine_id": "m1", "container_group_id": "g1", "wait": "20"}
    assert seen[1]["timeout"]["read"] == 5.0
    assert "wait" not in seen[1]["query"]


def test_backoff_is_full_jitter_under_a_cap() -> None:
    backoff = Backoff(base=0.2, cap=10.0)
    for attempt, ceiling in ((1, 0.2), (2, 0.4), (3, 0.8), (10, 10.0), (60, 10.0)):
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jittered across the range, not pinned at zero


def test_retry_after_reads_seconds_and_dates() -> None:
    now = datetime(2024, 4, 19, 18, 0, 0, tzinfo=UTC)

    def header(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value})

    assert retry_after_seconds(header("3")) == 3.0
    assert retry_after_seconds(header("Fri, 19 Apr 2024 18:00:12 GMT"), now) == 12.0
    assert retry_after_seconds(header("soon")) is None
    assert retry_after_seconds(httpx.Response(503)) is None
    assert Backoff(max_retry_after=60).delay(1, retry_after=3600) == 60


def test_a_retry_budget_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Retrying(max_attempts=0)
