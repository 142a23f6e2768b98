"""`AsyncKelpieClient`: the SDK on asyncio, used by the worker."""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from kelpie.client import calls
from kelpie.client.calls import Call, JobSubmission
from kelpie.client.config import ClientConfig, env_settings
from kelpie.client.errors import KelpieError
from kelpie.client.retry import Backoff, Outcome, Retrying
from kelpie.schemas import (
    ApiKeyOut,
    AttemptOut,
    CheckpointCommit,
    CheckpointCommitted,
    CheckpointManifestOut,
    CheckpointOut,
    GroupGoodputOut,
    JobEventIn,
    JobEventOut,
    JobGoodputOut,
    JobList,
    JobOut,
    JobStatus,
    MeOut,
    ScalingRuleOut,
    UserOut,
    WorkerOut,
)

T = TypeVar("T")


class AsyncKelpieClient:
    """The kelpie API over asyncio: one method per endpoint, typed results, errors as
    `KelpieError` subclasses. Retries follow each endpoint's policy (see `kelpie.client.calls`).

    Use as `async with AsyncKelpieClient(url, key) as client:` or call `aclose()`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        max_attempts: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._config = ClientConfig.build(base_url, api_key, timeout, max_attempts, backoff)
        self._http = httpx.AsyncClient(transport=transport, **self._config.http_args())
        self._owns_http = True

    @classmethod
    def from_env(cls, **options: Any) -> Self:
        """A client for `KELPIE_API_URL` with `KELPIE_API_KEY`; `options` as for the constructor."""
        url, key = env_settings()
        return cls(url, key, **options)

    @property
    def base_url(self) -> str:
        return self._config.base_url

    def with_retries(self, max_attempts: int) -> Self:
        """This client with another retry budget (1 = no retry), sharing its connections;
        closing the derived client leaves them open."""
        derived = copy.copy(self)
        derived._config = self._config.with_max_attempts(max_attempts)
        derived._owns_http = False
        return derived

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: Call[Any]) -> Outcome:
        try:
            return await self._http.request(**call.request_args(self._config.timeout))
        except httpx.RequestError as exc:
            return exc

    async def _run(self, call: Call[T], retrying: Retrying | None = None) -> T:
        retrying = retrying or self._config.retrying
        attempt = 1
        while True:
            outcome = await self._send(call)
            delay = retrying.delay_before_retry(call.retry, outcome, attempt, call.what)
            if delay is None:
                return call.conclude(outcome, self._config.base_url)
            await asyncio.sleep(delay)
            attempt += 1

    # -- jobs -------------------------------------------------------------------------------

    async def submit_job(self, job: JobSubmission, *, idempotency_key: str | None = None) -> JobOut:
        """Queue one job (`JobCreate` or a plain mapping, validated by the server). Sent with
        an `Idempotency-Key` (`idempotency_key`, or a new one), so a retry never queues it
        twice; pass your own key to make a later call with the same job answer this one's
        job, e.g. after your program restarts (within 24 hours)."""
        return await self._run(calls.submit_job(job, idempotency_key))

    async def submit_batch(
        self, jobs: Sequence[JobSubmission], *, idempotency_key: str | None = None
    ) -> list[JobOut]:
        """Queue 1 to 1000 jobs at once, all or none; results in the same order. Idempotent
        like `submit_job`."""
        return await self._run(calls.submit_batch(jobs, idempotency_key))

    async def get_job(self, job_id: str) -> JobOut:
        return await self._run(calls.get_job(job_id))

    async def list_jobs(
        self,
        status: JobStatus | None = None,
        container_group_id: str | None = None,
        page: int = 1,
        page_size: int = 100,
        asc: bool = False,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> JobList:
        """One page of jobs (`.jobs`, `.count`), newest first unless `asc`; only those named
        `name` and carrying all of `labels`, when given."""
        return await self._run(
            calls.list_jobs(
                status, container_group_id, page, page_size, asc, name=name, labels=labels
            )
        )

    async def iter_jobs(
        self,
        status: JobStatus | None = None,
        container_group_id: str | None = None,
        page_size: int = 100,
        asc: bool = False,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> AsyncIterator[JobOut]:
        """Every matching job, page after page. Jobs created or deleted meanwhile shift pages;
        `asc=True` keeps earlier pages stable while new jobs arrive."""
        for page_number in itertools.count(1):
            page = await self.list_jobs(
                status,
                container_group_id,
                page_number,
                page_size,
                asc,
                name=name,
                labels=labels,
            )
            for job in page.jobs:
                yield job
            if calls.is_last_page(page, page_size):
                return

    async def cancel_job(self, job_id: str) -> str:
        """Cancel a job; returns the API's message. A finished job raises `Conflict`."""
        return await self._run(calls.cancel_job(job_id))

    async def purge_group(self, container_group_id: str) -> int:
        """Delete the group's pending jobs and cancel its running ones; returns how many."""
        return await self._run(calls.purge_group(container_group_id))

    async def list_attempts(self, job_id: str) -> list[AttemptOut]:
        return await self._run(calls.list_attempts(job_id))

    async def job_goodput(self, job_id: str) -> JobGoodputOut:
        """Where each attempt of the job spent its time, and what interruptions cost it."""
        return await self._run(calls.job_goodput(job_id))

    async def group_goodput(
        self, container_group_id: str, window_seconds: int = 7 * 24 * 3600
    ) -> GroupGoodputOut:
        """The group's goodput report over the attempts that started within the window:
        interruption rates, checkpoint interval and cost, GPU time lost, Young/Daly."""
        return await self._run(calls.group_goodput(container_group_id, window_seconds))

    async def delete_all_jobs(self) -> None:
        """Admin: remove every job (test resets)."""
        await self._run(calls.delete_all_jobs())

    # -- worker protocol --------------------------------------------------------------------

    async def poll_work(
        self, machine_id: str, container_group_id: str, wait: float = 0
    ) -> JobOut | None:
        """Claim the next job of the group for this machine, long-polling up to `wait` s.
        Retried only on connection failures; otherwise raises and the caller polls again."""
        return await self._run(calls.poll_work(machine_id, container_group_id, wait))

    async def heartbeat(
        self,
        job_id: str,
        machine_id: str,
        container_group_id: str,
        attempt_id: int | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> str:
        """Refresh the lease (with the job's progress, if any); returns the status to act on
        (`running` = keep going). With `attempt_id`, `Conflict` when another attempt holds
        the job."""
        return await self._run(
            calls.heartbeat(job_id, machine_id, container_group_id, attempt_id, progress)
        )

    async def report_completed(
        self,
        job_id: str,
        machine_id: str,
        container_group_id: str,
        attempt_id: int | None = None,
    ) -> None:
        """Report success. `Conflict` if this attempt no longer holds the job."""
        await self._run(calls.report_completed(job_id, machine_id, container_group_id, attempt_id))

    async def report_failed(
        self,
        job_id: str,
        machine_id: str,
        container_group_id: str,
        exit_code: int | None,
        error: str | None,
        attempt_id: int | None = None,
    ) -> None:
        """Report a failure with the exit code and reason. `Conflict` as for completion."""
        await self._run(
            calls.report_failed(
                job_id, machine_id, container_group_id, exit_code, error, attempt_id
            )
        )

    async def report_interrupted(
        self,
        job_id: str,
        machine_id: str,
        container_group_id: str,
        attempt_id: int | None = None,
    ) -> None:
        """Hand the job back (this node is going away); no failure is counted."""
        await self._run(
            calls.report_interrupted(job_id, machine_id, container_group_id, attempt_id)
        )

    async def commit_checkpoint(self, job_id: str, commit: CheckpointCommit) -> CheckpointCommitted:
        """Commit a checkpoint generation for the holding attempt; `Conflict` otherwise."""
        return await self._run(calls.commit_checkpoint(job_id, commit))

    async def add_job_event(self, job_id: str, event: JobEventIn) -> None:
        """Record an event of the holding attempt; `Conflict` if it no longer holds the job."""
        await self._run(calls.add_job_event(job_id, event))

    async def list_workers(self, container_group_id: str | None = None) -> list[WorkerOut]:
        """Machines seen in the last 24 hours polling for work or holding a job (of one
        container group, if given): last poll, current job, blocked-from count, version."""
        return await self._run(calls.list_workers(container_group_id))

    async def list_job_events(self, job_id: str, after: int = 0) -> list[JobEventOut]:
        """The job's events after id `after`, oldest first."""
        return await self._run(calls.list_job_events(job_id, after))

    async def list_checkpoints(self, job_id: str) -> list[CheckpointOut]:
        """Every committed generation of the job, oldest first."""
        return await self._run(calls.list_checkpoints(job_id))

    async def get_checkpoint(self, job_id: str, generation: int) -> CheckpointManifestOut:
        """A kept generation with its files."""
        return await self._run(calls.get_checkpoint(job_id, generation))

    # -- users ------------------------------------------------------------------------------

    async def create_user(self, username: str) -> UserOut:
        """Admin: a new user; `Conflict` if the name is taken."""
        return await self._run(calls.create_user(username))

    async def create_token(
        self, user_id: str, org_name: str | None = None, project_name: str | None = None
    ) -> str:
        """Admin: a new API key for the user, returned only this once."""
        return await self._run(calls.create_token(user_id, org_name, project_name))

    async def list_tokens(self, user_id: str) -> list[ApiKeyOut]:
        """The user's API keys (ids, not the keys): admin, or the user itself."""
        return await self._run(calls.list_tokens(user_id))

    async def revoke_token(self, user_id: str, token_id: str) -> None:
        """Revoke one of the user's API keys: admin, or the user itself."""
        await self._run(calls.revoke_token(user_id, token_id))

    async def delete_users(self) -> None:
        """Admin: remove every non-admin user and their keys."""
        await self._run(calls.delete_users())

    async def me(self) -> MeOut:
        """The user this key belongs to, with its webhook secret and token."""
        return await self._run(calls.me())

    # -- scaling rules ----------------------------------------------------------------------

    async def create_scaling_rule(
        self,
        container_group_id: str,
        *,
        min_replicas: int,
        max_replicas: int,
        idle_threshold_seconds: int,
    ) -> ScalingRuleOut:
        """Scale the group with its queue between `min_replicas` and `max_replicas`."""
        return await self._run(
            calls.create_scaling_rule(
                container_group_id,
                min_replicas=min_replicas,
                max_replicas=max_replicas,
                idle_threshold_seconds=idle_threshold_seconds,
            )
        )

    async def list_scaling_rules(self) -> list[ScalingRuleOut]:
        return await self._run(calls.list_scaling_rules())

    async def get_scaling_rule(self, container_group_id: str) -> ScalingRuleOut:
        return await self._run(calls.get_scaling_rule(container_group_id))

    async def update_scaling_rule(
        self,
        container_group_id: str,
        *,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        idle_threshold_seconds: int | None = None,
    ) -> ScalingRuleOut:
        """Change only the fields given."""
        return await self._run(
            calls.update_scaling_rule(
                container_group_id,
                min_replicas=min_replicas,
                max_replicas=max_replicas,
                idle_threshold_seconds=idle_threshold_seconds,
            )
        )

    async def delete_scaling_rule(self, container_group_id: str) -> None:
        await self._run(calls.delete_scaling_rule(container_group_id))

    async def delete_all_scaling_rules(self) -> None:
        """Admin: remove every scaling rule."""
        await self._run(calls.delete_all_scaling_rules())

    # -- health -----------------------------------------------------------------------------

    async def health(self) -> bool:
        """Whether the API answers healthy right now: one try, never raises."""
        try:
            return await self._run(calls.health(), Retrying(max_attempts=1))
        except KelpieError:
            return False
