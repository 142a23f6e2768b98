"""Every process a job started dies with it, in whatever session it ran.

The job (tests/support/jobs/spawn_tree.py) does what torchrun and daemons do: children in
sessions of their own, a grandchild in yet another, and a double-forked daemon nobody is
the parent of. Each containment runs where this machine offers it: a cgroup v2 per job, and
the worker as a child subreaper tracking the tree from /proc.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kelpie.worker import proctree
from tests.support.waiting import wait_for
from tests.support.worker import WorkerLab, pid_alive

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).parents[2] / "support" / "job_process_driver.py"
ROLES = ["agent", "daemon", "gpu-worker", "loader", "main"]


def _cgroup_unavailable() -> str:
    try:
        proctree.usable_cgroup()
    except proctree.ContainmentUnavailable as exc:
        return str(exc)
    return ""


needs_cgroup = pytest.mark.skipif(bool(_cgroup_unavailable()), reason=_cgroup_unavailable())
CONTAINMENTS = [pytest.param("cgroup", marks=needs_cgroup), "subreaper"]


def recorded(pids_file: Path) -> dict[str, int]:
    """role → pid of the job's five processes."""
    lines = pids_file.read_text().splitlines() if pids_file.exists() else []
    return {role: int(pid) for role, pid in (line.split() for line in lines)}


def churned(pids_file: Path) -> list[int]:
    churn = Path(f"{pids_file}.churn")
    return [int(pid) for pid in churn.read_text().split()] if churn.exists() else []


def signals_seen(pids_file: Path) -> dict[str, set[str]]:
    """role → the signals it was sent (and survived, to write them down)."""
    seen: dict[str, set[str]] = {}
    signals = Path(f"{pids_file}.signals")
    for line in signals.read_text().splitlines() if signals.exists() else []:
        role, name = line.split()
        seen.setdefault(role, set()).add(name)
    return seen


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if pid_alive(pid)]


def kill_leftovers(pids_file: Path) -> None:
    """A failing test must not leave its job's processes behind."""
    for pid in alive([*recorded(pids_file).values(), *churned(pids_file)]):
        info = proctree.read_process(pid)
        if info is not None:
            proctree.send_signal(info, signal.SIGKILL)


