"""A job's own output: passed through, kept in its bucket per attempt, read with `kelpie jobs
logs`, and the end of its stderr in `last_error`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import free_port
from tests.support.waiting import wait_for
from tests.support.worker import WorkerLab

pytestmark = pytest.mark.slow

KELPIE = [sys.executable, "-m", "kelpie"]


def cli_env(lab: WorkerLab) -> dict[str, str]:
    """The user's shell: the API and their own S3 credentials."""
    return {
        **os.environ,
        **lab.s3_env,
        "KELPIE_API_URL": lab.api_url,
        "KELPIE_API_KEY": lab.user.key,
    }


def job_logs(lab: WorkerLab, job_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KELPIE, "jobs", "logs", job_id, *args],
        env=cli_env(lab),
        capture_output=True,
        text=True,
        timeout=60,
    )


def tagged(text: str, *prefixes: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefixes)]


def attempt_ids(lab: WorkerLab, job_id: str) -> list[int]:
    response = lab.user.http.get(f"/jobs/{job_id}/attempts")
    assert response.status_code == 200, response.text
    return sorted(a["id"] for a in response.json())


def test_failed_job_shows_its_stderr_tail_and_its_logs_outlive_the_node(lab: WorkerLab) -> None:
    job = lab.submit(
        "chatter.py",
        max_failures=1,
        output_bucket=lab.bucket.name,
        output_prefix="out/",
        environment={"LINES": "300", "EXIT_CODE": "3", "LAST_WORDS": "boom: disk full"},
    )
    lab.start_worker("m1")
    failed = lab.wait_status(job["id"], "failed")

    error = str(failed["last_error"])
    assert failed["last_exit_code"] == 3
    assert "exited with code 3" in error
    assert error.endswith("err m1 299\nboom: disk full")
    assert "err m1 50\n" not in error  # the end of stderr (~2 KB), not all of it
    assert len(error) < 2500

    lab.stop_all()  # the node is gone; its logs are in the bucket
    (attempt,) = attempt_ids(lab, job["id"])
    keys = lab.bucket.keys(f"out.kelpie-logs/{job['id']}/attempt-{attempt}/")
    assert keys and keys[-1].endswith("/end.json")

    shown = job_logs(lab, job["id"])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [f"out m1 {i}" for i in range(300)]
    assert shown.stderr.splitlines() == [f"err m1 {i}" for i in range(300)] + ["boom: disk full"]
    only = job_logs(lab, job["id"], "--attempt", str(attempt))
    assert only.stdout == shown.stdout


def test_follow_prints_a_job_across_a_sigkill_takeover(lab: WorkerLab, tmp_path: Path) -> None:
    job = lab.submit(
        "chatter.py",
        output_bucket=lab.bucket.name,
        output_prefix="results/run-1",
        environment={"LINES": "40", "STEP_S": "0.2"},
    )
    out_path, err_path = tmp_path / "follow.out", tmp_path / "follow.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        follow = subprocess.Popen(
            [*KELPIE, "jobs", "logs", job["id"], "-f", "--interval", "0.3"],
            env=cli_env(lab),
            stdout=out,
            stderr=err,
        )
    try:
        first = lab.start_worker("m1")
        wait_for(lambda: "out m1 5\n" in out_path.read_text(), "m1's lines followed", 30)
        first.kill_with_descendants()  # no flush, no report: the node vanishes

        lab.start_worker("m2")
        lab.wait_status(job["id"], "completed", timeout=90)
        assert follow.wait(timeout=30) == 0, err_path.read_text()
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()

    lines = out_path.read_text().splitlines()
    m1 = [line for line in lines if line.startswith("out m1 ")]
    m2 = [line for line in lines if line.startswith("out m2 ")]
    assert m1 == [f"out m1 {i}" for i in range(len(m1))] and len(m1) >= 6
    assert m2 == [f"out m2 {i}" for i in range(40)]
    assert lines.index(m2[0]) > lines.index(m1[-1])
    assert len(tagged(err_path.read_text(), "==> attempt")) == 2


