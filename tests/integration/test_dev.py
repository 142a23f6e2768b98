"""`kelpie dev`: the API, S3 and workers on this machine for one's own jobs, and nothing left
of them after Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kelpie.client import KelpieClient
from tests.support.dev import DevProcess, gone, start_dev
from tests.support.waiting import wait_for

KELPIE = [sys.executable, "-m", "kelpie"]
TRAIN = Path(__file__).parents[2] / "examples" / "train.py"
HOST = socket.gethostname()


def submit_endless_training(dev: DevProcess) -> str:
    env = dev.environment()
    bucket = env["KELPIE_DEV_BUCKET"]
    with KelpieClient(env["KELPIE_API_URL"], env["KELPIE_API_KEY"]) as client:
        job = client.submit_job(
            {
                "command": sys.executable,
                "arguments": [str(TRAIN)],
                "environment": {"STEPS": "1000000", "STEP_SECONDS": "0.05"},
                "container_group_id": env["KELPIE_DEV_GROUP"],
                "checkpoint_bucket": bucket,
                "checkpoint_prefix": "endless/checkpoints",
                "output_bucket": bucket,
                "output_prefix": "endless/outputs",
            }
        )
        wait_for(lambda: client.get_job(job.id).status == "running", "the job to run")
        machine_id = client.get_job(job.id).machine_id
    assert machine_id in (f"{HOST}-dev-1", f"{HOST}-dev-2")
    return machine_id.removeprefix(f"{HOST}-")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_dev_leaves_no_process_behind(tmp_path: Path, signum: int) -> None:
    kept = tmp_path / "kept" if signum == signal.SIGTERM else None
    args = [*KELPIE, "dev", "--port", "0", *(["--dir", str(kept)] if kept else [])]
    dev = start_dev(args, cwd=tmp_path)
    try:
        dev.wait_ready()
        holder = submit_endless_training(dev)
        wait_for(
            lambda: any(line.startswith(f"{holder} | step 2/") for line in dev.lines),
            "the job's output in kelpie dev's",
        )
        started = dev.descendants()
        # weed, the API, two workers and the job (and whatever they started)
        assert len(started) >= 5, started
        folder = dev.folder()

        assert dev.stop(signum) == 0, dev.output()

        assert [p for p in started if not gone(p)] == []
        if kept is None:
            assert not folder.exists()
        else:
            assert folder == kept.resolve()
            assert (kept / "kelpie.db").exists()
            assert (kept / "workers" / holder / "checkpoint").is_dir()
    finally:
        dev.kill()


def test_dev_on_a_taken_port_says_so_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [*KELPIE, "dev", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: port {port} is taken"), proc.stderr
    assert proc.stdout == ""
