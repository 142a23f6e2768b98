"""No double claims: many pollers across two API processes on one database."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.api import new_admin_key
from tests.support.api_fixtures import BACKENDS
from tests.support.processes import ServerProcess, start_server

# Ten jobs per poller: every claim races 63 others across both processes.
JOBS = 640
POLLERS = 64
GROUP = "race-group"


async def _poll_until_empty(
    http: httpx.AsyncClient, machine_id: str, claims: list[tuple[str, str]]
) -> None:
    params = {"machine_id": machine_id, "container_group_id": GROUP}
    while True:
        response = await http.get("/work", params=params)
        assert response.status_code == 200, response.text
        jobs = response.json()
        if not jobs:
            return
        assert jobs[0]["machine_id"] == machine_id
        claims.append((jobs[0]["id"], machine_id))


async def _race(servers: list[ServerProcess], key: str) -> list[tuple[str, str]]:
    claims: list[tuple[str, str]] = []
    limits = httpx.Limits(max_connections=POLLERS)
    clients = [
        httpx.AsyncClient(base_url=s.url, headers={"X-Kelpie-Key": key}, timeout=60, limits=limits)
        for s in servers
    ]
    try:
        await asyncio.gather(
            *(
                _poll_until_empty(clients[i % len(clients)], f"machine-{i}", claims)
                for i in range(POLLERS)
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    return claims


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_job_is_claimed_exactly_once(
    backend: str, fresh_database_url: Callable[[str], str], tmp_path: Path
) -> None:
    url = fresh_database_url(backend)
    admin_key = new_admin_key()
    servers = [start_server(url, admin_key, tmp_path / "logs") for _ in range(2)]
    admin = httpx.Client(base_url=servers[0].url, headers={"X-Kelpie-Key": admin_key})
    try:
        batch = [{"command": "true", "container_group_id": GROUP}] * JOBS
        assert admin.post("/jobs/batch", json=batch, timeout=60).status_code == 202

        claims = asyncio.run(_race(servers, admin_key))

        per_job = Counter(job_id for job_id, _ in claims)
        assert len(per_job) == JOBS, f"{JOBS - len(per_job)} jobs were never claimed"
        doubles = {job_id: n for job_id, n in per_job.items() if n > 1}
        assert not doubles, f"{len(doubles)} jobs were handed out more than once"
        assert len({machine for _, machine in claims}) > POLLERS // 2
        pending = admin.get("/jobs", params={"status": "pending", "container_group_id": GROUP})
        assert pending.json()["_count"] == 0
        holders = {job_id: machine for job_id, machine in claims}
        page = admin.get("/jobs", params={"status": "running", "page_size": 1000}).json()["jobs"]
        assert all(job["machine_id"] == holders[job["id"]] for job in page)
    finally:
        admin.close()
        for server in servers:
            server.stop()
