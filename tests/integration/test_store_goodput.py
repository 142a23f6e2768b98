"""The goodput ledger and the group report equal a scripted timeline, on every Store.

The history is made through the store as workers make it (claims, `started` and
`outputs_uploaded` events, commits with their upload time, a node that dies and is taken
over, an interruption, a failure, a completion); then the moments each attempt keeps are
written into the database as the script says, instead of waiting for them (that the store
keeps them right is test_store_scheduling's). T is ten hours ago:

    job 1, attempt A (m1): claimed T, command started T+60, commits T+660 (took 20 s) and
           T+1260 (40 s), last heartbeat T+1500: the node dies; taken over at T+1560
           attempt B (m2): claimed T+1560, started T+1620, commit T+2220 (30 s),
           handed back (interrupted) T+2400
           attempt C (m3): claimed T+2460, started T+2500, fails T+2800, no commit
           attempt D (m4): claimed T+2830, started T+2860, commit T+3460 (10 s), exits 0,
           final uploads 45 s, completed T+3600
    job 2 (same group): one attempt claimed T-7200, before the report's window
    job 3 (another group): one attempt, never in the group's report
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from kelpie.store import Store
from kelpie.store.goodput import AttemptLedger
from kelpie.store.models import HeldOutcome, Job, ManifestEntry, NewJob, User
from tests.support.store_sql import set_columns

GROUP = "group-goodput"


def new_job(group: str = GROUP) -> NewJob:
    return NewJob(group, 3, 1, None, {"command": "python", "arguments": ["train.py"]})


async def claim(store: Store, machine: str, group: str = GROUP) -> Job:
    job = await store.claim_job(machine, group, None)
    assert job is not None and job.attempt_id is not None
    return job


async def started(store: Store, job: Job) -> None:
    assert job.attempt_id is not None and job.machine_id is not None
    outcome = await store.add_worker_event(
        job.id, job.machine_id, None, job.attempt_id, "started", "started", None
    )
    assert outcome is HeldOutcome.DONE


async def commit(store: Store, job: Job, generation: int, upload_seconds: float) -> None:
    assert job.attempt_id is not None and job.machine_id is not None
    files = [ManifestEntry(0, "model.pt", f"ckpt/.kelpie/{generation}/model.pt", 10, "ab" * 32)]
    result = await store.commit_checkpoint(
        job.id, job.machine_id, None, job.attempt_id, generation, files, upload_seconds
    )
    assert result.checkpoint is not None


class Script:
    """Writes the script's moments (seconds after T) into the database."""

    def __init__(self, database_url: str, origin: float) -> None:
        self.database_url = database_url
        self.origin = origin

    async def attempt(self, attempt_id: int | None, **moments: float) -> None:
        assert attempt_id is not None
        values = {column: self.origin + offset for column, offset in moments.items()}
        await set_columns(self.database_url, "attempts", {"id": attempt_id}, values)

    def at(self, offset: float) -> datetime:
        return datetime.fromtimestamp(self.origin + offset, UTC)


async def play(store: Store, database_url: str, user: User) -> tuple[Job, Script]:
    """Makes the history of the module docstring; returns job 1 and the script."""
    script = Script(database_url, time.time() - 10 * 3600)
    [job] = await store.create_jobs(user.id, [new_job()])

    a = await claim(store, "m1")
    await started(store, a)
    await commit(store, a, 1, 20.0)
    await commit(store, a, 2, 40.0)
    await set_columns(  # m1 dies: its lease runs out
        database_url, "jobs", {"id": job.id}, {"heartbeat": script.origin + 1500}
    )
    await set_columns(database_url, "jobs", {"id": job.id}, {"lease_expires": script.origin + 1502})
    b = await claim(store, "m2")
    await started(store, b)
    await commit(store, b, 3, 30.0)
    assert await store.interrupt_if_held(job.id, "m2", None, b.attempt_id) is HeldOutcome.DONE

    c = await claim(store, "m3")
    await started(store, c)
    failure = await store.fail_if_held(job.id, "m3", None, 1, "boom", c.attempt_id)
    assert failure.outcome is HeldOutcome.DONE

    d = await claim(store, "m4")
    await started(store, d)
    await commit(store, d, 4, 10.0)
    assert d.attempt_id is not None
    await store.add_worker_event(
        job.id, "m4", None, d.attempt_id, "outputs_uploaded", "up", {"seconds": 45.0}
    )
    assert await store.complete_if_held(job.id, "m4", None, d.attempt_id) is HeldOutcome.DONE

    # the moments each attempt keeps (the store wrote them with today's times)
    await script.attempt(
        a.attempt_id, started=0, command_started=60, ended=1560, next_started=1560,
        first_commit=660, last_commit=1260,
    )  # fmt: skip
    await script.attempt(
        b.attempt_id, started=1560, command_started=1620, ended=2400, next_started=2460,
        first_commit=2220, last_commit=2220,
    )  # fmt: skip
    await script.attempt(
        c.attempt_id, started=2460, command_started=2500, ended=2800, next_started=2830
    )
    await script.attempt(
        d.attempt_id, started=2830, command_started=2860, ended=3600,
        first_commit=3460, last_commit=3460,
    )  # fmt: skip
    return job, script


