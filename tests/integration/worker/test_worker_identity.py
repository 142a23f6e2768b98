"""Workers off SaladCloud: only the API's address and key, and each worker on a host still has
its own machine id and its own folders, and gets them back when it is restarted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

from tests.support.processes import KelpieProcess
from tests.support.waiting import wait_for
from tests.support.worker import FAST_WORKER_ENV, PYTHON, WorkerLab, job_script

KELPIE = [PYTHON, "-m", "kelpie"]
# What SaladCloud (or a test's worker launcher) would set; a laptop has none of it.
SALAD_AND_FOLDERS = (
    "SALAD_MACHINE_ID",
    "SALAD_CONTAINER_GROUP_ID",
    "INPUT_DIR",
    "CHECKPOINT_DIR",
    "OUTPUT_DIR",
    "KELPIE_SYNC_ROOTS",
    "KELPIE_WORKER_NAME",
)
HOST = socket.gethostname()


def start_local_worker(lab: WorkerLab, home: Path, name: str | None = None) -> KelpieProcess:
    env = {key: value for key, value in os.environ.items() if key not in SALAD_AND_FOLDERS}
    env.update(
        {
            **lab.s3_env,
            **FAST_WORKER_ENV,
            "SALAD_IMDS_URL": lab.imds_url,
            "KELPIE_API_URL": lab.api_url,
            "KELPIE_API_KEY": lab.user.key,
            "KELPIE_WORKER_HOME": str(home),
        }
    )
    if name is not None:
        env["KELPIE_WORKER_NAME"] = name
    log_dir = lab.tmp / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"local-worker-{uuid.uuid4().hex[:8]}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*KELPIE, "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = KelpieProcess(proc, log_path)
    lab.workers.append(worker)
    return worker


def submit_reporting(lab: WorkerLab, tmp: Path, label: str) -> dict[str, Any]:
    """A job of the default group `local` that reports its folders and runs until released."""
    return lab.user.submit(
        command=PYTHON,
        arguments=[job_script("report_folders.py")],
        container_group_id="local",
        heartbeat_interval=1,
        environment={
            "REPORT_FILE": str(tmp / f"{label}.json"),
            "RELEASE_FILE": str(tmp / "release"),
        },
    )


def reported_folders(tmp: Path, label: str) -> dict[str, str]:
    path = tmp / f"{label}.json"

    def report() -> str | None:
        return path.read_text() if path.exists() else None

    folders: dict[str, str] = json.loads(wait_for(report, f"job {label} to report"))
    return folders


def folders_of(home: Path, name: str) -> dict[str, str]:
    return {
        "INPUT_DIR": str(home / name / "input"),
        "CHECKPOINT_DIR": str(home / name / "checkpoint"),
        "OUTPUT_DIR": str(home / name / "output"),
    }


def test_workers_on_one_host_have_their_own_id_and_folders_and_a_restart_keeps_them(
    lab: WorkerLab, tmp_path: Path
) -> None:
    home = tmp_path / "workers"
    first = start_local_worker(lab, home)
    job_a = submit_reporting(lab, tmp_path, "a")
    assert lab.wait_status(job_a["id"], "running")["machine_id"] == f"{HOST}-w1"
    start_local_worker(lab, home)
    job_b = submit_reporting(lab, tmp_path, "b")
    assert lab.wait_status(job_b["id"], "running")["machine_id"] == f"{HOST}-w2"
    assert reported_folders(tmp_path, "a") == folders_of(home, "w1")
    assert reported_folders(tmp_path, "b") == folders_of(home, "w2")

    # The first worker crashes; the one started in its place is w1 again and takes back the
    # job the crash left behind, in w1's folders.
    first.kill_with_descendants()
    (tmp_path / "a.json").unlink()
    start_local_worker(lab, home)
    assert reported_folders(tmp_path, "a") == folders_of(home, "w1")
    attempts = lab.user.http.get(f"/jobs/{job_a['id']}/attempts").json()
    assert [(a["machine_id"], a["outcome"]) for a in attempts] == [
        (f"{HOST}-w1", "lost"),
        (f"{HOST}-w1", "running"),
    ]

    (tmp_path / "release").touch()
    for job in (job_a, job_b):
        assert lab.wait_status(job["id"], "completed", "failed")["status"] == "completed"


def test_a_second_worker_with_a_name_already_running_here_is_refused(
    lab: WorkerLab, tmp_path: Path
) -> None:
    home = tmp_path / "workers"
    start_local_worker(lab, home, name="solo")
    job = submit_reporting(lab, tmp_path, "solo")
    assert lab.wait_status(job["id"], "running")["machine_id"] == f"{HOST}-solo"

    twin = start_local_worker(lab, home, name="solo")
    assert twin.proc.wait(timeout=30) == 2

    (tmp_path / "release").touch()
    assert lab.wait_status(job["id"], "completed", "failed")["status"] == "completed"
