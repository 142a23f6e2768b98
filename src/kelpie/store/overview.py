"""Read-only views of the store for operators: the dashboard's group pages and `/metrics`.

Records the stores hand out for these views, and the dialect-free rules that turn the counts
a store reads into what the views show (the dialects differ only in SQL).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kelpie.store._common import as_attempt_outcome, as_job_status
from kelpie.store.models import ATTEMPT_OUTCOMES, JOB_STATUSES, AttemptOutcome, JobStatus


@dataclass(frozen=True, slots=True)
class StoreMetrics:
    """Everything `/metrics` reads from the store, taken in one statement (one snapshot)."""

    jobs: Mapping[tuple[str, JobStatus], int]
    """Jobs by (container group, status); only pairs that have jobs."""
    attempts: Mapping[AttemptOutcome, int]
    """Attempts recorded for the jobs still stored, by outcome (`running` for live holds)."""
    reallocations: int
    blocked_machines: int
    """Machines blocked from at least one job (they failed it)."""
    webhook_backlog: int
    """Webhook deliveries neither delivered nor given up."""
    oldest_webhook: datetime | None
    """When the oldest event of the backlog was written."""


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """A container group's jobs by status, as one caller sees them."""

    container_group_id: str
    jobs: Mapping[JobStatus, int]


@dataclass(frozen=True, slots=True)
class BlockedMachine:
    """A machine that failed jobs of a group, and so never receives those jobs again."""

    machine_id: str
    jobs: int
    last_blocked: datetime
    reallocated: bool


@dataclass(frozen=True, slots=True)
class ActivityTallies:
    """What a store counts for a group's activity chart: where each bucket starts, jobs and
    holds alive when the first bucket starts, and per bucket the jobs created and ended, the
    attempts started, and the attempts ended by outcome. Buckets are numbered from 0."""

    since: datetime
    bucket_seconds: float
    buckets: int
    jobs_alive_before: int
    attempts_held_before: int
    jobs_created: Mapping[int, int] = field(default_factory=dict)
    jobs_ended: Mapping[int, int] = field(default_factory=dict)
    attempts_started: Mapping[int, int] = field(default_factory=dict)
    attempts_ended: Mapping[tuple[int, AttemptOutcome], int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ActivityBucket:
    """One step of a group's activity: queue depth and running jobs at the bucket's end, and
    what ended within it."""

    start: datetime
    pending: int
    running: int
    ended: Mapping[AttemptOutcome, int]
    """Attempts that ended within the bucket, by outcome (interrupted, lost, failed, ...)."""


def tally(rows: Iterable[tuple[str, int, int]], buckets: int) -> dict[str, dict[int, int]]:
    """(kind, bucket, count) rows into {kind: {bucket: count}}; a bucket past the last one (an
    event at the very end of the window) counts in the last."""
    counts: dict[str, dict[int, int]] = {}
    for kind, bucket, count in rows:
        index = min(max(int(bucket), 0), buckets - 1) if bucket >= 0 else -1
        per_bucket = counts.setdefault(kind, {})
        per_bucket[index] = per_bucket.get(index, 0) + int(count)
    return counts


def activity_tallies(
    rows: Iterable[tuple[str, int, int]], since: datetime, bucket_seconds: float, buckets: int
) -> ActivityTallies:
    """The tallies from a store's rows: kinds `alive` and `held` (bucket -1: before the
    window), `created`, `ended`, `started`, and `ended:<outcome>` for attempts."""
    counts = tally(rows, buckets)
    attempts_ended: dict[tuple[int, AttemptOutcome], int] = {}
    for kind, per_bucket in counts.items():
        if kind.startswith("ended:"):
            outcome = as_attempt_outcome(kind.removeprefix("ended:"))
            for index, count in per_bucket.items():
                attempts_ended[(index, outcome)] = count
    return ActivityTallies(
        since=since,
        bucket_seconds=bucket_seconds,
        buckets=buckets,
        jobs_alive_before=counts.get("alive", {}).get(-1, 0),
        attempts_held_before=counts.get("held", {}).get(-1, 0),
        jobs_created=counts.get("created", {}),
        jobs_ended=counts.get("ended", {}),
        attempts_started=counts.get("started", {}),
        attempts_ended=attempts_ended,
    )


def activity_series(tallies: ActivityTallies) -> list[ActivityBucket]:
    """Queue depth and running jobs at the end of each bucket, from the tallies.

    A job is alive from its creation until it completes, fails or is canceled; it is running
    while one of its attempts holds it, and pending the rest of its life. So at any time
    pending = alive - held, and both change only by the counts of each bucket."""
    alive = tallies.jobs_alive_before
    held = tallies.attempts_held_before
    series = []
    for index in range(tallies.buckets):
        ended = {
            outcome: tallies.attempts_ended[(index, outcome)]
            for outcome in ATTEMPT_OUTCOMES
            if (index, outcome) in tallies.attempts_ended
        }
        alive += tallies.jobs_created.get(index, 0) - tallies.jobs_ended.get(index, 0)
        held += tallies.attempts_started.get(index, 0) - sum(ended.values())
        series.append(
            ActivityBucket(
                start=tallies.since + timedelta(seconds=index * tallies.bucket_seconds),
                pending=alive - held,
                running=held,
                ended=ended,
            )
        )
    return series


def group_counts(rows: Iterable[tuple[str, str, int]]) -> list[GroupCounts]:
    """(group, status, count) rows, in group order, into one record per group with every
    status present (0 when none)."""
    groups: dict[str, dict[JobStatus, int]] = {}
    for group, status, count in rows:
        per_status = groups.setdefault(group, dict.fromkeys(JOB_STATUSES, 0))
        per_status[as_job_status(status)] = int(count)
    return [GroupCounts(group, jobs) for group, jobs in groups.items()]


def store_metrics(
    rows: Iterable[tuple[str, str | None, str | None, int, object]],
    to_time: Callable[[object], datetime],
) -> StoreMetrics:
    """The snapshot from (kind, name, detail, count, time) rows of both dialects' metrics
    statement; `to_time` reads the dialect's time values."""
    jobs: dict[tuple[str, JobStatus], int] = {}
    attempts: dict[AttemptOutcome, int] = {}
    scalars: dict[str, int] = {}
    oldest_webhook: datetime | None = None
    for kind, name, detail, count, at in rows:
        if kind == "jobs" and name is not None and detail is not None:
            jobs[(name, as_job_status(detail))] = int(count)
        elif kind == "attempts" and name is not None:
            attempts[as_attempt_outcome(name)] = int(count)
        else:
            scalars[kind] = int(count)
            if kind == "webhook_backlog" and at is not None:
                oldest_webhook = to_time(at)
    return StoreMetrics(
        jobs=jobs,
        attempts=attempts,
        reallocations=scalars.get("reallocations", 0),
        blocked_machines=scalars.get("blocked_machines", 0),
        webhook_backlog=scalars.get("webhook_backlog", 0),
        oldest_webhook=oldest_webhook,
    )