def test_capture_keeps_exit_code_and_the_order_of_each_stream(lab: WorkerLab) -> None:
    # No bucket at all: the output is still passed through and its end still reported.
    job = lab.submit("chatter.py", max_failures=1, environment={"LINES": "3000", "EXIT_CODE": "7"})
    worker = lab.start_worker("m1")
    failed = lab.wait_status(job["id"], "failed")
    assert failed["last_exit_code"] == 7
    assert "exited with code 7" in str(failed["last_error"])
    assert str(failed["last_error"]).endswith("err m1 2999")

    def output_through_the_end() -> str | None:
        text = worker.log()
        return text if "err m1 2999\n" in text else None

    container_output = wait_for(output_through_the_end, "the job's last line in the container")
    assert tagged(container_output, "out m1 ") == [f"out m1 {i}" for i in range(3000)]
    assert tagged(container_output, "err m1 ") == [f"err m1 {i}" for i in range(3000)]
    assert job_logs(lab, job["id"]).returncode == 1  # nowhere to keep logs: said so


def test_job_still_gets_sigterm_and_what_it_writes_then_is_kept(lab: WorkerLab) -> None:
    job = lab.submit(
        "chatter.py",
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix="ck/",
        environment={"UNTIL_SIGTERM": "1", "STEP_S": "0.05"},
    )
    worker = lab.start_worker("m1")
    wait_for(lambda: "out m1 20\n" in worker.log(), "the job running and writing")
    worker.signal(signal.SIGTERM)  # the node is going away
    assert worker.proc.wait(timeout=30) == 0
    back = lab.wait_status(job["id"], "pending")
    assert back["num_failures"] == 0

    assert "err m1 got SIGTERM\n" in worker.log()
    shown = job_logs(lab, job["id"])
    assert shown.returncode == 0, shown.stderr
    assert shown.stderr.splitlines()[-1] == "err m1 got SIGTERM"
    outs = shown.stdout.splitlines()
    assert outs == [f"out m1 {i}" for i in range(len(outs))] and len(outs) > 20
    (attempt,) = attempt_ids(lab, job["id"])
    assert lab.bucket.keys(f"ck.kelpie-logs/{job['id']}/attempt-{attempt}/end.json")


async def test_a_bucket_that_cannot_be_reached_never_holds_the_output_up(tmp_path: Path) -> None:
    """The job's output keeps flowing and the attempt's end is not held past the flush time
    while every upload of its logs fails (a closed port: nothing answers)."""
    from kelpie.storage import ObjectStorage, S3Settings
    from kelpie.worker.capture import OutputCapture
    from kelpie.worker.logs import JobLogs, LogLocation

    dead = S3Settings.from_env(
        {
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        }
    )
    logs = JobLogs(
        ObjectStorage(dead, retry_window_s=30),
        LogLocation("b", "out.kelpie-logs/j/"),
        1,
        piece_s=0.1,
    )
    passed = tmp_path / "container-output"
    with passed.open("wb") as out:
        capture = OutputCapture(logs.write, targets=(out.fileno(), out.fileno()))
        logs.start()
        job = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys\nfor i in range(20000): print('line', i)\nsys.exit(5)",
            stdout=capture.child_fds[0],
            stderr=capture.child_fds[1],
        )
        capture.start()
        started = time.monotonic()
        assert await job.wait() == 5
        assert await asyncio.to_thread(capture.wait, 5)
        ran = time.monotonic() - started
        await logs.finish(1.0)
    assert ran < 5  # the job never waited for the bucket
    assert time.monotonic() - started < ran + 3  # nor did the end of the attempt
    assert passed.read_text().splitlines()[-1] == "line 19999"
    assert logs.warning is not None and "did not reach" in logs.warning
