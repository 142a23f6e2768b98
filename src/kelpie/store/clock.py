"""The time a store reads when it records or compares times (leases, heartbeats, when a
row was created or ended, how long ago a machine was seen, when a key or an event expires).

A store given no clock keeps production time: SQLite's is this process's wall clock, read
inside the write transaction; PostgreSQL's is the database clock, `now()`, the one clock
every API process shares. A store given a clock reads it instead, so that tests move time
forward (a lease expiring, a job stalling) instead of waiting for it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

Clock = Callable[[], datetime]
"""The current time, timezone-aware."""
