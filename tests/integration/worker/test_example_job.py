"""examples/train.py under real workers: moved to another machine mid-run, it resumes from
its last committed checkpoint and ends with exactly the result of a run that never stopped,
whether it saves in place (as torch.save does) or aside and renamed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.waiting import wait_for
from tests.support.worker import PYTHON, WorkerLab

TRAIN = Path(__file__).parents[3] / "examples" / "train.py"
STEPS = 60


def run_uninterrupted(folder: Path, save: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "STEPS": str(STEPS),
        "STEP_SECONDS": "0",
        "CHECKPOINT_DIR": str(folder / "checkpoint"),
        "OUTPUT_DIR": str(folder / "output"),
    }
    subprocess.run([PYTHON, str(TRAIN), "--save", save], env=env, check=True, timeout=60)
    result: dict[str, Any] = json.loads((folder / "output" / "result.json").read_text())
    return result


def submit(lab: WorkerLab, *arguments: str) -> dict[str, Any]:
    return lab.user.submit(
        command=PYTHON,
        arguments=[str(TRAIN), *arguments],
        environment={"STEPS": str(STEPS), "STEP_SECONDS": "0.1"},
        container_group_id=lab.group,
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix="train/checkpoints",
        output_bucket=lab.bucket.name,
        output_prefix="train/outputs",
        heartbeat_interval=1,
    )


def finish_on_another_node(lab: WorkerLab, job_id: str) -> dict[str, Any]:
    lab.start_worker("node-b")
    done = lab.wait_status(job_id, "completed", "failed", timeout=120)
    assert done["status"] == "completed", lab.logs()
    assert done["machine_id"] == "node-b"
    result: dict[str, Any] = json.loads(lab.wait_key("train/outputs/result.json"))
    return result


@pytest.mark.slow
def test_example_job_saved_in_place_resumes_after_its_node_died(
    lab: WorkerLab, tmp_path: Path
) -> None:
    expected = run_uninterrupted(tmp_path, "in-place")
    first = lab.start_worker("node-a")
    job = submit(lab, "--save", "in-place")
    lab.wait_committed(
        job["id"],
        lambda files: json.loads(files["state.json"])["step"] >= 10,
        "a committed checkpoint at step 10 or later",
    )
    first.kill_with_descendants()  # the node is gone: its lease runs out

    result = finish_on_another_node(lab, job["id"])
    assert len(result["starts"]) == 2
    assert result["starts"][0] == 0
    assert result["starts"][1] >= 10
    assert (result["steps"], result["a"], result["b"]) == (STEPS, expected["a"], expected["b"])


@pytest.mark.slow
def test_example_job_saves_when_its_node_goes_away_and_resumes_from_there(
    lab: WorkerLab, tmp_path: Path
) -> None:
    expected = run_uninterrupted(tmp_path, "rename")
    first = lab.start_worker("node-a")
    # No periodic checkpoint: all there is to resume from is what it saves on SIGTERM.
    job = submit(lab, "--save", "rename", "--checkpoint-every", str(STEPS * 10))
    lab.wait_status(job["id"], "running")
    wait_for(lambda: lab.job(job["id"])["num_heartbeats"] >= 2, "the job to run a while")
    assert first.stop() == 0  # SIGTERM: the node is going away, the job is handed back

    result = finish_on_another_node(lab, job["id"])
    assert len(result["starts"]) == 2
    assert result["starts"][0] == 0
    assert 0 < result["starts"][1] < STEPS
    assert (result["steps"], result["a"], result["b"]) == (STEPS, expected["a"], expected["b"])
