"""Replaces a machine blocked from too many of one tenant's jobs (PROTOCOL §4).

The failure report that brings a machine to `KELPIE_MAX_BLOCKED_JOBS` of a tenant's jobs is
answered at once; the fleet provider's call (retried, so possibly slow) runs in a task the
`Reallocator` owns. The API's lifespan closes it at shutdown, which cancels what is still
running before the store and the fleet provider are closed under it.

Failures count per tenant and machine, and a machine is reallocated at most once per
tenant (the store decides, across processes): a tenant reporting failures under another
tenant's machine id spends only its own reallocation, in its own SaladCloud project.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from kelpie.fleet.base import FleetError, FleetProvider, FleetTarget, GroupNotFound
from kelpie.store.protocol import Store, StoreUnavailable

log = logging.getLogger("kelpie.fleet.reallocation")


class Reallocator:
    def __init__(self, store: Store, fleet: FleetProvider, threshold: int) -> None:
        self._store = store
        self._fleet = fleet
        self._threshold = threshold
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._closed = False

    def request(self, user_id: str, machine_id: str) -> None:
        """Reallocate the machine if it is due for this tenant; returns at once."""
        key = (user_id, machine_id)
        if self._closed or key in self._running:
            return  # the reallocation under way decides for this report too
        task = asyncio.get_running_loop().create_task(
            self._reallocate_if_due(user_id, machine_id), name=f"reallocate-{machine_id}"
        )
        self._running[key] = task
        task.add_done_callback(functools.partial(self._finished, key))

    @property
    def running(self) -> int:
        """Reallocations under way."""
        return len(self._running)

    async def aclose(self) -> None:
        """Cancel the reallocations under way and wait for them to end; take no more."""
        self._closed = True
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _finished(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        self._running.pop(key, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("reallocating machine %s crashed", key[1], exc_info=error)

    async def _reallocate_if_due(self, user_id: str, machine_id: str) -> None:
        try:
            blocked = await self._store.claim_reallocation(user_id, machine_id, self._threshold)
        except StoreUnavailable as exc:
            log.warning("cannot decide on reallocating machine %s: %s", machine_id, exc)
            return
        if blocked is None:
            return
        if blocked.org_name is None or blocked.project_name is None:
            log.warning(
                "machine %s is blocked from %d jobs of user %s, whose jobs name no SaladCloud "
                "organization/project; it cannot be reallocated",
                machine_id,
                blocked.blocked_jobs,
                user_id,
            )
            return
        target = FleetTarget(blocked.org_name, blocked.project_name, blocked.container_group_id)
        log.info(
            "reallocating machine %s (blocked from %d jobs of user %s)",
            machine_id,
            blocked.blocked_jobs,
            user_id,
        )
        try:
            await self._fleet.reallocate(target, machine_id)
        except (FleetError, GroupNotFound) as exc:
            log.warning("reallocating machine %s failed: %s", machine_id, exc)
