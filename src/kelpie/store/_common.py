"""Pieces both store implementations share: identifiers, secrets, webhook payloads."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from kelpie.store.models import (
    ATTEMPT_OUTCOMES,
    JOB_STATUSES,
    ApiKey,
    Attempt,
    AttemptOutcome,
    Checkpoint,
    Job,
    JobEvent,
    JobStatus,
    ManifestEntry,
    PendingReason,
    PendingReasonCode,
    ScalingRule,
    User,
    Worker,
)


class Row(Protocol):
    """A result row read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


NEW_JOBS_CHANNEL = "kelpie_new_jobs"

# Job events the API writes with each state change, and those a holding worker may post.
SERVER_EVENT_KINDS = (
    "claimed",
    "lost",
    "completed",
    "failed",
    "interrupted",
    "canceled",
    "checkpoint_committed",
    "progress",
    "stalled",
)
WORKER_EVENT_KINDS = (
    "inputs_downloaded",
    "checkpoint_restored",
    "checkpoint_fallback",
    "started",
    "outputs_uploaded",
    "warning",
)
# Worker events shown as the attempt's `warnings`.
WARNING_EVENT_KINDS = ("warning", "checkpoint_fallback")
# A worker may post this many events per attempt; more are ignored (bounded store growth).
MAX_WORKER_EVENTS_PER_ATTEMPT = 200

# After this long without any API process reaching the store, the API counts it as an outage
# in which heartbeats could not be heard (see Store.note_api_alive).
OUTAGE_GAP_SECONDS = 3.0
# After an outage, a running job's holder has two heartbeat intervals plus this long to beat
# again: the API's own start and every worker reconnecting at once take some seconds.
OUTAGE_GRACE_SECONDS = 5.0

# An idempotency key answers repeats of its submission for this long; then it may be reused
# and is soon forgotten (Store.purge_idempotency_keys).
IDEMPOTENCY_KEY_LIFETIME_S = 24 * 3600.0

IDEMPOTENCY_KEY_REUSED = "this key was used within the last 24 hours for a different request"
IDEMPOTENCY_JOBS_GONE = "the jobs submitted with this key have been deleted since"


def new_id() -> str:
    return str(uuid.uuid4())


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_webhook_token() -> str:
    """The value a webhook carries in `X-Kelpie-Key`, so a receiver can tell it is ours."""
    return "kwh_" + secrets.token_urlsafe(32)


def webhook_payload(
    status: JobStatus, job_id: str, machine_id: str, container_group_id: str
) -> dict[str, Any]:
    return {
        "status": status,
        "job_id": job_id,
        "machine_id": machine_id,
        "container_group_id": container_group_id,
    }


def as_job_status(value: str) -> JobStatus:
    if value not in JOB_STATUSES:
        raise ValueError(f"unknown job status in the database: {value!r}")
    return value


def as_attempt_outcome(value: str) -> AttemptOutcome:
    if value not in ATTEMPT_OUTCOMES:
        raise ValueError(f"unknown attempt outcome in the database: {value!r}")
    return value


def claimed_message(machine_id: str) -> str:
    return f"claimed by {machine_id}"


def lost_message(next_machine_id: str) -> str:
    return f"stopped heartbeating; the job was handed to {next_machine_id}"


def completed_message(machine_id: str) -> str:
    return f"completed on {machine_id}"


def interrupted_message(machine_id: str, exit_code: int | None = None) -> str:
    if exit_code is not None:
        return (
            f"exited with code {exit_code} on {machine_id}, which counts as an interruption"
            " (retry.interruption_exit_codes)"
        )
    return f"handed back by {machine_id} (its node is going away)"


def ended_by_interruptions(message: str, reason: str) -> str:
    """The event of the interruption that used up a job's budget: what happened, and why the
    job failed (the interrupt statements of `store/queries/*.sql` write the same in SQL)."""
    return f"{message}; {reason}, so the job failed"


def interruption_event_data(exit_code: int | None) -> dict[str, Any] | None:
    return None if exit_code is None else {"exit_code": exit_code}


STALLED_MESSAGE = "stopped heartbeating"
CANCELED_MESSAGE = "canceled by its owner"
PURGED_MESSAGE = "canceled with the rest of its container group"


def stalled_reason(stall_timeout: int) -> str:
    """The `last_error` of an attempt stopped by its `stall_timeout`."""
    return f"stalled: progress did not change for {stall_timeout} s (stall_timeout)"


def stalled_message(machine_id: str, reason: str, *, ended: bool) -> str:
    then = "it reached max_failures and failed" if ended else "it is pending again"
    return f"stopped on {machine_id}, {reason}; {then}"


