"""Store records to wire bodies, and submissions to store records."""

from __future__ import annotations

from typing import Any

from kelpie.schemas import LEGACY_FIELDS, AttemptOut, JobCreate, JobOut, format_timestamp
from kelpie.store.models import Attempt, Job, NewJob, Principal

# Submission fields the store keeps verbatim and never queries.
SPEC_FIELDS = ("command", "arguments", "environment", *LEGACY_FIELDS, "sync", "compression")


def new_job(submission: JobCreate, principal: Principal) -> NewJob:
    spec = submission.model_dump(mode="json", include=set(SPEC_FIELDS), exclude_none=True)
    return NewJob(
        container_group_id=submission.container_group_id,
        max_failures=submission.max_failures,
        heartbeat_interval=submission.heartbeat_interval,
        webhook=submission.webhook,
        spec=spec,
        org_name=principal.org_name,
        project_name=principal.project_name,
    )


def _ts(value: Any) -> str | None:
    return None if value is None else format_timestamp(value)


def job_body(job: Job) -> dict[str, Any]:
    """The job object of PROTOCOL §3, built directly (the hot path skips re-validation)."""
    spec = job.spec
    body: dict[str, Any] = {
        "id": job.id,
        "user_id": job.user_id,
        "status": job.status,
        "created": _ts(job.created),
        "started": _ts(job.started),
        "completed": _ts(job.completed),
        "canceled": _ts(job.canceled),
        "failed": _ts(job.failed),
        "heartbeat": _ts(job.heartbeat),
        "num_failures": job.num_failures,
        "num_heartbeats": job.num_heartbeats,
        "machine_id": job.machine_id,
        "last_exit_code": job.last_exit_code,
        "last_error": job.last_error,
        "command": spec["command"],
        "arguments": list(spec.get("arguments", [])),
        "environment": dict(spec.get("environment", {})),
    }
    if spec.get("sync") is not None:
        body["sync"] = spec["sync"]
    else:
        for name in LEGACY_FIELDS:
            body[name] = spec.get(name)
    body.update(
        max_failures=job.max_failures,
        heartbeat_interval=job.heartbeat_interval,
        webhook=job.webhook,
        container_group_id=job.container_group_id,
        compression=bool(spec.get("compression", False)),
    )
    return body


def attempt_body(attempt: Attempt) -> dict[str, Any]:
    return AttemptOut(
        machine_id=attempt.machine_id,
        started=attempt.started,
        ended=attempt.ended,
        outcome=attempt.outcome,
        exit_code=attempt.exit_code,
    ).model_dump(mode="json")


__all__ = ["JobOut", "attempt_body", "job_body", "new_job"]
