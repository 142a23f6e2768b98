"""Whether this API process can use its store, and what it does when it cannot.

While the store is unreachable (not yet reached at start-up, or lost since), requests that
need it answer 503 `{"error", "message"}` with `Retry-After`, and `/health` answers 503 too.
An outage is logged twice, when it starts and when it ends, never once per request: the
first failure starts a probe that pings the store every `PROBE_INTERVAL_S` and declares the
outage over when a ping succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import time

from kelpie.store.protocol import Store, StoreUnavailable

log = logging.getLogger("kelpie.api.store")

PROBE_INTERVAL_S = 1.0
# What a 503 tells clients to wait before trying again.
RETRY_AFTER_S = 2
UNAVAILABLE_MESSAGE = "the database is unreachable; try again shortly"
STARTING_MESSAGE = "kelpie is starting and waiting for its database; try again shortly"


class StoreAvailability:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._ready = False
        self._outage_since: float | None = None
        self._probe: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """The store was reached and set up (migrated, admin key in place) at start-up."""
        return self._ready

    @property
    def available(self) -> bool:
        return self._ready and self._outage_since is None

    def mark_ready(self) -> None:
        self._ready = True

    def failed(self, error: StoreUnavailable) -> None:
        """A call found the store unreachable: logs the outage if it is a new one."""
        if not self._ready or self._outage_since is not None:
            return
        self._outage_since = time.monotonic()
        log.warning("store unreachable, answering 503 until it is back: %s", error)
        self._probe = asyncio.get_running_loop().create_task(
            self._probe_until_back(), name="store-probe"
        )

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            try:
                await self._store.ping()
            except StoreUnavailable:
                continue
            except Exception:
                log.exception("probing the store failed")
                continue
            break
        assert self._outage_since is not None
        log.warning("store reachable again after %.1f s", time.monotonic() - self._outage_since)
        self._outage_since = None
        self._probe = None

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
