"""The worker through kills, preemptions, cancels, outages and half-written files."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path

import pytest

from kelpie.storage.local_server import LocalS3Server
from tests.support.api import Api, new_admin_key
from tests.support.fake_imds import FakeImds
from tests.support.processes import start_server
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for
from tests.support.worker import (
    WorkerLab,
    make_bucket,
    new_user,
    pid_alive,
)

pytestmark = pytest.mark.slow


def counted(lab: WorkerLab, job_id: str) -> int:
    """The step of the job's newest committed checkpoint generation (0 before the first)."""
    body = lab.committed(job_id).get("count.txt")
    return int(body) if body else 0


def test_job_resumes_from_last_checkpoint_after_worker_is_killed(lab: WorkerLab) -> None:
    job = lab.submit(
        "count.py",
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix="ck/",
        output_bucket=lab.bucket.name,
        output_prefix="out/",
        environment={"COUNT_TO": "30", "STEP_S": "0.25"},
    )
    first = lab.start_worker("m1")
    wait_for(lambda: counted(lab, job["id"]) >= 5, "5 steps committed")
    first.kill_with_descendants()  # the node vanishes: no report, no flush

    lab.start_worker("m2")
    done = lab.wait_status(job["id"], "completed", timeout=60)
    assert done["machine_id"] == "m2"
    assert done["num_failures"] == 0
    result = json.loads(lab.bucket.get("out/result.json") or b"{}")
    assert result["count"] == 30
    assert result["starts"][0] == 0
    assert len(result["starts"]) == 2 and result["starts"][1] >= 5  # resumed, not from 0


def test_preempted_worker_hands_the_job_back_within_a_second(lab: WorkerLab) -> None:
    job = lab.submit(
        "count.py",
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix="ck/",
        environment={"COUNT_TO": "100000", "STEP_S": "0.25"},
    )
    worker = lab.start_worker("m1")
    wait_for(lambda: counted(lab, job["id"]) >= 3, "3 steps committed")

    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    back = lab.wait_status(job["id"], "pending", timeout=10)
    handed_back_after = time.monotonic() - sent

    assert handed_back_after <= 1.0, f"re-pending after {handed_back_after:.2f} s"
    assert back["num_failures"] == 0
    assert worker.proc.wait(timeout=10) == 0
    # the job got SIGTERM, and what it saved then was committed before the hand-back
    last = lab.committed(job["id"])
    assert "sigterm.txt" in last
    assert last["count.txt"] == last["sigterm.txt"]


def test_cancel_stops_the_process_within_heartbeat_and_grace(lab: WorkerLab) -> None:
    pid_file = lab.tmp / "job.pid"
    job = lab.submit("sleep_forever.py", environment={"PID_FILE": str(pid_file)})
    lab.start_worker("m1")
    pid = int(wait_for(lambda: (pid_file.exists() and pid_file.read_text()) or None, "the pid"))
    assert pid_alive(pid)

    canceled = time.monotonic()
    assert lab.user.http.delete(f"/jobs/{job['id']}").status_code == 202
    # heartbeat_interval 1 s + grace 3 s (SIGINT ignored by the job, then SIGTERM)
    wait_for(lambda: not pid_alive(pid), "the canceled job's process to be gone", timeout=6)
    assert time.monotonic() - canceled <= 1 + 3 + 1
    assert lab.job(job["id"])["status"] == "canceled"

    follow_up = lab.submit("count.py", environment={"COUNT_TO": "1", "STEP_S": "0"})
    lab.wait_status(follow_up["id"], "completed")


def test_job_survives_the_api_being_down_longer_than_its_lease(
    worker_api: Api, lab: WorkerLab, tmp_path: Path
) -> None:
    # a server of its own, restarted on the same port and SQLite file
    database_url = f"sqlite:///{tmp_path / 'outage.db'}"
    admin_key = new_admin_key()
    server = start_server(database_url, admin_key, tmp_path / "logs")
    port = int(server.url.rsplit(":", 1)[1])
    api = Api(server, "sqlite")
    lab.user.http.close()
    lab.api_url, lab.user = server.url, new_user(api)
    job = lab.submit(
        "count.py",
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix="ck/",
        output_bucket=lab.bucket.name,
        output_prefix="out/",
        environment={"COUNT_TO": "60", "STEP_S": "0.25"},
    )
    lab.start_worker("m1")
    wait_for(lambda: counted(lab, job["id"]) >= 3, "3 steps committed")
    local_count = lab.dirs("m1")[1] / "count.txt"

    server.stop()
    try:
        # the job goes on without the API (nothing can be committed meanwhile)
        at_stop = wait_for(lambda: count_in(local_count), "the job's count")
        wait_for(
            lambda: (count_in(local_count) or 0) >= at_stop + 20,
            "20 more steps while the API is down",
            timeout=20,
        )
    finally:
        server = start_server(database_url, admin_key, tmp_path / "logs", port=port)
        try:
            done = lab.wait_status(job["id"], "completed", timeout=60)
        finally:
            lab.stop_all()
            server.stop()
    assert done["num_failures"] == 0
    result = json.loads(lab.bucket.get("out/result.json") or b"{}")
    assert result["count"] == 60
    assert result["starts"] == [0]  # never restarted


