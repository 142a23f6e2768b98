"""Goodput: where each attempt's time went, and what interruptions cost.

Every fact the ledger needs is kept on the attempt's row as it happens, so that a report
over 100,000 attempts reads 100,000 rows and nothing else: `started`, `ended`, `outcome`;
`last_heartbeat` (kept when the attempt is lost), `command_started` (the worker's `started`
event), `upload_seconds` (its `outputs_uploaded` events), `next_started` (the claim of the
job's next attempt), and its committed generations (`commits`, `first_commit`,
`last_commit`, `commit_seconds`, `timed_commits`). Both stores read them, in unix seconds,
into a `facts` CTE and turn them into a ledger with the same `spans`/`ledger` CTEs in both
dialects (the goodput statements of `store/queries/*.sql`):

- end (`finish`): when the attempt's work ended: `ended`; for a lost attempt the holder's
  last heartbeat (it died then, the takeover came later); now while it runs.
- downloading: from the claim to the command's start (inputs, checkpoint restore). An attempt
  whose worker never said its command started (the reference worker) counts as running from
  its claim.
- uploading: the final uploads after the command exited 0.
- running: the rest of the attempt.
- work lost (interrupted, lost and failed attempts): running time after the later of the
  command's start and the attempt's last committed checkpoint: what the next attempt, which
  resumes from the newest committed generation, must do again.
- detection delay (interrupted and lost attempts): from the end to the next attempt's claim,
  when the job runs again.

The group report sums the ledger in SQL (one row, however many attempts), and the figures
derived from those sums (rates, means, the Young/Daly interval) are computed here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kelpie.store._common import Row, as_attempt_outcome
from kelpie.store.models import AttemptOutcome, JobStatus

INTERRUPTED_OUTCOMES: tuple[AttemptOutcome, ...] = ("interrupted", "lost")


@dataclass(frozen=True, slots=True)
class AttemptLedger:
    """Where one attempt's time went (see the module docstring)."""

    id: int
    machine_id: str
    outcome: AttemptOutcome
    started: datetime
    ended: datetime | None
    end: datetime
    downloading_s: float
    running_s: float
    uploading_s: float
    checkpoints: int
    last_checkpoint: datetime | None
    work_lost_s: float | None
    detection_delay_s: float | None

    @property
    def held_s(self) -> float:
        return (self.end - self.started).total_seconds()


@dataclass(frozen=True, slots=True)
class JobLedger:
    job_id: str
    status: JobStatus
    attempts: list[AttemptLedger]

    @property
    def interruptions(self) -> int:
        return sum(1 for a in self.attempts if a.outcome in INTERRUPTED_OUTCOMES)

    @property
    def failures(self) -> int:
        return sum(1 for a in self.attempts if a.outcome == "failed")

    @property
    def work_lost_s(self) -> float:
        """Work lost at every interruption and failure."""
        return sum(a.work_lost_s or 0.0 for a in self.attempts)

    @property
    def useful_running_s(self) -> float:
        """Running time whose work was kept."""
        return max(0.0, sum(a.running_s for a in self.attempts) - self.work_lost_s)

    @property
    def goodput(self) -> float | None:
        """Useful running time over the time machines held the job; None before any."""
        held = sum(a.held_s for a in self.attempts)
        return None if held <= 0 else self.useful_running_s / held


@dataclass(frozen=True, slots=True)
class YoungDaly:
    """τ* ≈ √(2·C·M): the checkpoint interval that loses least when checkpoints cost C and
    interruptions come every M (Young 1974, Daly 2006), both in seconds."""

    checkpoint_cost_s: float
    mean_time_between_interruptions_s: float

    @property
    def interval_s(self) -> float:
        return math.sqrt(2 * self.checkpoint_cost_s * self.mean_time_between_interruptions_s)


@dataclass(frozen=True, slots=True)
class GroupLedger:
    """The sums of a group's attempts that started within [since, until), and what follows
    from them. Interruptions are attempts handed back or lost; rates are per hour of running."""

    container_group_id: str
    since: datetime
    until: datetime
    attempts: int
    interruptions: int
    failures: int
    downloading_s: float
    running_s: float
    uploading_s: float
    gpu_time_lost_s: float
    """Work lost at interruptions (not failures)."""
    detection_delay_s: float
    detections: int
    checkpoints: int
    interval_sum_s: float
    intervals: int
    cost_sum_s: float
    costs: int

    @property
    def interruptions_per_hour(self) -> float | None:
        return None if self.running_s <= 0 else self.interruptions * 3600.0 / self.running_s

    @property
    def mean_time_between_interruptions_s(self) -> float | None:
        return None if self.interruptions == 0 else self.running_s / self.interruptions

    @property
    def mean_checkpoint_interval_s(self) -> float | None:
        """Mean time between consecutive commits of one attempt."""
        return None if self.intervals == 0 else self.interval_sum_s / self.intervals

    @property
    def mean_checkpoint_cost_s(self) -> float | None:
        """Mean time from a generation's files being complete to its commit."""
        return None if self.costs == 0 else self.cost_sum_s / self.costs

    @property
    def mean_detection_delay_s(self) -> float | None:
        return None if self.detections == 0 else self.detection_delay_s / self.detections

    @property
    def young_daly(self) -> YoungDaly | None:
        cost, between = self.mean_checkpoint_cost_s, self.mean_time_between_interruptions_s
        if cost is None or between is None:
            return None
        return YoungDaly(cost, between)


def upload_seconds_of(data: Mapping[str, Any] | None) -> float | None:
    """The `seconds` of an `outputs_uploaded` event's data, if it gives a sensible one."""
    seconds = None if data is None else data.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return None
    return float(seconds)


def _time(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def attempt_ledger(row: Row) -> AttemptLedger:
    """A row of the per-attempt ledger (times in unix seconds, as both dialects give them)."""
    return AttemptLedger(
        id=int(row["id"]),
        machine_id=row["machine_id"],
        outcome=as_attempt_outcome(row["outcome"]),
        started=_time(row["started"]),
        ended=None if row["ended"] is None else _time(row["ended"]),
        end=_time(row["finish"]),
        downloading_s=float(row["downloading_s"]),
        running_s=float(row["running_s"]),
        uploading_s=float(row["uploading_s"]),
        checkpoints=int(row["commits"]),
        last_checkpoint=None if row["last_commit"] is None else _time(row["last_commit"]),
        work_lost_s=_optional_float(row["work_lost_s"]),
        detection_delay_s=_optional_float(row["detection_delay_s"]),
    )


def group_ledger(
    container_group_id: str, since: datetime, until: datetime, row: Row
) -> GroupLedger:
    """The one row of sums over a group's attempts' ledger."""
    return GroupLedger(
        container_group_id=container_group_id,
        since=since,
        until=until,
        attempts=int(row["attempts"]),
        interruptions=int(row["interruptions"]),
        failures=int(row["failures"]),
        downloading_s=float(row["downloading_s"]),
        running_s=float(row["running_s"]),
        uploading_s=float(row["uploading_s"]),
        gpu_time_lost_s=float(row["work_lost_s"]),
        detection_delay_s=float(row["detection_delay_s"]),
        detections=int(row["detections"]),
        checkpoints=int(row["checkpoints"]),
        interval_sum_s=float(row["interval_sum"]),
        intervals=int(row["intervals"]),
        cost_sum_s=float(row["cost_sum"]),
        costs=int(row["costs"]),
    )
