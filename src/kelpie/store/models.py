"""What the store hands out: frozen records, independent of any database dialect, and the
domain's words they use (a job's status, an attempt's outcome), which the wire
(`kelpie.schemas`) reuses.

Imports nothing of kelpie, and importing it loads no database driver (`kelpie.store` loads its
implementations only when asked for them), so the worker and the CLI may use these words.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

JobStatus = Literal["pending", "running", "completed", "canceled", "failed"]
AttemptOutcome = Literal["running", "completed", "failed", "interrupted", "canceled", "lost"]
# Why a pending job waits (`PendingReason.code`).
PendingReasonCode = Literal["no_workers", "blocked", "queued"]

JOB_STATUSES: tuple[JobStatus, ...] = ("pending", "running", "completed", "canceled", "failed")
ATTEMPT_OUTCOMES: tuple[AttemptOutcome, ...] = (
    "running",
    "completed",
    "failed",
    "interrupted",
    "canceled",
    "lost",
)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    created: datetime
    is_admin: bool
    webhook_secret: str
    webhook_token: str


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the user behind an API key, and the SaladCloud org/project the key
    acts for."""

    user: User
    org_name: str | None
    project_name: str | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as it can be shown: never the key itself (only its hash is stored)."""

    id: str
    user_id: str
    created: datetime
    org_name: str | None
    project_name: str | None
    revoked: bool
    bootstrap: bool  # came from KELPIE_ADMIN_KEY; a start with another admin key revokes it


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated submission. `spec` holds the fields the store only keeps and returns
    (command, arguments, environment, storage fields, sync, compression)."""

    container_group_id: str
    max_failures: int
    heartbeat_interval: int
    webhook: str | None
    spec: Mapping[str, Any]
    org_name: str | None = None
    project_name: str | None = None
    checkpoint_keep: int = 3
    priority: int = 0
    name: str | None = None
    max_interruptions: int | None = None
    """None: any number of interruptions; at this many the job fails."""
    logs_prefix: str | None = None
    """`s3://bucket/prefix` where the worker puts the attempts' logs; None: the default."""
    stall_timeout: int | None = None
    """Seconds a running attempt may go without its progress changing."""

    @property
    def labels(self) -> Mapping[str, str]:
        labels: Mapping[str, str] = self.spec.get("labels") or {}
        return labels


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    user_id: str
    status: JobStatus
    container_group_id: str
    created: datetime
    started: datetime | None
    completed: datetime | None
    canceled: datetime | None
    failed: datetime | None
    heartbeat: datetime | None
    num_failures: int
    num_heartbeats: int
    machine_id: str | None
    last_exit_code: int | None
    last_error: str | None
    max_failures: int
    heartbeat_interval: int
    webhook: str | None
    spec: Mapping[str, Any]
    org_name: str | None = None
    project_name: str | None = None
    attempt_id: int | None = None
    """The running (or last) attempt's id: the claim's fencing token."""
    checkpoint_generation: int | None = None
    checkpoint_keep: int = 3
    priority: int = 0
    """Higher is claimed first within its container group."""
    name: str | None = None
    max_interruptions: int | None = None
    num_interruptions: int = 0
    """Attempts handed back by their node or lost (stopped heartbeating), and failures an
    exit code in `retry.interruption_exit_codes` turned into interruptions."""
    logs_prefix: str | None = None
    stall_timeout: int | None = None
    progress: Mapping[str, Any] | None = None
    """The JSON object the job last wrote to `$KELPIE_PROGRESS_FILE` (kept across attempts)."""
    progress_updated_at: datetime | None = None
    """When `progress` last changed."""


# A machine counts toward a pending job's reason while it was heard from this recently.
RECENT_WORKER_SECONDS = 120.0
# A machine not heard from for this long is forgotten (no list of machines looks back further).
WORKER_RETENTION_SECONDS = 30 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class WorkerSighting:
    """A machine heard from: polling for work (`polled`) or beating for a job it holds.
    `user_id` is the user of its key; `any_user` when that key is an admin's."""

    user_id: str
    any_user: bool
    container_group_id: str
    machine_id: str
    polled: bool
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Worker:
    """A machine seen by the API, per user of its key and container group."""

    user_id: str
    container_group_id: str
    machine_id: str
    first_seen: datetime
    last_seen: datetime
    last_poll: datetime | None
    version: str | None
    current_job_id: str | None
    """The job of the group it holds now (running), if any."""
    blocked_jobs: int
    """Jobs of its key's user it failed (and will never receive again)."""


