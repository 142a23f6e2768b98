"""Real workers under the scheduling rules: `max_duration` stops a job that would run on,
retry rules and `max_interruptions` decide what an exit means, the deletion cost follows the
work at risk, and a run fills the goodput ledger."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.support.fake_imds import FakeImds
from tests.support.waiting import wait_for
from tests.support.worker import WorkerLab

pytestmark = pytest.mark.slow

FINISHING = 999_999_999


def attempts(lab: WorkerLab, job_id: str) -> list[dict[str, object]]:
    response = lab.user.http.get(f"/jobs/{job_id}/attempts")
    assert response.status_code == 200, response.text
    listed: list[dict[str, object]] = response.json()
    return listed


def test_max_duration_stops_a_job_that_would_run_on(lab: WorkerLab) -> None:
    # count.py would count for 100 s; on SIGTERM it checkpoints its step and exits 143
    job = lab.submit(
        "count.py",
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix="ck/",
        environment={"COUNT_TO": "1000", "STEP_S": "0.1"},
        max_duration=2,
        max_failures=1,
        retry={"interruption_exit_codes": [143]},  # a timeout is not the job's own exit
    )
    lab.start_worker("m1")

    failed = lab.wait_status(job["id"], "failed", timeout=60)

    assert failed["last_error"].startswith("timed out"), failed["last_error"]
    assert failed["last_exit_code"] is None
    assert (failed["num_failures"], failed["num_interruptions"]) == (1, 0)
    [attempt] = attempts(lab, job["id"])
    assert attempt["outcome"] == "failed"
    held = datetime.fromisoformat(str(attempt["ended"])) - datetime.fromisoformat(
        str(attempt["started"])
    )
    assert 2 <= held.total_seconds() < 20
    # it got SIGTERM and its last checkpoint was committed
    committed = lab.committed(job["id"])
    assert "sigterm.txt" in committed
    assert 10 <= int(committed["count.txt"]) < 1000


def test_an_exit_counted_as_an_interruption_until_max_interruptions(lab: WorkerLab) -> None:
    job = lab.submit(
        "exit_with.py",
        "143",
        environment={"PAUSE_S": "0"},
        max_failures=1,
        max_interruptions=2,
        retry={"interruption_exit_codes": [143]},
    )
    lab.start_worker("m1")

    failed = lab.wait_status(job["id"], "failed", timeout=60)

    assert (failed["num_failures"], failed["num_interruptions"]) == (0, 2)
    assert failed["last_error"] == "interrupted 2 times; max_interruptions is 2"
    # the same machine took it again: an interruption does not block it
    assert [(a["machine_id"], a["outcome"], a["exit_code"]) for a in attempts(lab, job["id"])] == [
        ("m1", "interrupted", 143),
        ("m1", "interrupted", 143),
    ]


def test_an_exit_code_in_fail_exit_codes_ends_the_job_at_its_first_failure(
    lab: WorkerLab,
) -> None:
    job = lab.submit(
        "exit_with.py",
        "3",
        environment={"PAUSE_S": "0"},
        max_failures=5,
        retry={"fail_exit_codes": [3]},
    )
    lab.start_worker("m1")

    failed = lab.wait_status(job["id"], "failed", timeout=60)

    assert (failed["num_failures"], failed["last_exit_code"]) == (1, 3)
    assert len(attempts(lab, job["id"])) == 1


def test_deletion_cost_follows_the_work_since_the_last_checkpoint(lab: WorkerLab) -> None:
    with FakeImds() as imds:
        lab.imds_url = imds.url
        # a checkpoint at the start, then one every 4 s: the work at risk climbs and drops
        job = lab.submit(
            "count.py",
            checkpoint_bucket=lab.bucket.name,
            checkpoint_prefix="ck/",
            environment={"COUNT_TO": "3", "STEP_S": "4"},
        )
        lab.start_worker("m1")
        lab.wait_status(job["id"], "completed", timeout=60)
        costs = wait_for(
            lambda: imds.deletion_costs if imds.deletion_costs[-1:] == [0] else None,
            "the node to be idle again",
            timeout=10,
        )

    running = costs[1 : costs.index(FINISHING)]
    assert running and min(running) >= 1
    peak = running.index(max(running))
    assert running[peak] >= 3, costs  # seconds since the last commit, not heartbeats
    assert any(cost < running[peak] for cost in running[peak:]), costs  # a commit lowers it


def test_a_run_fills_the_goodput_ledger(lab: WorkerLab) -> None:
    lab.bucket.put("in/data.txt", "x" * 1000)
    job = lab.submit(
        "count.py",
        input_bucket=lab.bucket.name,
        input_prefix="in/",
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix="ck/",
        output_bucket=lab.bucket.name,
        output_prefix="out/",
        environment={"COUNT_TO": "5", "STEP_S": "0.3"},
    )
    lab.start_worker("m1")
    lab.wait_status(job["id"], "completed", timeout=60)

    ledger = lab.user.http.get(f"/jobs/{job['id']}/goodput").json()

    [attempt] = ledger["attempts"]
    assert attempt["outcome"] == "completed" and attempt["checkpoints"] >= 1
    assert attempt["downloading_s"] > 0 and attempt["running_s"] >= 1.5
    assert attempt["uploading_s"] > 0  # posted before the completion report
    assert attempt["work_lost_s"] is None
    report = lab.user.http.get(f"/container-groups/{lab.group}/goodput").json()
    assert report["checkpoints"] == attempt["checkpoints"]
    assert report["mean_checkpoint_cost_s"] is not None  # commits carry their upload time