def progress_json(progress: Mapping[str, Any]) -> str:
    """The stored form of a progress object: one spelling per value, so that an unchanged
    progress compares equal."""
    return json.dumps(progress, sort_keys=True, separators=(",", ":"))


def _fraction(progress: Mapping[str, Any]) -> float | None:
    """`step / total` within [0, 1], when both are numbers and total is positive."""
    step, total = _number(progress.get("step")), _number(progress.get("total"))
    if step is None or total is None or total <= 0:
        return None
    return min(max(step / total, 0.0), 1.0)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _tenth(progress: Mapping[str, Any]) -> int | None:
    fraction = _fraction(progress)
    return None if fraction is None else int(10 * fraction)


def progress_milestone(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether a progress change is worth a `progress` event: the first progress of the job,
    a new `message`, or `step`/`total` crossing into another tenth (10 %, 20 %, ...). Other
    changes update the job's `progress` only."""
    if old is None:
        return True
    return old.get("message") != new.get("message") or _tenth(old) != _tenth(new)


def progress_message(progress: Mapping[str, Any]) -> str:
    """The `progress` event's line: `step/total (pct %)` and the job's message."""
    parts: list[str] = []
    step, total, fraction = progress.get("step"), progress.get("total"), _fraction(progress)
    if step is not None and total is not None:
        parts.append(f"{step}/{total}")
    elif step is not None:
        parts.append(f"step {step}")
    if fraction is not None:
        parts.append(f"({100 * fraction:.0f} %)")
    message = progress.get("message")
    if isinstance(message, str) and message:
        parts.append(message[:200])
    return "progress " + " ".join(str(p) for p in parts) if parts else "progress reported"


def checkpoint_message(generation: int, files: int, size: int) -> str:
    return f"checkpoint generation {generation} committed ({files} files, {size} bytes)"


def failure_message(
    machine_id: str,
    exit_code: int | None,
    error: str | None,
    *,
    ended: bool,
    fail_now: bool = False,
) -> str:
    """The `failed` event's line: where, how, and what became of the job."""
    how = "" if exit_code is None else f" (exit code {exit_code})"
    why = "" if not error else f": {error[:500]}"
    if fail_now:
        then = "its exit code fails the job at once (retry.fail_exit_codes)"
    else:
        then = "it reached max_failures and failed" if ended else "it is pending again"
    return f"failed on {machine_id}{how}{why}; {then}"


def replayed_jobs(ids: Sequence[str], found: Iterable[Job]) -> list[Job] | None:
    """The jobs an idempotency key stands for, in submission order; None when any of them
    was deleted since."""
    by_id = {job.id: job for job in found}
    if any(job_id not in by_id for job_id in ids):
        return None
    return [by_id[job_id] for job_id in ids]


def label_rows(job_id: str, labels: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """The `job_labels` rows of a job: (job_id, key, value)."""
    return [(job_id, key, value) for key, value in labels.items()]


def manifest_to_json(entries: Iterable[ManifestEntry]) -> list[list[Any]]:
    """The stored form of a manifest: compact rows, in the order given."""
    return [[e.target, e.path, e.key, e.size, e.sha256] for e in entries]


def manifest_from_json(value: Any) -> tuple[ManifestEntry, ...]:
    if value is None:
        return ()
    return tuple(
        ManifestEntry(int(t), str(path), str(key), int(size), str(sha))
        for t, path, key, size, sha in value
    )


def expired_objects(
    dropped: Iterable[Sequence[ManifestEntry]], kept: Iterable[Sequence[ManifestEntry]]
) -> tuple[tuple[int, str], ...]:
    """(target, key) of the objects the dropped generations used and no kept one uses."""
    still_used = {(e.target, e.key) for manifest in kept for e in manifest}
    gone: dict[tuple[int, str], None] = {}
    for manifest in dropped:
        for entry in manifest:
            if (entry.target, entry.key) not in still_used:
                gone[(entry.target, entry.key)] = None
    return tuple(gone)


def page_offset(page: int, page_size: int) -> int:
    if page < 1 or page_size < 1:
        raise ValueError("page and page_size must be at least 1")
    return (page - 1) * page_size


class RowDecoder:
    """Turns database rows (asyncpg records, sqlite3 rows: both indexable by column name)
    into store records. The dialects differ only in how a time and a JSON value arrive."""

    def __init__(self, time: Callable[[Any], datetime], json: Callable[[Any], Any]) -> None:
        self._time = time
        self._json = json

    def _optional_time(self, value: Any) -> datetime | None:
        return None if value is None else self._time(value)

    def job(self, row: Row) -> Job:
        return Job(
            id=row["id"],
            user_id=row["user_id"],
            status=as_job_status(row["status"]),
            container_group_id=row["container_group_id"],
            created=self._time(row["created"]),
            started=self._optional_time(row["started"]),
            completed=self._optional_time(row["completed"]),
            canceled=self._optional_time(row["canceled"]),
            failed=self._optional_time(row["failed"]),
            heartbeat=self._optional_time(row["heartbeat"]),
            num_failures=row["num_failures"],
            num_heartbeats=row["num_heartbeats"],
            machine_id=row["machine_id"],
            last_exit_code=row["last_exit_code"],
            last_error=row["last_error"],
            max_failures=row["max_failures"],
            heartbeat_interval=row["heartbeat_interval"],
            webhook=row["webhook"],
            spec=self._json(row["spec"]),
            org_name=row["org_name"],
            project_name=row["project_name"],
            attempt_id=row["attempt_id"],
            checkpoint_generation=row["checkpoint_generation"],
            checkpoint_keep=row["checkpoint_keep"],
            priority=row["priority"],
            name=row["name"],
            max_interruptions=row["max_interruptions"],
            num_interruptions=row["num_interruptions"],
            logs_prefix=row["logs_prefix"],
            stall_timeout=row["stall_timeout"],
            progress=None if row["progress"] is None else self._json(row["progress"]),
            progress_updated_at=self._optional_time(row["progress_updated_at"]),
        )

    def user(self, row: Row) -> User:
        return User(
            id=row["id"],
            username=row["username"],
            created=self._time(row["created"]),
            is_admin=bool(row["is_admin"]),
            webhook_secret=row["webhook_secret"],
            webhook_token=row["webhook_token"],
        )

    def api_key(self, row: Row) -> ApiKey:
        return ApiKey(
            id=row["id"],
            user_id=row["user_id"],
            created=self._time(row["created"]),
            org_name=row["org_name"],
            project_name=row["project_name"],
            revoked=bool(row["revoked"]),
            bootstrap=bool(row["bootstrap"]),
        )

    def rule(self, row: Row) -> ScalingRule:
        return ScalingRule(
            user_id=row["user_id"],
            container_group_id=row["container_group_id"],
            min_replicas=row["min_replicas"],
            max_replicas=row["max_replicas"],
            idle_threshold_seconds=row["idle_threshold_seconds"],
            created=self._time(row["created"]),
            updated=self._time(row["updated"]),
            org_name=row["org_name"],
            project_name=row["project_name"],
        )

    def attempt(self, row: Row, warnings: Sequence[str] = ()) -> Attempt:
        return Attempt(
            job_id=row["job_id"],
            machine_id=row["machine_id"],
            started=self._time(row["started"]),
            ended=self._optional_time(row["ended"]),
            outcome=as_attempt_outcome(row["outcome"]),
            exit_code=row["exit_code"],
            id=row["id"],
            warnings=tuple(warnings),
        )

    def checkpoint(self, row: Row, *, with_manifest: bool) -> Checkpoint:
        manifest = self._json(row["manifest"]) if row["manifest"] is not None else None
        return Checkpoint(
            job_id=row["job_id"],
            generation=row["generation"],
            attempt_id=row["attempt_id"],
            machine_id=row["machine_id"],
            created=self._time(row["created"]),
            files=row["files"],
            bytes=row["bytes"],
            kept=manifest is not None,
            manifest=manifest_from_json(manifest) if with_manifest else (),
        )

    def event(self, row: Row) -> JobEvent:
        data = row["data"]
        return JobEvent(
            id=row["id"],
            job_id=row["job_id"],
            created=self._time(row["created"]),
            kind=row["kind"],
            message=row["message"],
            attempt_id=row["attempt_id"],
            machine_id=row["machine_id"],
            data=None if data is None else self._json(data),
        )

    def worker(self, row: Row) -> Worker:
        return Worker(
            user_id=row["user_id"],
            container_group_id=row["container_group_id"],
            machine_id=row["machine_id"],
            first_seen=self._time(row["first_seen"]),
            last_seen=self._time(row["last_seen"]),
            last_poll=self._optional_time(row["last_poll"]),
            version=row["version"],
            current_job_id=row["current_job_id"],
            blocked_jobs=row["blocked_jobs"],
        )


def pending_reason_of(machines: int, blocked: int, busy: int, jobs_ahead: int) -> PendingReason:
    """Why a pending job waits, from what the store counted."""
    code: PendingReasonCode
    if machines == 0:
        code = "no_workers"
    elif blocked >= machines:
        code = "blocked"
    else:
        code = "queued"
    return PendingReason(code, machines, blocked, busy, jobs_ahead)
