"""One behaviour suite for every Store implementation (SQLite and PostgreSQL).

Each test gets a fresh, migrated database through the `store` fixture.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

import kelpie.store._group_commit
from kelpie.store import (
    AlreadyExists,
    InvalidChange,
    NotFound,
    PostgresStore,
    SqliteStore,
    Store,
    StoreError,
    StoreUnavailable,
    open_store,
)
from kelpie.store._connection_pool import ConnectionPool
from kelpie.store._group_commit import GroupCommitWriter
from kelpie.store.models import (
    Blocked,
    CancelOutcome,
    HeldOutcome,
    Job,
    JobQuery,
    NewJob,
    ScalingRule,
    ScalingRulePatch,
    User,
    WebhookEvent,
)
from tests.support.clock import ManualClock

T = TypeVar("T")

GROUP = "group-a"
SPEC: dict[str, Any] = {
    "command": "python",
    "arguments": ["train.py", "--epochs", "3"],
    "environment": {"SEED": "1"},
    "sync": {"before": [], "during": [], "after": []},
    "compression": False,
}


def new_job(group: str = GROUP, **fields: Any) -> NewJob:
    values: dict[str, Any] = {
        "container_group_id": group,
        "max_failures": 3,
        "heartbeat_interval": 30,
        "webhook": None,
        "spec": SPEC,
    }
    values.update(fields)
    return NewJob(**values)


async def new_user(store: Store) -> User:
    return await store.create_user(f"user-{uuid.uuid4().hex[:8]}")


async def submit(store: Store, user: User, count: int = 1, **fields: Any) -> list[Job]:
    return await store.create_jobs(user.id, [new_job(**fields) for _ in range(count)])


async def eventually(check: Callable[[], Awaitable[T | None]], within: float = 10.0) -> T:
    """Polls `check` until it returns something other than None; fails after `within` s."""
    async with asyncio.timeout(within):
        while True:
            result = await check()
            if result is not None:
                return result
            await asyncio.sleep(0.05)


async def outcomes(store: Store, job_id: str) -> list[tuple[str, str]]:
    attempts = await store.list_attempts(job_id, None)
    assert attempts is not None
    return [(attempt.machine_id, attempt.outcome) for attempt in attempts]


async def require_job(store: Store, job_id: str) -> Job:
    job = await store.get_job(job_id, None)
    assert job is not None
    return job


# -- users and keys -------------------------------------------------------------------------


async def test_created_user_gets_webhook_credentials(store: Store) -> None:
    user = await store.create_user("alice")

    assert user.username == "alice" and not user.is_admin
    assert user.created.tzinfo is not None
    assert user.webhook_secret.startswith("whsec_")
    assert len(base64.b64decode(user.webhook_secret.removeprefix("whsec_"))) == 32
    assert user.webhook_token.startswith("kwh_") and len(user.webhook_token) > 40
    assert await store.get_user(user.id) == user
    assert await store.get_user(str(uuid.uuid4())) is None


async def test_taken_username_is_rejected(store: Store) -> None:
    await store.create_user("alice")
    with pytest.raises(AlreadyExists):
        await store.create_user("alice")


async def test_principal_for_key_names_user_org_and_project(store: Store) -> None:
    user = await new_user(store)
    await store.add_api_key(user.id, "hash-1", "acme", "render")
    await store.add_api_key(user.id, "hash-2", None, None)

    principal = await store.principal_for_key("hash-1")
    assert principal is not None
    assert (principal.user, principal.org_name, principal.project_name) == (user, "acme", "render")
    other = await store.principal_for_key("hash-2")
    assert other is not None and other.org_name is None
    assert await store.principal_for_key("unknown") is None


async def test_revoked_key_has_no_principal(store: Store) -> None:
    user, other = await new_user(store), await new_user(store)
    key = await store.add_api_key(user.id, "hash-1", None, None)
    kept = await store.add_api_key(user.id, "hash-2", None, None)

    assert await store.revoke_api_key(other.id, key.id) is False  # not other's key
    assert await store.principal_for_key("hash-1") is not None
    assert await store.revoke_api_key(user.id, key.id) is True
    assert await store.principal_for_key("hash-1") is None
    assert await store.principal_for_key("hash-2") is not None
    assert await store.revoke_api_key(user.id, key.id) is True  # again: a no-op
    assert await store.revoke_api_key(user.id, str(uuid.uuid4())) is False
    assert [(k.id, k.revoked) for k in await store.list_api_keys(user.id)] == [
        (key.id, True),
        (kept.id, False),
    ]


async def test_keys_are_listed_with_ids_never_with_the_key(store: Store) -> None:
    user = await new_user(store)
    first = await store.add_api_key(user.id, "hash-1", "acme", "render")
    second = await store.add_api_key(user.id, "hash-2", None, None)

    listed = await store.list_api_keys(user.id)

    assert listed == [first, second]
    assert first.id != second.id and uuid.UUID(first.id)
    assert (first.user_id, first.org_name, first.project_name) == (user.id, "acme", "render")
    assert not first.revoked and not first.bootstrap
    assert await store.list_api_keys((await new_user(store)).id) == []


async def test_key_for_unknown_user_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.add_api_key(str(uuid.uuid4()), "hash-1", None, None)


async def test_ensure_admin_is_idempotent(store: Store) -> None:
    first = await store.ensure_admin("admin", "admin-hash")
    again = await store.ensure_admin("admin", "admin-hash")

    assert first == again and first.is_admin
    principal = await store.principal_for_key("admin-hash")
    assert principal is not None and principal.user.id == first.id
    [key] = await store.list_api_keys(first.id)
    assert key.bootstrap and not key.revoked


async def test_a_new_admin_key_retires_the_previous_one_only(store: Store) -> None:
    admin = await store.ensure_admin("admin", "old-admin-hash")
    minted = await store.add_api_key(admin.id, "minted-hash", None, None)  # POST .../token
    user = await new_user(store)
    await store.add_api_key(user.id, "user-hash", None, None)

    rotated = await store.ensure_admin("admin", "new-admin-hash")

    assert rotated == admin
    assert await store.principal_for_key("old-admin-hash") is None
    for live in ("new-admin-hash", "minted-hash", "user-hash"):
        assert await store.principal_for_key(live) is not None, live
    keys = {key.id: key for key in await store.list_api_keys(admin.id)}
    assert not keys[minted.id].bootstrap and not keys[minted.id].revoked
    # Going back to the old key revives it, and retires the new one.
    await store.ensure_admin("admin", "old-admin-hash")
    assert await store.principal_for_key("old-admin-hash") is not None
    assert await store.principal_for_key("new-admin-hash") is None


async def test_ensure_admin_promotes_existing_user_and_revives_its_key(store: Store) -> None:
    user = await store.create_user("root")
    key = await store.add_api_key(user.id, "root-hash", None, None)
    await store.revoke_api_key(user.id, key.id)

    admin = await store.ensure_admin("root", "root-hash")

    assert admin.id == user.id and admin.is_admin
    principal = await store.principal_for_key("root-hash")
    assert principal is not None and principal.user.is_admin


async def test_concurrent_ensure_admin_creates_one_user(store: Store) -> None:
    admins = await asyncio.gather(*(store.ensure_admin("admin", "hash") for _ in range(8)))
    assert len({admin.id for admin in admins}) == 1


async def test_delete_non_admin_users_keeps_admin_and_jobs(store: Store) -> None:
    admin = await store.ensure_admin("admin", "admin-hash")
    user = await new_user(store)
    await store.add_api_key(user.id, "user-hash", None, None)
    [job] = await submit(store, user)

    await store.delete_non_admin_users()

    assert await store.get_user(user.id) is None
    assert await store.principal_for_key("user-hash") is None
    assert await store.get_user(admin.id) == admin
    assert await store.principal_for_key("admin-hash") is not None
    assert await store.get_job(job.id, None) == job


# -- jobs, user side ------------------------------------------------------------------------


async def test_created_jobs_are_pending_in_submission_order(store: Store) -> None:
    user = await new_user(store)
    submissions = [
        new_job(max_failures=i + 1, heartbeat_interval=10 + i, org_name="o", project_name="p")
        for i in range(5)
    ]
    jobs = await store.create_jobs(user.id, submissions)

    assert [job.max_failures for job in jobs] == [1, 2, 3, 4, 5]
    for job in jobs:
        assert job.status == "pending" and job.user_id == user.id
        assert job.spec == SPEC and job.org_name == "o" and job.project_name == "p"
        assert (job.started, job.machine_id, job.num_failures, job.num_heartbeats) == (
            None,
            None,
            0,
            0,
        )
        assert job.created.tzinfo is not None
        assert await store.get_job(job.id, user.id) == job
    listed = await store.list_jobs(JobQuery(user_id=user.id, ascending=True))
    assert [job.id for job in listed] == [job.id for job in jobs]


async def test_batch_with_an_invalid_job_stores_nothing(store: Store) -> None:
    user = await new_user(store)
    batch = [new_job(), new_job(), new_job(max_failures=0), new_job()]

    with pytest.raises(StoreError):
        await store.create_jobs(user.id, batch)

    assert await store.list_jobs(JobQuery(user_id=None)) == []
    assert await store.claim_job("m1", GROUP, None) is None


async def test_another_users_job_behaves_as_missing(store: Store) -> None:
    owner, stranger = await new_user(store), await new_user(store)
    [job] = await submit(store, owner)
    claimed = await store.claim_job("m1", GROUP, owner.id)
    assert claimed is not None

    assert await store.get_job(job.id, stranger.id) is None
    assert await store.list_attempts(job.id, stranger.id) is None
    assert await store.list_jobs(JobQuery(user_id=stranger.id)) == []
    assert await store.cancel_job(job.id, stranger.id) is CancelOutcome.NOT_FOUND
    assert await store.heartbeat(job.id, "m1", stranger.id) is None
    assert await store.complete_if_held(job.id, "m1", stranger.id) is HeldOutcome.NOT_FOUND
    assert await store.interrupt_if_held(job.id, "m1", stranger.id) is HeldOutcome.NOT_FOUND
    failure = await store.fail_if_held(job.id, "m1", stranger.id, 1, "boom")
    assert failure.outcome is HeldOutcome.NOT_FOUND
    assert await store.purge_group(stranger.id, GROUP) == 0
    assert await store.claim_job("m2", GROUP, stranger.id) is None

    unchanged = await store.get_job(job.id, owner.id)
    assert unchanged is not None and unchanged.status == "running"
    assert unchanged.num_heartbeats == 0 and unchanged.num_failures == 0
    assert await store.get_job(job.id, None) == unchanged  # admins see every job


async def test_unknown_job_is_not_found(store: Store) -> None:
    missing = str(uuid.uuid4())
    assert await store.get_job(missing, None) is None
    assert await store.list_attempts(missing, None) is None
    assert await store.cancel_job(missing, None) is CancelOutcome.NOT_FOUND
    assert await store.heartbeat(missing, "m1", None) is None
    assert await store.complete_if_held(missing, "m1", None) is HeldOutcome.NOT_FOUND
    assert await store.interrupt_if_held(missing, "m1", None) is HeldOutcome.NOT_FOUND
    assert (await store.fail_if_held(missing, "m1", None, 1, "x")).outcome is HeldOutcome.NOT_FOUND


async def test_list_jobs_pages_filters_and_orders(store: Store, clock: ManualClock) -> None:
    user, other = await new_user(store), await new_user(store)
    older = await submit(store, user, 3)
    clock.advance(0.01)  # a distinct `created` for the second submission
    newer = await submit(store, user, 2, group="group-b")
    [foreign] = await submit(store, other)
    claimed = await store.claim_job("m1", GROUP, user.id)
    assert claimed is not None and claimed.id == older[0].id

    def ids(jobs: list[Job]) -> list[str]:
        return [job.id for job in jobs]

    everything = await store.list_jobs(JobQuery(user_id=user.id))
    assert ids(everything) == ids(newer)[::-1] + ids(older)[::-1]
    ascending = await store.list_jobs(JobQuery(user_id=user.id, ascending=True))
    assert ids(ascending) == ids(older) + ids(newer)
    page_2 = await store.list_jobs(JobQuery(user_id=user.id, page=2, page_size=2))
    assert ids(page_2) == ids(everything)[2:4]
    assert await store.list_jobs(JobQuery(user_id=user.id, page=4, page_size=2)) == []
    running = await store.list_jobs(JobQuery(user_id=user.id, status="running"))
    assert ids(running) == [older[0].id]
    in_b = await store.list_jobs(JobQuery(user_id=user.id, container_group_id="group-b"))
    assert ids(in_b) == ids(newer)[::-1]
    pending_in_a = await store.list_jobs(
        JobQuery(user_id=user.id, status="pending", container_group_id=GROUP, ascending=True)
    )
    assert ids(pending_in_a) == ids(older[1:])
    admin_view = await store.list_jobs(JobQuery(user_id=None, page_size=1000))
    assert set(ids(admin_view)) == set(ids(older) + ids(newer) + [foreign.id])


async def test_cancel_outcomes(store: Store) -> None:
    user = await new_user(store)
    held, completed, failed, pending = await submit(store, user, 4, max_failures=1)
    for machine in ("m-run", "m-done", "m-fail"):  # claims take the oldest job first
        assert await store.claim_job(machine, GROUP, None) is not None
    assert await store.complete_if_held(completed.id, "m-done", None) is HeldOutcome.DONE
    assert (await store.fail_if_held(failed.id, "m-fail", None, 1, "x")).outcome is (
        HeldOutcome.DONE
    )

    assert await store.cancel_job(pending.id, user.id) is CancelOutcome.CANCELED
    assert await store.cancel_job(pending.id, user.id) is CancelOutcome.ALREADY_CANCELED
    assert await store.cancel_job(completed.id, user.id) is CancelOutcome.ALREADY_ENDED
    assert await store.cancel_job(failed.id, None) is CancelOutcome.ALREADY_ENDED
    canceled = await require_job(store, pending.id)
    assert canceled.status == "canceled" and canceled.canceled is not None
    assert await store.claim_job("m-late", GROUP, None) is None

    assert await store.cancel_job(held.id, user.id) is CancelOutcome.CANCELED
    canceled = await require_job(store, held.id)
    assert canceled.status == "canceled" and canceled.canceled is not None
    assert await outcomes(store, held.id) == [("m-run", "canceled")]
    # the worker learns of it at its next heartbeat and can no longer report
    assert await store.heartbeat(held.id, "m-run", user.id) == "canceled"
    assert await store.complete_if_held(held.id, "m-run", user.id) is HeldOutcome.NOT_HOLDER
    assert await store.cancel_job(held.id, None) is CancelOutcome.ALREADY_CANCELED


async def test_purge_group_deletes_pending_and_cancels_running(store: Store) -> None:
    user, other = await new_user(store), await new_user(store)
    jobs = await submit(store, user, 5)
    [elsewhere] = await submit(store, user, group="group-b")
    [foreign] = await submit(store, other)
    first = await store.claim_job("m1", GROUP, user.id)
    second = await store.claim_job("m2", GROUP, user.id)
    assert first is not None and second is not None
    assert await store.complete_if_held(second.id, "m2", None) is HeldOutcome.DONE

    assert await store.purge_group(user.id, GROUP) == 1 + 3

    remaining = await store.list_jobs(JobQuery(user_id=None))
    assert {job.id: job.status for job in remaining} == {
        jobs[0].id: "canceled",
        jobs[1].id: "completed",
        elsewhere.id: "pending",
        foreign.id: "pending",
    }
    assert await outcomes(store, jobs[0].id) == [("m1", "canceled")]
    assert await store.heartbeat(jobs[0].id, "m1", None) == "canceled"
    assert await store.purge_group(user.id, GROUP) == 0


async def test_delete_all_jobs(store: Store) -> None:
    user = await new_user(store)
    await submit(store, user, 3)
    assert await store.claim_job("m1", GROUP, None) is not None

    await store.delete_all_jobs()

    assert await store.list_jobs(JobQuery(user_id=None)) == []


# -- jobs, worker side ----------------------------------------------------------------------


async def test_claim_takes_oldest_pending_job_and_holds_it(store: Store) -> None:
    user = await new_user(store)
    first, second = await submit(store, user, 2)

    claimed = await store.claim_job("m1", GROUP, user.id)

    assert claimed is not None and claimed.id == first.id
    assert claimed.status == "running" and claimed.machine_id == "m1"
    assert claimed.started is not None and claimed.heartbeat == claimed.started
    assert claimed.started >= first.created
    assert await store.get_job(first.id, user.id) == claimed
    assert await outcomes(store, first.id) == [("m1", "running")]
    attempts = await store.list_attempts(first.id, user.id)
    assert attempts is not None and attempts[0].ended is None and attempts[0].exit_code is None
    claimed_next = await store.claim_job("m2", GROUP, user.id)
    assert claimed_next is not None and claimed_next.id == second.id
    assert await store.claim_job("m3", GROUP, user.id) is None


async def test_claim_is_isolated_by_group_and_user(store: Store) -> None:
    alice, bob = await new_user(store), await new_user(store)
    [alices] = await submit(store, alice)
    [bobs] = await submit(store, bob)
    [other_group] = await submit(store, alice, group="group-b")

    assert await store.claim_job("m1", "group-c", None) is None
    claimed_by_bob = await store.claim_job("m1", GROUP, bob.id)
    assert claimed_by_bob is not None and claimed_by_bob.id == bobs.id
    assert await store.claim_job("m2", GROUP, bob.id) is None
    claimed_any = await store.claim_job("m2", GROUP, None)
    assert claimed_any is not None and claimed_any.id == alices.id
    claimed_b = await store.claim_job("m3", "group-b", alice.id)
    assert claimed_b is not None and claimed_b.id == other_group.id


async def test_stalled_job_is_handed_to_next_machine(store: Store, clock: ManualClock) -> None:
    user = await new_user(store)
    [job] = await submit(store, user, heartbeat_interval=1)
    assert await store.claim_job("m-old", GROUP, user.id) is not None
    assert await store.claim_job("m-new", GROUP, user.id) is None  # not stalled yet
    clock.advance(1.9)  # not quite two intervals of silence
    assert await store.claim_job("m-new", GROUP, user.id) is None
    clock.advance(1.1)  # the holder fell silent 3 s ago

    taken = await store.claim_job("m-new", GROUP, user.id)

    assert taken is not None
    assert taken.id == job.id and taken.machine_id == "m-new" and taken.status == "running"
    assert taken.heartbeat is not None and taken.started is not None
    assert await outcomes(store, job.id) == [("m-old", "lost"), ("m-new", "running")]
    attempts = await store.list_attempts(job.id, None)
    assert attempts is not None and attempts[0].ended is not None
    # the old holder is fenced out of every state change
    assert await store.heartbeat(job.id, "m-old", user.id) == "canceled"
    assert await store.complete_if_held(job.id, "m-old", user.id) is HeldOutcome.NOT_HOLDER
    assert await store.interrupt_if_held(job.id, "m-old", user.id) is HeldOutcome.NOT_HOLDER
    failure = await store.fail_if_held(job.id, "m-old", user.id, 1, "late")
    assert failure.outcome is HeldOutcome.NOT_HOLDER and failure.job is None
    current = await require_job(store, job.id)
    assert (current.status, current.machine_id, current.num_failures) == ("running", "m-new", 0)
    assert await store.complete_if_held(job.id, "m-new", user.id) is HeldOutcome.DONE


async def test_stalled_job_is_claimed_before_older_pending_job(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    [older] = await submit(store, user, heartbeat_interval=3600)
    [stalling] = await submit(store, user, heartbeat_interval=1)
    assert (await store.claim_job("m1", GROUP, None) or older).id == older.id
    assert (await store.claim_job("m2", GROUP, None) or older).id == stalling.id
    assert await store.interrupt_if_held(older.id, "m1", None) is HeldOutcome.DONE
    clock.advance(3)

    taken = await store.claim_job("m3", GROUP, None)

    assert taken is not None and taken.id == stalling.id and taken.machine_id == "m3"


async def test_claims_take_higher_priority_first_and_the_oldest_within_a_priority(
    store: Store,
) -> None:
    user = await new_user(store)
    [low] = await submit(store, user, priority=-3)
    batch = await store.create_jobs(user.id, [new_job(priority=p) for p in (5, 0, 5, 1000)])
    [late_five] = await submit(store, user, priority=5)
    other_group = await submit(store, user, group="group-b", priority=1000)
    expected = [batch[3], batch[0], batch[2], late_five, batch[1], low]

    claimed = [await store.claim_job(f"m{i}", GROUP, user.id) for i in range(len(expected))]

    assert [job.id if job else None for job in claimed] == [job.id for job in expected]
    assert [job.priority for job in claimed if job] == [1000, 5, 5, 5, 0, -3]
    assert await store.claim_job("m-last", GROUP, user.id) is None
    assert (await require_job(store, other_group[0].id)).status == "pending"


async def test_stalled_job_is_claimed_before_a_pending_job_of_higher_priority(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    [stalling] = await submit(store, user, heartbeat_interval=1, priority=-1000)
    assert (await store.claim_job("m1", GROUP, None) or stalling).machine_id == "m1"
    [urgent] = await submit(store, user, priority=1000)
    # before the stalled one is due, the urgent job is the one claimed: put it back
    ahead = await store.claim_job("m2", GROUP, None)
    assert ahead is not None and ahead.id == urgent.id
    assert await store.interrupt_if_held(urgent.id, "m2", None) is HeldOutcome.DONE
    clock.advance(3)

    taken = await store.claim_job("m2", GROUP, None)
    assert taken is not None

    assert taken.id == stalling.id and taken.priority == -1000
    next_job = await store.claim_job("m3", GROUP, None)
    assert next_job is not None and next_job.id == urgent.id


async def test_heartbeat_answers_for_the_holder_and_the_rest(store: Store) -> None:
    user = await new_user(store)
    [job] = await submit(store, user)
    claimed = await store.claim_job("m1", GROUP, None)
    assert claimed is not None and claimed.heartbeat is not None

    assert await store.heartbeat(job.id, "m1", user.id) == "running"
    assert await store.heartbeat(job.id, "m1", None) == "running"
    beaten = await require_job(store, job.id)
    assert beaten.num_heartbeats == 2 and beaten.heartbeat is not None
    assert beaten.heartbeat >= claimed.heartbeat
    assert await store.heartbeat(job.id, "m2", user.id) == "canceled"

    assert await store.interrupt_if_held(job.id, "m1", None) is HeldOutcome.DONE
    assert await store.heartbeat(job.id, "m1", user.id) == "pending"
    assert await store.claim_job("m1", GROUP, None) is not None
    assert await store.complete_if_held(job.id, "m1", None) is HeldOutcome.DONE
    assert await store.heartbeat(job.id, "m1", user.id) == "completed"
    assert (await require_job(store, job.id)).num_heartbeats == 2


async def test_only_the_holder_completes(store: Store) -> None:
    user = await new_user(store)
    [job] = await submit(store, user)
    assert await store.complete_if_held(job.id, "m1", None) is HeldOutcome.NOT_HOLDER  # pending
    assert await store.claim_job("m1", GROUP, None) is not None

    assert await store.complete_if_held(job.id, "m2", None) is HeldOutcome.NOT_HOLDER
    assert await store.complete_if_held(job.id, "m1", user.id) is HeldOutcome.DONE
    assert await store.complete_if_held(job.id, "m1", user.id) is HeldOutcome.NOT_HOLDER

    done = await require_job(store, job.id)
    assert done.status == "completed" and done.completed is not None
    assert done.machine_id == "m1"
    assert await outcomes(store, job.id) == [("m1", "completed")]


async def test_failure_requeues_at_once_and_blocks_the_machine(store: Store) -> None:
    user = await new_user(store)
    [job] = await submit(store, user, max_failures=3)
    assert await store.claim_job("m1", GROUP, None) is not None

    result = await store.fail_if_held(job.id, "m1", user.id, 137, "OOM killed")

    assert result.outcome is HeldOutcome.DONE and result.machine_blocked_jobs == 1
    assert result.job is not None and result.job.status == "pending"
    assert (result.job.num_failures, result.job.last_exit_code, result.job.last_error) == (
        1,
        137,
        "OOM killed",
    )
    assert result.job.machine_id == "m1" and result.job.failed is None
    assert await store.get_job(job.id, None) == result.job
    assert await store.claim_job("m1", GROUP, None) is None  # never again for m1
    again = await store.claim_job("m2", GROUP, None)  # no waiting for a stall
    assert again is not None and again.id == job.id and again.num_failures == 1
    assert await store.claim_job("m1", GROUP, None) is None
    attempts = await store.list_attempts(job.id, None)
    assert attempts is not None
    assert [(a.machine_id, a.outcome, a.exit_code) for a in attempts] == [
        ("m1", "failed", 137),
        ("m2", "running", None),
    ]


async def test_job_fails_for_good_at_max_failures(store: Store) -> None:
    user = await new_user(store)
    [job] = await submit(store, user, max_failures=2, webhook="https://example.com/hook")
    for machine in ("m1", "m2"):
        assert await store.claim_job(machine, GROUP, None) is not None
        result = await store.fail_if_held(job.id, machine, None, None, None)
        assert result.outcome is HeldOutcome.DONE

    assert result.job is not None
    assert (result.job.status, result.job.num_failures) == ("failed", 2)
    assert result.job.failed is not None and result.job.machine_id == "m2"
    assert await store.claim_job("m3", GROUP, None) is None
    assert await store.heartbeat(job.id, "m2", None) == "failed"
    assert await outcomes(store, job.id) == [("m1", "failed"), ("m2", "failed")]


async def test_interrupt_requeues_without_counting_a_failure(store: Store) -> None:
    user = await new_user(store)
    [job] = await submit(store, user, max_failures=1)
    assert await store.claim_job("m1", GROUP, None) is not None

    assert await store.interrupt_if_held(job.id, "m1", user.id) is HeldOutcome.DONE

    back = await require_job(store, job.id)
    assert (back.status, back.num_failures, back.machine_id) == ("pending", 0, "m1")
    assert await store.interrupt_if_held(job.id, "m1", user.id) is HeldOutcome.NOT_HOLDER
    again = await store.claim_job("m1", GROUP, None)  # not blocked
    assert again is not None and again.id == job.id
    assert await outcomes(store, job.id) == [("m1", "interrupted"), ("m1", "running")]


async def test_attempts_record_every_hold(store: Store, clock: ManualClock) -> None:
    user = await new_user(store)
    [job] = await submit(store, user, heartbeat_interval=1)
    assert await store.claim_job("m1", GROUP, None) is not None
    assert await store.interrupt_if_held(job.id, "m1", None) is HeldOutcome.DONE
    assert await store.claim_job("m2", GROUP, None) is not None
    assert (await store.fail_if_held(job.id, "m2", None, 3, "bad")).outcome is HeldOutcome.DONE
    assert await store.claim_job("m3", GROUP, None) is not None
    clock.advance(3)
    assert await store.claim_job("m4", GROUP, None) is not None
    assert await store.complete_if_held(job.id, "m4", None) is HeldOutcome.DONE

    attempts = await store.list_attempts(job.id, user.id)

    assert attempts is not None
    assert [(a.machine_id, a.outcome, a.exit_code) for a in attempts] == [
        ("m1", "interrupted", None),
        ("m2", "failed", 3),
        ("m3", "lost", None),
        ("m4", "completed", None),
    ]
    for attempt in attempts:
        assert attempt.job_id == job.id
        assert attempt.ended is not None and attempt.ended >= attempt.started
    assert [a.started for a in attempts] == sorted(a.started for a in attempts)


async def fail_on(store: Store, user: User, machine: str, count: int, group: str = GROUP) -> int:
    """`count` of the user's jobs, each failed once by `machine`; returns the last count of
    the user's jobs the machine is blocked from."""
    blocked = 0
    for job in await submit(store, user, count, group=group, org_name=user.username):
        claimed = await store.claim_job(machine, group, user.id)
        assert claimed is not None and claimed.id == job.id
        result = await store.fail_if_held(job.id, machine, None, 1, "boom")
        blocked = result.machine_blocked_jobs
    return blocked


