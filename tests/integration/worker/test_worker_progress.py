"""A real worker sends what its job writes to $KELPIE_PROGRESS_FILE with its heartbeats; a job
that keeps beating but stops making progress is stopped by its `stall_timeout`. Seen the way
a user sees it: through the SDK and the `kelpie` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kelpie.client import KelpieClient
from kelpie.schemas import JobOut
from tests.support.waiting import wait_for
from tests.support.worker import WorkerLab, pid_alive

pytestmark = pytest.mark.slow

STEPS = 40
HUNG = {"step": STEPS, "total": STEPS, "message": "hung"}


def kelpie(lab: WorkerLab, *args: str, code: int = 0) -> str:
    """`kelpie ARGS` as the lab's user, as a real process; its stdout."""
    env = {**os.environ, "KELPIE_API_URL": lab.api_url, "KELPIE_API_KEY": lab.user.key}
    done = subprocess.run(
        [sys.executable, "-m", "kelpie", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == code, done.stderr
    return done.stdout


def submit_hanging_job(lab: WorkerLab, tmp_path: Path, **fields: Any) -> tuple[str, Path]:
    pid_file = tmp_path / "job.pid"
    job = lab.submit(
        "report_progress.py",
        str(STEPS),
        environment={"PID_FILE": str(pid_file), **fields.pop("environment", {})},
        heartbeat_interval=1,
        stall_timeout=4,
        max_failures=1,
        **fields,
    )
    return job["id"], pid_file


def test_a_job_that_beats_without_progress_is_stopped_by_its_stall_timeout(
    lab: WorkerLab, tmp_path: Path
) -> None:
    job_id, pid_file = submit_hanging_job(lab, tmp_path)
    lab.start_worker("m1")

    with KelpieClient(lab.api_url, lab.user.key) as client:
        # the job's last progress reaches the job object while it still runs
        def with_last_progress() -> JobOut | None:
            job = client.get_job(job_id)
            return job if job.progress == HUNG else None

        running = wait_for(with_last_progress, "the job's last progress to be shown", timeout=30)
        assert running.status == "running" and running.progress_updated_at is not None
        pid = int(wait_for(lambda: (pid_file.exists() and pid_file.read_text()) or None, "pid"))

        failed = lab.wait_status(job_id, "failed", timeout=30)
        assert failed["last_error"].startswith("stalled"), failed["last_error"]
        # the worker's next beat was refused, so it killed the hung command
        wait_for(lambda: not pid_alive(pid), "the hung job to be killed", timeout=15)
        events = client.list_job_events(job_id)

    kinds = [event.kind for event in events]
    assert kinds[0] == "claimed" and "stalled" in kinds
    progress = [event for event in events if event.kind == "progress"]
    # milestones, not every change the worker saw: at most the first, one per tenth, and
    # each new message
    assert 2 <= len(progress) <= 1 + 10 + 2
    assert progress[-1].data == HUNG
    assert progress[0].data is not None and progress[0].data["message"] == "warming up"
    assert "training" in {event.data["message"] for event in progress if event.data}
    [stalled] = [event for event in events if event.kind == "stalled"]
    assert stalled.machine_id == "m1"
    assert stalled.data is not None and stalled.data["error"] == failed["last_error"]

    # the command line shows the same
    shown = kelpie(lab, "jobs", "get", job_id)
    assert f"{STEPS}/{STEPS} (100 %) hung" in shown
    assert "4 s without progress" in shown
    watched = kelpie(lab, "jobs", "watch", job_id, code=1).splitlines()
    # the job, one line per event, the job again: nothing per heartbeat
    assert len(watched) == 1 + len(events) + 1, watched
    assert watched[0].startswith(f"{job_id}  failed")
    assert "  stalled  " in watched[-2]
    assert watched[-1] == watched[0]
    table = kelpie(lab, "workers", "--group", lab.group).splitlines()
    assert table[0].split() == [
        "MACHINE",
        "GROUP",
        "LAST",
        "POLL",
        "LAST",
        "SEEN",
        "CURRENT",
        "JOB",
        "BLOCKED",
        "VERSION",
    ]
    [row] = table[1:]
    assert row.split()[0] == "m1" and row.split()[-2:] == ["1", "0.1.0"]


def test_a_progress_file_that_is_not_json_is_ignored_with_one_warning(
    lab: WorkerLab, tmp_path: Path
) -> None:
    job_id, _ = submit_hanging_job(lab, tmp_path, environment={"WRITE_GARBAGE": "1"})
    lab.start_worker("m1")

    with KelpieClient(lab.api_url, lab.user.key) as client:
        wait_for(lambda: client.get_job(job_id).progress == HUNG, "the job's progress", timeout=30)
        [attempt] = client.list_attempts(job_id)

    assert len(attempt.warnings) == 1
    assert "progress" in attempt.warnings[0]
