"""`kelpie dev`: everything kelpie needs, on this machine, to try your own jobs.

Starts, in one folder: the API on a SQLite file, a local S3 server with one bucket, and N
workers, each with its own worker name, machine id and folders, all polling one container
group. Prints the environment to paste into another terminal, then every worker's output
(your job's own output included), each line headed by the worker's name, until Ctrl-C or
SIGTERM; then stops all it started, workers first (they hand their jobs back), and removes
the folder it made. A folder given with `--dir` is kept, and reused by the next start.

Signal handlers only set an event: the first Ctrl-C stops everything in order, a second one
makes the stop skip its grace periods.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from kelpie.demo.processes import KELPIE, KelpieProcess, ServerProcess, free_port, start_server
from kelpie.storage.local_server import LocalS3Server
from kelpie.worker.identity import DEFAULT_CONTAINER_GROUP, machine_id_for

BUCKET = "kelpie-dev"
WORKER_STOP_S = 30.0
"""How long the workers get to hand their jobs back before they are killed."""
MONITOR_INTERVAL_S = 0.2
# What a worker of `kelpie dev` must not take from the shell it was started in: its
# identity and folders come from its worker name (and SaladCloud's variables would say
# it runs on SaladCloud).
_NOT_INHERITED = (
    "SALAD_MACHINE_ID",
    "SALAD_CONTAINER_GROUP_ID",
    "INPUT_DIR",
    "CHECKPOINT_DIR",
    "OUTPUT_DIR",
    "KELPIE_SYNC_ROOTS",
    "KELPIE_WORKER_NAME",
    "KELPIE_WORKER_HOME",
)
# Receivers on this machine may get webhooks: that is where one tries them out.
_LOCAL_WEBHOOK_NETWORKS = "127.0.0.0/8,::1/128"


class DevError(Exception):
    """`kelpie dev` cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class DevSettings:
    workers: int = 2
    port: int = 8787
    """0: any free port."""
    directory: Path | None = None
    """Kept at the end; None: a new temporary folder, removed at the end."""
    group: str = DEFAULT_CONTAINER_GROUP


@dataclass
class Stop:
    """Set by SIGINT/SIGTERM: `requested` stops in order, `hurry` (a second signal) skips the
    grace periods."""

    requested: threading.Event = field(default_factory=threading.Event)
    hurry: threading.Event = field(default_factory=threading.Event)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested.is_set():
            self.hurry.set()
        self.requested.set()


@dataclass
class DevWorker:
    name: str
    process: KelpieProcess
    relay: threading.Thread

    @property
    def machine_id(self) -> str:
        return machine_id_for(self.name)


class Console:
    """Whole lines on stdout from several threads, never interleaved."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._broken = False

    def echo(self, line: str = "") -> None:
        """Write a line; once the console is gone (a closed pipe), drop lines: the workers'
        output must still be read, or they would block writing it."""
        with self._lock:
            if self._broken:
                return
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (OSError, ValueError):
                self._broken = True


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _relay(name: str, stream: IO[bytes], log_path: Path, console: Console) -> None:
    """Copy a worker's output to the console, each line headed by its name, and to its log."""
    with log_path.open("ab") as log:
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
            console.echo(f"{name} | {raw.decode(errors='replace').rstrip()}")
    stream.close()


