"""Builds the FastAPI app: store opened and migrated on start, background loops supervised.

A process whose store cannot be reached at start-up does not exit: it serves (every
request that needs the store, and `/health`, answer 503) and keeps trying to reach the
store, then sets it up and starts its background loops. So several processes under one
supervisor survive an outage of the database, whichever of them restarts during it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kelpie import __version__
from kelpie.api import docs, ui
from kelpie.api.availability import StoreAvailability
from kelpie.api.errors import install_error_handlers
from kelpie.api.limits import BodySizeLimit
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
    workers,
)
from kelpie.api.security import hash_api_key
from kelpie.api.state import AppState
from kelpie.api.upkeep import (
    run_idempotency_retention,
    run_interruption_budgets,
    run_stall_timeouts,
    run_worker_retention,
)
from kelpie.backoff import Backoff
from kelpie.config import ServerSettings
from kelpie.fleet import fleet_provider_from_env
from kelpie.fleet.autoscaler import run_autoscaler
from kelpie.fleet.base import FleetProvider
from kelpie.fleet.reallocation import Reallocator
from kelpie.store import StoreUnavailable, open_store
from kelpie.webhooks.delivery import run_webhook_delivery, run_webhook_retention
from kelpie.webhooks.targets import address_policy

log = logging.getLogger("kelpie.api")

BackgroundLoop = Callable[[AppState, asyncio.Event], Awaitable[None]]

ADMIN_USERNAME = "admin"
DOCS_TAG_ORDER = (
    "health",
    "jobs",
    "checkpoints",
    "events",
    "worker",
    "workers",
    "users",
    "scaling-rules",
    "container groups",
    "metrics",
)
# Waits between attempts to reach the store at start-up; the last one repeats.
STORE_RETRY = Backoff(base=0.5, cap=5.0, floor=0.25)


def _background_loops() -> list[tuple[str, BackgroundLoop]]:
    """The periodic work every API process runs beside serving requests. A loop from another
    part is handed what it uses of the process's state (the adapters below), never the state:
    nothing below `api/` imports it."""
    return [
        ("api-liveness", _run_liveness),
        ("webhook-delivery", _run_webhook_delivery),
        ("webhook-retention", _run_webhook_retention),
        ("autoscaler", _run_autoscaler),
        ("interruption-budgets", run_interruption_budgets),
        ("stall-timeouts", run_stall_timeouts),
        ("idempotency-retention", run_idempotency_retention),
        ("worker-retention", run_worker_retention),
    ]


async def _run_liveness(state: AppState, stop: asyncio.Event) -> None:
    await state.liveness.run(stop)


async def _run_webhook_delivery(state: AppState, stop: asyncio.Event) -> None:
    settings = state.settings
    await run_webhook_delivery(
        state.store,
        policy=address_policy(settings.webhook_allowed_networks),
        max_age_seconds=settings.webhook_max_age_s,
        poll_interval=settings.webhook_poll_interval_s,
        wake=state.webhooks_due,
        stop=stop,
    )


async def _run_webhook_retention(state: AppState, stop: asyncio.Event) -> None:
    await run_webhook_retention(
        state.store, retention_seconds=state.settings.webhook_retention_s, stop=stop
    )


async def _run_autoscaler(state: AppState, stop: asyncio.Event) -> None:
    await run_autoscaler(
        state.store, state.fleet, interval=state.settings.autoscale_interval_s, stop=stop
    )


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _supervise(name: str, loop: BackgroundLoop, state: AppState, stop: asyncio.Event) -> None:
    """Keep a background loop alive: a crash is logged and the loop restarted after a pause.
    A store outage is not a crash: it is reported (once per outage) and waited out."""
    while not stop.is_set():
        try:
            await loop(state, stop)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as exc:
            state.availability.failed(exc)
            await _pause(stop, 1.0)
        except Exception:
            log.exception("background task %s crashed; restarting in 1 s", name)
            await _pause(stop, 1.0)
        else:
            return


async def _set_up_store(state: AppState) -> None:
    """Open (and migrate) the store, put the admin key in place, listen for new jobs."""
    store = state.store
    await store.open()
    try:
        # Before serving: after an outage, leases are extended before the first claim.
        await state.liveness.tick()
        if state.settings.admin_key:
            await store.ensure_admin(ADMIN_USERNAME, hash_api_key(state.settings.admin_key))
        await store.listen_for_new_jobs(state.notifier.notify)
    except BaseException:
        await store.close()
        raise
    state.availability.mark_ready()


async def _wait_for_store(state: AppState, stop: asyncio.Event, first: StoreUnavailable) -> None:
    """Tries to set the store up until it works (or the process stops); logs once."""
    log.warning("store unreachable at start-up, waiting for it (503 meanwhile): %s", first)
    started = time.monotonic()
    attempt = 0
    while not stop.is_set():
        await _pause(stop, STORE_RETRY.delay(attempt + 1))
        attempt += 1
        try:
            await _set_up_store(state)
        except StoreUnavailable:
            continue
        except Exception:
            # The database answered but refused (credentials, a newer schema): keep trying,
            # it may be a database still being restored; the log says why.
            log.exception("setting up the store failed; trying again")
            continue
        log.warning("store reached after %.1f s; serving", time.monotonic() - started)
        return


async def _run_in_background(
    state: AppState, stop: asyncio.Event, unreachable: StoreUnavailable | None
) -> None:
    """The process's background work: once the store is set up, the loops, supervised."""
    if unreachable is not None:
        await _wait_for_store(state, stop, unreachable)
    if stop.is_set():
        return
    await asyncio.gather(
        *(_supervise(name, loop, state, stop) for name, loop in _background_loops())
    )


def create_app(settings: ServerSettings, fleet: FleetProvider | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = count_store_errors(open_store(settings.database_url))
        provider = fleet or fleet_provider_from_env(os.environ)
        state = AppState(
            settings=settings,
            store=store,
            fleet=provider,
            availability=StoreAvailability(store),
            reallocator=Reallocator(store, provider, settings.max_blocked_jobs),
            liveness=Liveness(store),
        )
        app.state.kelpie = state
        unreachable: StoreUnavailable | None = None
        try:
            await _set_up_store(state)
        except StoreUnavailable as exc:
            unreachable = exc
        # Any other failure (a database from a newer kelpie, bad credentials) fails start-up.
        stop = asyncio.Event()
        background = asyncio.create_task(
            _run_in_background(state, stop, unreachable), name="background"
        )
        try:
            yield
        finally:
            stop.set()
            background.cancel()
            await asyncio.gather(background, return_exceptions=True)
            await state.reallocator.aclose()
            await state.availability.aclose()
            await provider.aclose()
            await store.close()

    app = FastAPI(
        title="kelpie",
        version=__version__,
        summary="Coordination API that shepherds long-running jobs through interruptible nodes.",
        lifespan=lifespan,
        # The docs list the operations in this order, whatever order requests are matched in.
        openapi_tags=[{"name": name} for name in DOCS_TAG_ORDER],
        # /docs and /redoc are served from packaged assets (kelpie.api.docs), never a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # A request is matched against the routers in this order, each costing every request
    # that passes it a few microseconds: the workers' calls and submissions come first.
    for router in (
        work.router,
        jobs.router,
        checkpoints.router,
        events.router,
        health.router,
        users.router,
        scaling_rules.router,
        groups.router,
        workers.router,
        metrics_router,
    ):
        app.include_router(router)
    docs.install(app)
    ui.install(app)
    app.add_middleware(RequestMetrics)
    return app
