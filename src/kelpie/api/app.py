"""Builds the FastAPI app: store opened and migrated on start, background loops supervised."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kelpie import __version__
from kelpie.api import docs, ui
from kelpie.api.errors import install_error_handlers
from kelpie.api.liveness import Liveness
from kelpie.api.metrics import RequestMetrics, count_store_errors
from kelpie.api.metrics import router as metrics_router
from kelpie.api.routers import (
    checkpoints,
    events,
    groups,
    health,
    jobs,
    scaling_rules,
    users,
    work,
)
from kelpie.api.security import hash_api_key
from kelpie.api.state import AppState
from kelpie.config import ServerSettings
from kelpie.fleet import fleet_provider_from_env
from kelpie.fleet.autoscaler import run_autoscaler
from kelpie.fleet.base import FleetProvider
from kelpie.store import open_store
from kelpie.webhooks.delivery import run_webhook_delivery, run_webhook_retention

log = logging.getLogger("kelpie.api")

BackgroundLoop = Callable[[AppState, asyncio.Event], Awaitable[None]]

ADMIN_USERNAME = "admin"


def _background_loops() -> list[tuple[str, BackgroundLoop]]:
    """The periodic work every API process runs beside serving requests."""
    return [
        ("webhook-delivery", run_webhook_delivery),
        ("webhook-retention", run_webhook_retention),
        ("autoscaler", run_autoscaler),
    ]


async def _supervise(name: str, loop: BackgroundLoop, state: AppState, stop: asyncio.Event) -> None:
    """Keep a background loop alive: a crash is logged and the loop restarted after a pause."""
    while not stop.is_set():
        try:
            await loop(state, stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s crashed; restarting in 1 s", name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        else:
            return


def create_app(settings: ServerSettings, fleet: FleetProvider | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = count_store_errors(open_store(settings.database_url))
        await store.open()
        provider = fleet or fleet_provider_from_env(os.environ)
        state = AppState(settings=settings, store=store, fleet=provider, liveness=Liveness(store))
        # Before serving: after an outage, leases are extended before the first claim.
        await state.liveness.tick()
        if settings.admin_key:
            await store.ensure_admin(ADMIN_USERNAME, hash_api_key(settings.admin_key))
        await store.listen_for_new_jobs(state.notifier.notify)
        app.state.kelpie = state
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(_supervise(name, loop, state, stop), name=name)
            for name, loop in _background_loops()
        ]
        tasks.append(asyncio.create_task(state.liveness.run(stop), name="api-liveness"))
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await provider.aclose()
            await store.close()

    app = FastAPI(
        title="kelpie",
        version=__version__,
        summary="Coordination API that shepherds long-running jobs through interruptible nodes.",
        lifespan=lifespan,
        # /docs and /redoc are served from packaged assets (kelpie.api.docs), never a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    for router in (
        health.router,
        jobs.router,
        checkpoints.router,
        events.router,
        work.router,
        users.router,
        scaling_rules.router,
        groups.router,
        metrics_router,
    ):
        app.include_router(router)
    docs.install(app)
    ui.install(app)
    app.add_middleware(RequestMetrics)
    return app