async def test_reallocation_is_claimed_once_per_machine(store: Store) -> None:
    user = await new_user(store)
    jobs = await submit(store, user, 3, org_name="acme", project_name="render")
    for job in jobs[:2]:
        assert await store.claim_job("m-bad", GROUP, None) is not None
        result = await store.fail_if_held(job.id, "m-bad", None, 1, "boom")
    assert result.machine_blocked_jobs == 2
    assert await store.claim_reallocation(user.id, "m-bad", 3) is None
    assert await store.claim_reallocation(user.id, "m-good", 1) is None

    claims = await asyncio.gather(
        *(store.claim_reallocation(user.id, "m-bad", 2) for _ in range(6))
    )

    assert [claim for claim in claims if claim is not None] == [
        Blocked(user.id, "m-bad", GROUP, "acme", "render", blocked_jobs=2)
    ]
    assert await store.claim_reallocation(user.id, "m-bad", 1) is None


async def test_failures_toward_reallocation_count_per_tenant(store: Store) -> None:
    alice, mallory = await new_user(store), await new_user(store)

    assert await fail_on(store, alice, "m-shared", 2) == 2
    # Failures reported under the same machine id by another tenant count only for it.
    assert await fail_on(store, mallory, "m-shared", 1, group="group-m") == 1
    assert await store.claim_reallocation(mallory.id, "m-shared", 2) is None

    assert await fail_on(store, mallory, "m-shared", 1, group="group-m") == 2
    theirs = await store.claim_reallocation(mallory.id, "m-shared", 2)
    assert theirs is not None and (theirs.org_name, theirs.container_group_id) == (
        mallory.username,
        "group-m",
    )
    # ... and spend only their own reallocation.
    mine = await store.claim_reallocation(alice.id, "m-shared", 2)
    assert mine == Blocked(alice.id, "m-shared", GROUP, alice.username, None, blocked_jobs=2)