@dataclass(frozen=True, slots=True)
class PendingReason:
    """Why a pending job waits, as the store sees it now.

    `code`: `no_workers` (no machine of its group seen recently), `blocked` (every machine
    of its group seen recently is blocked from it) or `queued` (`jobs_ahead` jobs come first
    in claim order; `busy` of the `machines` recent ones hold a job)."""

    code: PendingReasonCode
    machines: int
    blocked: int
    busy: int
    jobs_ahead: int


@dataclass(frozen=True, slots=True)
class Attempt:
    job_id: str
    machine_id: str
    started: datetime
    ended: datetime | None
    outcome: AttemptOutcome
    exit_code: int | None
    id: int | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One file of a checkpoint generation (see `kelpie.schemas.CheckpointFile`)."""

    target: int
    path: str
    key: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    job_id: str
    generation: int
    attempt_id: int
    machine_id: str
    created: datetime
    files: int
    bytes: int
    kept: bool
    manifest: tuple[ManifestEntry, ...] = ()
    """Empty once the generation is no longer kept."""


class CommitOutcome(enum.Enum):
    DONE = "done"
    REPEATED = "repeated"  # the same commit was taken before: answered again, nothing changes
    NOT_HOLDER = "not_holder"  # 409
    NOT_NEWER = "not_newer"  # a generation number that does not go forward: 409
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class CommitResult:
    outcome: CommitOutcome
    checkpoint: Checkpoint | None = None
    newest: int | None = None  # the newest committed generation, for the 409 message
    expired: tuple[tuple[int, str], ...] = ()
    """(target, key) of objects no kept generation refers to any more."""


@dataclass(frozen=True, slots=True)
class JobEvent:
    id: int
    job_id: str
    created: datetime
    kind: str
    message: str
    attempt_id: int | None = None
    machine_id: str | None = None
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class JobQuery:
    user_id: str | None  # None: every user's jobs (admin)
    status: JobStatus | None = None
    container_group_id: str | None = None
    page: int = 1
    page_size: int = 100
    ascending: bool = False
    name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    """(key, value) pairs a job must all carry."""


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """A submission sent with an `Idempotency-Key`: the key (scoped to the submitting user),
    and a fingerprint of the request that a repeat must match."""

    key: str
    fingerprint: str
    status_code: int = 202


@dataclass(frozen=True, slots=True)
class Submitted:
    """The jobs of an idempotent submission, and whether this call created them or repeated
    an earlier one (then `status_code` is the earlier answer's)."""

    jobs: list[Job]
    replayed: bool
    status_code: int


class CancelOutcome(enum.Enum):
    CANCELED = "canceled"
    ALREADY_CANCELED = "already_canceled"
    ALREADY_ENDED = "already_ended"  # completed or failed: 409
    NOT_FOUND = "not_found"


class HeldOutcome(enum.Enum):
    """Answer of a fenced state change by the machine that claims to hold a job."""

    DONE = "done"
    NOT_HOLDER = "not_holder"  # another machine holds it, or it is no longer running: 409
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class FailureResult:
    outcome: HeldOutcome
    job: Job | None = None
    # jobs of the job's owner that the reporting machine is now blocked from, to decide on
    # its reallocation
    machine_blocked_jobs: int = 0


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One delivery waiting in the outbox, as leased to this process."""

    id: int
    user_id: str
    url: str
    payload: Mapping[str, Any]
    attempts: int
    created: datetime
    lease_token: str  # this claim's; the outcome is recorded only while it holds the lease
    # `scheme://host:port` as written in the URL, lowercased: the unit of fair delivery
    receiver: str


@dataclass(frozen=True, slots=True)
class ScalingRule:
    user_id: str
    container_group_id: str
    min_replicas: int
    max_replicas: int
    idle_threshold_seconds: int
    created: datetime
    updated: datetime
    org_name: str | None = None
    project_name: str | None = None


@dataclass(frozen=True, slots=True)
class ScalingRulePatch:
    min_replicas: int | None = None
    max_replicas: int | None = None
    idle_threshold_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class Blocked:
    """A machine blocked from enough of a tenant's jobs to be replaced, with where it runs
    (the group and SaladCloud project of that tenant's latest job it failed)."""

    user_id: str
    machine_id: str
    container_group_id: str
    org_name: str | None
    project_name: str | None
    blocked_jobs: int = field(default=0)
