"""Names and labels, retry rules, interruption budgets and idempotent submissions, on every
Store. Time is moved by writing older timestamps into the database, never by waiting."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kelpie.store import Store, open_store
from kelpie.store._common import IDEMPOTENCY_KEY_LIFETIME_S
from kelpie.store.models import (
    HeldOutcome,
    IdempotentRequest,
    Job,
    JobQuery,
    ManifestEntry,
    NewJob,
    User,
)
from kelpie.store.protocol import IdempotencyConflict
from tests.support.clock import ManualClock

GROUP = "group-a"


async def new_user(store: Store) -> User:
    return await store.create_user(f"user-{uuid.uuid4().hex[:8]}")


def new_job(labels: dict[str, str] | None = None, **fields: Any) -> NewJob:
    spec: dict[str, Any] = {"command": "python", "arguments": ["train.py"]}
    if labels:
        spec["labels"] = labels
    values: dict[str, Any] = {
        "container_group_id": GROUP,
        "max_failures": 3,
        "heartbeat_interval": 1,
        "webhook": None,
        "spec": spec,
    }
    values.update(fields)
    return NewJob(**values)


async def submit(store: Store, user: User, **fields: Any) -> Job:
    [job] = await store.create_jobs(user.id, [new_job(**fields)])
    return job


async def claim(store: Store, machine: str) -> Job:
    job = await store.claim_job(machine, GROUP, None)
    assert job is not None
    return job


async def current(store: Store, job_id: str) -> Job:
    job = await store.get_job(job_id, None)
    assert job is not None
    return job


def ids(jobs: list[Job]) -> set[str]:
    return {job.id for job in jobs}


# -- names and labels -----------------------------------------------------------------------


async def test_jobs_are_found_by_name_and_by_every_label_they_carry(store: Store) -> None:
    alice, bob = await new_user(store), await new_user(store)
    vision = await submit(store, alice, name="resnet", labels={"team": "vision", "env": "prod"})
    sweep = await submit(store, alice, name="sweep-1", labels={"team": "vision", "env": "dev"})
    plain = await submit(store, alice, name="resnet")
    bobs = await submit(store, bob, name="resnet", labels={"team": "vision", "env": "prod"})

    def query(user: User | None, **filters: Any) -> JobQuery:
        return JobQuery(user_id=None if user is None else user.id, **filters)

    assert ids(await store.list_jobs(query(alice, name="resnet"))) == {vision.id, plain.id}
    assert ids(await store.list_jobs(query(alice, labels=(("team", "vision"),)))) == {
        vision.id,
        sweep.id,
    }
    both = (("team", "vision"), ("env", "prod"))
    assert ids(await store.list_jobs(query(alice, labels=both))) == {vision.id}
    assert ids(await store.list_jobs(query(alice, name="sweep-1", labels=both))) == set()
    assert ids(await store.list_jobs(query(alice, labels=(("team", "prod"),)))) == set()
    # another user's jobs stay invisible; an admin (no user) sees everyone's
    assert ids(await store.list_jobs(query(None, labels=both))) == {vision.id, bobs.id}
    assert (await current(store, vision.id)).name == "resnet"

    # labels go with their jobs
    await store.purge_group(alice.id, GROUP)
    assert await store.list_jobs(query(alice, labels=(("team", "vision"),))) == []


async def test_labels_many_jobs_carry_page_like_any_filter(store: Store) -> None:
    # Enough jobs carry each label that the store walks the jobs instead of a label's index.
    user = await new_user(store)

    def labels(i: int) -> dict[str, str]:
        return {"team": "big" if i % 2 == 0 else "other", "half": "a" if i < 2100 else "b"}

    jobs = await store.create_jobs(user.id, [new_job(labels=labels(i)) for i in range(4200)])
    big = [jobs[i].id for i in range(4198, -1, -2)]  # newest first

    page = await store.list_jobs(JobQuery(user.id, labels=(("team", "big"),), page=2))
    assert [job.id for job in page] == big[100:200]
    both = await store.list_jobs(
        JobQuery(user.id, labels=(("team", "big"), ("half", "a")), page_size=1000)
    )
    assert [job.id for job in both] == [jobs[i].id for i in range(2098, -1, -2)][:1000]
    oldest = await store.list_jobs(
        JobQuery(user.id, labels=(("team", "other"),), ascending=True, page_size=3)
    )
    assert [job.id for job in oldest] == [jobs[1].id, jobs[3].id, jobs[5].id]
    assert await store.list_jobs(JobQuery(user.id, labels=(("team", "small"),))) == []


# -- retry rules ----------------------------------------------------------------------------


async def test_a_failure_the_rules_call_final_fails_the_job_at_once(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user, max_failures=3)
    held = await claim(store, "m1")

    result = await store.fail_if_held(
        job.id, "m1", None, 2, "bad flag", held.attempt_id, fail_now=True
    )

    assert result.outcome is HeldOutcome.DONE
    ended = await current(store, job.id)
    assert (ended.status, ended.num_failures, ended.last_exit_code) == ("failed", 1, 2)
    assert ended.failed is not None
    events = await store.list_job_events(job.id, None)
    assert events is not None and "fails the job at once" in events[-1].message


async def test_an_exit_code_counted_as_an_interruption_costs_no_failure(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user, max_failures=1)
    held = await claim(store, "m1")

    outcome = await store.interrupt_if_held(job.id, "m1", None, held.attempt_id, exit_code=143)

    assert outcome is HeldOutcome.DONE
    after = await current(store, job.id)
    assert (after.status, after.num_failures, after.num_interruptions) == ("pending", 0, 1)
    attempts = await store.list_attempts(job.id, None)
    assert attempts is not None
    assert (attempts[0].outcome, attempts[0].exit_code) == ("interrupted", 143)
    # the machine is not blocked: it may take the job again
    assert (await claim(store, "m1")).id == job.id


# -- interruption budgets -------------------------------------------------------------------


async def test_the_interruption_that_reaches_max_interruptions_fails_the_job(
    store: Store,
) -> None:
    user = await new_user(store)
    job = await submit(store, user, max_interruptions=2, webhook="https://example.com/hook")
    first = await claim(store, "m1")
    assert await store.interrupt_if_held(job.id, "m1", None, first.attempt_id) is HeldOutcome.DONE
    after_one = await current(store, job.id)
    assert (after_one.status, after_one.num_interruptions) == ("pending", 1)

    second = await claim(store, "m2")
    assert await store.interrupt_if_held(job.id, "m2", None, second.attempt_id) is HeldOutcome.DONE

    ended = await current(store, job.id)
    assert (ended.status, ended.num_interruptions, ended.num_failures) == ("failed", 2, 0)
    assert ended.last_error == "interrupted 2 times; max_interruptions is 2"
    assert ended.failed is not None
    assert await store.claim_job("m3", GROUP, None) is None
    statuses = [event.payload["status"] for event in await store.claim_webhook_events(10, 30)]
    assert statuses == ["running", "running", "failed"]


async def test_a_lost_attempt_counts_as_an_interruption(store: Store, clock: ManualClock) -> None:
    user = await new_user(store)
    job = await submit(store, user, max_interruptions=5)
    await claim(store, "m1")
    clock.advance(60)  # the holder fell silent a minute ago

    taken = await claim(store, "m2")

    assert taken.id == job.id and taken.num_interruptions == 1
    assert (await current(store, job.id)).num_interruptions == 1


async def test_a_stalled_job_out_of_interruptions_fails_instead_of_moving_on(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    limited = await submit(store, user, max_interruptions=1, webhook="https://example.com/h")
    unlimited = await submit(store, user)
    await claim(store, "m1")
    await claim(store, "m2")
    assert await store.end_stalled_out_of_interruptions() == []  # both still beat
    clock.advance(1.9)
    assert await store.end_stalled_out_of_interruptions() == []  # not two intervals yet
    clock.advance(60)

    # the unlimited job is handed on; the limited one is never claimed again
    assert (await claim(store, "m3")).id == unlimited.id
    assert await store.claim_job("m4", GROUP, None) is None
    [ended] = await store.end_stalled_out_of_interruptions()

    assert ended.id == limited.id and ended.status == "failed"
    assert ended.last_error == "interrupted 1 times; max_interruptions is 1"
    after = await current(store, limited.id)
    assert (after.status, after.num_interruptions, after.machine_id) == ("failed", 1, "m1")
    attempts = await store.list_attempts(limited.id, None)
    assert attempts is not None and [a.outcome for a in attempts] == ["lost"]
    events = await store.list_job_events(limited.id, None)
    assert events is not None and events[-1].kind == "lost"
    assert "so the job failed" in events[-1].message
    statuses = [event.payload["status"] for event in await store.claim_webhook_events(10, 30)]
    assert statuses == ["running", "failed"]
    assert await store.end_stalled_out_of_interruptions() == []


async def test_a_zero_budget_fails_a_job_at_its_first_interruption(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user, max_interruptions=0)
    held = await claim(store, "m1")

    await store.interrupt_if_held(job.id, "m1", None, held.attempt_id)

    assert (await current(store, job.id)).status == "failed"


# -- idempotent submissions -----------------------------------------------------------------


async def test_a_repeated_key_answers_the_first_requests_jobs(store: Store) -> None:
    alice, bob = await new_user(store), await new_user(store)
    request = IdempotentRequest("nightly-1", "fingerprint-a")
    batch = [new_job(name="a"), new_job(name="b")]

    first = await store.create_jobs_once(alice.id, batch, request)
    held = await claim(store, "m1")
    again = await store.create_jobs_once(alice.id, batch, request)

    assert not first.replayed and first.status_code == 202
    assert again.replayed and again.status_code == 202
    assert [job.id for job in again.jobs] == [job.id for job in first.jobs]
    assert [job.name for job in again.jobs] == ["a", "b"]
    # answered as they are now
    assert {job.status for job in again.jobs if job.id == held.id} == {"running"}
    assert len(await store.list_jobs(JobQuery(alice.id))) == 2

    with pytest.raises(IdempotencyConflict, match="different request"):
        await store.create_jobs_once(alice.id, batch, IdempotentRequest("nightly-1", "other"))
    # keys are per user
    bobs = await store.create_jobs_once(bob.id, batch, request)
    assert not bobs.replayed and ids(bobs.jobs).isdisjoint(ids(first.jobs))


async def test_a_key_past_its_lifetime_is_taken_anew_and_then_forgotten(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    old = IdempotentRequest("old-key", "fingerprint-a")
    stale = IdempotentRequest("stale-key", "fingerprint-a")
    recent = IdempotentRequest("recent-key", "fingerprint-a")
    [first] = (await store.create_jobs_once(user.id, [new_job()], old)).jobs
    await store.create_jobs_once(user.id, [new_job()], stale)
    clock.advance(60)
    await store.create_jobs_once(user.id, [new_job()], recent)
    assert await store.purge_idempotency_keys() == 0
    clock.advance(IDEMPOTENCY_KEY_LIFETIME_S - 30)  # the first two keys' lifetime is over

    reused = await store.create_jobs_once(user.id, [new_job()], IdempotentRequest("old-key", "b"))
    assert not reused.replayed and reused.jobs[0].id != first.id

    assert await store.purge_idempotency_keys() == 1  # the stale key; the others live on
    assert (await store.create_jobs_once(user.id, [new_job()], recent)).replayed


async def test_a_repeat_whose_jobs_were_deleted_conflicts(store: Store) -> None:
    user = await new_user(store)
    request = IdempotentRequest("k", "f")
    await store.create_jobs_once(user.id, [new_job()], request)
    await store.delete_all_jobs()

    with pytest.raises(IdempotencyConflict, match="deleted"):
        await store.create_jobs_once(user.id, [new_job()], request)


async def test_racing_requests_with_one_key_create_the_jobs_once(database_url: str) -> None:
    # Two stores (two connection pools; on SQLite two writers) on one database, as two API
    # processes would be, each sending the same request ten times at once.
    stores = [open_store(database_url), open_store(database_url)]
    for opened in stores:
        await opened.open()
    try:
        user = await new_user(stores[0])
        request = IdempotentRequest("race", "same-body")
        answers = await asyncio.gather(
            *(
                stores[i % 2].create_jobs_once(user.id, [new_job(), new_job()], request)
                for i in range(20)
            )
        )
        created = [answer for answer in answers if not answer.replayed]
        assert len(created) == 1
        assert {tuple(job.id for job in answer.jobs) for answer in answers} == {
            tuple(job.id for job in created[0].jobs)
        }
        assert len(await stores[0].list_jobs(JobQuery(user.id))) == 2
    finally:
        for opened in stores:
            await opened.close()


# -- what the goodput ledger reads --------------------------------------------------------


async def test_a_takeover_keeps_the_lost_holders_last_heartbeat(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    await claim(store, "m1")
    clock.advance(60)
    beat = (await current(store, job.id)).heartbeat
    assert beat is not None

    await claim(store, "m2")

    ledger = await store.job_goodput(job.id, None)
    assert ledger is not None and [a.outcome for a in ledger.attempts] == ["lost", "running"]
    lost = ledger.attempts[0]
    assert abs((lost.end - beat).total_seconds()) < 0.001
    assert lost.ended is not None and lost.ended > lost.end


async def test_worker_events_mark_their_attempts_phases_even_beyond_the_cap(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    held = await claim(store, "m1")
    assert held.attempt_id is not None
    for i in range(205):  # fills the attempt's events past the cap
        await store.add_worker_event(job.id, "m1", None, held.attempt_id, "warning", f"w{i}", None)
    clock.advance(10)  # the command starts 10 s after the claim
    await store.add_worker_event(job.id, "m1", None, held.attempt_id, "started", "started", None)
    for seconds in (1.5, 2.0):
        await store.add_worker_event(
            job.id, "m1", None, held.attempt_id, "outputs_uploaded", "up", {"seconds": seconds}
        )
    clock.advance(90)  # the attempt ends 100 s after the claim
    assert await store.complete_if_held(job.id, "m1", None, held.attempt_id) is HeldOutcome.DONE

    ledger = await store.job_goodput(job.id, None)

    assert ledger is not None
    [attempt] = ledger.attempts
    assert attempt.downloading_s == pytest.approx(10, abs=1e-3)
    assert attempt.uploading_s == pytest.approx(3.5, abs=1e-3)
    assert attempt.running_s == pytest.approx(86.5, abs=1e-3)
    assert attempt.work_lost_s is None and attempt.detection_delay_s is None


async def test_a_repeated_started_event_does_not_move_the_commands_start(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    held = await claim(store, "m1")
    assert held.attempt_id is not None
    clock.advance(5)
    await store.add_worker_event(job.id, "m1", None, held.attempt_id, "started", "s", None)
    clock.advance(55)

    await store.add_worker_event(job.id, "m1", None, held.attempt_id, "started", "again", None)

    ledger = await store.job_goodput(job.id, None)
    assert ledger is not None
    assert ledger.attempts[0].downloading_s == pytest.approx(5, abs=1e-3)


async def test_each_commit_is_counted_on_its_attempt(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    held = await claim(store, "m1")
    assert held.attempt_id is not None
    for generation, seconds in ((1, 2.0), (2, None), (3, 4.0)):
        files = [ManifestEntry(0, "m.pt", f"k/.kelpie/{generation}/m.pt", 1, "ab" * 32)]
        result = await store.commit_checkpoint(
            job.id, "m1", None, held.attempt_id, generation, files, seconds
        )
        assert result.checkpoint is not None

    committed = await store.list_checkpoints(job.id, None)
    ledger = await store.job_goodput(job.id, None)
    report = await store.group_goodput(
        None,
        GROUP,
        datetime.now(UTC) - timedelta(hours=1),
        datetime.now(UTC) + timedelta(seconds=1),
    )

    assert committed is not None and ledger is not None
    [attempt] = ledger.attempts
    assert attempt.checkpoints == 3 and attempt.last_checkpoint is not None
    assert abs((attempt.last_checkpoint - committed[-1].created).total_seconds()) < 0.001
    assert report.checkpoints == 3
    assert report.mean_checkpoint_cost_s == pytest.approx(3.0)  # of the two that said
    span = (committed[-1].created - committed[0].created).total_seconds()
    assert report.mean_checkpoint_interval_s == pytest.approx(span / 2, abs=1e-3)


async def test_the_next_claim_marks_when_the_job_ran_again(store: Store) -> None:
    user = await new_user(store)
    job = await submit(store, user)
    first = await claim(store, "m1")
    await store.interrupt_if_held(job.id, "m1", None, first.attempt_id)
    await claim(store, "m2")

    attempts = await store.list_attempts(job.id, None)
    ledger = await store.job_goodput(job.id, None)

    assert attempts is not None and ledger is not None and attempts[0].ended is not None
    gap = (attempts[1].started - attempts[0].ended).total_seconds()
    assert ledger.attempts[0].detection_delay_s == pytest.approx(gap, abs=1e-3)
    assert ledger.attempts[1].detection_delay_s is None
