"""What one API process holds while it runs."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from kelpie.api.availability import StoreAvailability
from kelpie.api.liveness import Liveness
from kelpie.api.notifier import WorkNotifier
from kelpie.config import ServerSettings
from kelpie.fleet.base import FleetProvider
from kelpie.fleet.reallocation import Reallocator
from kelpie.store.models import Principal, WorkerSighting
from kelpie.store.protocol import Store

# How long a resolved API key is trusted without asking the store again. Keeps every
# request to one store round-trip; a revoked key stops working within this many seconds
# (at once in the process that revoked it).
KEY_CACHE_SECONDS = 5.0


@dataclass
class KeyCache:
    ttl: float = KEY_CACHE_SECONDS
    _entries: dict[str, tuple[float, Principal]] = field(default_factory=dict)

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key_hash: str, principal: Principal) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self.ttl, principal)

    def clear(self) -> None:
        self._entries.clear()


# How often one API process records that a machine is still polling or beating.
SIGHTING_REFRESH_SECONDS = 10.0


@dataclass
class WorkerSightings:
    """Which machines this process recorded as seen, and when: a machine polling or beating
    is written to the store at most every SIGHTING_REFRESH_SECONDS (or when it sends another
    version), not at every call."""

    refresh: float = SIGHTING_REFRESH_SECONDS
    _noted: dict[tuple[str, str, str, bool], tuple[float, str | None]] = field(default_factory=dict)

    def due(self, sighting: WorkerSighting) -> bool:
        """Whether to record the sighting now (and, if so, counts it as recorded)."""
        key = (sighting.user_id, sighting.container_group_id, sighting.machine_id, sighting.polled)
        now = time.monotonic()
        last = self._noted.get(key)
        if last is not None and now - last[0] < self.refresh and last[1] == sighting.version:
            return False
        if len(self._noted) > 100_000:
            self._noted.clear()
        self._noted[key] = (now, sighting.version)
        return True


@dataclass
class AppState:
    settings: ServerSettings
    store: Store
    fleet: FleetProvider
    availability: StoreAvailability
    reallocator: Reallocator
    liveness: Liveness
    notifier: WorkNotifier = field(default_factory=WorkNotifier)
    keys: KeyCache = field(default_factory=KeyCache)
    sightings: WorkerSightings = field(default_factory=WorkerSightings)
    # Set after a state change that may have queued a webhook, so delivery starts at once.
    webhooks_due: asyncio.Event = field(default_factory=asyncio.Event)