def count_in(path: Path) -> int | None:
    """The step in the job's count file; None while the job rewrites it (it truncates first)."""
    text = path.read_text().strip()
    return int(text) if text else None


def test_checkpoint_uploads_retry_through_an_s3_outage(
    worker_api: Api,
    seaweed: LocalS3Server,
    tmp_path: Path,
) -> None:
    host, port = seaweed.endpoint_url.split("//", 1)[1].split(":")
    with TcpProxy(host, int(port)) as proxy:
        s3_env = {**seaweed.env(), "AWS_ENDPOINT_URL": proxy.url}
        bucket = make_bucket(seaweed)
        bench = WorkerLab(
            worker_api.url,
            new_user(worker_api),
            f"group-{uuid.uuid4().hex[:12]}",
            bucket,
            s3_env,
            tmp_path,
        )
        try:
            job = bench.submit(
                "count.py",
                checkpoint_bucket=bucket.name,
                checkpoint_prefix="ck/",
                environment={"COUNT_TO": "40", "STEP_S": "0.25", "STEP_FILES": "1"},
            )
            bench.start_worker("m1")
            wait_for(lambda: counted(bench, job["id"]) >= 3, "3 steps committed")
            proxy.block()
            blocked_at = len(bench.checkpoints(job["id"]))
            time.sleep(3)  # the outage itself; the job checkpoints ~30 more steps meanwhile
            # nothing got through: the outage is real
            assert len(bench.checkpoints(job["id"])) == blocked_at
            proxy.unblock()
            done = bench.wait_status(job["id"], "completed", timeout=60)
            assert done["num_failures"] == 0
            final = bench.committed(job["id"])
            assert sorted(p for p in final if p.startswith("steps/")) == sorted(
                f"steps/{i}.txt" for i in range(1, 41)
            )
            assert final["count.txt"] == b"40"
        finally:
            bench.stop_all()
            bench.user.http.close()
            bucket.s3.close()


def test_half_written_checkpoint_is_never_committed(lab: WorkerLab) -> None:
    job = lab.submit(
        "hold_open.py",
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix="ck/",
        environment={"HOLD_S": "3"},  # half written and held open for 6 settle times
    )
    lab.start_worker("m1")
    lab.wait_status(job["id"], "completed")

    # Every generation ever committed (all kept: keep 3) has the whole file or none of it.
    generations = lab.checkpoints(job["id"])
    assert generations and all(g["kept"] for g in generations)
    for generation in generations:
        manifest = lab.user.http.get(
            f"/jobs/{job['id']}/checkpoints/{generation['generation']}"
        ).json()["manifest"]
        sizes = {entry["path"]: entry["size"] for entry in manifest}
        assert sizes.get("model.ckpt", len(b"first-half;second-half\n")) == 23, generation
    assert lab.committed(job["id"])["model.ckpt"] == b"first-half;second-half\n"


def test_worker_sets_deletion_cost_and_reallocates_after_repeated_failures(
    lab: WorkerLab,
) -> None:
    with FakeImds() as imds:
        lab.imds_url = imds.url
        ok = lab.submit(
            "count.py",
            output_bucket=lab.bucket.name,
            output_prefix="out/",
            environment={"COUNT_TO": "10", "STEP_S": "0.3"},
        )
        failing = [
            lab.submit("exit_with.py", "3", max_failures=1, environment={"PAUSE_S": "0"})
            for _ in range(2)
        ]
        worker = lab.start_worker("m1", MAX_JOB_FAILURES="2")
        lab.wait_status(ok["id"], "completed")
        for job in failing:
            lab.wait_status(job["id"], "failed")
        assert worker.proc.wait(timeout=15) == 0
        costs = imds.deletion_costs
        assert costs[0] == 0  # idle at start
        # while running: the work at risk (see test_worker_scheduling), always above idle
        running = costs[1 : costs.index(999_999_999)]
        assert running and min(running) >= 1
        assert 0 in costs[costs.index(999_999_999) :]  # idle again after the upload
        assert len(imds.reallocations) == 1
        assert "2 jobs failed in a row" in imds.reallocations[0]


def test_idle_worker_exits_and_asks_for_reallocation(lab: WorkerLab) -> None:
    with FakeImds() as imds:
        lab.imds_url = imds.url
        worker = lab.start_worker("m1", MAX_TIME_WITH_NO_WORK_S="1")
        assert worker.proc.wait(timeout=15) == 0
        assert imds.deletion_costs == [0]
        assert imds.reallocations == ["kelpie worker: no work for 1 s"]
