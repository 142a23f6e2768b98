"""kelpie lives in its own virtualenv; the user's job runs on the container's own Python."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.support.worker import WorkerLab, job_script

pytestmark = pytest.mark.slow


def test_job_runs_on_system_python_without_seeing_kelpies_virtualenv(lab: WorkerLab) -> None:
    venv = Path(sys.prefix)
    assert venv != Path(sys.base_prefix), "the tests must run from kelpie's own virtualenv"
    job = lab.user.submit(
        container_group_id=lab.group,
        command="python3",
        arguments=[job_script("python_identity.py")],
        output_bucket=lab.bucket.name,
        output_prefix="identity/",
        heartbeat_interval=1,
    )
    # As in an image whose entry point activated kelpie's virtualenv before `kelpie worker`.
    lab.start_worker(
        "m1",
        PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
        VIRTUAL_ENV=str(venv),
        PYTHONPATH=str(venv / "lib"),
    )

    lab.wait_status(job["id"], "completed")

    identity = json.loads(lab.bucket.get("identity/python.json") or b"{}")
    assert identity["kelpie_importable"] is False
    assert not Path(identity["prefix"]).resolve().is_relative_to(venv.resolve())
    assert not Path(identity["executable"]).resolve().is_relative_to(venv.resolve())
    assert identity["virtual_env"] is None
    assert identity["pythonpath"] is None
    assert str(venv / "bin") not in identity["path"].split(":")
