"""SaladFleetProvider against FakeSalad: real HTTP, real retries, real headers."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from kelpie.fleet import FleetError, FleetTarget, GroupNotFound, GroupState, SaladFleetProvider
from tests.support.fake_salad import FakeSalad

API_KEY = "salad-key-for-tests"
GROUP_ID = "6f1c1b7e-3c1d-4c84-9a55-0f4f0d9c2a11"
TARGET = FleetTarget(org_name="acme", project_name="prod", container_group_id=GROUP_ID)
GROUP_PATH = "/api/public/organizations/acme/projects/prod/containers/render-farm"


@pytest.fixture
def salad() -> Iterator[FakeSalad]:
    with FakeSalad(api_key=API_KEY) as fake:
        fake.add_group("acme", "prod", GROUP_ID, "render-farm", status="stopped", replicas=2)
        fake.add_group("acme", "prod", "0a2d4b5c-0000-4000-8000-000000000000", "other")
        yield fake


@pytest.fixture
async def provider(salad: FakeSalad) -> AsyncIterator[SaladFleetProvider]:
    fleet = SaladFleetProvider(API_KEY, salad.url, max_attempts=4, backoff_base=0.001)
    yield fleet
    await fleet.aclose()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_group_is_found_by_id_and_read_by_name(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    group = await provider.get_group(TARGET)

    assert group == GroupState(id=GROUP_ID, name="render-farm", status="stopped", replicas=2)
    assert not group.running
    assert [(r.method, r.path) for r in salad.requests] == [
        ("GET", "/api/public/organizations/acme/projects/prod/containers"),
        ("GET", GROUP_PATH),
    ]


async def test_group_name_is_looked_up_once_per_project(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    await provider.get_group(TARGET)
    await provider.start_group(TARGET)
    await provider.get_group(TARGET)

    assert len(salad.requests_to("/containers", "GET")) == 1


async def test_start_posts_to_the_group_with_the_api_key(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    await provider.start_group(TARGET)

    (start,) = salad.requests_to("/render-farm/start")
    assert start.method == "POST"
    assert start.header("Salad-Api-Key") == API_KEY
    assert salad.group(GROUP_ID).status == "running"
    assert (await provider.get_group(TARGET)).running


async def test_stop_posts_to_the_group(salad: FakeSalad, provider: SaladFleetProvider) -> None:
    salad.update_group(GROUP_ID, status="running")

    await provider.stop_group(TARGET)

    assert [r.method for r in salad.requests_to("/render-farm/stop")] == ["POST"]
    assert salad.group(GROUP_ID).status == "stopped"


async def test_replicas_are_set_with_a_json_merge_patch(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    await provider.set_replicas(TARGET, 7)

    (patch,) = salad.requests_to(GROUP_PATH, "PATCH")
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {"replicas": 7}
    assert patch.header("Salad-Api-Key") == API_KEY
    assert salad.group(GROUP_ID).replicas == 7


async def test_reallocate_posts_to_the_machine_instance(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    await provider.reallocate(TARGET, "machine-42")

    (call,) = salad.requests_to("/reallocate")
    assert (call.method, call.path) == ("POST", f"{GROUP_PATH}/instances/machine-42/reallocate")
    assert salad.group(GROUP_ID).reallocated_machines == ["machine-42"]


async def test_throttled_patch_is_retried_after_retry_after(salad: FakeSalad) -> None:
    # A backoff this long would blow the time budget: only Retry-After: 0 keeps it fast.
    fleet = SaladFleetProvider(API_KEY, salad.url, backoff_base=30.0)
    try:
        await fleet.get_group(TARGET)
        salad.fail_next(2, 429, retry_after=0)
        started = time.monotonic()

        await fleet.set_replicas(TARGET, 3)

        assert time.monotonic() - started < 5
    finally:
        await fleet.aclose()
    assert len(salad.requests_to(GROUP_PATH, "PATCH")) == 3
    assert salad.group(GROUP_ID).replicas == 3


async def test_server_errors_are_retried_until_success(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    await provider.get_group(TARGET)
    salad.fail_next(2, 500)

    await provider.start_group(TARGET)

    assert len(salad.requests_to("/start")) == 3
    assert salad.group(GROUP_ID).status == "running"


async def test_persistent_server_error_gives_up_after_max_attempts(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    await provider.get_group(TARGET)
    salad.fail_next(10, 503)

    with pytest.raises(FleetError, match="gave up after 4 attempts") as failure:
        await provider.stop_group(TARGET)

    assert failure.value.status_code == 503
    assert len(salad.requests_to("/stop")) == 4


async def test_unknown_group_id_raises_group_not_found(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    stranger = FleetTarget("acme", "prod", "99999999-9999-4999-8999-999999999999")

    with pytest.raises(GroupNotFound):
        await provider.start_group(stranger)

    assert [r.method for r in salad.requests] == ["GET"]


async def test_deleted_group_raises_group_not_found_without_retrying(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    await provider.get_group(TARGET)
    salad.remove_group(GROUP_ID)

    with pytest.raises(GroupNotFound):
        await provider.set_replicas(TARGET, 1)

    assert len(salad.requests_to(GROUP_PATH, "PATCH")) == 1


async def test_a_renamed_group_is_found_under_its_new_name(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    await provider.get_group(TARGET)
    salad.remove_group(GROUP_ID)
    salad.add_group("acme", "prod", GROUP_ID, "render-farm-v2", status="running")

    group = await provider.get_group(TARGET)
    await provider.stop_group(TARGET)

    assert (group.name, group.status) == ("render-farm-v2", "running")
    assert salad.group(GROUP_ID).status == "stopped"


@pytest.mark.parametrize("call", ["start", "stop", "replicas", "get"])
async def test_a_404_about_something_else_is_not_a_missing_group(
    salad: FakeSalad, provider: SaladFleetProvider, call: str
) -> None:
    await provider.get_group(TARGET)  # the group's name is known
    salad.fail_next(1, 404)  # the next call, on the group's own path

    with pytest.raises(FleetError) as failure:
        match call:
            case "start":
                await provider.start_group(TARGET)
            case "stop":
                await provider.stop_group(TARGET)
            case "replicas":
                await provider.set_replicas(TARGET, 3)
            case _:
                await provider.get_group(TARGET)

    assert failure.value.status_code == 404
    assert salad.group(GROUP_ID).name == "render-farm"  # still there, untouched


async def test_reallocating_a_machine_the_group_does_not_have_is_a_fleet_error(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    await provider.get_group(TARGET)
    salad.fail_next(1, 404)  # "no such instance"

    with pytest.raises(FleetError) as failure:
        await provider.reallocate(TARGET, "gone-machine")

    assert failure.value.status_code == 404


async def test_name_taken_over_by_another_group_is_not_our_group(
    salad: FakeSalad, provider: SaladFleetProvider
) -> None:
    await provider.get_group(TARGET)
    salad.remove_group(GROUP_ID)
    salad.add_group("acme", "prod", "11111111-1111-4111-8111-111111111111", "render-farm")

    with pytest.raises(GroupNotFound):
        await provider.get_group(TARGET)


async def test_wrong_api_key_raises_fleet_error_without_retrying(salad: FakeSalad) -> None:
    fleet = SaladFleetProvider("not-the-key", salad.url, backoff_base=0.001)
    try:
        with pytest.raises(FleetError, match="invalid") as failure:
            await fleet.get_group(TARGET)
    finally:
        await fleet.aclose()

    assert failure.value.status_code == 401
    assert len(salad.requests) == 1


async def test_unreachable_api_raises_fleet_error_after_retries() -> None:
    fleet = SaladFleetProvider(
        API_KEY, f"http://127.0.0.1:{closed_port()}/api/public", max_attempts=2, backoff_base=0.001
    )
    try:
        with pytest.raises(FleetError, match="gave up after 2 attempts: ConnectError"):
            await fleet.get_group(TARGET)
    finally:
        await fleet.aclose()


async def test_slow_api_is_retried_after_a_timeout(salad: FakeSalad) -> None:
    fleet = SaladFleetProvider(API_KEY, salad.url, backoff_base=0.001, timeout=0.2)
    try:
        salad.stall_next(1, 1.0)

        group = await fleet.get_group(TARGET)
    finally:
        await fleet.aclose()

    assert group.id == GROUP_ID
    assert len(salad.requests_to("/containers", "GET")) == 2


async def test_fake_salad_refuses_a_patch_that_is_not_a_merge_patch(salad: FakeSalad) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.patch(
            f"{salad.url}/organizations/acme/projects/prod/containers/render-farm",
            json={"replicas": 1},
            headers={"Salad-Api-Key": API_KEY},
        )

    assert response.status_code == 415
    assert salad.group(GROUP_ID).replicas == 2
