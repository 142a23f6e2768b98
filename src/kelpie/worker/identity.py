"""Who a worker is when SaladCloud does not say: a name held on this host.

On SaladCloud, `SALAD_MACHINE_ID` and `SALAD_CONTAINER_GROUP_ID` are set for the container
and the job folders default to `/input`, `/checkpoint` and `/output` (PROTOCOL §5).
Anywhere else (no `SALAD_MACHINE_ID`) a worker has a *worker name*: `KELPIE_WORKER_NAME`, or
the first of `w1`, `w2`, … that no running worker of this user on this host holds. Its
machine id is `<host name>-<worker name>` and its folders are
`KELPIE_WORKER_HOME/<worker name>/{input,checkpoint,output}` (unless set). The name is held
by an exclusive lock on `KELPIE_WORKER_HOME/<worker name>.lock` for as long as the worker
runs; the kernel drops the lock when the process ends, however it ends. So two workers on
one host never share a machine id or a folder, and a worker restarted after its predecessor
ended takes the same name, machine id and folders back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path

FIRST_FREE_NAME = "w{}"
MAX_WORKERS_PER_HOST = 1000
DEFAULT_CONTAINER_GROUP = "local"


class WorkerNameTaken(Exception):
    """Another running worker on this host holds the name."""


def on_saladcloud(environ: Mapping[str, str]) -> bool:
    """SaladCloud sets `SALAD_MACHINE_ID` in every container it runs."""
    return bool(environ.get("SALAD_MACHINE_ID", "").strip())


def default_worker_home() -> Path:
    """`$XDG_STATE_HOME/kelpie/workers`, else `~/.local/state/kelpie/workers` (a user without
    a home, as in some containers: `<temp dir>/kelpie-workers-<uid>`)."""
    state = os.environ.get("XDG_STATE_HOME", "").strip()
    if state and Path(state).is_absolute():
        return Path(state) / "kelpie" / "workers"
    try:
        return Path.home() / ".local" / "state" / "kelpie" / "workers"
    except RuntimeError:
        return Path(tempfile.gettempdir()) / f"kelpie-workers-{os.getuid()}"


def machine_id_for(worker_name: str) -> str:
    return f"{socket.gethostname()}-{worker_name}"


class WorkerNameLock:
    """An exclusive lock on `<home>/<name>.lock`, held until `release()` or the process ends.

    The descriptor is not inherited by the jobs the worker starts, so a job that outlives
    its worker never keeps the name from the next one.
    """

    def __init__(self, name: str, path: Path, fd: int) -> None:
        self.name = name
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    # Who holds it, for a person wondering; the lock itself is what counts.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def hold_worker_name(home: Path, name: str | None) -> WorkerNameLock:
    """Hold `name`, or without one the first free `w1`, `w2`, …; raise `WorkerNameTaken`
    when the name asked for is held by another worker on this host."""
    home.mkdir(parents=True, exist_ok=True)
    if name is not None:
        path = home / f"{name}.lock"
        fd = _try_lock(path)
        if fd is None:
            raise WorkerNameTaken(
                f"another worker on this host is running as {name!r} (it holds {path}); "
                "give each worker its own KELPIE_WORKER_NAME"
            )
        return WorkerNameLock(name, path, fd)
    for number in range(1, MAX_WORKERS_PER_HOST + 1):
        candidate = FIRST_FREE_NAME.format(number)
        path = home / f"{candidate}.lock"
        fd = _try_lock(path)
        if fd is not None:
            return WorkerNameLock(candidate, path, fd)
    raise WorkerNameTaken(f"{MAX_WORKERS_PER_HOST} workers already run from {home}")
