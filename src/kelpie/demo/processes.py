"""Real `kelpie` processes on this machine: started, waited for, killed, reaped.

Used by `kelpie demo`, the integration tests and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kelpie.worker import proctree

KELPIE = [sys.executable, "-m", "kelpie"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, read from /proc (children first found, deepest last)."""
    return [p.pid for p in proctree.descendants(proctree.read_processes(), [pid]) if p.alive]


def kill_process_tree(pid: int) -> None:
    """SIGKILL `pid` and every descendant, whatever its session, robust against forks
    during the kill (see `proctree.kill_process_tree`)."""
    survivors = proctree.kill_process_tree(pid)
    if survivors:
        raise RuntimeError(f"still alive after SIGKILL: {[p.pid for p in survivors]}")


def wait_until_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll `GET /health` until it answers 200; fail fast if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kelpie serve exited with {proc.returncode} before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} was not healthy within {timeout} s")


@dataclass
class KelpieProcess:
    """One child process (serve or worker) with its log file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def kill_with_descendants(self) -> None:
        """SIGKILL the process and everything it started, in whatever session (its jobs run
        in sessions of their own, and may start more): what a node disappearing looks like."""
        if self.proc.poll() is None:
            kill_process_tree(self.proc.pid)
        self.proc.wait(timeout=10)
        # A dead node takes its cgroups with it; here, the job cgroups the worker left.
        with contextlib.suppress(proctree.ContainmentUnavailable):
            proctree.clear_stale_cgroups(proctree.usable_cgroup()[0])

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class ServerProcess(KelpieProcess):
    url: str = ""
    database_url: str = ""
    admin_key: str = ""
    env: dict[str, str] = field(default_factory=dict)


def start_server(
    database_url: str,
    admin_key: str,
    log_dir: Path,
    *,
    port: int | None = None,
    workers: int = 1,
    extra_env: Mapping[str, str] | None = None,
    wait_until_ready: bool = True,
) -> ServerProcess:
    """Start `kelpie serve` on a free port and wait until it is healthy (unless told not to:
    a server whose database is down answers 503 until it comes back)."""
    port = port or free_port()
    env = {
        **os.environ,
        "KELPIE_DATABASE_URL": database_url,
        "KELPIE_ADMIN_KEY": admin_key,
        "KELPIE_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"serve-{port}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                *KELPIE,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(proc, log_path, url, database_url, admin_key, env)
    if not wait_until_ready:
        return server
    try:
        wait_until_healthy(url, proc)
    except BaseException:
        server.kill()
        raise
    return server


def start_worker(
    api_url: str,
    api_key: str,
    machine_id: str,
    container_group_id: str,
    work_dir: Path,
    log_dir: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> KelpieProcess:
    """Start `kelpie worker` with its own INPUT/CHECKPOINT/OUTPUT dirs under work_dir
    (and in `cwd`, where relative `sync` folders resolve; default: this process's)."""
    env = {
        **os.environ,
        "KELPIE_API_URL": api_url,
        "KELPIE_API_KEY": api_key,
        "SALAD_MACHINE_ID": machine_id,
        "SALAD_CONTAINER_GROUP_ID": container_group_id,
        "INPUT_DIR": str(work_dir / "input"),
        "CHECKPOINT_DIR": str(work_dir / "checkpoint"),
        "OUTPUT_DIR": str(work_dir / "output"),
        **(extra_env or {}),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{machine_id}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*KELPIE, "worker"],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return KelpieProcess(proc, log_path)
