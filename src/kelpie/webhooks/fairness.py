"""Keeps one webhook receiver from delaying the others' deliveries.

A receiver is `scheme://host:port` as written in the webhook URL (`WebhookEvent.receiver`).
Each API process starts at most `concurrency` attempts to one receiver at once, so a receiver
that is slow or never answers holds a few of the process's slots, never all of them. And a
receiver that stopped answering (`failures_to_pause` attempts in a row without an answer:
refused, reset, unresolvable or timed out) is paused like a circuit breaker: its events wait,
unattempted and holding no slot, for a pause that doubles each time it fails again
(`first_pause` up to `max_pause`); when the pause ends, a single attempt probes it, and any
answer, even an error, resumes normal delivery.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

RECEIVER_CONCURRENCY = 8
FAILURES_TO_PAUSE = 5
FIRST_PAUSE_SECONDS = 5.0
MAX_PAUSE_SECONDS = 300.0
# Beyond this many receivers with a history, the idle ones are forgotten.
MAX_TRACKED_RECEIVERS = 10_000


class Outcome(enum.Enum):
    """What one delivery attempt says about its receiver."""

    DELIVERED = "delivered"  # answered 2xx
    ANSWERED = "answered"  # answered something else: up, if unhappy
    NO_ANSWER = "no answer"  # refused, reset, unresolvable or timed out
    NOT_SENT = "not sent"  # nothing was sent (refused target, unknown user, shutting down)


@dataclass
class _Receiver:
    in_flight: int = 0
    failures: int = 0  # attempts in a row without an answer
    pauses: int = 0  # pauses since the last answer
    paused_until: float = 0.0

    def idle(self) -> bool:
        return self.in_flight == 0 and self.failures == 0 and self.pauses == 0


class ReceiverGate:
    """Per-receiver concurrency caps and pauses of one API process."""

    def __init__(
        self,
        *,
        concurrency: int = RECEIVER_CONCURRENCY,
        failures_to_pause: int = FAILURES_TO_PAUSE,
        first_pause: float = FIRST_PAUSE_SECONDS,
        max_pause: float = MAX_PAUSE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.concurrency = concurrency
        self._failures_to_pause = failures_to_pause
        self._first_pause = first_pause
        self._max_pause = max_pause
        self._clock = clock
        self._receivers: dict[str, _Receiver] = {}

    def allowance(self, receiver: str) -> int:
        """How many more attempts to this receiver may start now."""
        state = self._receivers.get(receiver)
        if state is None:
            return self.concurrency
        if state.paused_until > self._clock():
            return 0
        if state.pauses:
            return 0 if state.in_flight else 1  # its pause is over: one attempt probes it
        return max(0, self.concurrency - state.in_flight)

    def window(self, receiver: str) -> int:
        """How many of the receiver's events this process may hold at once, attempted or
        waiting for a slot: twice `concurrency`, so the next ones are at hand when an attempt
        ends; one when its pause is over (the probe), none while paused."""
        state = self._receivers.get(receiver)
        if state is None or not state.pauses:
            return 2 * self.concurrency
        return 0 if state.paused_until > self._clock() else 1

    def in_flight(self, receiver: str) -> int:
        state = self._receivers.get(receiver)
        return 0 if state is None else state.in_flight

    def known(self) -> list[str]:
        """The receivers with attempts in flight or a recent failure."""
        return list(self._receivers)

    def pause_left(self, receiver: str) -> float:
        state = self._receivers.get(receiver)
        return 0.0 if state is None else max(0.0, state.paused_until - self._clock())

    def start(self, receiver: str) -> bool:
        """Takes one of the receiver's slots; False (nothing taken) if it has none free."""
        if self.allowance(receiver) <= 0:
            return False
        self._receivers.setdefault(receiver, _Receiver()).in_flight += 1
        return True

    def finish(self, receiver: str, outcome: Outcome) -> float | None:
        """Frees the slot `start` took and learns from the attempt; returns the pause, in
        seconds, when this attempt is the one that paused the receiver."""
        state = self._receivers.setdefault(receiver, _Receiver())
        state.in_flight = max(0, state.in_flight - 1)
        pause = None
        if outcome in (Outcome.DELIVERED, Outcome.ANSWERED):
            state.failures = state.pauses = 0
            state.paused_until = 0.0
        elif outcome is Outcome.NO_ANSWER:
            state.failures += 1
            now = self._clock()
            probe_failed = state.pauses > 0
            if state.paused_until <= now and (
                probe_failed or state.failures >= self._failures_to_pause
            ):
                pause = min(self._max_pause, self._first_pause * 2**state.pauses)
                state.pauses += 1
                state.paused_until = now + pause
        if state.idle():
            del self._receivers[receiver]
        elif len(self._receivers) > MAX_TRACKED_RECEIVERS:
            self._forget_idle()
        return pause

    def _forget_idle(self) -> None:
        now = self._clock()
        for receiver, state in list(self._receivers.items()):
            if state.in_flight == 0 and state.paused_until + self._max_pause < now:
                del self._receivers[receiver]
