"""A receiver's concurrency cap and pause (circuit breaker), on a clock the test moves."""

from __future__ import annotations

import pytest

from kelpie.webhooks.fairness import Outcome, ReceiverGate

SLOW = "https://slow.example.com"
OTHER = "https://other.example.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gate(clock: Clock) -> ReceiverGate:
    return ReceiverGate(
        concurrency=3, failures_to_pause=2, first_pause=5.0, max_pause=20.0, clock=clock
    )


def fail(gate: ReceiverGate, receiver: str, times: int) -> list[float | None]:
    pauses = []
    for _ in range(times):
        assert gate.start(receiver)
        pauses.append(gate.finish(receiver, Outcome.NO_ANSWER))
    return pauses


def test_a_receiver_has_at_most_its_concurrency_in_flight_others_unaffected(
    gate: ReceiverGate,
) -> None:
    assert [gate.start(SLOW) for _ in range(4)] == [True, True, True, False]

    assert gate.allowance(SLOW) == 0
    assert gate.allowance(OTHER) == 3 and gate.start(OTHER)
    gate.finish(SLOW, Outcome.DELIVERED)
    assert gate.allowance(SLOW) == 1


def test_consecutive_attempts_without_answer_pause_the_receiver(
    gate: ReceiverGate, clock: Clock
) -> None:
    assert fail(gate, SLOW, 2) == [None, 5.0]

    assert gate.window(SLOW) == 0 and gate.allowance(SLOW) == 0 and not gate.start(SLOW)
    assert gate.pause_left(SLOW) == 5.0
    assert gate.window(OTHER) == 6 and gate.start(OTHER)


def test_an_answer_even_an_error_resets_the_count(gate: ReceiverGate) -> None:
    assert fail(gate, SLOW, 1) == [None]
    assert gate.start(SLOW)
    gate.finish(SLOW, Outcome.ANSWERED)  # HTTP 500: up, if unhappy

    assert fail(gate, SLOW, 1) == [None]
    assert gate.allowance(SLOW) == 3


def test_after_the_pause_one_probe_goes_out_and_its_failure_doubles_the_pause(
    gate: ReceiverGate, clock: Clock
) -> None:
    fail(gate, SLOW, 2)
    clock.now += 5.0

    assert gate.window(SLOW) == 1 and gate.allowance(SLOW) == 1
    assert gate.start(SLOW) and not gate.start(SLOW)  # only the probe
    assert gate.finish(SLOW, Outcome.NO_ANSWER) == 10.0
    clock.now += 10.0
    assert fail(gate, SLOW, 1) == [20.0]
    clock.now += 20.0
    assert fail(gate, SLOW, 1) == [20.0]  # capped


def test_a_probe_that_is_answered_resumes_normal_delivery(gate: ReceiverGate, clock: Clock) -> None:
    fail(gate, SLOW, 2)
    clock.now += 5.0
    assert gate.start(SLOW)
    assert gate.finish(SLOW, Outcome.DELIVERED) is None

    assert gate.window(SLOW) == 6 and gate.allowance(SLOW) == 3
    assert fail(gate, SLOW, 1) == [None]  # counting from zero again


def test_attempts_ending_during_a_pause_do_not_extend_it(gate: ReceiverGate, clock: Clock) -> None:
    assert gate.start(SLOW) and gate.start(SLOW) and gate.start(SLOW)  # one wave
    assert gate.finish(SLOW, Outcome.NO_ANSWER) is None
    assert gate.finish(SLOW, Outcome.NO_ANSWER) == 5.0
    assert gate.finish(SLOW, Outcome.NO_ANSWER) is None

    assert gate.pause_left(SLOW) == 5.0


def test_receivers_without_history_are_not_tracked(gate: ReceiverGate) -> None:
    assert gate.start(OTHER)
    gate.finish(OTHER, Outcome.DELIVERED)

    assert gate.known() == []
