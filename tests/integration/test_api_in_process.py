"""The API app run inside the test's own event loop, on a real store of each kind, for what
a separate `kelpie serve` cannot show: that a long poll is woken by the notification (not by
its periodic re-check), and that background work is stopped at shutdown before the fleet
provider and the store are closed under it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from kelpie.api import app as app_module
from kelpie.api.routers import work
from kelpie.api.state import AppState
from kelpie.config import ServerSettings
from kelpie.fleet.base import FleetTarget
from kelpie.fleet.logging_provider import LoggingFleetProvider
from tests.support.api import new_admin_key
from tests.support.waiting import wait_for_async

ADMIN_KEY = new_admin_key()


@asynccontextmanager
async def running(
    database_url: str, fleet: LoggingFleetProvider | None = None, **settings: Any
) -> AsyncIterator[tuple[AppState, httpx.AsyncClient]]:
    """The app through its whole lifespan, and a client calling it in-process."""
    app: FastAPI = app_module.create_app(
        ServerSettings(database_url=database_url, admin_key=ADMIN_KEY, **settings), fleet
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kelpie") as client:
            client.headers["X-Kelpie-Key"] = ADMIN_KEY
            yield app.state.kelpie, client


async def test_a_long_poll_is_woken_by_the_submission_itself(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Re-checks far apart: only a notification can end the poll early.
    monkeypatch.setattr(work, "RECHECK_SECONDS", 60.0)
    group = f"group-{uuid.uuid4().hex[:8]}"
    async with running(database_url) as (state, http):
        params: dict[str, str | int] = {"machine_id": "m1", "container_group_id": group, "wait": 20}
        poll = asyncio.create_task(http.get("/work", params=params))
        await wait_for_async(lambda: state.notifier.waiting_groups(), "the poll to wait")
        submitted = time.monotonic()

        job = await http.post("/jobs", json={"command": "x", "container_group_id": group})

        assert job.status_code == 202
        claimed = await asyncio.wait_for(poll, 10)
        assert time.monotonic() - submitted < 5
        assert [j["id"] for j in claimed.json()] == [job.json()["id"]]


class HangingFleet(LoggingFleetProvider):
    """A fleet whose reallocation never answers (a provider retrying for ever)."""

    def __init__(self) -> None:
        self.reallocating = asyncio.Event()
        self.cancelled = False
        self.cancelled_before_close: bool | None = None

    async def reallocate(self, target: FleetTarget, machine_id: str) -> None:
        self.reallocating.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def aclose(self) -> None:
        self.cancelled_before_close = self.cancelled


async def test_a_reallocation_under_way_is_cancelled_at_shutdown_before_the_fleet_closes(
    database_url: str,
) -> None:
    fleet = HangingFleet()
    group = f"group-{uuid.uuid4().hex[:8]}"
    async with running(database_url, fleet, max_blocked_jobs=1) as (state, http):
        user = (await http.post("/users", json={"username": f"u-{uuid.uuid4().hex[:8]}"})).json()
        token = await http.post(
            f"/users/{user['id']}/token", json={"org_name": "acme", "project_name": "render"}
        )
        http.headers["X-Kelpie-Key"] = token.json()["token"]
        await http.post("/jobs", json={"command": "x", "container_group_id": group})
        [job] = (
            await http.get("/work", params={"machine_id": "bad", "container_group_id": group})
        ).json()
        report = {"machine_id": "bad", "container_group_id": group, "exit_code": 1}
        assert (await http.post(f"/jobs/{job['id']}/failed", json=report)).status_code == 202
        await asyncio.wait_for(fleet.reallocating.wait(), 10)
        assert state.reallocator.running == 1

    assert fleet.cancelled_before_close is True