async def test_cancelled_calls_leave_the_store_consistent_and_unlocked(
    store: Store, database_url: str
) -> None:
    user = await new_user(store)
    # Two more jobs than cancelled claims: on a busy machine every claim may finish before
    # its cancellation lands, and the two claims at the end still need a job each.
    await submit(store, user, 42)
    for i in range(40):
        call = asyncio.create_task(store.claim_job(f"m{i}", GROUP, None))
        await asyncio.sleep(0.0003 * (i % 10))  # cancel at a different point each time
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)

    async def inconsistencies() -> list[str]:
        found = []
        for job in await store.list_jobs(JobQuery(user_id=None)):
            attempts = await store.list_attempts(job.id, None) or []
            holders = [a.machine_id for a in attempts if a.outcome == "running"]
            expected = [job.machine_id] if job.status == "running" else []
            if job.status not in ("running", "pending") or holders != expected:
                found.append(f"{job.id}: {job.status} held by {job.machine_id}, attempts {holders}")
        return found

    # A cancelled call's statement may still be finishing on the server when the caller has
    # given up, and jobs and attempts are read at two instants: what must hold is that the
    # store settles consistent, never half a claim.
    async def settled() -> bool | None:
        return True if not await inconsistencies() else None

    try:
        await eventually(settled, within=10)
    except TimeoutError:
        pytest.fail("\n".join(await inconsistencies()))
    other = open_store(database_url)  # another process can still write
    await other.open()
    try:
        assert await other.claim_job("m-other", GROUP, None) is not None
    finally:
        await other.close()
    assert await store.claim_job("m-last", GROUP, None) is not None


