"""Runs one job through `JobProcess` in a process of its own, as the worker would.

    python job_process_driver.py MODE SCENARIO PIDS_FILE

MODE is the containment (`cgroup` or `subreaper`), installed first as `kelpie worker`
does: it makes the process a child subreaper, which must not happen to the test process
itself. The job is tests/support/jobs/spawn_tree.py. SCENARIO is how the job ends:
`exit` (exit 0 once its tree is up), `kill-main` (its main process gets SIGKILL), `churn`
(the same while one of its processes forks without pause), `stop` (`JobProcess.stop`, as
a cancel does), `stop-nested` (the same, with one process in a cgroup the job made) or
`refused-cgroup` (exit 0, with the kernel refusing to move the job into its cgroup, as a
cgroup delegated without that right does). The report, JSON in PIDS_FILE.report, says
which containment was used, the exit code, which of the recorded pids were alive the
moment `wait()` or `stop()` returned, and the job cgroups left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

from kelpie.worker import proctree
from kelpie.worker.runner import ExitStatus, JobProcess

JOB = Path(__file__).parent / "jobs" / "spawn_tree.py"
READY_TIMEOUT_S = 30.0
MODES: dict[str, proctree.ContainmentMode] = {"cgroup": "cgroup", "subreaper": "subreaper"}


CHURNED_BEFORE_KILL = 20


def recorded_pids(pids_file: Path) -> list[int]:
    """Every pid the job wrote down: its five processes, and those it churned out."""
    pids = [int(line.split()[1]) for line in pids_file.read_text().splitlines()]
    churn = Path(f"{pids_file}.churn")
    return pids + ([int(pid) for pid in churn.read_text().split()] if churn.exists() else [])


def alive(pid: int) -> bool:
    info = proctree.read_process(pid)
    return info is not None and info.alive


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {READY_TIMEOUT_S} s")
        await asyncio.sleep(0.01)


async def run(scenario: str, pids_file: Path) -> ExitStatus:
    env = {
        **os.environ,
        "PIDS_FILE": str(pids_file),
        "CHURN": str(int(scenario == "churn")),
        "NESTED_CGROUP": str(int(scenario == "stop-nested")),
    }
    then = "exit" if scenario in ("exit", "refused-cgroup") else "wait"
    process = await JobProcess.start(sys.executable, [str(JOB), then], env)
    if then == "exit":
        return await process.wait()
    await until(Path(f"{pids_file}.ready").exists, "the job's tree was not up")
    if scenario == "churn":

        def forking() -> bool:
            return len(recorded_pids(pids_file)) >= 5 + CHURNED_BEFORE_KILL

        await until(forking, "the job did not fork")
    if scenario in ("kill-main", "churn"):
        os.kill(process.pid, signal.SIGKILL)
        return await process.wait()
    return await process.stop([signal.SIGINT, signal.SIGTERM], grace=1.0)


def ours(cgroups: Path) -> list[str]:
    return [str(path) for path in cgroups.glob(f"kelpie-job-{os.getpid()}-*")]


def refuse_to_join(tree: proctree.CgroupTree) -> None:
    raise PermissionError(13, "Permission denied")


def main() -> None:
    mode, scenario, pids_file = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    containment = proctree.install(MODES[mode])
    with contextlib.ExitStack() as patches:
        if scenario == "refused-cgroup":
            patches.enter_context(mock.patch.object(proctree.CgroupTree, "_join", refuse_to_join))
        status = asyncio.run(run(scenario, pids_file))
    cgroups = containment.cgroup_dir
    report = {
        "containment": containment.kind,
        "exit_code": status.exit_code,
        "alive": [pid for pid in recorded_pids(pids_file) if alive(pid)],
        "cgroups_left": [] if cgroups is None else ours(cgroups),
    }
    Path(f"{pids_file}.report").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
