"""Progress, stall timeouts, the machines seen and why a pending job waits, on every Store.
Time is moved by advancing the store's clock, never by waiting."""

from __future__ import annotations

import uuid
from typing import Any

from kelpie.store import Store
from kelpie.store.models import (
    RECENT_WORKER_SECONDS,
    WORKER_RETENTION_SECONDS,
    HeldOutcome,
    Job,
    NewJob,
    User,
    WorkerSighting,
)
from tests.support.clock import ManualClock

GROUP = "group-a"


async def new_user(store: Store, *, admin: bool = False) -> User:
    return await store.create_user(f"user-{uuid.uuid4().hex[:8]}", is_admin=admin)


async def submit(store: Store, user: User, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "container_group_id": GROUP,
        "max_failures": 3,
        "heartbeat_interval": 1,
        "webhook": None,
        "spec": {"command": "python"},
    }
    values.update(fields)
    [job] = await store.create_jobs(user.id, [NewJob(**values)])
    return job


async def claim(store: Store, machine: str, user: User | None = None) -> Job:
    job = await store.claim_job(machine, GROUP, None if user is None else user.id)
    assert job is not None
    return job


async def current(store: Store, job_id: str) -> Job:
    job = await store.get_job(job_id, None)
    assert job is not None
    return job


async def kinds(store: Store, job_id: str) -> list[str]:
    events = await store.list_job_events(job_id, None)
    assert events is not None
    return [event.kind for event in events]


def seen(user: User, machine: str, *, polled: bool = True, **fields: Any) -> WorkerSighting:
    values: dict[str, Any] = {
        "user_id": user.id,
        "any_user": False,
        "container_group_id": GROUP,
        "machine_id": machine,
        "polled": polled,
    }
    values.update(fields)
    return WorkerSighting(**values)


# -- the job's fields -------------------------------------------------------------------------


async def test_logs_prefix_and_stall_timeout_are_kept(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user, logs_prefix="s3://logs/run1/", stall_timeout=600)
    plain = await submit(store, user)

    for got in (job, await current(store, job.id)):
        assert (got.logs_prefix, got.stall_timeout) == ("s3://logs/run1/", 600)
        assert (got.progress, got.progress_updated_at) == (None, None)
    assert (plain.logs_prefix, plain.stall_timeout) == (None, None)


# -- progress ---------------------------------------------------------------------------------


async def test_a_changed_progress_is_recorded_and_a_repeated_one_changes_nothing(
    store: Store,
) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    held = await claim(store, "m1")
    first = {"step": 1, "total": 10, "message": "epoch 1"}

    assert await store.heartbeat(job.id, "m1", None, held.attempt_id, first) == "running"
    recorded = await current(store, job.id)
    assert recorded.progress == first
    assert recorded.progress_updated_at is not None

    # the same progress again (keys in another order): not a change
    again = {"message": "epoch 1", "total": 10, "step": 1}
    assert await store.heartbeat(job.id, "m1", None, held.attempt_id, again) == "running"
    assert await store.heartbeat(job.id, "m1", None, held.attempt_id) == "running"
    unchanged = await current(store, job.id)
    assert unchanged.progress == first
    assert unchanged.progress_updated_at == recorded.progress_updated_at
    assert unchanged.num_heartbeats == 3  # every beat counted, with or without progress
    assert (await kinds(store, job.id)).count("progress") == 1


