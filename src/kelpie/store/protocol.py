"""The Store protocol: every read and state change kelpie makes, named for its intention.

Implementations: `SqliteStore` (embedded default) and `PostgresStore`. Both pass one
conformance suite (tests/integration/test_store_conformance.py). Rules every implementation
keeps:

- A claim is one atomic statement, never select-then-update: one job is never handed to two
  machines, whatever the number of pollers or processes.
- Every state change a worker asks for is fenced by state and holder
  (`WHERE status = 'running' AND machine_id = :m`), so a machine whose lease expired cannot
  overwrite the newer holder.
- A webhook event is written to the outbox in the same transaction as the state change it
  reports, so an acknowledged change never loses its event.
- A job's labels and name are filters of `list_jobs`; labels are also kept in its spec.
- `user_id=None` in a scoped call means "any user" (admin callers); otherwise a job of
  another user behaves exactly as a job that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from kelpie.store.goodput import GroupLedger, JobLedger
from kelpie.store.models import (
    ApiKey,
    Attempt,
    Blocked,
    CancelOutcome,
    Checkpoint,
    CommitResult,
    FailureResult,
    HeldOutcome,
    IdempotentRequest,
    Job,
    JobEvent,
    JobQuery,
    JobStatus,
    ManifestEntry,
    NewJob,
    PendingReason,
    Principal,
    ScalingRule,
    ScalingRulePatch,
    Submitted,
    User,
    WebhookEvent,
    Worker,
    WorkerSighting,
)
from kelpie.store.overview import ActivityBucket, BlockedMachine, GroupCounts, StoreMetrics


class StoreError(Exception):
    """Base of the errors a store raises on purpose."""


class AlreadyExists(StoreError):
    """A unique name (username, scaling rule's group) is taken."""


class NotFound(StoreError):
    """The record a write refers to does not exist."""


class InvalidChange(StoreError):
    """The change would break a rule the record keeps (a scaling rule's min above its max);
    nothing was changed."""


class IdempotencyConflict(StoreError):
    """The idempotency key was used within its lifetime for another request (or the jobs it
    created are gone); nothing was created."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now (connection refused or lost, the server shutting
    down or starting, the file locked for too long, a disk I/O error), or the store is not
    open. Trying again later may succeed; nothing was changed unless the call says so."""


class Store(Protocol):
    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        """Connect and bring the schema to the newest migration (safe when several
        processes start at once)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """One cheap round trip; raises StoreUnavailable while the database cannot be used."""

    async def listen_for_new_jobs(self, on_new_jobs: Callable[[str], None]) -> None:
        """Call `on_new_jobs(container_group_id)` whenever any process submits jobs.

        Lets a long-polling `/work` call in one API process wake up for a job submitted
        through another. The API also re-checks periodically, so a missed announcement
        delays a pickup but never loses the job."""

    # -- users and keys ----------------------------------------------------------------
    async def ensure_admin(self, username: str, key_hash: str) -> User:
        """An admin user named `username` exists and holds the key with this hash, as its
        bootstrap key (live again if it had been revoked); every other bootstrap key is
        revoked, so that starting with a new admin key retires the previous one."""

    async def create_user(self, username: str, *, is_admin: bool = False) -> User:
        """Raises AlreadyExists for a taken username."""

    async def get_user(self, user_id: str) -> User | None: ...

    async def add_api_key(
        self, user_id: str, key_hash: str, org_name: str | None, project_name: str | None
    ) -> ApiKey:
        """Raises NotFound if the user does not exist."""

    async def list_api_keys(self, user_id: str) -> list[ApiKey]:
        """Every key of the user, revoked ones included, oldest first."""

    async def revoke_api_key(self, user_id: str, key_id: str) -> bool:
        """The user's key with this id stops working (revoking a revoked key changes
        nothing); False if the user has no key with this id."""

    async def principal_for_key(self, key_hash: str) -> Principal | None:
        """The caller behind a key, or None for an unknown or revoked key."""

    async def delete_non_admin_users(self) -> None:
        """Removes every non-admin user and their keys (their jobs stay until purged)."""

    # -- jobs, user side ---------------------------------------------------------------
    async def create_jobs(self, user_id: str, jobs: Sequence[NewJob]) -> list[Job]:
        """Stores all jobs in one transaction (all or nothing), in order, as `pending`."""

    async def create_jobs_once(
        self, user_id: str, jobs: Sequence[NewJob], request: IdempotentRequest
    ) -> Submitted:
        """`create_jobs` for a request carrying an idempotency key, taken in the same
        transaction: the first request with the key creates the jobs; a repeat within
        IDEMPOTENCY_KEY_LIFETIME_S with the same fingerprint creates nothing and answers the
        jobs the first created (as they are now), one with another fingerprint raises
        IdempotencyConflict (so does a repeat whose jobs were deleted since). Requests racing
        with one key, through any number of processes, create the jobs once. Keys are the
        user's own: another user's key of the same name is another key."""

    async def purge_idempotency_keys(self) -> int:
        """Forgets idempotency keys older than their lifetime; returns how many."""

    async def get_job(self, job_id: str, user_id: str | None) -> Job | None: ...

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        """One page, ordered by `created` (then submission order), newest first unless
        ascending."""

    async def cancel_job(self, job_id: str, user_id: str | None) -> CancelOutcome:
        """pending/running → canceled; a running job's attempt ends as `canceled`."""

    async def purge_group(self, user_id: str, container_group_id: str) -> int:
        """Deletes the user's pending jobs in the group and cancels its running ones;
        returns how many jobs were touched."""

    async def delete_all_jobs(self) -> None: ...

    async def list_attempts(self, job_id: str, user_id: str | None) -> list[Attempt] | None:
        """Every hold of the job, oldest first; None when the job is not visible."""

    # -- jobs, worker side -------------------------------------------------------------
    async def claim_job(
        self, machine_id: str, container_group_id: str, user_id: str | None
    ) -> Job | None:
        """Atomically hand one job of the group to the machine, or None.

        First a stalled running job (heartbeat, or start if it never beat, older than
        twice its heartbeat_interval: the previous holder's attempt ends as `lost`); else a
        pending job. Either kind in claim order: highest `priority` first, then oldest
        `created`, then submission order. Jobs the machine is blocked from are skipped.
        The job becomes running, held by the machine, heartbeat = now, `started` set on
        first start; a new attempt is recorded and a `running` webhook event queued."""

    # The holder of a running job is its machine and, for callers that send it, the claim's
    # attempt id: with `attempt_id` a call is fenced by attempt (two workers on one machine
    # are told apart), without it by machine (the reference worker).

    async def heartbeat(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> JobStatus | None:
        """While the caller holds the job: refresh heartbeat, count it, answer running.
        Another holds it: answer canceled. Else the job's status; None if unknown.

        With `progress` (what the job last wrote), a holder's beat that brings a different
        progress records it, with `progress_updated_at` = now, pushes the job's stall
        deadline to now + `stall_timeout`, and adds a `progress` event when the change is a
        milestone (`kelpie.store._common.progress_milestone`)."""

    async def complete_if_held(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int | None = None,
    ) -> HeldOutcome:
        """running → completed, only for the holder; queues a `completed` event."""

    async def fail_if_held(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        exit_code: int | None,
        error: str | None,
        attempt_id: int | None = None,
        *,
        fail_now: bool = False,
    ) -> FailureResult:
        """Only the holder: counts the failure, blocks the machine from the job for good,
        records exit code and error. At max_failures (or at once with `fail_now`: the job's
        retry rules say so) the job is `failed` (event queued); otherwise it is pending
        again at once. `machine_blocked_jobs` counts the jobs of the job's owner the machine
        is blocked from (toward its reallocation)."""

    async def interrupt_if_held(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int | None = None,
        *,
        exit_code: int | None = None,
    ) -> HeldOutcome:
        """The holder is going away (or its job exited with `exit_code`, which the job's
        retry rules count as an interruption): back to pending at once, no failure counted,
        the machine not blocked. The interruption that reaches `max_interruptions` fails the
        job instead, saying why in `last_error` (event queued)."""

    async def end_stalled_out_of_interruptions(self) -> list[Job]:
        """Fails the stalled running jobs (as a claim judges them) whose next interruption
        would reach `max_interruptions` (claims never take those): their attempt is lost,
        `last_error` says why, a `failed` event is queued. Returns the jobs failed. Cheap
        when there are none: every API process asks every second."""

    async def end_stalled_jobs(self) -> list[Job]:
        """Stops the running jobs whose progress has not changed for their `stall_timeout`
        (since their claim, if it never changed in this attempt), as a failure of the
        holder: the failure is counted, the machine blocked from the job, `last_error` says
        "stalled: …", the attempt ends `failed` with a `stalled` event; the job is `failed`
        at max_failures (webhook event queued), else pending again. The holder's next
        heartbeat is refused, so it stops the command. Returns the jobs stopped. Cheap when
        there are none: every API process asks every second."""

    async def note_api_alive(self) -> float:
        """Record that an API process reaches the store now. If no process had for longer
        than OUTAGE_GAP_SECONDS, nobody could hear heartbeats meanwhile: every running job
        whose lease was still good when the silence began gets two heartbeat intervals plus
        OUTAGE_GRACE_SECONDS from now, so a holder that beats again in time keeps its job.
        Returns the gap credited (0 when there was no outage). Atomic across processes: one
        outage is credited once."""

    # -- workers -----------------------------------------------------------------------
    async def note_workers_seen(self, sightings: Sequence[WorkerSighting]) -> None:
        """Records that these machines were heard from now (a poll also sets `last_poll`;
        a version given replaces the one known)."""

    async def purge_workers(self) -> int:
        """Forgets the machines not heard from for WORKER_RETENTION_SECONDS (on SaladCloud
        machines come and go by the thousand); returns how many."""

    async def list_workers(
        self, user_id: str | None, container_group_id: str | None, seen_within_seconds: float
    ) -> list[Worker]:
        """Machines heard from within the window, seen through the user's keys (None: every
        user's), newest first, with the job each holds and how many it is blocked from."""

    async def pending_reason(self, job: Job) -> PendingReason | None:
        """Why the job waits, if it is pending (None otherwise): from the machines of its
        group heard from within RECENT_WORKER_SECONDS through its owner's keys or an admin's,
        and the pending jobs of its owner ahead of it in claim order."""

    # -- checkpoints and events --------------------------------------------------------
    async def commit_checkpoint(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int,
        generation: int,
        manifest: Sequence[ManifestEntry],
        upload_seconds: float | None = None,
    ) -> CommitResult:
        """Commit a generation for the holding attempt (`upload_seconds`: how long it took
        from its files being complete to this commit, kept as its cost). The same commit
        repeated is answered REPEATED; a generation that does not go forward is NOT_NEWER; a
        caller that does not hold the job NOT_HOLDER. Generations beyond the job's
        `checkpoint_keep` newest lose their manifest, and the objects only they used are
        returned as `expired`."""

    async def list_checkpoints(self, job_id: str, user_id: str | None) -> list[Checkpoint] | None:
        """Every committed generation, oldest first, without manifests; None when the job is
        not visible."""

    async def get_checkpoint(
        self, job_id: str, user_id: str | None, generation: int
    ) -> Checkpoint | None:
        """One generation with its manifest (empty once no longer kept)."""

    async def add_worker_event(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int,
        kind: str,
        message: str,
        data: Mapping[str, Any] | None,
    ) -> HeldOutcome:
        """An event the holding attempt reports (downloads, restores, warnings); at most
        MAX_WORKER_EVENTS_PER_ATTEMPT are kept per attempt, later ones are dropped."""

    async def list_job_events(
        self, job_id: str, user_id: str | None, after_id: int = 0, limit: int = 1000
    ) -> list[JobEvent] | None:
        """The job's events with id > after_id, oldest first; None when not visible."""

    # -- goodput (see kelpie.store.goodput) ---------------------------------------------
    async def job_goodput(self, job_id: str, user_id: str | None) -> JobLedger | None:
        """Where each attempt of the job went; None when the job is not visible."""

    async def group_goodput(
        self, user_id: str | None, container_group_id: str, since: datetime, until: datetime
    ) -> GroupLedger:
        """The ledger of the group's attempts that started within [since, until), summed in
        the database (one row, whatever the number of attempts)."""

    async def claim_reallocation(
        self, user_id: str, machine_id: str, threshold: int
    ) -> Blocked | None:
        """If the machine is blocked from at least `threshold` of the user's jobs and was
        never reallocated for that user, mark it so and say where it runs; else None. At
        most once per user and machine, across processes: failures one tenant reports
        under a machine id never count toward, nor use up, another tenant's."""

    # -- webhook outbox ----------------------------------------------------------------
    async def claim_webhook_events(
        self,
        limit: int,
        lease_seconds: float,
        *,
        per_receiver: int | None = None,
        allowances: Mapping[str, int] | None = None,
    ) -> list[WebhookEvent]:
        """Events due for delivery, leased for `lease_seconds` so that no other process
        delivers the same attempt at the same time.

        At most `per_receiver` events of one receiver (`WebhookEvent.receiver`), or as many
        as its entry in `allowances` says (0: none). Within a receiver, the soonest due
        first; across receivers, each one's first event before any one's second, so a
        receiver with a large backlog cannot fill the batch."""

    # The outcome of an attempt is recorded only while its claim still holds the lease, and
    # these say whether it was: a process that stalled past its lease learns that another
    # has taken the event over, and changes nothing.
    async def webhook_delivered(self, event: WebhookEvent) -> bool: ...

    async def webhook_retry_later(
        self, event: WebhookEvent, delay_seconds: float, error: str
    ) -> bool:
        """Counts the attempt and makes the event due again after the delay."""

    async def webhook_give_up(self, event: WebhookEvent, error: str) -> bool: ...

    async def webhook_postpone(self, event: WebhookEvent, delay_seconds: float) -> bool:
        """Releases the event unattempted: due again after the delay, no attempt counted."""

    async def postpone_receiver_webhooks(self, receiver: str, delay_seconds: float) -> int:
        """The receiver's pending events that are not leased and due sooner wait until the
        delay has passed, no attempt counted (a receiver that stopped answering is paused
        for every process). Returns how many were moved."""

    async def pending_webhook_count(self) -> int: ...

    async def purge_finished_webhooks(self, older_than_seconds: float) -> int:
        """Deletes delivered and given-up events older than this; returns how many."""

    # -- scaling rules -----------------------------------------------------------------
    async def create_scaling_rule(self, rule: ScalingRule) -> ScalingRule:
        """Raises AlreadyExists if the user already has a rule for the group."""

    async def list_scaling_rules(self, user_id: str | None) -> list[ScalingRule]: ...

    async def get_scaling_rule(
        self, user_id: str | None, container_group_id: str
    ) -> ScalingRule | None: ...

    async def update_scaling_rule(
        self, user_id: str | None, container_group_id: str, patch: ScalingRulePatch
    ) -> ScalingRule | None:
        """Applies the patch in one atomic step, or raises InvalidChange when the result
        would have min_replicas above max_replicas (whatever patches run at the same
        time); None when there is no such rule."""

    async def delete_scaling_rule(self, user_id: str | None, container_group_id: str) -> bool: ...

    async def delete_all_scaling_rules(self) -> None: ...

    async def count_active_jobs(
        self, user_id: str, container_group_id: str, idle_threshold_seconds: int
    ) -> int:
        """Jobs of the group that are pending or running, or ended within the threshold."""

    async def try_lease(self, name: str, holder: str, ttl_seconds: float) -> bool:
        """Take or renew a named lease (leader election for periodic tasks)."""

    # -- operator views: the dashboard and /metrics (read-only) -------------------------
    async def metrics_snapshot(self) -> StoreMetrics:
        """Every user's figures for `/metrics`, read in one statement (one snapshot), so every
        API process reports the same numbers. Cheap enough to run at each scrape."""

    async def group_counts(
        self, user_id: str | None, container_group_id: str | None = None
    ) -> list[GroupCounts]:
        """Jobs by status of every container group the user has jobs in (or only of
        `container_group_id`), ordered by group id."""

    async def blocked_machines(
        self, user_id: str | None, container_group_id: str, limit: int = 100
    ) -> list[BlockedMachine]:
        """Machines blocked from the user's jobs of the group, most recently blocked first."""

    async def group_activity(
        self,
        user_id: str | None,
        container_group_id: str,
        since: datetime,
        bucket_seconds: float,
        buckets: int,
    ) -> list[ActivityBucket]:
        """The group's queue depth and running jobs at the end of each of `buckets` steps of
        `bucket_seconds` from `since`, and the attempts that ended within each, by outcome."""
