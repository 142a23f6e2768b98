"""The long-poll bookkeeping: wake-ups per container group, and nothing kept once nobody
waits, however many group ids were polled."""

from __future__ import annotations

import asyncio
import tracemalloc
import uuid

from kelpie.api.notifier import WorkNotifier


async def test_polling_many_groups_leaves_nothing_behind() -> None:
    notifier = WorkNotifier()
    await notifier.wait("warm-up", 0)  # first-use allocations of asyncio itself
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(5_000):
            assert await notifier.wait(f"group-{uuid.uuid4()}", 0) is False
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert notifier.waiting_groups() == 0
    assert after - before < 256 * 1024  # 5,000 groups kept would take over a megabyte


async def test_waiters_of_a_group_are_woken_together_then_forgotten() -> None:
    notifier = WorkNotifier()
    waiters = [asyncio.create_task(notifier.wait("g", 30)) for _ in range(3)]
    other = asyncio.create_task(notifier.wait("h", 30))
    await asyncio.sleep(0)  # each task runs to its wait
    assert notifier.waiting_groups() == 2

    notifier.notify("g")

    assert await asyncio.gather(*waiters) == [True, True, True]
    assert notifier.waiting_groups() == 1  # "h" still waits
    other.cancel()
    await asyncio.gather(other, return_exceptions=True)
    assert notifier.waiting_groups() == 0


async def test_a_waiter_after_a_notification_waits_for_the_next_one() -> None:
    notifier = WorkNotifier()
    first = asyncio.create_task(notifier.wait("g", 30))
    await asyncio.sleep(0)  # the task runs to its wait
    assert notifier.waiting_groups() == 1
    notifier.notify("g")
    late = asyncio.create_task(notifier.wait("g", 30))  # arrives before `first` resumes

    assert await first is True
    assert not late.done() and notifier.waiting_groups() == 1
    notifier.notify("g")
    assert await late is True
    assert notifier.waiting_groups() == 0


async def test_a_timed_out_waiter_leaves_the_others_registered() -> None:
    notifier = WorkNotifier()
    patient = asyncio.create_task(notifier.wait("g", 30))
    assert await notifier.wait("g", 0.01) is False

    assert notifier.waiting_groups() == 1
    notifier.notify("g")
    assert await patient is True
