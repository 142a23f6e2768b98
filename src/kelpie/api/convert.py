"""Store records to wire bodies, and submissions to store records."""

from __future__ import annotations

from typing import Any, Literal

from kelpie.schemas import (
    LEGACY_FIELDS,
    AttemptOut,
    CheckpointFileOut,
    CheckpointOut,
    JobCreate,
    JobEventOut,
    JobOut,
    YoungDalyOut,
    format_timestamp,
)
from kelpie.store.goodput import AttemptLedger, GroupLedger, JobLedger
from kelpie.store.models import (
    RECENT_WORKER_SECONDS,
    Attempt,
    Checkpoint,
    Job,
    JobEvent,
    NewJob,
    PendingReason,
    Principal,
    Worker,
)

# Submission fields the store keeps verbatim and never queries (labels are also stored apart,
# for filters).
SPEC_FIELDS = (
    "command",
    "arguments",
    "environment",
    *LEGACY_FIELDS,
    "sync",
    "compression",
    "labels",
    "max_duration",
    "retry",
)


def new_job(submission: JobCreate, principal: Principal) -> NewJob:
    spec = submission.model_dump(mode="json", include=set(SPEC_FIELDS), exclude_none=True)
    if not spec.get("labels"):
        spec.pop("labels", None)
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
        name=submission.name,
        max_interruptions=submission.max_interruptions,
        logs_prefix=submission.logs_prefix,
        stall_timeout=submission.stall_timeout,
    )


def retry_meaning(job: Job, exit_code: int | None) -> Literal["fail", "interruption"] | None:
    """What the job's retry rules make of a failure report with this exit code (None: an
    ordinary failure)."""
    rules = job.spec.get("retry")
    if exit_code is None or not rules:
        return None
    if exit_code in rules.get("fail_exit_codes", ()):
        return "fail"
    if exit_code in rules.get("interruption_exit_codes", ()):
        return "interruption"
    return None


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
        # the machine holding it (or that last held it, once ended); none while it waits
        "machine_id": None if job.status == "pending" else job.machine_id,
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
        name=job.name,
        labels=dict(spec.get("labels") or {}),
        max_duration=spec.get("max_duration"),
        max_interruptions=job.max_interruptions,
        num_interruptions=job.num_interruptions,
        retry=spec.get("retry"),
        logs_prefix=job.logs_prefix,
        stall_timeout=job.stall_timeout,
        progress=None if job.progress is None else dict(job.progress),
        progress_updated_at=_ts(job.progress_updated_at),
        pending_reason=None,
    )
    return body


def pending_reason_body(reason: PendingReason, container_group_id: str) -> dict[str, Any]:
    """Why a pending job waits, in words and figures (`PendingReasonOut`)."""
    recent = int(RECENT_WORKER_SECONDS)
    if reason.code == "no_workers":
        message = (
            f"no worker of container group {container_group_id!r} has asked for work"
            f" in the last {recent} s"
        )
    elif reason.code == "blocked":
        message = (
            f"every machine of the group seen in the last {recent} s"
            f" ({reason.machines}) failed this job before and never receives it again"
        )
    else:
        ahead = f"{reason.jobs_ahead} job{'s' if reason.jobs_ahead != 1 else ''}"
        message = (
            f"{ahead} of the group ahead of it (priority, then submission order);"
            f" {reason.busy} of {reason.machines} machines busy"
        )
    return {
        "reason": reason.code,
        "message": message,
        "machines": reason.machines,
        "blocked_machines": reason.blocked,
        "busy_machines": reason.busy,
        "jobs_ahead": reason.jobs_ahead,
        "recent_seconds": recent,
    }


def worker_body(worker: Worker) -> dict[str, Any]:
    return {
        "machine_id": worker.machine_id,
        "container_group_id": worker.container_group_id,
        "user_id": worker.user_id,
        "first_seen": _ts(worker.first_seen),
        "last_seen": _ts(worker.last_seen),
        "last_poll": _ts(worker.last_poll),
        "current_job_id": worker.current_job_id,
        "blocked_jobs": worker.blocked_jobs,
        "version": worker.version,
    }


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


def _rounded(value: float | None) -> float | None:
    """Seconds (and rates) to the millisecond: the figures are no more precise than that."""
    return None if value is None else round(value, 3)


def attempt_goodput_body(attempt: AttemptLedger) -> dict[str, Any]:
    return {
        "id": attempt.id,
        "machine_id": attempt.machine_id,
        "outcome": attempt.outcome,
        "started": format_timestamp(attempt.started),
        "ended": _ts(attempt.ended),
        "end": format_timestamp(attempt.end),
        "downloading_s": _rounded(attempt.downloading_s),
        "running_s": _rounded(attempt.running_s),
        "uploading_s": _rounded(attempt.uploading_s),
        "checkpoints": attempt.checkpoints,
        "last_checkpoint": _ts(attempt.last_checkpoint),
        "work_lost_s": _rounded(attempt.work_lost_s),
        "detection_delay_s": _rounded(attempt.detection_delay_s),
    }


def job_goodput_body(ledger: JobLedger) -> dict[str, Any]:
    attempts = ledger.attempts
    return {
        "job_id": ledger.job_id,
        "status": ledger.status,
        "attempts": [attempt_goodput_body(attempt) for attempt in attempts],
        "totals": {
            "attempts": len(attempts),
            "interruptions": ledger.interruptions,
            "failures": ledger.failures,
            "downloading_s": _rounded(sum(a.downloading_s for a in attempts)),
            "running_s": _rounded(sum(a.running_s for a in attempts)),
            "uploading_s": _rounded(sum(a.uploading_s for a in attempts)),
            "work_lost_s": _rounded(ledger.work_lost_s),
            "detection_delay_s": _rounded(sum(a.detection_delay_s or 0.0 for a in attempts)),
            "useful_running_s": _rounded(ledger.useful_running_s),
            "goodput": None if ledger.goodput is None else round(ledger.goodput, 4),
        },
    }


def group_goodput_body(report: GroupLedger) -> dict[str, Any]:
    young_daly = report.young_daly
    return {
        "container_group_id": report.container_group_id,
        "since": format_timestamp(report.since),
        "until": format_timestamp(report.until),
        "attempts": report.attempts,
        "interruptions": report.interruptions,
        "failures": report.failures,
        "downloading_s": _rounded(report.downloading_s),
        "running_s": _rounded(report.running_s),
        "uploading_s": _rounded(report.uploading_s),
        "interruptions_per_hour": _rounded(report.interruptions_per_hour),
        "mean_time_between_interruptions_s": _rounded(report.mean_time_between_interruptions_s),
        "checkpoints": report.checkpoints,
        "mean_checkpoint_interval_s": _rounded(report.mean_checkpoint_interval_s),
        "mean_checkpoint_cost_s": _rounded(report.mean_checkpoint_cost_s),
        "gpu_time_lost_s": _rounded(report.gpu_time_lost_s),
        "mean_detection_delay_s": _rounded(report.mean_detection_delay_s),
        "young_daly": None
        if young_daly is None
        else YoungDalyOut(
            interval_s=round(young_daly.interval_s, 3),
            checkpoint_cost_s=round(young_daly.checkpoint_cost_s, 3),
            mean_time_between_interruptions_s=round(
                young_daly.mean_time_between_interruptions_s, 3
            ),
        ).model_dump(mode="json"),
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
    "attempt_goodput_body",
    "checkpoint_body",
    "checkpoint_targets",
    "claimed_job_body",
    "event_body",
    "group_goodput_body",
    "job_body",
    "job_goodput_body",
    "manifest_body",
    "new_job",
    "retry_meaning",
]
