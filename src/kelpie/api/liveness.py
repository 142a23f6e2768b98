"""The API's own heartbeat in the store, so an outage of the API never moves healthy jobs.

Every API process tells the store it is alive about once a second (`Store.note_api_alive`).
When no process had for a while — every process down, or the store unreachable — nobody could
hear the workers' heartbeats either, so the jobs running then are not stalled: the store gives
each a full lease from now. A claim first makes sure this process has told the store recently,
so the first claim after an outage never runs before the leases are extended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from kelpie.store.protocol import Store

log = logging.getLogger("kelpie.api.liveness")

TICK_SECONDS = 1.0
# A claim in a process that has not reached the store for this long tells it first.
FRESH_SECONDS = 1.5


class Liveness:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._last_ok: float | None = None
        self._lock = asyncio.Lock()

    def _fresh(self) -> bool:
        return self._last_ok is not None and time.monotonic() - self._last_ok <= FRESH_SECONDS

    async def tick(self) -> None:
        """Tell the store now; raises what the store raises."""
        async with self._lock:
            credited = await self._store.note_api_alive()
            self._last_ok = time.monotonic()
        if credited:
            log.warning(
                "no API process reached the store for %.1f s; running jobs keep their"
                " leases, so a holder that beats again in time keeps its job",
                credited,
            )

    async def ensure_fresh(self) -> None:
        if self._fresh():
            return
        async with self._lock:
            fresh = self._fresh()
        if not fresh:
            await self.tick()

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop`; a failed tick (store unreachable) is tried again next second."""
        while not stop.is_set():
            try:
                await self.tick()
            except Exception as exc:  # the store's outage is reported by the request path
                log.debug("could not reach the store: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_SECONDS)