async def test_progress_events_come_at_milestones_not_at_every_change(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    held = await claim(store, "m1")

    for step in range(101):
        progress = {"step": step, "total": 100, "message": "training"}
        await store.heartbeat(job.id, "m1", None, held.attempt_id, progress)
    await store.heartbeat(
        job.id, "m1", None, held.attempt_id, {"step": 100, "total": 100, "message": "saving"}
    )

    events = await store.list_job_events(job.id, None)
    assert events is not None
    progress_events = [event for event in events if event.kind == "progress"]
    # the first, each tenth (10 % ... 100 %), and the new message: not 102 events
    assert [e.data["step"] for e in progress_events if e.data] == [
        0,
        10,
        20,
        30,
        40,
        50,
        60,
        70,
        80,
        90,
        100,
        100,
    ]
    assert progress_events[-1].data == {"step": 100, "total": 100, "message": "saving"}
    assert all(e.attempt_id == held.attempt_id and e.machine_id == "m1" for e in progress_events)
    assert (await current(store, job.id)).progress == progress_events[-1].data


async def test_a_machine_that_does_not_hold_the_job_cannot_set_its_progress(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    held = await claim(store, "m1")

    assert await store.heartbeat(job.id, "m2", None, None, {"step": 5}) == "canceled"
    assert held.attempt_id is not None
    other_attempt = held.attempt_id + 1
    assert await store.heartbeat(job.id, "m1", None, other_attempt, {"step": 5}) == "canceled"

    assert (await current(store, job.id)).progress is None
    assert "progress" not in await kinds(store, job.id)


# -- stall_timeout ----------------------------------------------------------------------------


async def test_a_job_without_progress_for_its_stall_timeout_is_stopped_as_a_failure(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    job = await submit(store, user, stall_timeout=60)
    held = await claim(store, "m1")
    assert await store.end_stalled_jobs() == []  # a fresh attempt has its whole timeout
    clock.advance(59)
    assert await store.end_stalled_jobs() == []

    clock.advance(2)
    [stopped] = await store.end_stalled_jobs()

    assert stopped.id == job.id
    assert (stopped.status, stopped.num_failures) == ("pending", 1)
    assert stopped.last_error is not None and stopped.last_error.startswith("stalled")
    assert "60 s" in stopped.last_error
    assert await store.end_stalled_jobs() == []  # once
    # the holder's next beat is refused: it stops the command
    assert await store.heartbeat(job.id, "m1", None, held.attempt_id) == "pending"
    assert await store.complete_if_held(job.id, "m1", None, held.attempt_id) is (
        HeldOutcome.NOT_HOLDER
    )
    # as after any failure, that machine never receives the job again; another does
    assert await store.claim_job("m1", GROUP, None) is None
    assert (await claim(store, "m2")).id == job.id
    attempts = await store.list_attempts(job.id, None)
    assert attempts is not None
    assert [a.outcome for a in attempts] == ["failed", "running"]
    events = await store.list_job_events(job.id, None)
    assert events is not None
    [stalled] = [event for event in events if event.kind == "stalled"]
    assert (stalled.attempt_id, stalled.machine_id) == (held.attempt_id, "m1")
    assert stalled.data is not None and stalled.data["error"] == stopped.last_error
    assert stalled.data["exit_code"] is None


async def test_a_stalled_job_at_max_failures_fails(store: Store, clock: ManualClock) -> None:
    user = await new_user(store)
    job = await submit(store, user, stall_timeout=60, max_failures=1, webhook="https://x.test/h")
    await claim(store, "m1")
    clock.advance(61)

    [stopped] = await store.end_stalled_jobs()

    assert stopped.status == "failed"
    assert (await current(store, job.id)).failed is not None
    assert await store.pending_webhook_count() == 2  # running, then failed


async def test_progress_pushes_the_stall_deadline_back(store: Store, clock: ManualClock) -> None:
    user = await new_user(store)
    job = await submit(store, user, stall_timeout=60)
    held = await claim(store, "m1")
    clock.advance(59)
    await store.heartbeat(job.id, "m1", None, held.attempt_id, {"step": 1})

    clock.advance(59)  # 118 s after the claim, 59 s after the progress
    assert await store.end_stalled_jobs() == []
    clock.advance(2)
    # the same progress again is no progress: the deadline stays where it was
    await store.heartbeat(job.id, "m1", None, held.attempt_id, {"step": 1})
    assert [j.id for j in await store.end_stalled_jobs()] == [job.id]


async def test_a_job_without_stall_timeout_never_stalls(store: Store, clock: ManualClock) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    held = await claim(store, "m1")
    clock.advance(3600)
    await store.heartbeat(job.id, "m1", None, held.attempt_id, {"step": 1})
    clock.advance(3600)

    assert await store.end_stalled_jobs() == []
    assert (await current(store, job.id)).status == "running"


async def test_a_new_attempt_gets_a_whole_stall_timeout(store: Store, clock: ManualClock) -> None:
    user = await new_user(store)
    job = await submit(store, user, stall_timeout=60)
    held = await claim(store, "m1")
    clock.advance(61)
    # handed back before upkeep looked: the next claim starts the clock again
    assert await store.interrupt_if_held(job.id, "m1", None, held.attempt_id) is HeldOutcome.DONE

    await claim(store, "m2")

    assert await store.end_stalled_jobs() == []


# -- the machines seen ------------------------------------------------------------------------


async def test_machines_seen_are_listed_per_user_with_their_job_and_blocks(store: Store) -> None:
    alice, bob = await new_user(store), await new_user(store)
    failed = await submit(store, alice)
    held = await claim(store, "m1")
    await store.fail_if_held(failed.id, "m1", None, 1, "boom", held.attempt_id)
    running = await submit(store, alice)
    assert (await claim(store, "m2")).id in {failed.id, running.id}
    await store.note_workers_seen(
        [
            seen(alice, "m1", version="0.1.0"),
            seen(alice, "m2", polled=False),
            seen(bob, "m3", container_group_id="group-b"),
        ]
    )
    # a later sighting without a version keeps the one known
    await store.note_workers_seen([seen(alice, "m1")])

    listed = await store.list_workers(alice.id, None, 3600)

    assert [(w.machine_id, w.container_group_id) for w in listed] == [
        ("m1", GROUP),
        ("m2", GROUP),
    ]
    m1, m2 = listed
    assert (m1.version, m1.blocked_jobs, m1.current_job_id) == ("0.1.0", 1, None)
    assert m1.last_poll is not None and m1.last_seen >= m1.first_seen
    assert (m2.version, m2.blocked_jobs, m2.last_poll) == (None, 0, None)
    assert m2.current_job_id is not None
    assert [w.machine_id for w in await store.list_workers(bob.id, None, 3600)] == ["m3"]
    assert [w.machine_id for w in await store.list_workers(None, "group-b", 3600)] == ["m3"]
    assert len(await store.list_workers(None, None, 3600)) >= 3


async def test_machines_not_seen_within_the_window_are_not_listed(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    await store.note_workers_seen([seen(user, "old")])
    clock.advance(7200)
    await store.note_workers_seen([seen(user, "new")])

    assert [w.machine_id for w in await store.list_workers(user.id, None, 3600)] == ["new"]


async def test_machines_not_heard_from_for_the_retention_period_are_forgotten(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    await store.note_workers_seen([seen(user, "gone"), seen(user, "back")])
    clock.advance(WORKER_RETENTION_SECONDS - 60)
    await store.note_workers_seen([seen(user, "back")])
    assert await store.purge_workers() == 0  # "gone" was heard from 30 days less a minute ago

    clock.advance(120)

    assert await store.purge_workers() == 1
    everything = 2 * WORKER_RETENTION_SECONDS
    assert [w.machine_id for w in await store.list_workers(user.id, None, everything)] == ["back"]


# -- why a pending job waits ------------------------------------------------------------------


async def test_with_no_machine_seen_a_pending_job_waits_for_workers(
    store: Store, clock: ManualClock
) -> None:
    user, other = await new_user(store), await new_user(store)
    job = await submit(store, user)
    reason = await store.pending_reason(job)
    assert reason is not None and reason.code == "no_workers"

    # another user's machine cannot take it; one seen too long ago does not count
    await store.note_workers_seen([seen(user, "gone")])
    clock.advance(RECENT_WORKER_SECONDS + 5)
    await store.note_workers_seen([seen(other, "theirs")])
    reason = await store.pending_reason(job)
    assert reason is not None and (reason.code, reason.machines) == ("no_workers", 0)

    # an admin's machine may take anyone's job
    admin = await new_user(store, admin=True)
    await store.note_workers_seen([seen(admin, "shared", any_user=True)])
    reason = await store.pending_reason(job)
    assert reason is not None and (reason.code, reason.machines) == ("queued", 1)


async def test_a_pending_job_blocked_from_every_recent_machine_says_so(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    held = await claim(store, "m1")
    await store.fail_if_held(job.id, "m1", None, 1, "boom", held.attempt_id)
    await store.note_workers_seen([seen(user, "m1")])

    pending = await current(store, job.id)
    reason = await store.pending_reason(pending)
    assert reason is not None and (reason.code, reason.machines, reason.blocked) == (
        "blocked",
        1,
        1,
    )

    await store.note_workers_seen([seen(user, "m2")])
    reason = await store.pending_reason(pending)
    assert reason is not None and (reason.code, reason.machines, reason.blocked) == (
        "queued",
        2,
        1,
    )


async def test_a_queued_job_counts_the_jobs_ahead_of_it_in_claim_order(store: Store) -> None:
    user, other = await new_user(store), await new_user(store)
    first = await submit(store, user)
    second = await submit(store, user)
    urgent = await submit(store, user, priority=5)
    await submit(store, other)  # another user's jobs are not counted
    last = await submit(store, user)
    busy = await claim(store, "m1", user)  # takes the urgent one
    assert busy.id == urgent.id
    await store.note_workers_seen([seen(user, "m1")])

    ahead = {}
    for job in (first, second, last):
        reason = await store.pending_reason(job)
        assert reason is not None and reason.code == "queued"
        ahead[job.id] = reason.jobs_ahead
        assert (reason.machines, reason.busy) == (1, 1)
    assert ahead == {first.id: 0, second.id: 1, last.id: 2}
    assert await store.pending_reason(await current(store, urgent.id)) is None  # running
