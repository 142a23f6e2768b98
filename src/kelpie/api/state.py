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
from kelpie.store.models import Principal
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
    # Set after a state change that may have queued a webhook, so delivery starts at once.
    webhooks_due: asyncio.Event = field(default_factory=asyncio.Event)
