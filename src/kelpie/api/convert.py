"""Store records to wire bodies, and submissions to store records."""

from __future__ import annotations

from typing import Any

from kelpie.schemas import (
    LEGACY_FIELDS,
    AttemptOut,
    CheckpointFileOut,
    CheckpointOut,
    JobCreate,
    JobEventOut,
    JobOut,
    format_timestamp,
)
from kelpie.store.models import Attempt, Checkpoint, Job, JobEvent, NewJob, Principal

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
        checkpoint_keep=submission.checkpoint_keep,
        priority=submission.priority,
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
        checkpoint_keep=job.checkpoint_keep,
        priority=job.priority,
        checkpoint_generation=job.checkpoint_generation,
    )
    return body


def claimed_job_body(job: Job) -> dict[str, Any]:
    """The job as `GET /work` hands it to the claiming worker: with the attempt's token."""
    return {**job_body(job), "attempt_id": job.attempt_id}


def attempt_body(attempt: Attempt) -> dict[str, Any]:
    return AttemptOut(
        id=attempt.id,
        machine_id=attempt.machine_id,
        started=attempt.started,
        ended=attempt.ended,
        outcome=attempt.outcome,
        exit_code=attempt.exit_code,
        warnings=list(attempt.warnings),
    ).model_dump(mode="json")


def checkpoint_targets(job: Job) -> list[tuple[str, str]]:
    """(bucket, prefix) of each checkpoint target, numbered as commits name them: the legacy
    checkpoint prefix is target 0; with `sync`, target i is `sync.during[i]`."""
    spec = job.spec
    sync = spec.get("sync")
    if sync is not None:
        return [(entry["bucket"], entry["prefix"]) for entry in sync.get("during", [])]
    bucket, prefix = spec.get("checkpoint_bucket"), spec.get("checkpoint_prefix")
    return [] if bucket is None or prefix is None else [(bucket, prefix)]


def checkpoint_body(checkpoint: Checkpoint) -> dict[str, Any]:
    return CheckpointOut(
        generation=checkpoint.generation,
        attempt_id=checkpoint.attempt_id,
        machine_id=checkpoint.machine_id,
        created=checkpoint.created,
        files=checkpoint.files,
        bytes=checkpoint.bytes,
        kept=checkpoint.kept,
    ).model_dump(mode="json")


def manifest_body(checkpoint: Checkpoint, job: Job) -> dict[str, Any]:
    targets = checkpoint_targets(job)
    files = [
        CheckpointFileOut(
            target=entry.target,
            path=entry.path,
            bucket=targets[entry.target][0] if entry.target < len(targets) else "",
            key=entry.key,
            size=entry.size,
            sha256=entry.sha256,
        )
        for entry in checkpoint.manifest
    ]
    return {
        **checkpoint_body(checkpoint),
        "compressed": bool(job.spec.get("compression", False)),
        "manifest": [item.model_dump(mode="json") for item in files],
    }


def event_body(event: JobEvent) -> dict[str, Any]:
    return JobEventOut(
        id=event.id,
        time=event.created,
        kind=event.kind,
        message=event.message,
        attempt_id=event.attempt_id,
        machine_id=event.machine_id,
        data=dict(event.data) if event.data is not None else None,
    ).model_dump(mode="json")


__all__ = [
    "JobOut",
    "attempt_body",
    "checkpoint_body",
    "checkpoint_targets",
    "claimed_job_body",
    "event_body",
    "job_body",
    "manifest_body",
    "new_job",
]
