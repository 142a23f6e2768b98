"""The SDK against a real `kelpie serve`: every endpoint, typed results, errors by status."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kelpie.client import (
    ApiUnavailable,
    AsyncKelpieClient,
    BadRequest,
    Conflict,
    Forbidden,
    KelpieClient,
    NotFoundError,
    Unauthorized,
)
from kelpie.schemas import JobCreate, JobOut, SyncConfig, SyncEntry
from tests.support.api import new_admin_key
from tests.support.processes import ServerProcess, free_port, start_server


def _start(directory: Path) -> ServerProcess:
    return start_server(f"sqlite:///{directory / 'k.db'}", new_admin_key(), directory / "logs")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory.mktemp("client-api"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[KelpieClient]:
    with KelpieClient(server.url, server.admin_key) as client:
        yield client


@dataclass
class User:
    id: str
    key: str
    client: KelpieClient


@pytest.fixture
def user(server: ServerProcess, admin: KelpieClient) -> Iterator[User]:
    created = admin.create_user(f"user-{uuid.uuid4().hex[:12]}")
    key = admin.create_token(created.id)
    with KelpieClient(server.url, key) as client:
        yield User(created.id, key, client)


@pytest.fixture
async def async_client(server: ServerProcess, user: User) -> AsyncIterator[AsyncKelpieClient]:
    async with AsyncKelpieClient(server.url, user.key) as client:
        yield client


@pytest.fixture
def group() -> str:
    return f"group-{uuid.uuid4().hex[:12]}"


def job_in(group: str, **fields: object) -> dict[str, object]:
    return {"command": "python", "arguments": ["main.py"], "container_group_id": group, **fields}


# -- users and keys ---------------------------------------------------------------------------


def test_admin_creates_a_user_whose_key_works(admin: KelpieClient, server: ServerProcess) -> None:
    name = f"ann-{uuid.uuid4().hex[:8]}"
    created = admin.create_user(name)
    key = admin.create_token(created.id, org_name="org", project_name="proj")
    with KelpieClient(server.url, key) as client:
        me = client.me()
    assert (me.id, me.username, me.is_admin) == (created.id, name, False)
    assert me.webhook_secret and me.webhook_token
    assert admin.me().is_admin


def test_a_taken_username_is_a_conflict(admin: KelpieClient) -> None:
    name = f"bob-{uuid.uuid4().hex[:8]}"
    admin.create_user(name)
    with pytest.raises(Conflict) as caught:
        admin.create_user(name)
    assert caught.value.status_code == 409


def test_only_admins_manage_users(user: User) -> None:
    with pytest.raises(Forbidden):
        user.client.create_user(f"eve-{uuid.uuid4().hex[:8]}")


def test_an_unknown_key_is_forbidden_and_no_key_unauthorized(server: ServerProcess) -> None:
    with KelpieClient(server.url, "not-a-key") as client, pytest.raises(Forbidden) as forbidden:
        client.me()
    assert forbidden.value.message
    with KelpieClient(server.url, None) as client, pytest.raises(Unauthorized):
        client.me()


# -- jobs -------------------------------------------------------------------------------------


def test_submit_and_get_a_job(user: User, group: str) -> None:
    submitted = user.client.submit_job(
        JobCreate(
            command="python",
            arguments=["train.py"],
            environment={"LR": "0.1"},
            input_bucket="b",
            input_prefix="in",
            container_group_id=group,
            max_failures=2,
        )
    )
    assert isinstance(submitted, JobOut)
    assert submitted.status == "pending"
    assert submitted.user_id == user.id
    assert submitted.input_prefix == "in/"
    fetched = user.client.get_job(submitted.id)
    assert fetched.pending_reason is not None  # only a read of one job says why it waits
    assert fetched.model_copy(update={"pending_reason": None}) == submitted


def test_a_sync_job_round_trips(user: User, group: str) -> None:
    sync = SyncConfig(
        before=[SyncEntry(bucket="b", prefix="in", local_path="/in", direction="download")]
    )
    job = user.client.submit_job(JobCreate(command="x", container_group_id=group, sync=sync))
    assert job.sync is not None
    assert job.sync.before[0].prefix == "in/"
    assert job.input_bucket is None


def test_an_invalid_job_is_a_bad_request_naming_the_field(user: User, group: str) -> None:
    with pytest.raises(BadRequest) as caught:
        user.client.submit_job({"command": "", "container_group_id": group})
    assert caught.value.status_code == 400
    assert "command" in str(caught.value)
    with pytest.raises(BadRequest):
        user.client.submit_job({"command": "x", "container_group_id": group, "colour": "red"})


def test_a_batch_keeps_its_order_and_is_all_or_nothing(user: User, group: str) -> None:
    jobs = user.client.submit_batch([job_in(group, arguments=[str(i)]) for i in range(3)])
    assert [job.arguments for job in jobs] == [["0"], ["1"], ["2"]]
    with pytest.raises(BadRequest) as caught:
        user.client.submit_batch([job_in(group), {"container_group_id": group}])
    assert caught.value.details["index"] == 1
    assert str(caught.value).startswith("batch item 1: command")
    assert user.client.list_jobs(container_group_id=group).count == 3


def test_list_filters_and_pages(user: User, group: str) -> None:
    ids = [job.id for job in user.client.submit_batch([job_in(group) for _ in range(5)])]
    user.client.cancel_job(ids[0])

    newest_first = user.client.list_jobs(container_group_id=group, page_size=2)
    assert newest_first.count == len(newest_first.jobs) == 2
    oldest_first = user.client.list_jobs(container_group_id=group, page_size=2, asc=True)
    assert oldest_first.jobs[0].id == ids[0]
    canceled = user.client.list_jobs(status="canceled", container_group_id=group)
    assert [job.id for job in canceled.jobs] == [ids[0]]
    every = [
        job.id for job in user.client.iter_jobs(container_group_id=group, page_size=2, asc=True)
    ]
    assert every == ids


async def test_async_iter_jobs_walks_every_page(
    user: User, async_client: AsyncKelpieClient, group: str
) -> None:
    ids = [job.id for job in await async_client.submit_batch([job_in(group) for _ in range(3)])]
    seen = [
        job.id
        async for job in async_client.iter_jobs(container_group_id=group, page_size=1, asc=True)
    ]
    assert seen == ids


def test_cancel_then_cancel_again_then_conflict_when_finished(user: User, group: str) -> None:
    job = user.client.submit_job(job_in(group))
    assert user.client.cancel_job(job.id) == "Job canceled"
    assert user.client.cancel_job(job.id) == "Job canceled"
    assert user.client.get_job(job.id).status == "canceled"

    done = user.client.submit_job(job_in(group))
    assert user.client.poll_work("m1", group) is not None
    user.client.report_completed(done.id, "m1", group)
    with pytest.raises(Conflict):
        user.client.cancel_job(done.id)


def test_an_unknown_job_and_another_users_job_are_not_found(
    user: User, admin: KelpieClient, server: ServerProcess, group: str
) -> None:
    with pytest.raises(NotFoundError) as caught:
        user.client.get_job(str(uuid.uuid4()))
    assert caught.value.status_code == 404
    other = admin.create_user(f"other-{uuid.uuid4().hex[:8]}")
    with KelpieClient(server.url, admin.create_token(other.id)) as stranger:
        theirs = stranger.submit_job(job_in(group))
    with pytest.raises(NotFoundError):
        user.client.get_job(theirs.id)
    with pytest.raises(NotFoundError):
        user.client.list_attempts(theirs.id)


def test_purge_deletes_pending_and_cancels_running(user: User, group: str) -> None:
    jobs = user.client.submit_batch([job_in(group) for _ in range(3)])
    running = user.client.poll_work("m1", group)
    assert running is not None
    assert user.client.purge_group(group) == 3
    assert user.client.get_job(running.id).status == "canceled"
    assert {job.id for job in user.client.iter_jobs(container_group_id=group)} == {running.id}
    assert len(jobs) == 3


# -- the worker protocol ----------------------------------------------------------------------


async def test_a_worker_claims_beats_and_completes(
    async_client: AsyncKelpieClient, group: str
) -> None:
    job = await async_client.submit_job(job_in(group))
    claimed = await async_client.poll_work("m1", group)
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.machine_id) == (job.id, "running", "m1")
    assert await async_client.poll_work("m2", group) is None

    attempt_id = claimed.attempt_id
    assert attempt_id is not None
    assert await async_client.heartbeat(job.id, "m1", group, attempt_id) == "running"
    assert await async_client.heartbeat(job.id, "m2", group) == "canceled"
    await async_client.report_completed(job.id, "m1", group, attempt_id)
    with pytest.raises(Conflict):  # a repeat after success, with the token: refused
        await async_client.report_completed(job.id, "m1", group, attempt_id)

    done = await async_client.get_job(job.id)
    assert (done.status, done.num_heartbeats) == ("completed", 1)
    [attempt] = await async_client.list_attempts(job.id)
    assert (attempt.machine_id, attempt.outcome) == ("m1", "completed")


async def test_a_failure_hands_the_job_on_and_the_last_one_fails_it(
    async_client: AsyncKelpieClient, group: str
) -> None:
    job = await async_client.submit_job(job_in(group, max_failures=2))
    assert await async_client.poll_work("m1", group) is not None
    await async_client.report_failed(job.id, "m1", group, exit_code=3, error="boom")
    assert await async_client.poll_work("m1", group) is None  # m1 is blocked from it
    assert await async_client.poll_work("m2", group) is not None
    await async_client.report_failed(job.id, "m2", group, exit_code=None, error=None)

    failed = await async_client.get_job(job.id)
    assert (failed.status, failed.num_failures, failed.last_exit_code) == ("failed", 2, None)
    attempts = await async_client.list_attempts(job.id)
    assert [(a.machine_id, a.outcome) for a in attempts] == [("m1", "failed"), ("m2", "failed")]
    assert attempts[0].exit_code == 3


async def test_an_interrupted_job_is_pending_again_without_a_failure(
    async_client: AsyncKelpieClient, group: str
) -> None:
    job = await async_client.submit_job(job_in(group))
    assert await async_client.poll_work("m1", group) is not None
    await async_client.report_interrupted(job.id, "m1", group)
    again = await async_client.get_job(job.id)
    assert (again.status, again.num_failures) == ("pending", 0)
    reclaimed = await async_client.poll_work("m1", group)
    assert reclaimed is not None and reclaimed.id == job.id


async def test_a_long_poll_returns_when_a_job_arrives(
    async_client: AsyncKelpieClient, group: str
) -> None:
    async def submit_soon() -> None:
        await asyncio.sleep(0.5)
        await async_client.submit_job(job_in(group))

    loop = asyncio.get_running_loop()
    started = loop.time()
    submitter = asyncio.create_task(submit_soon())
    claimed = await async_client.poll_work("m1", group, wait=10)
    await submitter
    assert claimed is not None
    assert loop.time() - started < 5


# -- scaling rules ----------------------------------------------------------------------------


def test_scaling_rule_lifecycle(user: User, group: str) -> None:
    created = user.client.create_scaling_rule(
        group, min_replicas=0, max_replicas=4, idle_threshold_seconds=120
    )
    assert (created.container_group_id, created.max_replicas, created.user_id) == (
        group,
        4,
        user.id,
    )
    with pytest.raises(Conflict):
        user.client.create_scaling_rule(
            group, min_replicas=0, max_replicas=1, idle_threshold_seconds=0
        )
    assert [rule.container_group_id for rule in user.client.list_scaling_rules()] == [group]
    updated = user.client.update_scaling_rule(group, max_replicas=8)
    assert (updated.min_replicas, updated.max_replicas, updated.idle_threshold_seconds) == (
        0,
        8,
        120,
    )
    assert user.client.get_scaling_rule(group) == updated
    with pytest.raises(BadRequest):
        user.client.update_scaling_rule(group, min_replicas=9)  # above max
    user.client.delete_scaling_rule(group)
    with pytest.raises(NotFoundError):
        user.client.get_scaling_rule(group)


def test_an_invalid_scaling_rule_is_a_bad_request(user: User, group: str) -> None:
    with pytest.raises(BadRequest):
        user.client.create_scaling_rule(
            group, min_replicas=5, max_replicas=1, idle_threshold_seconds=0
        )


# -- health and reachability ------------------------------------------------------------------


async def test_health_says_whether_the_api_answers(server: ServerProcess) -> None:
    with KelpieClient(server.url, None) as client:
        assert client.health()
    async with AsyncKelpieClient(f"http://127.0.0.1:{free_port()}", None) as nowhere:
        assert not await nowhere.health()


def test_an_unreachable_api_raises_api_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with KelpieClient(url, "k", max_attempts=2) as client, pytest.raises(ApiUnavailable) as caught:
        client.get_job(str(uuid.uuid4()))
    assert str(caught.value).startswith(f"cannot reach the kelpie API at {url}: ")


# -- admin resets (own server: they wipe everything) ------------------------------------------


def test_admin_resets_remove_jobs_rules_and_users(tmp_path: Path) -> None:
    server = _start(tmp_path)
    try:
        with KelpieClient(server.url, server.admin_key) as admin:
            created = admin.create_user("carol")
            key = admin.create_token(created.id)
            with KelpieClient(server.url, key) as carol:
                carol.submit_job(job_in("g"))
                carol.create_scaling_rule(
                    "g", min_replicas=0, max_replicas=1, idle_threshold_seconds=0
                )
                with pytest.raises(Forbidden):
                    carol.delete_all_jobs()
                admin.delete_all_jobs()
                assert carol.list_jobs().count == 0
                admin.delete_all_scaling_rules()
                assert carol.list_scaling_rules() == []
                admin.delete_users()
                with pytest.raises(Forbidden):
                    carol.me()
            assert admin.me().is_admin  # the admin survives
    finally:
        server.stop()