def _worker_env(
    api: ServerProcess, s3: LocalS3Server, settings: DevSettings, home: Path
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
    env.update(s3.env())
    env.update(
        {
            "KELPIE_API_URL": api.url,
            "KELPIE_API_KEY": api.admin_key,
            "SALAD_CONTAINER_GROUP_ID": settings.group,
            "KELPIE_WORKER_HOME": str(home),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _start_worker(name: str, env: dict[str, str], logs: Path, console: Console) -> DevWorker:
    proc = subprocess.Popen(
        [*KELPIE, "worker"],
        env={**env, "KELPIE_WORKER_NAME": name},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Its own session: Ctrl-C in the terminal reaches `kelpie dev` only, which stops
        # the workers in order.
        start_new_session=True,
    )
    assert proc.stdout is not None
    log_path = logs / f"{name}.log"
    # A daemon: a pipe some stray process still holds open never keeps `kelpie dev` alive.
    relay = threading.Thread(
        target=_relay,
        args=(name, proc.stdout, log_path, console),
        name=f"relay-{name}",
        daemon=True,
    )
    relay.start()
    return DevWorker(name, KelpieProcess(proc, log_path), relay)


def _stop_workers(workers: list[DevWorker], stop: Stop) -> None:
    """SIGTERM every worker (each hands its job back), wait, then kill what is left."""
    for worker in workers:
        worker.process.signal(signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_S
    while time.monotonic() < deadline and not stop.hurry.is_set():
        if all(worker.process.proc.poll() is not None for worker in workers):
            break
        stop.hurry.wait(MONITOR_INTERVAL_S)
    for worker in workers:
        worker.process.kill_with_descendants()
        worker.relay.join(timeout=10)


def _start_api(folder: Path, port: int) -> ServerProcess:
    logs = folder / "logs"
    try:
        return start_server(
            f"sqlite:///{folder / 'kelpie.db'}",
            secrets.token_urlsafe(32),
            logs,
            port=port,
            extra_env={
                "KELPIE_WEBHOOK_ALLOWED_NETWORKS": os.environ.get(
                    "KELPIE_WEBHOOK_ALLOWED_NETWORKS", _LOCAL_WEBHOOK_NETWORKS
                )
            },
        )
    except (RuntimeError, TimeoutError) as exc:
        raise DevError(
            f"the API did not start ({exc}); its log: {logs / f'serve-{port}.log'}"
        ) from None


def _environment_lines(api: ServerProcess, s3: LocalS3Server, settings: DevSettings) -> list[str]:
    variables = {
        "KELPIE_API_URL": api.url,
        "KELPIE_API_KEY": api.admin_key,
        **s3.env(),
        "KELPIE_DEV_GROUP": settings.group,
        "KELPIE_DEV_BUCKET": BUCKET,
    }
    return [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]


@contextlib.contextmanager
def _folder(settings: DevSettings) -> Iterator[Path]:
    if settings.directory is not None:
        settings.directory.mkdir(parents=True, exist_ok=True)
        yield settings.directory.resolve()
        return
    folder = Path(tempfile.mkdtemp(prefix="kelpie-dev-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _serve_until_stopped(
    api: ServerProcess, s3: LocalS3Server, workers: list[DevWorker], stop: Stop, console: Console
) -> int:
    """Wait for a stop signal; 1 if the API or the S3 server died first. A worker that exits
    is reported and the others carry on (stopping one is how to watch a job move)."""
    exited: set[str] = set()
    while not stop.requested.wait(MONITOR_INTERVAL_S):
        if api.proc.poll() is not None:
            console.echo(f"kelpie dev: the API exited ({api.proc.returncode}); see {api.log_path}")
            return 1
        if not s3.running:
            console.echo(f"kelpie dev: the S3 server exited; see {s3.log_path}")
            return 1
        for worker in workers:
            code = worker.process.proc.poll()
            if code is not None and worker.name not in exited:
                exited.add(worker.name)
                console.echo(f"kelpie dev: worker {worker.name} exited with code {code}")
    return 0


def run_dev(settings: DevSettings, out: IO[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; 0 after a requested stop, 1 when a part died on its own."""
    console = Console(out or sys.stdout)
    port = settings.port or free_port()
    if not _port_is_free(port):
        raise DevError(
            f"port {port} is taken (is `kelpie serve` running?): pass --port N, or --port 0"
        )
    stop = Stop()
    previous = {
        signum: signal.signal(signum, stop.on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with _folder(settings) as folder, contextlib.ExitStack() as stack:
            logs = folder / "logs"
            logs.mkdir(exist_ok=True)
            s3 = LocalS3Server(folder / "s3")
            stack.callback(s3.stop)
            s3.start()
            s3.create_bucket(BUCKET)
            if stop.requested.is_set():
                return 0
            api = _start_api(folder, port)
            stack.callback(api.stop)
            workers: list[DevWorker] = []
            stack.callback(_stop_workers, workers, stop)
            env = _worker_env(api, s3, settings, folder / "workers")
            for number in range(1, settings.workers + 1):
                if stop.requested.is_set():
                    break
                workers.append(_start_worker(f"dev-{number}", env, logs, console))
            if stop.requested.is_set():
                return 0
            _announce(folder, api, s3, workers, settings, console)
            code = _serve_until_stopped(api, s3, workers, stop, console)
            console.echo("kelpie dev: stopping the workers (each hands its job back), the API, S3")
        kept = f"; {folder} is kept" if settings.directory is not None else ""
        console.echo(f"kelpie dev: everything it started is stopped{kept}")
        return code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _announce(
    folder: Path,
    api: ServerProcess,
    s3: LocalS3Server,
    workers: list[DevWorker],
    settings: DevSettings,
    console: Console,
) -> None:
    lines = _environment_lines(api, s3, settings)
    (folder / "env").write_text("\n".join(lines) + "\n")
    machines = ", ".join(f"{w.machine_id} (pid {w.process.proc.pid})" for w in workers)
    for line in (
        "kelpie dev: the API, a local S3 server and "
        f"{len(workers)} worker(s) on this machine; Ctrl-C stops them all",
        "",
        f"  folder   {folder} (SQLite database, S3 data, worker folders, logs)",
        f"  api      {api.url} (dashboard {api.url}/ui, API docs {api.url}/docs)",
        f"  s3       {s3.endpoint_url}, bucket {BUCKET}",
        f"  workers  {machines}, container group {settings.group}",
        "",
        f"In another terminal (or: source {folder / 'env'}):",
        "",
        *lines,
        "",
        "Workers' output follows, each line headed by the worker's name.",
        "",
    ):
        console.echo(line)


__all__ = ["BUCKET", "DevError", "DevSettings", "run_dev"]
