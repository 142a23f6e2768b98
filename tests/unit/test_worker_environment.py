"""The job's environment: the container's, minus kelpie's own, plus dirs, job env, job id."""

from __future__ import annotations

import sys
from pathlib import Path

from kelpie.worker.environment import job_environment, strip_path
from kelpie.worker.plan import JobDirs

DIRS = JobDirs(Path("/in"), Path("/ck"), Path("/out"))


def test_kelpie_interpreter_and_key_do_not_leak_into_the_job() -> None:
    container = {
        "PATH": f"/opt/venv/bin:{sys.prefix}/bin:/usr/bin",
        "VIRTUAL_ENV": "/opt/venv",
        "PYTHONPATH": "/opt/kelpie",
        "PYTHONHOME": "/opt/py",
        "KELPIE_API_KEY": "secret",
        "KELPIE_API_URL": "http://api",
        "HF_TOKEN": "users-own",
    }
    env = job_environment(container, dirs=DIRS, job_id="j1", job_env={})
    assert "VIRTUAL_ENV" not in env and "PYTHONPATH" not in env and "PYTHONHOME" not in env
    assert "KELPIE_API_KEY" not in env
    assert env["PATH"].split(":")[-1] == "/usr/bin"
    assert "/opt/venv/bin" not in env["PATH"].split(":")
    assert env["HF_TOKEN"] == "users-own"
    assert env["KELPIE_API_URL"] == "http://api"


def test_job_env_wins_but_the_job_id_is_the_workers() -> None:
    container = {"INPUT_DIR": "/container-in", "MODE": "container", "PATH": "/usr/bin"}
    env = job_environment(
        container,
        dirs=DIRS,
        job_id="j1",
        job_env={"MODE": "job", "KELPIE_JOB_ID": "spoofed", "PATH": "/job/bin"},
    )
    assert env["MODE"] == "job"
    assert env["PATH"] == "/job/bin"
    assert env["KELPIE_JOB_ID"] == "j1"
    assert (env["INPUT_DIR"], env["CHECKPOINT_DIR"], env["OUTPUT_DIR"]) == ("/in", "/ck", "/out")


def test_strip_path_keeps_order_and_drops_empty_parts() -> None:
    assert strip_path("/a::/venv/bin/:/b", ["/venv/bin"]) == "/a:/b"
