"""ImdsClient against FakeImds, and against no IMDS at all."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from kelpie.worker.imds import ImdsClient
from tests.support.fake_imds import FakeImds


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    with FakeImds() as fake:
        yield fake


@pytest.fixture
async def client(imds: FakeImds) -> AsyncIterator[ImdsClient]:
    async with ImdsClient(imds.url, timeout=0.5) as imds_client:
        yield imds_client


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_deletion_cost_is_put_with_the_metadata_header(
    imds: FakeImds, client: ImdsClient
) -> None:
    assert await client.set_deletion_cost(10)
    assert await client.set_deletion_cost(0)

    assert imds.deletion_costs == [10, 0]
    first = imds.requests_to("/v1/deletion-cost")[0]
    assert (first.method, first.header("Metadata"), first.body) == (
        "PUT",
        "true",
        {"deletion_cost": 10},
    )


async def test_reallocate_posts_the_reason(imds: FakeImds, client: ImdsClient) -> None:
    assert await client.reallocate("blocked from 5 jobs")

    assert imds.reallocations == ["blocked from 5 jobs"]
    assert imds.requests_to("/v1/reallocate")[0].body == {"reason": "blocked from 5 jobs"}


async def test_available_when_imds_answers(client: ImdsClient) -> None:
    assert await client.available()


async def test_unreachable_imds_answers_false_quickly_and_never_raises() -> None:
    started = time.monotonic()
    async with ImdsClient(f"http://127.0.0.1:{closed_port()}", timeout=0.5) as client:
        assert not await client.available()
        assert not await client.set_deletion_cost(3)
        assert not await client.reallocate("bad node")

    assert time.monotonic() - started < 1.5


async def test_silent_imds_is_abandoned_after_the_timeout(imds: FakeImds) -> None:
    imds.stall_next(1, 5.0)
    async with ImdsClient(imds.url, timeout=0.2) as client:
        started = time.monotonic()
        assert not await client.set_deletion_cost(1)
        assert time.monotonic() - started < 1.0

        # Known unavailable: later calls cost nothing, not another timeout.
        assert not await client.set_deletion_cost(2)
    assert len(imds.requests) == 1


async def test_imds_is_tried_again_once_the_unavailable_period_ends(imds: FakeImds) -> None:
    imds.stall_next(1, 5.0)
    async with ImdsClient(imds.url, timeout=0.2, retry_unavailable_after=0.0) as client:
        assert not await client.set_deletion_cost(1)

        assert await client.set_deletion_cost(2)
    assert imds.deletion_costs == [2]


async def test_imds_error_answer_is_false_without_giving_up_on_imds(
    imds: FakeImds, client: ImdsClient
) -> None:
    imds.fail_next(1, 500)

    assert not await client.set_deletion_cost(1)
    assert await client.set_deletion_cost(2)
    assert imds.deletion_costs == [2]


async def test_fake_imds_refuses_calls_without_the_metadata_header(imds: FakeImds) -> None:
    async with httpx.AsyncClient() as plain:
        response = await plain.put(f"{imds.url}/v1/deletion-cost", json={"deletion_cost": 1})

    assert response.status_code == 400
    assert imds.deletion_costs == []


async def test_imds_refusing_every_call_is_warned_about_once(
    imds: FakeImds, client: ImdsClient, caplog: pytest.LogCaptureFixture
) -> None:
    # Off SaladCloud another metadata service may answer every deletion-cost call (one per
    # heartbeat) with an error: the worker's log says so once, not at every beat.
    imds.fail_next(20, 404)
    caplog.set_level(logging.DEBUG, logger="kelpie.fleet")

    for cost in range(20):
        assert not await client.set_deletion_cost(cost)

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    # once it answers again, a later refusal is news again
    assert await client.set_deletion_cost(1)
    imds.fail_next(1, 500)
    assert not await client.set_deletion_cost(2)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2