async def other_jobs(store: Store, user: User, script: Script) -> None:
    """Job 2 (before the window) and job 3 (another group), both interrupted."""
    [early] = await store.create_jobs(user.id, [new_job()])
    held = await claim(store, "m5")
    await started(store, held)
    await store.interrupt_if_held(early.id, "m5", None, held.attempt_id)
    await script.attempt(held.attempt_id, started=-7200, command_started=-7100, ended=-3600)

    [elsewhere] = await store.create_jobs(user.id, [new_job("other-group")])
    held = await claim(store, "m6", "other-group")
    await store.interrupt_if_held(elsewhere.id, "m6", None, held.attempt_id)
    await script.attempt(held.attempt_id, started=100, ended=200)


def figures(attempt: AttemptLedger) -> dict[str, Any]:
    return {
        "outcome": attempt.outcome,
        "downloading": round(attempt.downloading_s, 3),
        "running": round(attempt.running_s, 3),
        "uploading": round(attempt.uploading_s, 3),
        "checkpoints": attempt.checkpoints,
        "lost": None if attempt.work_lost_s is None else round(attempt.work_lost_s, 3),
        "delay": None if attempt.detection_delay_s is None else round(attempt.detection_delay_s, 3),
    }


async def test_job_ledger_equals_the_scripted_timeline(store: Store, database_url: str) -> None:
    user = await store.create_user(f"user-{uuid.uuid4().hex[:8]}")
    job, script = await play(store, database_url, user)

    ledger = await store.job_goodput(job.id, None)

    assert ledger is not None and ledger.status == "completed"
    assert [figures(attempt) for attempt in ledger.attempts] == [
        # the node died at its last heartbeat (T+1500), 240 s after its last commit
        {"outcome": "lost", "downloading": 60, "running": 1440, "uploading": 0,
         "checkpoints": 2, "lost": 240, "delay": 60},
        {"outcome": "interrupted", "downloading": 60, "running": 780, "uploading": 0,
         "checkpoints": 1, "lost": 180, "delay": 60},
        # no commit of its own: everything it ran is done again
        {"outcome": "failed", "downloading": 40, "running": 300, "uploading": 0,
         "checkpoints": 0, "lost": 300, "delay": None},
        {"outcome": "completed", "downloading": 30, "running": 695, "uploading": 45,
         "checkpoints": 1, "lost": None, "delay": None},
    ]  # fmt: skip
    lost = ledger.attempts[0]
    assert abs((lost.end - script.at(1500)).total_seconds()) < 0.001
    assert lost.last_checkpoint is not None
    assert abs((lost.last_checkpoint - script.at(1260)).total_seconds()) < 0.001
    assert (ledger.interruptions, ledger.failures) == (2, 1)
    assert ledger.work_lost_s == pytest.approx(720, abs=0.01)
    assert ledger.useful_running_s == pytest.approx(3215 - 720, abs=0.01)
    # held: 1500 + 840 + 340 + 770 seconds
    assert ledger.goodput == pytest.approx(2495 / 3450, abs=1e-4)
    assert await store.job_goodput(job.id, str(uuid.uuid4())) is None  # another user's


async def test_group_report_equals_the_scripted_history(store: Store, database_url: str) -> None:
    user = await store.create_user(f"user-{uuid.uuid4().hex[:8]}")
    _, script = await play(store, database_url, user)
    await other_jobs(store, user, script)

    report = await store.group_goodput(user.id, GROUP, script.at(-1), script.at(4000))

    assert (report.attempts, report.interruptions, report.failures) == (4, 2, 1)
    assert report.downloading_s == pytest.approx(190, abs=0.01)
    assert report.running_s == pytest.approx(3215, abs=0.01)
    assert report.uploading_s == pytest.approx(45, abs=0.01)
    assert report.interruptions_per_hour == pytest.approx(2 * 3600 / 3215, abs=1e-4)
    assert report.mean_time_between_interruptions_s == pytest.approx(1607.5, abs=0.01)
    assert report.checkpoints == 4
    # consecutive commits of one attempt: only A's, 600 s apart
    assert report.mean_checkpoint_interval_s == pytest.approx(600, abs=0.01)
    assert report.mean_checkpoint_cost_s == pytest.approx((20 + 40 + 30 + 10) / 4)
    assert report.gpu_time_lost_s == pytest.approx(240 + 180, abs=0.01)  # interruptions only
    assert report.mean_detection_delay_s == pytest.approx(60, abs=0.01)
    young_daly = report.young_daly
    assert young_daly is not None
    assert young_daly.checkpoint_cost_s == pytest.approx(25)
    assert young_daly.interval_s == pytest.approx(math.sqrt(2 * 25 * 1607.5), abs=0.01)

    # the window decides which attempts count; another user sees none of them
    later = await store.group_goodput(user.id, GROUP, script.at(2000), script.at(4000))
    assert (later.attempts, later.interruptions, later.failures) == (2, 0, 1)
    assert later.young_daly is None and later.mean_time_between_interruptions_s is None
    wider = await store.group_goodput(None, GROUP, script.at(-8000), script.at(4000))
    assert (wider.attempts, wider.interruptions) == (5, 3)
    nobody = await store.group_goodput(str(uuid.uuid4()), GROUP, script.at(-8000), script.at(4000))
    assert nobody.attempts == 0 and nobody.interruptions_per_hour is None
