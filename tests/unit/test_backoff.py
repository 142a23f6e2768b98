"""The one backoff every retry loop uses: doubling to a cap, with full jitter."""

from __future__ import annotations

from kelpie.backoff import Backoff


def test_the_ceiling_doubles_from_the_base_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    assert [backoff.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.ceiling(10_000) == 4.0  # no overflow after a very long outage


def test_delays_spread_over_the_whole_window() -> None:
    backoff = Backoff(base=1.0, cap=8.0, floor=0.5)
    delays = [backoff.delay(4) for _ in range(2000)]
    assert all(0.5 <= delay <= 8.0 for delay in delays)
    # jittered: spread between the floor and the ceiling, not in step
    assert min(delays) < 1.5 and max(delays) > 7.0
    assert len({round(delay, 3) for delay in delays}) > 1000
