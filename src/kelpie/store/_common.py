"""Pieces both store implementations share: identifiers, secrets, webhook payloads."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from kelpie.schemas import JOB_STATUSES, AttemptOutcome, JobStatus
from kelpie.store.models import ApiKey, Attempt, Job, ScalingRule, User


class Row(Protocol):
    """A result row read by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


NEW_JOBS_CHANNEL = "kelpie_new_jobs"
API_KEY_COLUMNS = "id, user_id, created, org_name, project_name, revoked, bootstrap"

ATTEMPT_OUTCOMES: tuple[AttemptOutcome, ...] = (
    "running",
    "completed",
    "failed",
    "interrupted",
    "canceled",
    "lost",
)


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

    def attempt(self, row: Row) -> Attempt:
        return Attempt(
            job_id=row["job_id"],
            machine_id=row["machine_id"],
            started=self._time(row["started"]),
            ended=self._optional_time(row["ended"]),
            outcome=as_attempt_outcome(row["outcome"]),
            exit_code=row["exit_code"],
        )
