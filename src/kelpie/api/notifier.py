"""Wakes long-polling `/work` calls when jobs arrive for their container group."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class _Waiters:
    """The calls waiting on one group, woken together by one event."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


class WorkNotifier:
    """Per-group wake-ups within one API process.

    Submissions in this process call `notify` directly; the store's cross-process channel
    (PostgreSQL LISTEN/NOTIFY, a watch on the SQLite file) calls it for submissions
    elsewhere. Waiters also re-check on a timer, which covers stalled leases.

    A group is tracked only while some call waits on it: the last waiter to leave (woken,
    timed out or cancelled) removes it, so any number of group ids polled over time costs
    nothing once their polls are over."""

    def __init__(self) -> None:
        self._groups: dict[str, _Waiters] = {}

    def notify(self, container_group_id: str) -> None:
        waiters = self._groups.pop(container_group_id, None)
        if waiters is not None:
            waiters.event.set()

    async def wait(self, container_group_id: str, seconds: float) -> bool:
        """True if woken by a notification, False on timeout."""
        waiters = self._groups.get(container_group_id)
        if waiters is None:
            waiters = self._groups[container_group_id] = _Waiters()
        waiters.count += 1
        try:
            async with asyncio.timeout(seconds):
                await waiters.event.wait()
        except TimeoutError:
            return False
        finally:
            waiters.count -= 1
            # Notified groups are gone already; a later waiter may have registered anew.
            if waiters.count == 0 and self._groups.get(container_group_id) is waiters:
                del self._groups[container_group_id]
        return True

    def waiting_groups(self) -> int:
        """How many groups have calls waiting on them now."""
        return len(self._groups)
