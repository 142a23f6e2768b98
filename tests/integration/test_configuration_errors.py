"""A misconfigured `kelpie serve` or `kelpie worker` says what is wrong, one line per problem,
naming the variable to fix, and exits 2 before doing anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KELPIE = [sys.executable, "-m", "kelpie"]
WORKER_VARIABLES = (
    "KELPIE_API_URL",
    "KELPIE_API_KEY",
    "SALAD_MACHINE_ID",
    "SALAD_CONTAINER_GROUP_ID",
    "MAX_JOB_FAILURES",
    "OUTPUT_DIR",
)


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KELPIE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def problem_lines(stderr: str) -> list[str]:
    lines = stderr.splitlines()
    assert all("pydantic" not in line and "validation error" not in line for line in lines)
    return lines


def test_a_misconfigured_worker_names_each_variable_once(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in WORKER_VARIABLES}
    env.update({"MAX_JOB_FAILURES": "many", "OUTPUT_DIR": "out", "KELPIE_LOG_LEVEL": "info"})

    proc = run(["worker"], env, tmp_path)

    assert proc.returncode == 2
    lines = problem_lines(proc.stderr)
    assert len(lines) == 4, proc.stderr
    for line, variable in zip(
        lines, ("KELPIE_API_URL", "KELPIE_API_KEY", "OUTPUT_DIR", "MAX_JOB_FAILURES"), strict=True
    ):
        assert f" {variable}: " in line, line
    assert not (tmp_path / "out").exists()


def test_a_misconfigured_server_names_each_variable_once(tmp_path: Path) -> None:
    env = {**os.environ, "KELPIE_ADMIN_KEY": "too-short", "KELPIE_PORT": "8787"}

    proc = run(["serve", "--database-url", "mysql://db/kelpie"], env, tmp_path)

    assert proc.returncode == 2
    lines = problem_lines(proc.stderr)
    assert [line.split(":")[:2] for line in lines] == [
        ["error", " KELPIE_DATABASE_URL"],
        ["error", " KELPIE_ADMIN_KEY"],
    ], proc.stderr
    assert "too-short" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
