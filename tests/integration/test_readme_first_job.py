"""The README's "Your first job in five minutes", run as written against a real `kelpie dev`:
the command of the first terminal, the `export` lines it prints pasted into a second one,
then that terminal's commands, in a clone of the repository. The job file shown is the one
in examples/."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import pytest

from kelpie.client import KelpieClient
from tests.support.dev import start_dev
from tests.support.processes import free_port

REPO = Path(__file__).parents[2]
SECTION = "## Your first job in five minutes"


def first_job_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start : end if end != -1 else len(text)]


def blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)


def test_the_readme_shows_the_example_job_file_as_it_is() -> None:
    [shown] = blocks(first_job_section(), "yaml")
    assert shown == (REPO / "examples" / "job.yaml").read_text()


@pytest.mark.slow
def test_the_first_job_steps_run_as_written() -> None:
    section = first_job_section()
    first_terminal, second_terminal = blocks(section, "sh")
    [command] = first_terminal.strip().splitlines()
    assert (REPO / shlex.split(command)[0]).exists(), "run the tests from the repository's venv"
    # Only the port differs from a user's terminal (set through the variable `--port` reads),
    # so that test runs never meet on 8787.
    dev = start_dev(shlex.split(command), cwd=REPO, extra_env={"KELPIE_PORT": str(free_port())})
    try:
        dev.wait_ready()
        pasted = "\n".join(dev.exports())
        steps = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", f"{pasted}\n{second_terminal}"],
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if not k.startswith(("KELPIE_", "AWS_"))},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert steps.returncode == 0, steps.stdout + steps.stderr + dev.output()
        job_id = steps.stdout.split()[0]
        committed = [line.split() for line in steps.stdout.splitlines() if line[:1].isdigit()]
        assert committed, steps.stdout

        env = dev.environment()
        with KelpieClient(env["KELPIE_API_URL"], env["KELPIE_API_KEY"]) as client:
            job = client.get_job(job_id)
        host = socket.gethostname()
        assert job.status == "completed"
        assert job.machine_id in (f"{host}-dev-1", f"{host}-dev-2")
        result = json.loads(read_object(env, f"{job.output_prefix}result.json"))
        assert result["steps"] == 40
        assert abs(result["a"] - 3.0) < 0.2 and abs(result["b"] - 2.0) < 0.2
        assert dev.stop(signal.SIGINT) == 0, dev.output()
    finally:
        dev.kill()


def read_object(env: dict[str, str], key: str) -> bytes:
    """An object of the dev bucket, read with boto3 (independent of kelpie.storage)."""
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    try:
        body: bytes = s3.get_object(Bucket=env["KELPIE_DEV_BUCKET"], Key=key)["Body"].read()
    finally:
        s3.close()
    return body
