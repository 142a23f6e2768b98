"""A store's time under a test's control: `clock.advance(60)` and a lease has run out, without
waiting for it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

# How far each reading moves the clock: as a real clock, it never reads the same twice, so
# rows written one after the other keep distinct, ordered times (keys listed oldest first).
TICK = timedelta(microseconds=1)


class ManualClock:
    """A clock (kelpie.store.clock.Clock) that the test moves: `advance(seconds)`. Between
    moves it stands all but still, a microsecond per reading (TICK).

    It starts at the wall clock's time, so that rows a test writes itself with real times sit
    where they would with the store's. The store may read it from its writer thread: readings
    and moves are locked.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = datetime.now(UTC) if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += TICK
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Moves the time forward by `seconds`; answers the new time."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now

    def timestamp(self) -> float:
        """The time in unix seconds (as SQLite stores it)."""
        return self().timestamp()