async def test_submissions_are_announced_to_listeners(store: Store, database_url: str) -> None:
    heard: list[str] = []
    await store.listen_for_new_jobs(heard.append)
    other = open_store(database_url)  # as if another API process
    await other.open()
    try:
        user = await new_user(other)
        await other.create_jobs(user.id, [new_job("g1"), new_job("g1"), new_job("g2")])

        async def both_groups_heard() -> bool | None:
            return len(heard) >= 2 or None

        await eventually(both_groups_heard)

        assert sorted(heard) == ["g1", "g2"]  # once per group of the batch
    finally:
        await other.close()


async def test_a_failing_listener_does_not_deafen_the_others(store: Store) -> None:
    heard: list[str] = []

    def broken(group: str) -> None:
        raise RuntimeError(f"a listener with a bug, told of {group}")

    await store.listen_for_new_jobs(broken)
    await store.listen_for_new_jobs(heard.append)
    user = await new_user(store)

    for group in ("g1", "g2"):
        await store.create_jobs(user.id, [new_job(group)])

        async def heard_of(group: str = group) -> bool | None:
            return group in heard or None

        await eventually(heard_of)


@pytest.mark.postgres
async def test_heartbeats_leave_the_lease_index_alone_yet_only_silence_stalls_a_job(
    fresh_postgres_url: Callable[[], str],
) -> None:
    url = fresh_postgres_url()
    store = PostgresStore(url)
    await store.open()
    admin = await asyncpg.connect(url)
    try:
        user = await new_user(store)
        [job] = await submit(store, user, heartbeat_interval=30)
        assert await store.claim_job("m1", GROUP, None) is not None
        lease = "SELECT lease_expires FROM jobs WHERE id = $1"
        claimed_lease = await admin.fetchval(lease, job.id)

        # A heartbeat with most of the lease left moves no indexed column, so PostgreSQL can
        # update the row in place (HOT) without touching the indexes.
        assert await store.heartbeat(job.id, "m1", None) == "running"
        assert await admin.fetchval(lease, job.id) == claimed_lease

        # The lease index says expired, but the job beat 10 s ago: it is not stalled.
        await admin.execute(
            "UPDATE jobs SET lease_expires = now() - interval '1 s',"
            " heartbeat = now() - interval '10 s' WHERE id = $1",
            job.id,
        )
        assert await store.claim_job("m2", GROUP, None) is None
        # The next heartbeat, with less than half an interval left, moves the lease on.
        assert await store.heartbeat(job.id, "m1", None) == "running"
        assert await admin.fetchval(lease, job.id) > claimed_lease

        # Silent for more than two intervals: stalled, whatever the lease column says.
        await admin.execute(
            "UPDATE jobs SET lease_expires = now() - interval '1 s',"
            " heartbeat = now() - interval '61 s' WHERE id = $1",
            job.id,
        )
        taken = await store.claim_job("m2", GROUP, None)
        assert taken is not None and taken.id == job.id and taken.machine_id == "m2"
    finally:
        await admin.close()
        await store.close()


