"""One backoff for every retry loop in kelpie: exponential, capped, with full jitter.

After failure n (1, 2, 3, …) wait a uniform draw from [floor, min(cap, base * 2**(n-1))]:
the ceiling doubles from `base` to `cap`, and the jitter spreads many clients that failed
together (an outage ending) over the whole window instead of sending them back in step.
Stdlib only: the CLI imports it while starting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float
    """The ceiling after the first failure, in seconds."""
    cap: float
    """The ceiling never grows past this."""
    floor: float = 0.0
    """Never less than this (a loop that must not spin)."""

    def ceiling(self, failures: int) -> float:
        doublings = min(max(failures, 1) - 1, 62)
        return min(self.cap, self.base * float(2**doublings))

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row (≥ 1)."""
        ceiling = self.ceiling(failures)
        return random.uniform(min(self.floor, ceiling), ceiling)
