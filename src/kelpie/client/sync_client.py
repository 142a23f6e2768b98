"""`KelpieClient`: the SDK for synchronous code (the CLI, scripts, notebooks)."""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
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
    CheckpointManifestOut,
    CheckpointOut,
    GroupGoodputOut,
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


class KelpieClient:
    """The kelpie API, blocking: one method per endpoint, typed results, errors as
    `KelpieError` subclasses. Retries follow each endpoint's policy (see `kelpie.client.calls`).

    Use as `with KelpieClient(url, key) as client:` or call `close()`.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        max_attempts: int = 5,
        transport: httpx.BaseTransport | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._config = ClientConfig.build(base_url, api_key, timeout, max_attempts, backoff)
        self._http = httpx.Client(transport=transport, **self._config.http_args())
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

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: Call[Any]) -> Outcome:
        try:
            return self._http.request(**call.request_args(self._config.timeout))
        except httpx.RequestError as exc:
            return exc

    def _run(self, call: Call[T], retrying: Retrying | None = None) -> T:
        retrying = retrying or self._config.retrying
        attempt = 1
        while True:
            outcome = self._send(call)
            delay = retrying.delay_before_retry(call.retry, outcome, attempt, call.what)
            if delay is None:
                return call.conclude(outcome, self._config.base_url)
            time.sleep(delay)
            attempt += 1

    # -- jobs -------------------------------------------------------------------------------

    def submit_job(self, job: JobSubmission, *, idempotency_key: str | None = None) -> JobOut:
        """Queue one job (`JobCreate` or a plain mapping, validated by the server). Sent with
        an `Idempotency-Key` (`idempotency_key`, or a new one), so a retry never queues it
        twice; pass your own key to make a later call with the same job answer this one's
        job, e.g. after your program restarts (within 24 hours)."""
        return self._run(calls.submit_job(job, idempotency_key))

    def submit_batch(
        self, jobs: Sequence[JobSubmission], *, idempotency_key: str | None = None
    ) -> list[JobOut]:
        """Queue 1 to 1000 jobs at once, all or none; results in the same order. Idempotent
        like `submit_job`."""
        return self._run(calls.submit_batch(jobs, idempotency_key))

    def get_job(self, job_id: str) -> JobOut:
        return self._run(calls.get_job(job_id))

    def list_jobs(
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
        return self._run(
            calls.list_jobs(
                status, container_group_id, page, page_size, asc, name=name, labels=labels
            )
        )

    def iter_jobs(
        self,
        status: JobStatus | None = None,
        container_group_id: str | None = None,
        page_size: int = 100,
        asc: bool = False,
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Iterator[JobOut]:
        """Every matching job, page after page. Jobs created or deleted meanwhile shift pages;
        `asc=True` keeps earlier pages stable while new jobs arrive."""
        for page_number in itertools.count(1):
            page = self.list_jobs(
                status,
                container_group_id,
                page_number,
                page_size,
                asc,
                name=name,
                labels=labels,
            )
            yield from page.jobs
            if calls.is_last_page(page, page_size):
                return

    def cancel_job(self, job_id: str) -> str:
        """Cancel a job; returns the API's message. A finished job raises `Conflict`."""
        return self._run(calls.cancel_job(job_id))

    def purge_group(self, container_group_id: str) -> int:
        """Delete the group's pending jobs and cancel its running ones; returns how many."""
        return self._run(calls.purge_group(container_group_id))

    def list_attempts(self, job_id: str) -> list[AttemptOut]:
        return self._run(calls.list_attempts(job_id))

    def job_goodput(self, job_id: str) -> JobGoodputOut:
        """Where each attempt of the job spent its time, and what interruptions cost it."""
        return self._run(calls.job_goodput(job_id))

    def group_goodput(
        self, container_group_id: str, window_seconds: int = 7 * 24 * 3600
    ) -> GroupGoodputOut:
        """The group's goodput report over the attempts that started within the window:
        interruption rates, checkpoint interval and cost, GPU time lost, Young/Daly."""
        return self._run(calls.group_goodput(container_group_id, window_seconds))

    def list_workers(self, container_group_id: str | None = None) -> list[WorkerOut]:
        """Machines seen in the last 24 hours polling for work or holding a job (of one
        container group, if given): last poll, current job, blocked-from count, version."""
        return self._run(calls.list_workers(container_group_id))

    def list_job_events(self, job_id: str, after: int = 0) -> list[JobEventOut]:
        """The job's events after id `after`, oldest first."""
        return self._run(calls.list_job_events(job_id, after))

    def list_checkpoints(self, job_id: str) -> list[CheckpointOut]:
        """Every committed checkpoint generation of the job, oldest first."""
        return self._run(calls.list_checkpoints(job_id))

    def get_checkpoint(self, job_id: str, generation: int) -> CheckpointManifestOut:
        """A kept generation with its files (bucket, key, size, SHA-256 of each)."""
        return self._run(calls.get_checkpoint(job_id, generation))

    def delete_all_jobs(self) -> None:
        """Admin: remove every job (test resets)."""
        self._run(calls.delete_all_jobs())

    # -- worker protocol --------------------------------------------------------------------

    def poll_work(self, machine_id: str, container_group_id: str, wait: float = 0) -> JobOut | None:
        """Claim the next job of the group for this machine, long-polling up to `wait` s.
        Retried only on connection failures; otherwise raises and the caller polls again."""
        return self._run(calls.poll_work(machine_id, container_group_id, wait))

    def heartbeat(
        self,
        job_id: str,
        machine_id: str,
        container_group_id: str,
        attempt_id: int | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> str:
        """Refresh the lease (with the job's progress, if any); returns the status to act on
        (`running` = keep going)."""
        return self._run(
            calls.heartbeat(job_id, machine_id, container_group_id, attempt_id, progress)
        )

    def report_completed(self, job_id: str, machine_id: str, container_group_id: str) -> None:
        """Report success. `Conflict` if this machine no longer holds the job (or a retried
        report had already succeeded)."""
        self._run(calls.report_completed(job_id, machine_id, container_group_id))

    def report_failed(
        self,
        job_id: str,
        machine_id: str,
        container_group_id: str,
        exit_code: int | None,
        error: str | None,
    ) -> None:
        """Report a failure with the exit code and reason. `Conflict` as for completion."""
        self._run(calls.report_failed(job_id, machine_id, container_group_id, exit_code, error))

    def report_interrupted(self, job_id: str, machine_id: str, container_group_id: str) -> None:
        """Hand the job back (this node is going away); no failure is counted."""
        self._run(calls.report_interrupted(job_id, machine_id, container_group_id))

    # -- users ------------------------------------------------------------------------------

    def create_user(self, username: str) -> UserOut:
        """Admin: a new user; `Conflict` if the name is taken."""
        return self._run(calls.create_user(username))

    def create_token(
        self, user_id: str, org_name: str | None = None, project_name: str | None = None
    ) -> str:
        """Admin: a new API key for the user, returned only this once."""
        return self._run(calls.create_token(user_id, org_name, project_name))

    def list_tokens(self, user_id: str) -> list[ApiKeyOut]:
        """The user's API keys (ids, not the keys): admin, or the user itself."""
        return self._run(calls.list_tokens(user_id))

    def revoke_token(self, user_id: str, token_id: str) -> None:
        """Revoke one of the user's API keys: admin, or the user itself."""
        self._run(calls.revoke_token(user_id, token_id))

    def delete_users(self) -> None:
        """Admin: remove every non-admin user and their keys."""
        self._run(calls.delete_users())

    def me(self) -> MeOut:
        """The user this key belongs to, with its webhook secret and token."""
        return self._run(calls.me())

    # -- scaling rules ----------------------------------------------------------------------

    def create_scaling_rule(
        self,
        container_group_id: str,
        *,
        min_replicas: int,
        max_replicas: int,
        idle_threshold_seconds: int,
    ) -> ScalingRuleOut:
        """Scale the group with its queue between `min_replicas` and `max_replicas`."""
        return self._run(
            calls.create_scaling_rule(
                container_group_id,
                min_replicas=min_replicas,
                max_replicas=max_replicas,
                idle_threshold_seconds=idle_threshold_seconds,
            )
        )

    def list_scaling_rules(self) -> list[ScalingRuleOut]:
        return self._run(calls.list_scaling_rules())

    def get_scaling_rule(self, container_group_id: str) -> ScalingRuleOut:
        return self._run(calls.get_scaling_rule(container_group_id))

    def update_scaling_rule(
        self,
        container_group_id: str,
        *,
        min_replicas: int | None = None,
        max_replicas: int | None = None,
        idle_threshold_seconds: int | None = None,
    ) -> ScalingRuleOut:
        """Change only the fields given."""
        return self._run(
            calls.update_scaling_rule(
                container_group_id,
                min_replicas=min_replicas,
                max_replicas=max_replicas,
                idle_threshold_seconds=idle_threshold_seconds,
            )
        )

    def delete_scaling_rule(self, container_group_id: str) -> None:
        self._run(calls.delete_scaling_rule(container_group_id))

    def delete_all_scaling_rules(self) -> None:
        """Admin: remove every scaling rule."""
        self._run(calls.delete_all_scaling_rules())

    # -- health -----------------------------------------------------------------------------

    def health(self) -> bool:
        """Whether the API answers healthy right now: one try, never raises."""
        try:
            return self._run(calls.health(), Retrying(max_attempts=1))
        except KelpieError:
            return False