@pytest.mark.postgres
async def test_listener_reconnects_after_losing_its_connection(
    fresh_postgres_url: Callable[[], str],
) -> None:
    url = fresh_postgres_url()
    store = PostgresStore(url)
    await store.open()
    heard: list[str] = []

    async def announced(group: str) -> bool | None:
        await store.create_jobs(user.id, [new_job(group)])
        await asyncio.sleep(0.1)
        return group in heard or None

    try:
        await store.listen_for_new_jobs(heard.append)
        user = await new_user(store)
        assert await announced("before")
        admin = await asyncpg.connect(url)  # a network failure, played by the server
        terminated = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN%' AND pg_terminate_backend(pid)"
        )
        await admin.close()
        assert terminated == 1

        assert await eventually(lambda: announced("after"), within=30)
    finally:
        await store.close()


async def test_a_failing_write_among_concurrent_writes_fails_alone(
    store: Store, database_url: str
) -> None:
    # Concurrent writes share a transaction on SQLite (group commit): each must still
    # succeed or fail on its own, and what succeeded must be durable.
    user = await new_user(store)
    await submit(store, user, 10)
    held = [await store.claim_job(f"m{i}", GROUP, None) for i in range(5)]
    assert all(job is not None for job in held)

    results = await asyncio.gather(
        *(store.heartbeat(job.id, job.machine_id or "", None) for job in held if job),
        store.create_user(user.username),
        store.add_api_key(str(uuid.uuid4()), "hash-of-nobody", None, None),
        store.create_jobs(user.id, [new_job("kept"), new_job("rejected", max_failures=0)]),
        *(store.create_jobs(user.id, [new_job("kept")]) for _ in range(5)),
        *(store.claim_job(f"n{i}", GROUP, None) for i in range(5)),
        return_exceptions=True,
    )

    beats, taken_name, unknown_user, bad_batch = results[:5], results[5], results[6], results[7]
    submitted, claimed = results[8:13], results[13:]
    assert beats == ["running"] * 5
    assert isinstance(taken_name, AlreadyExists)
    assert isinstance(unknown_user, NotFound)
    assert isinstance(bad_batch, StoreError)
    assert all(isinstance(jobs, list) and len(jobs) == 1 for jobs in submitted)
    assert all(isinstance(job, Job) and job.status == "running" for job in claimed)
    reopened = open_store(database_url)  # what a 2xx promised survives a restart
    await reopened.open()
    try:
        jobs = await reopened.list_jobs(JobQuery(user_id=user.id, page_size=1000))
        assert sorted(job.container_group_id for job in jobs) == [GROUP] * 10 + ["kept"] * 5
        assert sum(job.num_heartbeats for job in jobs) == 5
        assert sorted(job.machine_id or "" for job in jobs if job.status == "running") == sorted(
            [f"m{i}" for i in range(5)] + [f"n{i}" for i in range(5)]
        )
        assert await reopened.principal_for_key("hash-of-nobody") is None
    finally:
        await reopened.close()


# -- SQLite group commit (kelpie.store._group_commit) ---------------------------------------


