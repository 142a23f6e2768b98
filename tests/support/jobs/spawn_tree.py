"""A job whose processes leave its session, as torchrun's GPU workers and daemons do.

The main process starts `agent` and `loader`, each in a session of its own
(`start_new_session=True`, as torchrun starts its workers); `agent` starts `gpu-worker` in
yet another. Then the main process double-forks `daemon` (fork, setsid, fork, the middle
process exits, so the daemon is nobody's child). Every process appends "<role> <pid>" to
PIDS_FILE; once all five are there, the main process writes PIDS_FILE.ready and then, with
argument `exit`, exits 0, or with `wait`, sleeps. Every process appends "<role> <signal>"
to PIDS_FILE.signals for each SIGINT or SIGTERM it gets and carries on: only SIGKILL, or the
main process exiting, ends this job.

With NESTED_CGROUP=1, `loader` first moves itself into a cgroup it makes inside the job's
own cgroup v2, as a container runtime run by a job would (when the job has one).

With CHURN=1, `loader` also forks without pause while it runs: every 5 ms a child that
leaves its session, appends its pid to PIDS_FILE.churn and sleeps (300 at most), so the
job is forking while it is being killed.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PIDS_FILE = Path(os.environ["PIDS_FILE"])
SIGNALS_FILE = Path(f"{PIDS_FILE}.signals")
ROLES = ("main", "agent", "gpu-worker", "loader", "daemon")
CHURN_MAX = 300
role = sys.argv[1]


def append(path: Path, line: str) -> None:
    with path.open("a") as file:  # one short append per line: never interleaved
        file.write(f"{line}\n")


def note_signal(signum: int, frame: object) -> None:
    append(SIGNALS_FILE, f"{role} {signal.Signals(signum).name}")


def start(child_role: str) -> None:
    subprocess.Popen([sys.executable, __file__, child_role], start_new_session=True)


def sleep_for_ever() -> None:
    while True:
        time.sleep(60)


def daemonize() -> None:
    global role
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            role = "daemon"
            append(PIDS_FILE, f"daemon {os.getpid()}")
            sleep_for_ever()
        os._exit(0)


def enter_nested_cgroup() -> None:
    own = next(
        line[3:]
        for line in Path("/proc/self/cgroup").read_text().splitlines()
        if line.startswith("0::")
    )
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, fstype = line.partition(" - ")
        root, mountpoint = fields.split()[3:5]
        if fstype.startswith("cgroup2 ") and own.startswith(root):
            nested = Path(mountpoint, own[len(root) :].lstrip("/"), "nested")
            nested.mkdir()
            (nested / "cgroup.procs").write_text("0")
            return
    raise RuntimeError("no cgroup2 mount")


def churn() -> None:
    for _ in range(CHURN_MAX):
        if os.fork() == 0:
            os.setsid()
            append(Path(f"{PIDS_FILE}.churn"), str(os.getpid()))
            sleep_for_ever()
        time.sleep(0.005)
    sleep_for_ever()


def main(then: str) -> None:
    start("agent")
    start("loader")
    daemonize()
    os.wait()  # the daemon's short-lived parent
    while len(PIDS_FILE.read_text().splitlines()) < len(ROLES):
        time.sleep(0.01)
    Path(f"{PIDS_FILE}.ready").touch()
    if then == "wait":
        sleep_for_ever()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, note_signal)
    signal.signal(signal.SIGTERM, note_signal)
    if role in ("exit", "wait"):
        then, role = role, "main"
        append(PIDS_FILE, f"main {os.getpid()}")
        main(then)
    else:
        if role == "loader" and os.environ.get("NESTED_CGROUP") == "1":
            enter_nested_cgroup()
        append(PIDS_FILE, f"{role} {os.getpid()}")
        if role == "agent":
            start("gpu-worker")
        if role == "loader" and os.environ.get("CHURN") == "1":
            churn()
        sleep_for_ever()
