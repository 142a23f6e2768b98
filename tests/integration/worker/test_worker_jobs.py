"""The worker carrying jobs end to end: real `kelpie serve`, `kelpie worker`, SeaweedFS, jobs."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from tests.support.waiting import wait_for
from tests.support.worker import WorkerLab

pytestmark = pytest.mark.slow


def test_legacy_job_gets_inputs_env_and_outputs_before_it_is_completed(lab: WorkerLab) -> None:
    lab.bucket.put("in/a.txt", "alpha")
    lab.bucket.put("in/sub/b.txt", "beta")
    input_dir, checkpoint_dir, _ = lab.dirs("m1")
    job = lab.submit(
        "transform.py",
        input_bucket=lab.bucket.name,
        input_prefix="in/",
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix="ck/",
        output_bucket=lab.bucket.name,
        output_prefix="out/",
        environment={"MODE": "job", "INPUT_DIR": str(input_dir / "custom")},
    )
    lab.start_worker("m1", MODE="container", SHARED="container", PYTHONPATH="/leak")

    done = lab.wait_status(job["id"], "completed")
    # completed only after the outputs are there: read them right after seeing the status
    assert lab.bucket.keys("out/") == ["out/a.txt", "out/env.json", "out/sub/b.txt"]
    assert lab.bucket.get("out/a.txt") == b"ALPHA"
    assert lab.bucket.get("out/sub/b.txt") == b"BETA"
    assert done["num_failures"] == 0 and done["last_exit_code"] is None

    env = json.loads(lab.bucket.get("out/env.json") or b"{}")
    assert env["MODE"] == "job"  # job env wins over the container's
    assert env["SHARED"] == "container"
    assert env["INPUT_DIR"] == str(input_dir / "custom")  # job env wins for the dirs too
    assert env["CHECKPOINT_DIR"] == str(checkpoint_dir)  # container env over the default
    assert env["KELPIE_JOB_ID"] == job["id"]
    for leaked in ("KELPIE_API_KEY", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        assert leaked not in env
    assert str(Path(sys.prefix) / "bin") not in env["PATH"].split(":")

    # every job dir is emptied after the job
    wait_for(
        lambda: not any(p.is_file() for d in lab.dirs("m1") for p in d.rglob("*")),
        "the job dirs to be emptied",
    )


def test_sync_form_moves_exactly_the_matching_files_and_gzip_round_trips(lab: WorkerLab) -> None:
    lab.bucket.put("data/a.txt", "alpha")
    lab.bucket.put("data/b.txt", "beta")
    lab.bucket.put("data/c.bin", "not wanted")
    lab.bucket.put("data/d.txt.gz", gzip.compress(b"delta"))
    input_dir, checkpoint_dir, output_dir = lab.dirs("m1")
    data, model, logs = input_dir / "data", checkpoint_dir / "model", output_dir / "logs"
    b = lab.bucket.name
    job = lab.submit(
        "transform.py",
        compression=True,
        environment={
            "SYNC_LAYOUT": "1",
            "DATA_DIR": str(data),
            "MODEL_DIR": str(model),
            "LOGS_DIR": str(logs),
        },
        sync={
            "before": [
                {
                    "bucket": b,
                    "prefix": "data/",
                    "local_path": str(data),
                    "direction": "download",
                    "pattern": r"\.txt",
                }
            ],
            "during": [
                {
                    "bucket": b,
                    "prefix": "model/",
                    "local_path": str(model),
                    "direction": "upload",
                    "pattern": r"\.(txt|bin)$",
                }
            ],
            "after": [
                {
                    "bucket": b,
                    "prefix": "logs/",
                    "local_path": str(logs),
                    "direction": "upload",
                    "pattern": r"\.log$",
                }
            ],
        },
    )
    lab.start_worker("m1")
    lab.wait_status(job["id"], "completed")

    # the checkpoint folder (`during`): its matching files, as one generation, gzipped
    assert lab.committed(job["id"]) == {
        "a.txt": b"ALPHA",
        "b.txt": b"BETA",
        "d.txt": b"DELTA",  # downloaded gunzipped
        "weights.bin": b"w" * 1000,
    }
    stored = lab.bucket.keys("model/")
    assert stored and all(k.startswith("model/.kelpie/") and k.endswith(".gz") for k in stored)
    assert lab.bucket.keys("logs/") == ["logs/train.log.gz"]
    assert gzip.decompress(lab.bucket.get("logs/train.log.gz") or b"") == b"loss=0.1\n" * 100


def test_relative_sync_paths_mean_the_same_folders_to_the_worker_and_the_job(
    lab: WorkerLab,
) -> None:
    """As in the reference README: `inputs/`, `checkpoints/`, `outputs/` under the workdir."""
    lab.bucket.put("data/a.txt", "alpha")
    app = lab.tmp / "app"
    app.mkdir()
    b = lab.bucket.name

    def entry(prefix: str, local_path: str, direction: str) -> dict[str, str]:
        return {"bucket": b, "prefix": prefix, "local_path": local_path, "direction": direction}

    job = lab.submit(
        "transform.py",
        environment={
            "SYNC_LAYOUT": "1",
            "DATA_DIR": "inputs",
            "MODEL_DIR": "checkpoints",
            "LOGS_DIR": "outputs/logs",
        },
        sync={
            "before": [entry("data/", "inputs/", "download")],
            "during": [entry("model/", "checkpoints/", "upload")],
            "after": [entry("logs/", "./outputs/logs", "upload")],
        },
    )
    escaping = lab.submit(
        "count.py", max_failures=1, sync={"during": [entry("x/", "../elsewhere/", "upload")]}
    )
    lab.start_worker("m1", cwd=app, KELPIE_SYNC_ROOTS=str(app))

    lab.wait_status(job["id"], "completed")
    # the job read what the worker put in its folder, and the worker committed what it wrote
    assert lab.committed(job["id"]) == {
        "a.txt": b"ALPHA",
        "scratch.tmp": b"not synced",
        "weights.bin": b"w" * 1000,
    }
    assert lab.bucket.keys("logs/") == ["logs/debug.trace", "logs/train.log"]
    # the folders were the worker's working directory's: emptied there after the job
    wait_for(
        lambda: (app / "checkpoints").is_dir() and not any(p.is_file() for p in app.rglob("*")),
        "the job's folders under the working directory to be emptied",
    )

    refused = lab.wait_status(escaping["id"], "failed")
    assert f"(that is {lab.tmp / 'elsewhere'}) is outside" in str(refused["last_error"])
    assert not (lab.tmp / "elsewhere").exists()


def test_legacy_job_whose_input_prefix_is_empty_runs_without_inputs(lab: WorkerLab) -> None:
    job = lab.submit(
        "count.py",
        max_failures=1,
        input_bucket=lab.bucket.name,
        input_prefix="nothing-here/",
        output_bucket=lab.bucket.name,
        output_prefix="out/",
        environment={"COUNT_TO": "2", "STEP_S": "0"},
    )
    lab.start_worker("m1")
    done = lab.wait_status(job["id"], "completed", "failed")
    assert (done["status"], done["num_failures"]) == ("completed", 0)
    assert json.loads(lab.wait_key("out/result.json"))["count"] == 2


def test_a_deleted_checkpoint_file_is_gone_from_the_next_generation(lab: WorkerLab) -> None:
    job = lab.submit(
        "count.py",
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix="ck/",
        environment={"COUNT_TO": "8", "STEP_S": "0.05", "STEP_FILES": "1", "KEEP_STEPS": "3"},
    )
    lab.start_worker("m1")
    lab.wait_status(job["id"], "completed")
    final = lab.committed(job["id"])
    assert sorted(p for p in final if p.startswith("steps/")) == [
        "steps/6.txt",
        "steps/7.txt",
        "steps/8.txt",
    ]
    assert final["count.txt"] == b"8"


def test_failure_is_recorded_and_the_job_goes_to_other_machines(lab: WorkerLab) -> None:
    job = lab.submit(
        "exit_with.py",
        "3",
        max_failures=2,
        checkpoint_bucket=lab.bucket.name,
        checkpoint_prefix="ck/",
    )
    lab.start_worker("m1")

    def failed_once() -> dict[str, object] | None:
        current = lab.job(job["id"])
        return current if current["num_failures"] == 1 else None

    first = wait_for(failed_once, "the first failure report")
    assert first["status"] == "pending"  # back in the queue at once, for other machines
    assert first["last_exit_code"] == 3
    assert "exited with code 3" in str(first["last_error"])
    # a failed run still hands on the checkpoint it had finished before it failed
    assert lab.committed(job["id"]) == {"before-exit.txt": b"written before exiting\n"}

    lab.start_worker("m2")  # m1 is blocked from the job; m2 takes it and fails it for good
    final = lab.wait_status(job["id"], "failed")
    assert final["num_failures"] == 2
    assert final["machine_id"] == "m2"


def test_job_killed_by_sigkill_is_a_failure(lab: WorkerLab) -> None:
    job = lab.submit("kill_self.py", max_failures=1)
    lab.start_worker("m1")
    final = lab.wait_status(job["id"], "failed")
    assert final["last_exit_code"] == 137
    assert "SIGKILL" in str(final["last_error"])


def test_bad_input_is_reported_clearly_and_the_worker_keeps_serving(lab: WorkerLab) -> None:
    _, checkpoint_dir, _ = lab.dirs("m1")
    b = lab.bucket.name
    bad = {
        "outside the folders this worker may use": lab.submit(
            "count.py",
            max_failures=1,
            sync={
                "before": [
                    {
                        "bucket": b,
                        "prefix": "x/",
                        "local_path": "/etc/kelpie-test",
                        "direction": "download",
                    }
                ]
            },
        ),
        f"(that is {checkpoint_dir.parent.parent / 'escape'}) is outside": lab.submit(
            "count.py",
            max_failures=1,
            sync={
                "during": [
                    {
                        "bucket": b,
                        "prefix": "x/",
                        "local_path": f"{checkpoint_dir}/../../escape",
                        "direction": "upload",
                    }
                ]
            },
        ),
        "command not found: 'no-such-command-kelpie'": lab.user.submit(
            command="no-such-command-kelpie",
            container_group_id=lab.group,
            max_failures=1,
        ),
        "no-such-bucket-kelpie": lab.submit(
            "count.py",
            max_failures=1,
            input_bucket="no-such-bucket-kelpie",
            input_prefix="in/",
        ),
    }
    lab.start_worker("m1")
    for reason, job in bad.items():
        final = lab.wait_status(job["id"], "failed")
        assert reason in str(final["last_error"]), final
    assert not Path("/etc/kelpie-test").exists()
    assert (
        lab.job(bad["command not found: 'no-such-command-kelpie'"]["id"])["last_exit_code"] == 127
    )

    good = lab.submit("count.py", environment={"COUNT_TO": "2", "STEP_S": "0.01"})
    lab.wait_status(good["id"], "completed")
    assert lab.workers[0].proc.poll() is None