class _Gate:
    """Holds the writer thread inside an operation until opened, so that the operations
    queued meanwhile make up the next group."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()

    def hold(self, conn: sqlite3.Connection) -> None:
        self.entered.set()
        self._open.wait(10)

    def open(self) -> None:
        self._open.set()


@asynccontextmanager
async def group_commit_writer(path: Path) -> AsyncIterator[tuple[GroupCommitWriter, list[str]]]:
    """A writer on a one-table database, with the statements it runs."""
    statements: list[str] = []

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        conn.execute("CREATE TABLE IF NOT EXISTS items (name TEXT PRIMARY KEY)")
        conn.set_trace_callback(statements.append)
        return conn

    writer = GroupCommitWriter(connect, name="test-writer")
    await writer.start()
    try:
        yield writer, statements
    finally:
        await writer.stop()


def insert(name: str) -> Callable[[sqlite3.Connection], int]:
    return lambda conn: conn.execute("INSERT INTO items VALUES (?)", (name,)).rowcount


def stored_items(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM items")}
    finally:
        conn.close()


async def queue_behind_gate(
    writer: GroupCommitWriter, gate: _Gate, operations: list[Callable[[sqlite3.Connection], Any]]
) -> list[asyncio.Task[Any]]:
    held = asyncio.create_task(writer.run(gate.hold))
    await asyncio.to_thread(gate.entered.wait, 10)
    calls = [asyncio.create_task(writer.run(operation)) for operation in operations]
    await asyncio.sleep(0)  # each call's first step puts it on the queue
    calls.append(held)
    return calls


async def test_group_commit_rolls_back_only_the_failing_operation(tmp_path: Path) -> None:
    def insert_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items VALUES ('undone')")
        raise ValueError("boom")

    gate = _Gate()
    async with group_commit_writer(tmp_path / "db") as (writer, statements):
        calls = await queue_behind_gate(
            writer, gate, [insert("a"), insert_then_fail, insert("a"), insert("c")]
        )
        gate.open()
        results = await asyncio.gather(*calls, return_exceptions=True)

    first, failed, duplicate, last, _ = results
    assert first == 1 and last == 1
    assert isinstance(failed, ValueError)
    assert isinstance(duplicate, sqlite3.IntegrityError)
    assert stored_items(tmp_path / "db") == {"a", "c"}
    assert statements.count("BEGIN IMMEDIATE") == statements.count("COMMIT") == 2  # gate, group


async def test_group_commit_answers_only_after_the_commit(tmp_path: Path) -> None:
    async with group_commit_writer(tmp_path / "db") as (writer, statements):
        await writer.run(insert("a"))

        written = statements.index("INSERT INTO items VALUES ('a')")
        assert "COMMIT" in statements[written:]


async def test_group_commit_skips_a_call_cancelled_before_its_group(tmp_path: Path) -> None:
    gate = _Gate()
    async with group_commit_writer(tmp_path / "db") as (writer, _):
        cancelled, kept, held = await queue_behind_gate(
            writer, gate, [insert("cancelled"), insert("kept")]
        )
        cancelled.cancel()
        gate.open()
        await asyncio.gather(held, kept)

    assert cancelled.cancelled()
    assert stored_items(tmp_path / "db") == {"kept"}


async def test_group_commit_finishes_an_operation_whose_caller_left(tmp_path: Path) -> None:
    gate = _Gate()

    def insert_slowly(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO items VALUES ('started')")
        gate.hold(conn)

    async with group_commit_writer(tmp_path / "db") as (writer, _):
        call = asyncio.create_task(writer.run(insert_slowly))
        await asyncio.to_thread(gate.entered.wait, 10)
        call.cancel()
        gate.open()
        with pytest.raises(asyncio.CancelledError):
            await call

        assert await writer.run(insert("next")) == 1  # the writer is not left locked

    assert stored_items(tmp_path / "db") == {"started", "next"}


# -- PostgreSQL connection pool (kelpie.store._connection_pool) -----------------------------


@asynccontextmanager
async def connection_pool(url: str, max_size: int) -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(lambda: asyncpg.connect(url), max_size)
    await pool.open(1)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.mark.postgres
async def test_pool_serves_every_caller_with_at_most_max_size_connections(
    fresh_postgres_url: Callable[[], str],
) -> None:
    async with connection_pool(fresh_postgres_url(), max_size=3) as pool:
        backends = await asyncio.gather(
            *(pool.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.01)") for _ in range(30))
        )

    assert len(backends) == 30 and len(set(backends)) <= 3


@pytest.mark.postgres
async def test_pool_reuses_a_connection_after_an_error_postgres_answered(
    fresh_postgres_url: Callable[[], str],
) -> None:
    async with connection_pool(fresh_postgres_url(), max_size=1) as pool:
        before = await pool.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await pool.fetchval("SELECT 1 / 0")
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.UndefinedTableError):
                async with conn.transaction():
                    await conn.execute("SELECT * FROM no_such_table")

        assert await pool.fetchval("SELECT pg_backend_pid()") == before


@pytest.mark.postgres
async def test_pool_closes_a_connection_whose_call_was_cancelled(
    fresh_postgres_url: Callable[[], str],
) -> None:
    url = fresh_postgres_url()
    async with connection_pool(url, max_size=1) as pool:
        before = await pool.fetchval("SELECT pg_backend_pid()")
        call = asyncio.create_task(pool.fetchval("SELECT pg_sleep(5)"))
        waiting = asyncio.create_task(pool.fetchval("SELECT pg_backend_pid()"))
        watcher = await asyncpg.connect(url)
        try:  # cancel only once the server is running the statement
            await eventually(
                lambda: watcher.fetchval(
                    "SELECT true FROM pg_stat_activity WHERE pid = $1 AND state = 'active'"
                    " AND query = 'SELECT pg_sleep(5)'",
                    before,
                )
            )
        finally:
            await watcher.close()
        call.cancel()

        assert await waiting != before  # a new connection, not the one mid-statement
        with pytest.raises(asyncio.CancelledError):
            await call


# -- webhook outbox -------------------------------------------------------------------------


async def test_state_changes_queue_webhook_events(store: Store) -> None:
    user = await new_user(store)
    hook = "https://example.com/hook"
    done, failing = await submit(store, user, 2, webhook=hook, max_failures=2)
    await submit(store, user, 1)  # no webhook, no events
    assert await store.claim_job("m1", GROUP, None) is not None
    assert await store.claim_job("m2", GROUP, None) is not None
    assert await store.complete_if_held(done.id, "m1", None) is HeldOutcome.DONE
    await store.fail_if_held(failing.id, "m2", None, 1, "x")  # back to pending: no event
    assert await store.claim_job("m3", GROUP, None) is not None
    assert await store.claim_job("m4", GROUP, None) is not None  # the job without webhook
    await store.fail_if_held(failing.id, "m3", None, 1, "x")

    events = await store.claim_webhook_events(100, 30)

    assert all(event.url == hook and event.user_id == user.id for event in events)
    assert all(event.attempts == 0 for event in events)
    assert [dict(event.payload) for event in events] == [
        {"status": "running", "job_id": done.id, "machine_id": "m1", "container_group_id": GROUP},
        {
            "status": "running",
            "job_id": failing.id,
            "machine_id": "m2",
            "container_group_id": GROUP,
        },
        {"status": "completed", "job_id": done.id, "machine_id": "m1", "container_group_id": GROUP},
        {
            "status": "running",
            "job_id": failing.id,
            "machine_id": "m3",
            "container_group_id": GROUP,
        },
        {"status": "failed", "job_id": failing.id, "machine_id": "m3", "container_group_id": GROUP},
    ]
    assert [event.id for event in events] == sorted(event.id for event in events)
    assert await store.pending_webhook_count() == 5


async def test_webhook_events_are_leased_retried_and_given_up(store: Store) -> None:
    user = await new_user(store)
    await submit(store, user, 3, webhook="https://example.com/hook")
    for machine in ("m1", "m2", "m3"):
        assert await store.claim_job(machine, GROUP, None) is not None

    first_two = await store.claim_webhook_events(2, 30)
    last = await store.claim_webhook_events(10, 30)
    assert len(first_two) == 2 and len(last) == 1
    assert first_two[1].id < last[0].id
    assert await store.claim_webhook_events(10, 30) == []  # all leased

    delivered, retried, dead = first_two[0], first_two[1], last[0]
    assert await store.webhook_delivered(delivered)
    assert await store.webhook_retry_later(retried, 0, "503 Service Unavailable")
    assert await store.webhook_give_up(dead, "410 Gone")

    assert await store.pending_webhook_count() == 1
    [again] = await store.claim_webhook_events(10, 30)
    assert again.id == retried.id and again.attempts == 1
    assert again.payload == retried.payload and again.created == retried.created
    assert await store.webhook_retry_later(again, 3600, "timeout")
    assert await store.claim_webhook_events(10, 30) == []  # not due for an hour
    assert await store.pending_webhook_count() == 1


async def test_finished_webhook_events_are_purged_and_pending_ones_kept(
    store: Store, clock: ManualClock
) -> None:
    user = await new_user(store)
    await submit(store, user, 3, webhook="https://example.com/hook")
    for machine in ("m1", "m2", "m3"):
        assert await store.claim_job(machine, GROUP, None) is not None
    delivered, dead, pending = await store.claim_webhook_events(10, 30)
    assert await store.webhook_delivered(delivered)
    assert await store.webhook_give_up(dead, "410 Gone")
    assert await store.webhook_retry_later(pending, 0, "503")

    clock.advance(3599)
    assert await store.purge_finished_webhooks(older_than_seconds=3600) == 0
    clock.advance(2)
    assert await store.purge_finished_webhooks(older_than_seconds=3600) == 2

    [left] = await store.claim_webhook_events(10, 30)
    assert left.id == pending.id
    assert await store.pending_webhook_count() == 1


async def lease_taken_over(store: Store, clock: ManualClock) -> tuple[WebhookEvent, WebhookEvent]:
    """One event leased for 0.2 s, then claimed again once that lease ran out: the first
    holder's view of it and the second's."""
    user = await new_user(store)
    await submit(store, user, webhook="https://example.com/hook")
    assert await store.claim_job("m1", GROUP, None) is not None
    [first] = await store.claim_webhook_events(10, 0.2)
    clock.advance(0.1)
    assert await store.claim_webhook_events(10, 30) == []  # still leased
    clock.advance(0.1)

    [second] = await store.claim_webhook_events(10, 30)
    return first, second


async def test_expired_webhook_lease_makes_the_event_due_again(
    store: Store, clock: ManualClock
) -> None:
    leased, again = await lease_taken_over(store, clock)

    assert again.id == leased.id and again.attempts == 0
    assert again.lease_token != leased.lease_token


async def test_a_holder_past_its_lease_cannot_undo_the_next_holders_outcome(
    store: Store, clock: ManualClock
) -> None:
    stalled, taken_over = await lease_taken_over(store, clock)

    # The stalled holder wakes up: none of its outcomes may clear the new holder's lease.
    assert not await store.webhook_retry_later(stalled, 0, "timeout")
    assert not await store.webhook_give_up(stalled, "410 Gone")
    assert not await store.webhook_delivered(stalled)
    assert await store.claim_webhook_events(10, 30) == []  # still leased to the new holder
    assert await store.pending_webhook_count() == 1

    assert await store.webhook_retry_later(taken_over, 0, "503")
    [retried] = await store.claim_webhook_events(10, 30)
    assert retried.attempts == 1  # only the holder's attempt was counted
    assert await store.webhook_delivered(retried)
    assert not await store.webhook_delivered(retried)  # recorded once
    assert await store.pending_webhook_count() == 0


# -- webhook receivers: fair claims and pauses ---------------------------------------------


async def queue_events(store: Store, user: User, url: str, count: int) -> None:
    """`count` queued `running` events to `url`: jobs of a group of their own, claimed."""
    group = f"hooks-{uuid.uuid4().hex[:8]}"
    await submit(store, user, count, webhook=url, container_group_id=group)
    for n in range(count):
        assert await store.claim_job(f"m{n}", group, None) is not None


@pytest.mark.parametrize(
    ("url", "receiver"),
    [
        ("https://Hooks.Example.com/a/b?c=d", "https://hooks.example.com"),
        ("http://example.com:8080/x/y", "http://example.com:8080"),
        ("http://example.com?x=1", "http://example.com"),
        ("http://example.com#part", "http://example.com"),
        ("https://example.com", "https://example.com"),
        ("http://[::1]:9000/hook?x=/y", "http://[::1]:9000"),
    ],
)
async def test_a_webhook_events_receiver_is_scheme_host_and_port_of_its_url(
    store: Store, url: str, receiver: str
) -> None:
    await queue_events(store, await new_user(store), url, 1)

    [event] = await store.claim_webhook_events(10, 30)

    assert event.url == url and event.receiver == receiver


async def test_one_receivers_backlog_does_not_fill_the_claim(store: Store) -> None:
    busy, quiet, other = "https://busy.example.com", "https://quiet.example.com", "http://x.org"
    user = await new_user(store)
    await queue_events(store, user, f"{busy}/hook", 20)
    await queue_events(store, user, f"{quiet}/hook", 2)
    await queue_events(store, await new_user(store), f"{other}/hook", 1)

    events = await store.claim_webhook_events(6, 30, per_receiver=10)

    # Round robin: every receiver's first event, then every second one, ...
    assert Counter(event.receiver for event in events) == {busy: 3, quiet: 2, other: 1}
    oldest_busy = await store.claim_webhook_events(100, 30, allowances={quiet: 0, other: 0})
    assert max(e.id for e in events if e.receiver == busy) < min(e.id for e in oldest_busy)


async def test_a_claim_takes_at_most_each_receivers_allowance(store: Store) -> None:
    a, b, c = "https://a.example.com", "https://b.example.com", "https://c.example.com"
    user = await new_user(store)
    for receiver in (a, b, c):
        await queue_events(store, user, f"{receiver}/hook", 4)

    events = await store.claim_webhook_events(100, 30, per_receiver=2, allowances={a: 0, b: 1})

    assert Counter(event.receiver for event in events) == {b: 1, c: 2}
    rest = await store.claim_webhook_events(100, 30)
    assert Counter(event.receiver for event in rest) == {a: 4, b: 3, c: 2}


async def test_a_postponed_event_is_released_without_counting_an_attempt(store: Store) -> None:
    await queue_events(store, await new_user(store), "https://example.com/hook", 1)
    [event] = await store.claim_webhook_events(10, 30)

    assert await store.webhook_postpone(event, 3600)
    assert await store.claim_webhook_events(10, 30) == []  # not due for an hour
    assert not await store.webhook_postpone(event, 0)  # its lease was released
    assert await store.pending_webhook_count() == 1


async def test_postponing_needs_the_lease(store: Store, clock: ManualClock) -> None:
    stalled, taken_over = await lease_taken_over(store, clock)

    assert not await store.webhook_postpone(stalled, 0)
    assert await store.webhook_postpone(taken_over, 0)
    [again] = await store.claim_webhook_events(10, 30)
    assert again.id == taken_over.id and again.attempts == 0


async def test_pausing_a_receiver_holds_back_its_pending_events_only(
    store: Store, clock: ManualClock
) -> None:
    paused, other = "https://down.example.com", "https://up.example.com"
    user = await new_user(store)
    await queue_events(store, user, f"{paused}/hook", 3)
    await queue_events(store, user, f"{other}/hook", 1)
    [in_flight] = await store.claim_webhook_events(1, 30, allowances={other: 0})
    [retrying] = await store.claim_webhook_events(1, 30, allowances={other: 0})
    assert await store.webhook_retry_later(retrying, 7200, "no answer")

    # The unleased event due now waits; the leased one and the one due later stay as they are.
    assert await store.postpone_receiver_webhooks(paused, 0.5) == 1
    [left] = await store.claim_webhook_events(10, 30)
    assert left.receiver == other
    assert await store.webhook_retry_later(in_flight, 0, "no answer")
    [recorded] = await store.claim_webhook_events(10, 30)
    assert recorded.id == in_flight.id

    clock.advance(0.4)
    assert await store.claim_webhook_events(10, 30) == []  # still paused
    clock.advance(0.1)

    [waited] = await store.claim_webhook_events(10, 30)
    assert waited.receiver == paused and waited.attempts == 0
    assert waited.id not in (in_flight.id, retrying.id)


async def test_concurrent_claims_never_hand_out_one_event_twice(store: Store) -> None:
    user = await new_user(store)
    for n in range(5):
        await queue_events(store, user, f"https://r{n}.example.com/hook", 8)

    ids: list[int] = []
    while len(ids) < 40:
        claims = await asyncio.gather(
            *(store.claim_webhook_events(7, 30, per_receiver=3) for _ in range(8))
        )
        claimed = [event.id for claim in claims for event in claim]
        assert claimed, "the outbox still holds unleased events"
        ids += claimed

    assert len(ids) == len(set(ids)) == 40


# -- scaling rules --------------------------------------------------------------------------


def new_rule(user: User, group: str = GROUP, **fields: Any) -> ScalingRule:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "user_id": user.id,
        "container_group_id": group,
        "min_replicas": 0,
        "max_replicas": 5,
        "idle_threshold_seconds": 60,
        "created": now,
        "updated": now,
        "org_name": "acme",
        "project_name": "render",
    }
    values.update(fields)
    return ScalingRule(**values)


async def test_scaling_rule_lifecycle(store: Store) -> None:
    alice, bob = await new_user(store), await new_user(store)
    rule = await store.create_scaling_rule(new_rule(alice))
    assert (rule.min_replicas, rule.max_replicas, rule.idle_threshold_seconds) == (0, 5, 60)
    assert (rule.org_name, rule.project_name) == ("acme", "render")
    with pytest.raises(AlreadyExists):
        await store.create_scaling_rule(new_rule(alice))
    bobs = await store.create_scaling_rule(new_rule(bob, min_replicas=1))  # same group, ok
    other = await store.create_scaling_rule(new_rule(alice, "group-b"))

    assert await store.get_scaling_rule(alice.id, GROUP) == rule
    assert await store.get_scaling_rule(alice.id, "group-c") is None
    assert await store.list_scaling_rules(alice.id) == [rule, other]
    assert await store.list_scaling_rules(None) == [rule, bobs, other]

    updated = await store.update_scaling_rule(alice.id, GROUP, ScalingRulePatch(max_replicas=9))
    assert updated is not None
    assert (updated.min_replicas, updated.max_replicas, updated.idle_threshold_seconds) == (
        0,
        9,
        60,
    )
    assert updated.created == rule.created and updated.updated >= rule.updated
    assert await store.update_scaling_rule(alice.id, "group-c", ScalingRulePatch()) is None
    with pytest.raises(InvalidChange):
        await store.update_scaling_rule(alice.id, GROUP, ScalingRulePatch(min_replicas=10))
    assert await store.get_scaling_rule(alice.id, GROUP) == updated
    assert await store.get_scaling_rule(bob.id, GROUP) == bobs  # untouched

    assert await store.delete_scaling_rule(alice.id, GROUP) is True
    assert await store.delete_scaling_rule(alice.id, GROUP) is False
    assert await store.get_scaling_rule(alice.id, GROUP) is None
    await store.delete_all_scaling_rules()
    assert await store.list_scaling_rules(None) == []


async def test_concurrent_patches_never_leave_min_above_max(store: Store) -> None:
    user = await new_user(store)
    await store.create_scaling_rule(new_rule(user, min_replicas=0, max_replicas=5))

    # Each patch alone keeps min <= max; applied together they would not.
    outcomes = await asyncio.gather(
        store.update_scaling_rule(user.id, GROUP, ScalingRulePatch(min_replicas=4)),
        store.update_scaling_rule(user.id, GROUP, ScalingRulePatch(max_replicas=2)),
        return_exceptions=True,
    )

    assert sum(isinstance(outcome, InvalidChange) for outcome in outcomes) == 1
    rule = await store.get_scaling_rule(user.id, GROUP)
    assert rule is not None and rule.min_replicas <= rule.max_replicas


async def test_count_active_jobs_includes_recently_ended(store: Store, clock: ManualClock) -> None:
    user, other = await new_user(store), await new_user(store)
    await submit(store, user, 4)
    await submit(store, user, group="group-b")
    await submit(store, other)
    first = await store.claim_job("m1", GROUP, user.id)
    second = await store.claim_job("m2", GROUP, user.id)
    assert first is not None and second is not None
    assert await store.complete_if_held(second.id, "m2", None) is HeldOutcome.DONE
    [canceled] = await store.list_jobs(
        JobQuery(user_id=user.id, status="pending", container_group_id=GROUP, page_size=1)
    )
    assert await store.cancel_job(canceled.id, None) is CancelOutcome.CANCELED

    # one running, one pending, and two ended within the hour
    assert await store.count_active_jobs(user.id, GROUP, 3600) == 4
    clock.advance(0.01)
    assert await store.count_active_jobs(user.id, GROUP, 0) == 2


# -- leases ---------------------------------------------------------------------------------


async def test_lease_is_exclusive_until_it_expires(store: Store, clock: ManualClock) -> None:
    assert await store.try_lease("autoscaler", "api-1", 0.5) is True
    assert await store.try_lease("autoscaler", "api-2", 0.5) is False
    clock.advance(0.3)
    assert await store.try_lease("autoscaler", "api-1", 0.5) is True  # renewal
    assert await store.try_lease("webhooks", "api-2", 0.5) is True  # another lease
    clock.advance(0.3)
    assert await store.try_lease("autoscaler", "api-2", 30) is False  # renewed: not yet
    clock.advance(0.2)

    assert await store.try_lease("autoscaler", "api-2", 30) is True
    assert await store.try_lease("autoscaler", "api-1", 30) is False


# -- factory --------------------------------------------------------------------------------


def test_open_store_picks_the_backend_from_the_url() -> None:
    assert isinstance(open_store("sqlite:///./kelpie.db"), SqliteStore)
    assert isinstance(open_store("sqlite:////var/lib/kelpie.db"), SqliteStore)
    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@h/db"), PostgresStore)
    for bad in ("mysql://h/db", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValueError):
            open_store(bad)


async def test_store_must_be_opened_before_use(sqlite_url: str) -> None:
    with pytest.raises(StoreUnavailable):
        await open_store(sqlite_url).get_job("x", None)


async def test_a_database_locked_too_long_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kelpie.store._group_commit, "LOCK_WAIT_S", 0.2)
    store = SqliteStore(tmp_path / "kelpie.db")
    await store.open()
    holder = sqlite3.connect(tmp_path / "kelpie.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock

        with pytest.raises(StoreUnavailable):
            await store.create_user("waits-too-long")
        with pytest.raises(StoreUnavailable):
            await store.ping()

        holder.execute("ROLLBACK")
        await store.ping()
        assert await store.create_user("after-the-lock") is not None
    finally:
        holder.close()
        await store.close()


async def test_an_unreachable_postgres_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{closed_port}/kelpie")

    with pytest.raises(StoreUnavailable):
        await store.open()
    with pytest.raises(StoreUnavailable):
        await store.ping()