def drive(containment: str, scenario: str, tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """Run the job through `JobProcess` in a process of its own (see the driver)."""
    pids_file = tmp_path / "pids"
    log = tmp_path / "driver.log"
    try:
        with log.open("wb") as out:
            finished = subprocess.run(
                [sys.executable, str(DRIVER), containment, scenario, str(pids_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            )
        assert finished.returncode == 0, log.read_text()
        report: dict[str, Any] = json.loads(Path(f"{pids_file}.report").read_text())
        assert report["cgroups_left"] == []
        return report, pids_file
    finally:
        kill_leftovers(pids_file)


@pytest.mark.parametrize("containment", CONTAINMENTS)
def test_job_exiting_0_takes_every_process_it_started_with_it(
    containment: str, tmp_path: Path
) -> None:
    report, pids_file = drive(containment, "exit", tmp_path)
    assert report["containment"] == containment
    assert report["exit_code"] == 0
    pids = recorded(pids_file)
    assert sorted(pids) == ROLES
    assert report["alive"] == []  # at the moment wait() returned
    assert alive(list(pids.values())) == []


@pytest.mark.parametrize("containment", CONTAINMENTS)
def test_job_whose_main_process_is_sigkilled_leaves_nothing_behind(
    containment: str, tmp_path: Path
) -> None:
    report, pids_file = drive(containment, "kill-main", tmp_path)
    assert report["exit_code"] == 137
    assert sorted(recorded(pids_file)) == ROLES
    assert report["alive"] == []


@pytest.mark.parametrize("containment", CONTAINMENTS)
def test_a_job_forking_while_it_is_killed_leaves_nothing_behind(
    containment: str, tmp_path: Path
) -> None:
    report, pids_file = drive(containment, "churn", tmp_path)
    assert report["exit_code"] == 137
    assert len(churned(pids_file)) >= 20
    assert report["alive"] == []
    assert alive(churned(pids_file)) == []


@pytest.mark.parametrize("containment", CONTAINMENTS)
def test_stop_signals_every_process_of_the_job_then_kills_them_all(
    containment: str, tmp_path: Path
) -> None:
    report, pids_file = drive(containment, "stop", tmp_path)
    assert report["exit_code"] == 137  # the job ignores SIGINT and SIGTERM
    assert report["alive"] == []
    assert signals_seen(pids_file) == {role: {"SIGINT", "SIGTERM"} for role in ROLES}


@needs_cgroup
def test_stop_reaches_processes_in_cgroups_the_job_made_inside_its_own(tmp_path: Path) -> None:
    report, pids_file = drive("cgroup", "stop-nested", tmp_path)
    assert report["alive"] == []
    assert signals_seen(pids_file) == {role: {"SIGINT", "SIGTERM"} for role in ROLES}


@needs_cgroup
def test_a_cgroup_the_job_cannot_join_falls_back_to_the_subreaper(tmp_path: Path) -> None:
    report, pids_file = drive("cgroup", "refused-cgroup", tmp_path)
    assert report["containment"] == "subreaper"
    assert report["exit_code"] == 0
    assert sorted(recorded(pids_file)) == ROLES
    assert report["alive"] == []


def test_a_recycled_pid_is_never_signalled() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        info = proctree.read_process(sleeper.pid)
        assert info is not None
        # The same pid with another start time: what a pid handed to a new process looks like.
        recycled = proctree.ProcessInfo(info.pid, info.ppid, info.state, info.start_time - 1)
        assert not proctree.send_signal(recycled, signal.SIGKILL)
        assert sleeper.poll() is None
        assert proctree.send_signal(info, signal.SIGKILL)
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()


# -- with real workers --------------------------------------------------------------------------


def submit_tree(lab: WorkerLab, *, churn: bool = False) -> tuple[dict[str, Any], Path]:
    pids_file = lab.tmp / "pids"
    env = {"PIDS_FILE": str(pids_file), "CHURN": str(int(churn))}
    job = lab.submit("spawn_tree.py", "wait", environment=env)
    return job, pids_file


def wait_until_up(lab: WorkerLab, pids_file: Path) -> dict[str, int]:
    wait_for(lambda: Path(f"{pids_file}.ready").exists(), f"the job's tree up\n{lab.logs()}")
    pids = recorded(pids_file)
    assert sorted(pids) == ROLES and alive(list(pids.values())) == list(pids.values())
    return pids


@pytest.mark.parametrize("containment", CONTAINMENTS)
def test_cancel_leaves_no_process_of_the_job_alive(lab: WorkerLab, containment: str) -> None:
    job, pids_file = submit_tree(lab)
    lab.start_worker("m1", KELPIE_WORKER_CONTAINMENT=containment)
    try:
        pids = wait_until_up(lab, pids_file)
        assert lab.user.http.delete(f"/jobs/{job['id']}").status_code == 202

        wait_for(lambda: not alive(list(pids.values())), "every process of the job gone")
        assert signals_seen(pids_file) == {role: {"SIGINT", "SIGTERM"} for role in ROLES}
        follow_up = lab.submit("count.py", environment={"COUNT_TO": "1", "STEP_S": "0"})
        lab.wait_status(follow_up["id"], "completed")
    finally:
        kill_leftovers(pids_file)


@pytest.mark.parametrize("containment", CONTAINMENTS)
def test_worker_sigterm_leaves_no_process_of_the_job_alive(
    lab: WorkerLab, containment: str
) -> None:
    job, pids_file = submit_tree(lab)
    worker = lab.start_worker("m1", KELPIE_WORKER_CONTAINMENT=containment)
    try:
        pids = wait_until_up(lab, pids_file)
        worker.signal(signal.SIGTERM)
        assert worker.proc.wait(timeout=30) == 0

        assert alive(list(pids.values())) == []
        assert signals_seen(pids_file) == {role: {"SIGTERM"} for role in ROLES}
        assert lab.job(job["id"])["status"] == "pending"  # handed back, to run elsewhere
    finally:
        kill_leftovers(pids_file)


def test_killing_a_worker_with_its_descendants_leaves_none_alive(lab: WorkerLab) -> None:
    """The tests' stand-in for a node dying, while the job forks as fast as it can."""
    _, pids_file = submit_tree(lab, churn=True)
    worker = lab.start_worker("m1")
    try:
        pids = wait_until_up(lab, pids_file)
        wait_for(lambda: len(churned(pids_file)) >= 20, "the job forking")
        worker.kill_with_descendants()
        assert worker.proc.returncode == -signal.SIGKILL
        assert alive([*pids.values(), *churned(pids_file)]) == []
        assert signals_seen(pids_file) == {}  # no warning: SIGKILL only
    finally:
        kill_leftovers(pids_file)


@needs_cgroup
def test_a_restarted_worker_kills_what_a_killed_worker_left_running(lab: WorkerLab) -> None:
    """The worker itself SIGKILLed (out of memory, say) and started again in the container."""
    _, pids_file = submit_tree(lab)
    first = lab.start_worker("m1", KELPIE_WORKER_CONTAINMENT="cgroup")
    try:
        pids = wait_until_up(lab, pids_file)
        first.kill()  # the worker only: its job runs on, in its cgroup
        assert alive(list(pids.values())) == list(pids.values())

        lab.start_worker("m1-again", KELPIE_WORKER_CONTAINMENT="cgroup")
        wait_for(lambda: not alive(list(pids.values())), "the killed worker's job gone")
    finally:
        kill_leftovers(pids_file)
