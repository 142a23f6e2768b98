"""The operator views of every Store: /metrics figures, group counts, blocked machines and a
group's activity over time, each checked against what the test did to the store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from kelpie.store import Store
from kelpie.store.models import CancelOutcome, HeldOutcome, Job, NewJob, User
from tests.support.clock import ManualClock

SPEC: dict[str, Any] = {"command": "python", "arguments": ["train.py"]}


async def new_user(store: Store) -> User:
    return await store.create_user(f"user-{uuid.uuid4().hex[:8]}")


async def submit(store: Store, user: User, group: str, count: int = 1, **fields: Any) -> list[Job]:
    values: dict[str, Any] = {
        "container_group_id": group,
        "max_failures": 1,
        "heartbeat_interval": 1,
        "webhook": None,
        "spec": SPEC,
        **fields,
    }
    return await store.create_jobs(user.id, [NewJob(**values) for _ in range(count)])


async def claim(store: Store, machine: str, group: str) -> Job:
    job = await store.claim_job(machine, group, None)
    assert job is not None
    return job


async def test_metrics_snapshot_counts_jobs_attempts_blocks_and_webhook_backlog(
    store: Store, clock: ManualClock
) -> None:
    alice, bob = await new_user(store), await new_user(store)
    await submit(store, alice, "g1", 4)
    await submit(store, bob, "g1", 1)
    await submit(store, bob, "g2", 3)

    done = await claim(store, "m1", "g1")
    assert await store.complete_if_held(done.id, "m1", None) is HeldOutcome.DONE
    failed = await claim(store, "m2", "g1")  # max_failures 1: the job fails for good
    assert (await store.fail_if_held(failed.id, "m2", None, 3, "boom")).outcome is HeldOutcome.DONE
    handed_back = await claim(store, "m3", "g1")
    assert await store.interrupt_if_held(handed_back.id, "m3", None) is HeldOutcome.DONE
    canceled = await claim(store, "m4", "g2")
    assert await store.cancel_job(canceled.id, None) is CancelOutcome.CANCELED
    stalled = await claim(store, "m5", "g2")
    clock.advance(60)  # its holder fell silent a minute ago
    taken_over = await claim(store, "m6", "g2")
    assert taken_over.id == stalled.id

    metrics = await store.metrics_snapshot()

    assert metrics.jobs == {
        ("g1", "pending"): 3,  # two never claimed, one handed back
        ("g1", "completed"): 1,
        ("g1", "failed"): 1,
        ("g2", "canceled"): 1,
        ("g2", "running"): 1,
        ("g2", "pending"): 1,
    }
    assert metrics.attempts == {
        "completed": 1,
        "failed": 1,
        "interrupted": 1,
        "canceled": 1,
        "lost": 1,
        "running": 1,
    }
    assert metrics.blocked_machines == 1  # m2 failed a job
    assert metrics.reallocations == 0
    assert (metrics.webhook_backlog, metrics.oldest_webhook) == (0, None)


async def test_metrics_snapshot_reports_reallocated_machines_and_oldest_webhook(
    store: Store,
) -> None:
    user = await new_user(store)
    before = datetime.now(UTC)
    await submit(store, user, "g1", 2, webhook="https://example.com/hook")
    first = await claim(store, "m1", "g1")
    await store.fail_if_held(first.id, "m1", None, 1, None)
    second = await claim(store, "m1", "g1")
    await store.fail_if_held(second.id, "m1", None, 1, None)
    assert await store.claim_reallocation(user.id, "m1", threshold=2) is not None

    metrics = await store.metrics_snapshot()

    assert metrics.reallocations == 1
    assert metrics.blocked_machines == 1
    # each job: `running` on its claim, then `failed`
    assert metrics.webhook_backlog == 4
    assert metrics.oldest_webhook is not None
    assert before - timedelta(seconds=1) <= metrics.oldest_webhook <= datetime.now(UTC)


async def test_group_counts_show_a_user_only_their_own_jobs(store: Store) -> None:
    alice, bob = await new_user(store), await new_user(store)
    await submit(store, alice, "shared", 2)
    await submit(store, alice, "alices", 1)
    await submit(store, bob, "shared", 3)
    job = await claim(store, "m1", "shared")
    await store.complete_if_held(job.id, "m1", None)
    owner_of_claimed = alice if job.user_id == alice.id else bob

    for_alice = {g.container_group_id: dict(g.jobs) for g in await store.group_counts(alice.id)}
    everyone = {g.container_group_id: dict(g.jobs) for g in await store.group_counts(None)}
    only_shared = await store.group_counts(bob.id, "shared")

    alice_done = 1 if owner_of_claimed is alice else 0
    assert list(for_alice) == ["alices", "shared"]
    assert for_alice["shared"]["pending"] == 2 - alice_done
    assert for_alice["shared"]["completed"] == alice_done
    assert for_alice["alices"] == {
        "pending": 1,
        "running": 0,
        "completed": 0,
        "canceled": 0,
        "failed": 0,
    }
    assert everyone["shared"]["pending"] == 4 and everyone["shared"]["completed"] == 1
    assert [g.container_group_id for g in only_shared] == ["shared"]
    assert sum(only_shared[0].jobs.values()) == 3
    assert await store.group_counts(bob.id, "alices") == []


async def test_blocked_machines_of_a_group_newest_first_with_reallocation(store: Store) -> None:
    alice, bob = await new_user(store), await new_user(store)
    await submit(store, alice, "g1", 3)
    await submit(store, bob, "g2", 1)
    for machine in ("m1", "m1", "m2"):
        job = await claim(store, machine, "g1")
        await store.fail_if_held(job.id, machine, None, 1, None)
    other = await claim(store, "m3", "g2")
    await store.fail_if_held(other.id, "m3", None, 1, None)
    assert await store.claim_reallocation(alice.id, "m1", threshold=2) is not None

    blocked = await store.blocked_machines(alice.id, "g1")

    assert [(b.machine_id, b.jobs, b.reallocated) for b in blocked] == [
        ("m2", 1, False),
        ("m1", 2, True),
    ]
    assert blocked[0].last_blocked >= blocked[1].last_blocked
    assert await store.blocked_machines(bob.id, "g1") == []
    assert [b.machine_id for b in await store.blocked_machines(None, "g2")] == ["m3"]


async def test_group_activity_tracks_queue_depth_running_jobs_and_interruptions(
    store: Store,
) -> None:
    user = await new_user(store)
    since = datetime.now(UTC) - timedelta(seconds=60)
    await submit(store, user, "g1", 5)
    running = await claim(store, "m1", "g1")
    back = await claim(store, "m2", "g1")
    await store.interrupt_if_held(back.id, "m2", None)
    done = await claim(store, "m3", "g1")
    await store.complete_if_held(done.id, "m3", None)
    await submit(store, user, "other", 2)

    # twelve buckets of 10 s: the window ends a minute from now, so the last buckets are
    # the present (nothing changes in them)
    series = await store.group_activity(user.id, "g1", since, 10.0, 12)

    assert len(series) == 12
    assert series[0].start == since and series[1].start == since + timedelta(seconds=10)
    assert (series[0].pending, series[0].running) == (0, 0)
    now = series[-1]
    assert (now.pending, now.running) == (3, 1), "5 jobs: 1 running, 1 completed, 3 pending"
    ended = [bucket.ended for bucket in series if bucket.ended]
    assert len(ended) == 1, "everything happened within one 10 s bucket"
    assert dict(ended[0]) == {"interrupted": 1, "completed": 1}
    assert running.id != back.id
    empty = await store.group_activity(user.id, "nothing", since, 10.0, 3)
    assert [(b.pending, b.running, dict(b.ended)) for b in empty] == [(0, 0, {})] * 3


async def test_group_activity_counts_what_was_alive_before_the_window(store: Store) -> None:
    user = await new_user(store)
    await submit(store, user, "g1", 3)
    job = await claim(store, "m1", "g1")
    since = datetime.now(UTC) + timedelta(milliseconds=5)

    series = await store.group_activity(user.id, "g1", since, 60.0, 2)

    assert [(b.pending, b.running) for b in series] == [(2, 1), (2, 1)]
    assert all(not b.ended for b in series)
    assert await store.group_activity(None, "g1", since, 60.0, 1) == series[:1]
    assert job.status == "running"
