"""Fleet provider choice, group states, the logging no-op, and tolerant parsing of SaladCloud
answers (served in-process by httpx.MockTransport: no sockets)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from kelpie.fleet import (
    FleetError,
    FleetTarget,
    GroupNotFound,
    GroupState,
    LoggingFleetProvider,
    SaladFleetProvider,
    fleet_provider_from_env,
)

TARGET = FleetTarget("acme", "prod", "gid-1")
LIST_PATH = "/api/public/organizations/acme/projects/prod/containers"
GROUP_PATH = f"{LIST_PATH}/render"


Handler = Callable[[httpx.Request], httpx.Response]
SaladFactory = Callable[..., SaladFleetProvider]


@pytest.fixture
async def salad_with() -> AsyncIterator[SaladFactory]:
    """Builds providers whose HTTP answers come from a handler; closes them afterwards."""
    clients: list[httpx.AsyncClient] = []

    def build(handler: Handler, backoff_max: float = 30.0) -> SaladFleetProvider:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        return SaladFleetProvider(
            "key",
            "http://salad.test/api/public",
            client=client,
            backoff_base=0.001,
            backoff_max=backoff_max,
        )

    yield build
    for client in clients:
        await client.aclose()


def listing(request: httpx.Request) -> httpx.Response | None:
    if request.url.path == LIST_PATH:
        return httpx.Response(200, json={"items": [{"id": "gid-1", "name": "render"}]})
    return None


async def test_without_a_salad_key_the_fleet_only_logs() -> None:
    provider = fleet_provider_from_env({"KELPIE_SALAD_API_URL": "http://x"})

    assert isinstance(provider, LoggingFleetProvider)


async def test_with_a_salad_key_the_fleet_is_saladcloud_at_the_configured_url() -> None:
    default = fleet_provider_from_env({"SALAD_API_KEY": "k"})
    custom = fleet_provider_from_env({"SALAD_API_KEY": "k", "KELPIE_SALAD_API_URL": "http://x/"})
    try:
        assert isinstance(default, SaladFleetProvider)
        assert default.base_url == "https://api.salad.com/api/public"
        assert isinstance(custom, SaladFleetProvider)
        assert custom.base_url == "http://x"
    finally:
        await default.aclose()
        await custom.aclose()


@pytest.mark.parametrize(
    ("status", "running"),
    [
        ("running", True),
        ("deploying", True),
        ("stopped", False),
        ("pending", False),
        ("failed", False),
        ("succeeded", False),
    ],
)
def test_group_counts_as_running_once_started(status: str, running: bool) -> None:
    assert GroupState("id", "name", status, 1).running is running


async def test_logging_provider_reports_every_group_running_and_logs_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = LoggingFleetProvider()
    with caplog.at_level(logging.INFO, logger="kelpie.fleet"):
        group = await provider.get_group(TARGET)
        await provider.set_replicas(TARGET, 4)
        await provider.reallocate(TARGET, "m-1")

    assert group == GroupState("gid-1", "gid-1", "running", 0)
    assert len(caplog.records) == 3
    assert "m-1" in caplog.records[-1].getMessage()


async def test_group_without_state_or_replicas_still_parses(salad_with: SaladFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return listing(request) or httpx.Response(200, json={"id": "gid-1", "name": "render"})

    provider = salad_with(handler)

    assert await provider.get_group(TARGET) == GroupState("gid-1", "render", "unknown", 0)


async def test_list_items_without_a_name_are_skipped(salad_with: SaladFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": [{"id": "gid-1"}, "junk"]})

    with pytest.raises(GroupNotFound):
        await salad_with(handler).get_group(TARGET)


async def test_answer_that_is_not_json_is_a_fleet_error(salad_with: SaladFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return listing(request) or httpx.Response(200, text="<html>maintenance</html>")

    with pytest.raises(FleetError, match="not JSON"):
        await salad_with(handler).get_group(TARGET)


async def test_client_error_carries_the_api_message_and_is_not_retried(
    salad_with: SaladFactory,
) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        problem = {"title": "Bad Request", "detail": "replicas must be <= 500"}
        return listing(request) or httpx.Response(400, json=problem)

    with pytest.raises(FleetError, match="400 replicas must be <= 500") as failure:
        await salad_with(handler).set_replicas(TARGET, 501)

    assert failure.value.status_code == 400
    assert calls == ["GET", "PATCH"]


async def test_negative_replicas_are_refused_before_any_call(salad_with: SaladFactory) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no call expected")

    with pytest.raises(ValueError, match="replicas"):
        await salad_with(handler).set_replicas(TARGET, -1)


@pytest.mark.parametrize(
    "retry_after",
    [
        format_datetime(datetime.now(UTC) - timedelta(minutes=1), usegmt=True),
        "3600",  # capped by backoff_max
    ],
    ids=["a date in the past", "beyond the cap"],
)
async def test_retry_after_as_a_date_or_beyond_the_cap_is_honoured(
    retry_after: str, salad_with: SaladFactory
) -> None:
    answers = [httpx.Response(429, headers={"Retry-After": retry_after})]

    def handler(request: httpx.Request) -> httpx.Response:
        return listing(request) or (answers.pop() if answers else httpx.Response(202))

    provider = salad_with(handler, backoff_max=0.01)
    started = time.monotonic()

    await provider.start_group(TARGET)

    assert time.monotonic() - started < 1.0
    assert answers == []
