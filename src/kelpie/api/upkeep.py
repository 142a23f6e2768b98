"""Periodic upkeep of scheduling state, run by every API process (each run is a fenced,
idempotent statement, so processes never step on each other):

- jobs stalled at their last allowed interruption fail (`max_interruptions`), since claims
  no longer take them;
- running jobs whose progress has not changed for their `stall_timeout` are stopped as
  failures (the holder's next heartbeat is refused, so it kills the command);
- idempotency keys past their lifetime are forgotten;
- machines not heard from for 30 days are forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kelpie.api.state import AppState

log = logging.getLogger("kelpie.api.upkeep")

INTERRUPTION_CHECK_SECONDS = 1.0
STALL_CHECK_SECONDS = 1.0
IDEMPOTENCY_RETENTION_CHECK_SECONDS = 3600.0
WORKER_RETENTION_CHECK_SECONDS = 3600.0


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_interruption_budgets(state: AppState, stop: asyncio.Event) -> None:
    """Every second, fail the stalled jobs whose next interruption would reach their
    `max_interruptions` (so a job that can never finish on this fleet ends)."""
    while not stop.is_set():
        # after an outage the leases are extended first, as before a claim
        await state.liveness.ensure_fresh()
        ended = await state.store.end_stalled_out_of_interruptions()
        for job in ended:
            log.info("job %s failed: %s", job.id, job.last_error)
        if ended:
            state.webhooks_due.set()
        await _pause(stop, INTERRUPTION_CHECK_SECONDS)


async def run_stall_timeouts(state: AppState, stop: asyncio.Event) -> None:
    """Every second, stop the running jobs that beat but made no progress for their
    `stall_timeout` (a hung job would otherwise hold its machine for ever)."""
    while not stop.is_set():
        stopped = await state.store.end_stalled_jobs()
        for job in stopped:
            log.info("job %s stopped: %s", job.id, job.last_error)
            if job.status == "pending":
                state.notifier.notify(job.container_group_id)
        if any(job.webhook for job in stopped):
            state.webhooks_due.set()
        await _pause(stop, STALL_CHECK_SECONDS)


async def run_worker_retention(state: AppState, stop: asyncio.Event) -> None:
    """Hourly, forget the machines not heard from for 30 days (WORKER_RETENTION_SECONDS):
    on SaladCloud machines come and go by the thousand, and no list looks back further."""
    while not stop.is_set():
        removed = await state.store.purge_workers()
        if removed:
            log.info("forgot %d machines not heard from for 30 days", removed)
        await _pause(stop, WORKER_RETENTION_CHECK_SECONDS)


async def run_idempotency_retention(state: AppState, stop: asyncio.Event) -> None:
    """Hourly, forget idempotency keys older than their 24 hours."""
    while not stop.is_set():
        removed = await state.store.purge_idempotency_keys()
        if removed:
            log.info("forgot %d idempotency keys past their lifetime", removed)
        await _pause(stop, IDEMPOTENCY_RETENTION_CHECK_SECONDS)
