"""A 202 means stored: SIGKILL the server mid-burst, and every acknowledged job is there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.api import new_admin_key
from tests.support.api_fixtures import BACKENDS
from tests.support.processes import ServerProcess, start_server

GROUP = "durable-group"


KILL_AFTER = 300


async def _submit_until_refused(
    url: str, key: str, acknowledged: list[str], enough: asyncio.Event
) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"X-Kelpie-Key": key}, timeout=10) as http:

        async def one_client(n: int) -> None:
            i = 0
            while True:
                try:
                    response = await http.post(
                        "/jobs", json={"command": f"c{n}-{i}", "container_group_id": GROUP}
                    )
                except httpx.TransportError:
                    return
                if response.status_code == 202:
                    acknowledged.append(response.json()["id"])
                    if len(acknowledged) >= KILL_AFTER:
                        enough.set()
                i += 1

        await asyncio.gather(*(one_client(n) for n in range(16)))


async def _kill_when(server: ServerProcess, enough: asyncio.Event) -> None:
    await enough.wait()
    server.kill()  # mid-burst: the other clients still have requests in flight


async def _burst_and_kill(server: ServerProcess, key: str) -> list[str]:
    acknowledged: list[str] = []
    enough = asyncio.Event()
    await asyncio.gather(
        _submit_until_refused(server.url, key, acknowledged, enough),
        _kill_when(server, enough),
    )
    return acknowledged


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_acknowledged_job_survives_sigkill(
    backend: str, fresh_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    url = fresh_database_url(backend)
    key = new_admin_key()
    server = start_server(url, key, tmp_path / "logs")

    acknowledged = asyncio.run(_burst_and_kill(server, key))

    assert len(acknowledged) >= KILL_AFTER
    restarted = start_server(url, key, tmp_path / "logs")
    http = httpx.Client(base_url=restarted.url, headers={"X-Kelpie-Key": key})
    try:
        stored: set[str] = set()
        page = 1
        while True:
            body = http.get(
                "/jobs", params={"container_group_id": GROUP, "page_size": 1000, "page": page}
            ).json()
            stored |= {job["id"] for job in body["jobs"]}
            if body["_count"] < 1000:
                break
            page += 1
        missing = set(acknowledged) - stored
        assert not missing, f"{len(missing)} acknowledged jobs were lost"
    finally:
        http.close()
        restarted.stop()
