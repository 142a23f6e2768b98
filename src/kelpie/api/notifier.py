"""Wakes long-polling `/work` calls when jobs arrive for their container group."""

from __future__ import annotations

import asyncio
from collections import defaultdict


class WorkNotifier:
    """Per-group wake-ups within one API process.

    Submissions in this process call `notify` directly; the store's cross-process channel
    (PostgreSQL LISTEN/NOTIFY, a watch on the SQLite file) calls it for submissions
    elsewhere. Waiters also re-check on a timer, which covers stalled leases."""

    def __init__(self) -> None:
        self._events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def notify(self, container_group_id: str) -> None:
        event = self._events.pop(container_group_id, None)
        if event is not None:
            event.set()

    async def wait(self, container_group_id: str, seconds: float) -> bool:
        """True if woken by a notification, False on timeout."""
        event = self._events[container_group_id]
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        return True
