"""Attempt tokens, checkpoint generations, job events and outage credit, on every Store.

Time is moved by the store's clock (a stalled lease, an outage of the API) instead of waiting
for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

import kelpie.store.postgres
from kelpie.store import PostgresStore, Store
from kelpie.store._common import MAX_WORKER_EVENTS_PER_ATTEMPT
from kelpie.store.models import CommitOutcome, HeldOutcome, Job, ManifestEntry, NewJob, User
from tests.support.clock import ManualClock

GROUP = "group-a"
SPEC: dict[str, Any] = {"command": "python", "arguments": ["train.py"]}


async def new_user(store: Store) -> User:
    return await store.create_user(f"user-{uuid.uuid4().hex[:8]}")


async def submit(store: Store, user: User, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "container_group_id": GROUP,
        "max_failures": 3,
        "heartbeat_interval": 1,
        "webhook": None,
        "spec": SPEC,
    }
    values.update(fields)
    [job] = await store.create_jobs(user.id, [NewJob(**values)])
    return job


async def claim(store: Store, machine: str) -> Job:
    job = await store.claim_job(machine, GROUP, None)
    assert job is not None
    return job


def files(*entries: tuple[str, str, int]) -> list[ManifestEntry]:
    return [ManifestEntry(0, path, key, size, "ab" * 32) for path, key, size in entries]


# -- attempt tokens ---------------------------------------------------------------------------


async def test_claim_hands_out_the_attempt_id_listed_in_attempts(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user)

    claimed = await claim(store, "m1")

    attempts = await store.list_attempts(job.id, None)
    assert attempts is not None and [a.id for a in attempts] == [claimed.attempt_id]
    assert claimed.attempt_id is not None
    assert (await store.get_job(job.id, None) or job).attempt_id == claimed.attempt_id


async def test_two_workers_on_one_machine_are_fenced_apart_by_attempt(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    first = await claim(store, "node-1")
    clock.advance(60)  # the holder fell silent a minute ago
    second = await claim(store, "node-1")  # the other worker of the same node takes it over
    assert second.attempt_id != first.attempt_id

    # The stale worker is refused everything, though its machine id is the holder's.
    assert await store.heartbeat(job.id, "node-1", None, first.attempt_id) == "canceled"
    stale = (job.id, "node-1", None)
    assert await store.complete_if_held(*stale, first.attempt_id) is HeldOutcome.NOT_HOLDER
    assert await store.interrupt_if_held(*stale, first.attempt_id) is HeldOutcome.NOT_HOLDER
    failure = await store.fail_if_held(*stale, 1, "late", first.attempt_id)
    assert failure.outcome is HeldOutcome.NOT_HOLDER

    assert await store.heartbeat(job.id, "node-1", None, second.attempt_id) == "running"
    assert await store.complete_if_held(*stale, second.attempt_id) is HeldOutcome.DONE
    current = await store.get_job(job.id, None)
    assert current is not None and (current.status, current.num_failures) == ("completed", 0)


async def test_calls_without_an_attempt_id_are_fenced_by_machine(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    await claim(store, "m1")

    assert await store.heartbeat(job.id, "m2", None) == "canceled"
    assert await store.complete_if_held(job.id, "m2", None) is HeldOutcome.NOT_HOLDER
    assert await store.heartbeat(job.id, "m1", None) == "running"
    assert await store.complete_if_held(job.id, "m1", None) is HeldOutcome.DONE


# -- checkpoint generations -------------------------------------------------------------------


async def test_holder_commits_generations_that_only_go_forward(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    holder = await claim(store, "m1")
    attempt = holder.attempt_id
    assert attempt is not None
    first = files(("model.pt", "ck/.kelpie/a1/g1/model.pt", 10))

    done = await store.commit_checkpoint(job.id, "m1", None, attempt, 1, first)

    assert done.outcome is CommitOutcome.DONE and done.checkpoint is not None
    assert (done.checkpoint.generation, done.checkpoint.files, done.checkpoint.bytes) == (1, 1, 10)
    assert (await store.get_job(job.id, None) or job).checkpoint_generation == 1
    # The same commit again (its answer was lost) is answered again and changes nothing.
    again = await store.commit_checkpoint(job.id, "m1", None, attempt, 1, first)
    assert again.outcome is CommitOutcome.REPEATED and again.expired == ()
    # The same number with other files, or a number that goes backwards, is refused.
    other = files(("model.pt", "ck/.kelpie/a1/g1b/model.pt", 11))
    assert (
        await store.commit_checkpoint(job.id, "m1", None, attempt, 1, other)
    ).outcome is CommitOutcome.NOT_NEWER
    assert (await store.commit_checkpoint(job.id, "m1", None, attempt, 3, other)).outcome is (
        CommitOutcome.DONE
    )
    backwards = await store.commit_checkpoint(job.id, "m1", None, attempt, 2, other)
    assert backwards.outcome is CommitOutcome.NOT_NEWER and backwards.newest == 3
    listed = await store.list_checkpoints(job.id, None)
    assert listed is not None and [c.generation for c in listed] == [1, 3]
    assert (await store.get_job(job.id, None) or job).checkpoint_generation == 3


async def test_stale_attempt_cannot_commit(store: Store, clock: ManualClock) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    stale = await claim(store, "m1")
    clock.advance(60)  # the holder fell silent a minute ago
    current = await claim(store, "m2")
    assert stale.attempt_id is not None and current.attempt_id is not None
    manifest = files(("a", "ck/.kelpie/x/a", 1))

    refused = await store.commit_checkpoint(job.id, "m1", None, stale.attempt_id, 1, manifest)
    # Right machine, wrong attempt: still refused.
    wrong = await store.commit_checkpoint(job.id, "m2", None, stale.attempt_id, 1, manifest)

    assert refused.outcome is wrong.outcome is CommitOutcome.NOT_HOLDER
    assert await store.list_checkpoints(job.id, None) == []
    assert (await store.get_job(job.id, None) or job).checkpoint_generation is None
    accepted = await store.commit_checkpoint(job.id, "m2", None, current.attempt_id, 1, manifest)
    assert accepted.outcome is CommitOutcome.DONE


async def test_commit_for_another_users_job_is_not_found(store: Store) -> None:
    alice, bob = await new_user(store), await new_user(store)
    job = await submit(store, alice)
    holder = await claim(store, "m1")
    assert holder.attempt_id is not None

    result = await store.commit_checkpoint(
        job.id, "m1", bob.id, holder.attempt_id, 1, files(("a", "k", 1))
    )

    assert result.outcome is CommitOutcome.NOT_FOUND
    assert await store.list_checkpoints(job.id, bob.id) is None


async def test_generations_beyond_keep_expire_objects_no_kept_one_uses(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user, checkpoint_keep=2)
    holder = await claim(store, "m1")
    attempt = holder.attempt_id
    assert attempt is not None
    shared = ("data.bin", "ck/.kelpie/a/g1/data.bin", 100)  # unchanged across generations

    async def commit(generation: int) -> tuple[tuple[int, str], ...]:
        manifest = files(shared, ("step.json", f"ck/.kelpie/a/g{generation}/step.json", 5))
        result = await store.commit_checkpoint(job.id, "m1", None, attempt, generation, manifest)
        assert result.outcome is CommitOutcome.DONE
        return result.expired

    assert await commit(1) == ()
    assert await commit(2) == ()
    assert await commit(3) == ((0, "ck/.kelpie/a/g1/step.json"),)  # data.bin is still used

    listed = await store.list_checkpoints(job.id, None)
    assert listed is not None and [(c.generation, c.kept) for c in listed] == [
        (1, False),
        (2, True),
        (3, True),
    ]
    newest = await store.get_checkpoint(job.id, None, 3)
    assert newest is not None and {e.key for e in newest.manifest} == {
        "ck/.kelpie/a/g1/data.bin",
        "ck/.kelpie/a/g3/step.json",
    }
    pruned = await store.get_checkpoint(job.id, None, 1)
    assert pruned is not None and not pruned.kept and pruned.manifest == ()


# -- events -----------------------------------------------------------------------------------


async def test_state_changes_and_worker_reports_become_events(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    first = await claim(store, "m1")
    assert first.attempt_id is not None
    added = await store.add_worker_event(
        job.id, "m1", None, first.attempt_id, "warning", "input prefix is empty", None
    )
    assert added is HeldOutcome.DONE
    await store.fail_if_held(job.id, "m1", None, 3, "boom", first.attempt_id)
    second = await claim(store, "m2")
    clock.advance(60)  # the holder fell silent a minute ago
    third = await claim(store, "m3")
    assert second.attempt_id is not None and third.attempt_id is not None
    late = await store.add_worker_event(
        job.id, "m2", None, second.attempt_id, "warning", "too late", None
    )

    events = await store.list_job_events(job.id, None)

    assert late is HeldOutcome.NOT_HOLDER
    assert events is not None
    assert [(e.kind, e.attempt_id) for e in events] == [
        ("claimed", first.attempt_id),
        ("warning", first.attempt_id),
        ("failed", first.attempt_id),
        ("claimed", second.attempt_id),
        ("lost", second.attempt_id),
        ("claimed", third.attempt_id),
    ]
    failed = events[2]
    assert failed.data == {"exit_code": 3, "error": "boom"} and "boom" in failed.message
    attempts = await store.list_attempts(job.id, None)
    assert attempts is not None
    assert [a.warnings for a in attempts] == [("input prefix is empty",), (), ()]
    later = await store.list_job_events(job.id, None, after_id=events[3].id)
    assert later is not None and [e.kind for e in later] == ["lost", "claimed"]


async def test_worker_events_are_capped_per_attempt(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    holder = await claim(store, "m1")
    assert holder.attempt_id is not None

    for i in range(MAX_WORKER_EVENTS_PER_ATTEMPT + 5):
        outcome = await store.add_worker_event(
            job.id, "m1", None, holder.attempt_id, "warning", f"w{i}", {"i": i}
        )
        assert outcome is HeldOutcome.DONE

    events = await store.list_job_events(job.id, None)
    assert events is not None
    assert len([e for e in events if e.attempt_id == holder.attempt_id]) == (
        MAX_WORKER_EVENTS_PER_ATTEMPT
    )


# -- the API's own outages --------------------------------------------------------------------


async def test_outage_of_the_api_moves_no_job_whose_holder_beats_again(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    healthy = await submit(store, user)
    dead_before = await submit(store, user)
    assert await store.note_api_alive() == 0.0
    await claim(store, "m-healthy")
    await claim(store, "m-dead")
    # The other holder falls silent long before the outage begins; the healthy one beats on.
    for _ in range(60):
        clock.advance(1)
        assert await store.heartbeat(healthy.id, "m-healthy", None) == "running"
        assert await store.note_api_alive() == 0.0
    # The API is unreachable for 60 s: the healthy holder's beats cannot arrive.
    clock.advance(60)

    credited = await store.note_api_alive()

    assert 59 < credited < 120
    taken = await store.claim_job("m-idle", GROUP, None)
    assert taken is not None and taken.id == dead_before.id  # stalled before the outage
    assert await store.claim_job("m-idle", GROUP, None) is None  # the healthy one stays
    assert await store.heartbeat(healthy.id, "m-healthy", None) == "running"
    # Credited once: the next process to come back finds no outage.
    assert await store.note_api_alive() == 0.0


async def test_a_short_gap_is_not_an_outage(store: Store, clock: ManualClock) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    assert await store.note_api_alive() == 0.0
    await claim(store, "m1")
    for _ in range(12):  # the holder falls silent; the API is alive, 2.5 s between signs
        clock.advance(2.5)
        assert await store.note_api_alive() == 0.0

    taken = await store.claim_job("m2", GROUP, None)
    assert taken is not None and taken.id == job.id


async def test_first_start_counts_silence_since_the_newest_heartbeat(
    store: Store, clock: ManualClock
) -> None:
    seconds = 10
    user = await new_user(store)
    await submit(store, user)
    await claim(store, "m1")
    clock.advance(seconds)  # upgraded while down: no liveness row yet

    assert await store.note_api_alive() >= seconds

    assert await store.claim_job("m2", GROUP, None) is None


@pytest.mark.postgres
async def test_a_postgres_claim_of_a_stalled_job_locks_no_pending_one(
    fresh_postgres_url: Callable[[], str],
) -> None:
    url = fresh_postgres_url()
    clock = ManualClock()
    store = PostgresStore(url, clock=clock)
    await store.open()
    claimer, other = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        user = await new_user(store)
        stalled = await submit(store, user)
        await claim(store, "m1")
        clock.advance(60)
        pending = await submit(store, user)

        # A claim that has taken the stalled job and not committed yet...
        async with claimer.transaction():
            taken = await claimer.fetchrow(
                kelpie.store.postgres._CLAIM, "m2", GROUP, None, "claimed", "lost", clock()
            )
            assert taken is not None and taken["id"] == stalled.id
            # ...leaves the oldest pending job to the next claimer.
            unlocked = await other.fetch("SELECT id FROM jobs FOR UPDATE SKIP LOCKED")
            assert [row["id"] for row in unlocked] == [pending.id]
    finally:
        await claimer.close()
        await other.close()
        await store.close()
