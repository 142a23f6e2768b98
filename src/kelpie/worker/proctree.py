"""Every process a job starts, whatever its session or process group: found, signalled, killed.

A job's processes may leave its process group: torchrun starts its GPU workers with
`start_new_session=True`, a daemon double-forks. Signalling the group misses them, and they
keep the GPU while the worker takes the next job. The worker holds a job's whole tree in one
of two ways, chosen once at start (`install`):

- **cgroup v2**, where the container lets the worker write its own cgroup: each job runs in
  a child cgroup of the worker's. No fork or `setsid` leaves it, `cgroup.kill` kills every
  member at once, and the cgroup is empty exactly when the job's tree is gone.
- **child subreaper** everywhere else: the worker sets `PR_SET_CHILD_SUBREAPER`, so a job
  process whose parent dies is re-parented to the worker instead of the container's init.
  The job's tree is then its main process, every child the worker adopted, and all their
  descendants, read from /proc. Killing first stops the whole tree (SIGSTOP until no member
  runs), so nothing forks or slips away while it is killed.

The worker is a subreaper in both cases, and reaps the orphans it adopts (never the job's
main process: asyncio's child watcher waits for that one). A process is known by its pid
and start time, and is signalled through a pidfd opened before it is checked again, so a
pid that was freed and handed to an unrelated process is never signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

logger = logging.getLogger("kelpie.worker")

ContainmentMode = Literal["auto", "cgroup", "subreaper"]

PR_SET_CHILD_SUBREAPER = 36
FREEZE_PATIENCE_S = 2.0
"""How long killing waits for every member to stop before it kills them anyway."""
KILL_PATIENCE_S = 10.0
"""How long killing waits for the tree to be gone (a process in uninterruptible sleep, such
as one stuck in a driver or on a dead network mount, dies only when the kernel lets it)."""
MAX_SIGNAL_PASSES = 20
_POLL_MIN_S = 0.002
_POLL_MAX_S = 0.05

Identity = tuple[int, int]
"""(pid, start time): one process for good, unlike a pid, which the kernel reuses."""


class ContainmentUnavailable(Exception):
    """The containment asked for cannot be used on this machine; says why."""


@dataclass(frozen=True)
class ProcessInfo:
    """One line of /proc/<pid>/stat, the fields the tree needs."""

    pid: int
    ppid: int
    state: str
    start_time: int
    """Clock ticks after boot when the process started."""

    @property
    def identity(self) -> Identity:
        return (self.pid, self.start_time)

    @property
    def alive(self) -> bool:
        """False for a zombie: it has exited and only waits to be reaped."""
        return self.state not in ("Z", "X")

    @property
    def stopped(self) -> bool:
        return self.state in ("T", "t")


def read_process(pid: int) -> ProcessInfo | None:
    """The process `pid` now, or None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:  # gone (ENOENT, or ESRCH while reading)
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    return ProcessInfo(pid, int(fields[1]), fields[0].decode(), int(fields[19]))


def read_processes() -> dict[int, ProcessInfo]:
    """Every process visible in /proc, by pid."""
    table: dict[int, ProcessInfo] = {}
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                info = read_process(int(entry.name))
                if info is not None:
                    table[info.pid] = info
    return table


def descendants(table: dict[int, ProcessInfo], roots: Iterable[int]) -> list[ProcessInfo]:
    """Every process of `table` below one of `roots` (the roots themselves excluded)."""
    children: dict[int, list[ProcessInfo]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info)
    found: list[ProcessInfo] = []
    seen: set[int] = set()
    frontier = list(roots)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child.pid not in seen:
                seen.add(child.pid)
                found.append(child)
                frontier.append(child.pid)
    return found


def send_signal(
    process: ProcessInfo,
    signum: int,
    still_member: Callable[[ProcessInfo], bool] | None = None,
) -> bool:
    """Signal `process` if it is still that very process (and `still_member` agrees).

    The pidfd is opened first and the process checked after: if the check passes, the pid
    was not reused in between, and the signal goes to exactly the process that was checked.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
        return _send_signal_without_pidfd(process, signum, still_member)
    try:
        now = read_process(process.pid)
        if now is None or now.start_time != process.start_time:
            return False
        if still_member is not None and not still_member(now):
            return False
        signal.pidfd_send_signal(pidfd, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        os.close(pidfd)


def _send_signal_without_pidfd(
    process: ProcessInfo, signum: int, still_member: Callable[[ProcessInfo], bool] | None
) -> bool:
    """Kernels before 5.3: the same check, with a window of a few microseconds left open."""
    now = read_process(process.pid)
    if now is None or now.start_time != process.start_time:
        return False
    if still_member is not None and not still_member(now):
        return False
    try:
        os.kill(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class ProcessSet(Protocol):
    """A set of processes that can be listed again at any moment (a job's tree)."""

    def members(self) -> list[ProcessInfo]:
        """The live (not zombie) processes of the set, now."""
        ...

    def is_member(self, process: ProcessInfo) -> bool:
        """Whether `process` (checked to be the same process) still belongs to the set."""
        ...


def signal_members(processes: ProcessSet, signum: int) -> int:
    """Send `signum` once to every member, also to those forked while it is being sent.

    Listing again until a pass finds no one new catches a child forked by a member that had
    not yet been signalled; a process is never sent the signal twice. Returns how many got it.
    """
    done: set[Identity] = set()
    sent = 0
    for _ in range(MAX_SIGNAL_PASSES):
        fresh = [p for p in processes.members() if p.identity not in done]
        if not fresh:
            break
        for process in fresh:
            done.add(process.identity)
            sent += send_signal(process, signum, processes.is_member)
    return sent


def freeze(processes: ProcessSet, patience: float = FREEZE_PATIENCE_S) -> list[ProcessInfo]:
    """SIGSTOP every member until none runs: then none can fork, exit or be re-parented.

    Returns the members still running after `patience` (in uninterruptible sleep).
    """
    deadline = time.monotonic() + patience
    pause = _POLL_MIN_S
    while True:
        running = [p for p in processes.members() if not p.stopped]
        if not running or time.monotonic() > deadline:
            return running
        for process in running:
            send_signal(process, signal.SIGSTOP, processes.is_member)
        time.sleep(pause)
        pause = min(_POLL_MAX_S, pause * 2)


def kill_members(processes: ProcessSet, patience: float = KILL_PATIENCE_S) -> list[ProcessInfo]:
    """Stop every member, SIGKILL them all, and wait until none is alive.

    Returns the members still alive after `patience` (none, unless the kernel would not let
    them die).
    """
    deadline = time.monotonic() + patience
    freeze(processes, min(patience, FREEZE_PATIENCE_S))
    pause = _POLL_MIN_S
    while True:
        alive = processes.members()
        if not alive or time.monotonic() > deadline:
            return alive
        for process in alive:
            send_signal(process, signal.SIGKILL, processes.is_member)
        time.sleep(pause)
        pause = min(_POLL_MAX_S, pause * 2)


class ProcessTree:
    """A process and all its descendants, read from /proc (the root included)."""

    def __init__(self, root: ProcessInfo) -> None:
        self.root = root

    @classmethod
    def of(cls, pid: int) -> ProcessTree | None:
        root = read_process(pid)
        return cls(root) if root is not None else None

    def members(self) -> list[ProcessInfo]:
        table = read_processes()
        root = table.get(self.root.pid)
        roots = [root] if root is not None and root.start_time == self.root.start_time else []
        below = descendants(table, [r.pid for r in roots])
        return [p for p in [*roots, *below] if p.alive]

    def is_member(self, process: ProcessInfo) -> bool:
        return True  # the identity check in send_signal is enough: a descendant stays one


def kill_process_tree(pid: int) -> list[ProcessInfo]:
    """SIGKILL `pid` and every descendant, in whatever session, as a node dying would.

    The tree is stopped first (repeatedly, until no member runs), so a fork during the kill
    cannot leave a process behind. Returns the processes still alive afterwards.
    """
    tree = ProcessTree.of(pid)
    return kill_members(tree) if tree is not None else []


# -- the job's tree ----------------------------------------------------------------------------


class JobTree(Protocol):
    """Every process of one job, however it was started."""

    kind: str
    preexec: Callable[[], None] | None
    """Run in the job's main process between fork and exec (None: nothing to do)."""

    def attach(self, pid: int) -> None:
        """The job's main process is `pid`."""
        ...

    def members(self) -> list[ProcessInfo]: ...

    def is_member(self, process: ProcessInfo) -> bool: ...

    def kill(self) -> list[ProcessInfo]:
        """SIGKILL every member; returns when none is alive (or the survivors, on timeout)."""
        ...

    def close(self) -> None:
        """Release what the tree holds (its cgroup); the tree must be empty."""
        ...


class CgroupTree:
    """A job in its own cgroup v2: membership no fork or new session can leave."""

    kind = "cgroup"

    def __init__(self, path: Path, cgroup_name: str) -> None:
        path.mkdir()
        self.path = path
        self._cgroup_name = cgroup_name
        try:
            self._procs_fd = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            path.rmdir()
            raise
        self.preexec: Callable[[], None] | None = self._join

    def _join(self) -> None:
        # In the forked child, before exec: "0" moves the writing process itself.
        os.write(self._procs_fd, b"0")

    def attach(self, pid: int) -> None:
        return None  # the main process joined the cgroup before it ran anything

    def members(self) -> list[ProcessInfo]:
        pids: list[str] = []
        # With the cgroups the job may have made inside its own (a container runtime does).
        for folder, _, _ in os.walk(self.path):
            with contextlib.suppress(FileNotFoundError):
                pids.extend((Path(folder) / "cgroup.procs").read_text().split())
        found = (read_process(int(pid)) for pid in pids)
        return [p for p in found if p is not None and p.alive]

    def is_member(self, process: ProcessInfo) -> bool:
        try:
            lines = Path(f"/proc/{process.pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        mine = f"0::{self._cgroup_name}"
        return any(line == mine or line.startswith(f"{mine}/") for line in lines)

    def kill(self) -> list[ProcessInfo]:
        return [] if _kill_cgroup(self.path) else self.members()

    def close(self) -> None:
        os.close(self._procs_fd)
        try:
            _remove_cgroup(self.path)
        except OSError as exc:
            logger.warning("could not remove the job's cgroup %s: %s", self.path, exc)


class AdoptedTree:
    """A job held through the worker being a child subreaper (see the module docstring).

    Its members are the main process, every child of the worker that is neither a job's
    main process nor older than the worker's containment (re-parented orphans of the job),
    and all their descendants.
    """

    kind = "subreaper"
    preexec: Callable[[], None] | None = None

    def __init__(self, containment: Containment) -> None:
        self._containment = containment
        self._main: ProcessInfo | None = None

    def attach(self, pid: int) -> None:
        self._main = read_process(pid)

    def members(self) -> list[ProcessInfo]:
        table = read_processes()
        roots = self._containment.adopted(table)
        if self._main is not None:
            main = table.get(self._main.pid)
            if main is not None and main.identity == self._main.identity:
                roots.append(main)
        below = descendants(table, [r.pid for r in roots])
        return [p for p in [*roots, *below] if p.alive]

    def is_member(self, process: ProcessInfo) -> bool:
        return True  # the identity check in send_signal is enough: a descendant stays one

    def kill(self) -> list[ProcessInfo]:
        return kill_members(self)

    def close(self) -> None:
        return None


class Containment:
    """How this process holds its jobs' trees; one per process (`install`)."""

    def __init__(self, cgroup_dir: Path | None, cgroup_name: str) -> None:
        self.cgroup_dir = cgroup_dir
        self._cgroup_name = cgroup_name
        me = os.getpid()
        # Children this process had before it held any job (a sidecar an entrypoint
        # started before exec'ing the worker) are not a job's.
        self._older: frozenset[Identity] = frozenset(
            p.identity for p in read_processes().values() if p.ppid == me
        )
        self._mains: set[int] = set()
        self._names = itertools.count(1)

    @property
    def kind(self) -> str:
        return "cgroup" if self.cgroup_dir is not None else "subreaper"

    def new_tree(self) -> JobTree:
        while self.cgroup_dir is not None:
            name = f"kelpie-job-{os.getpid()}-{next(self._names)}"
            try:
                return CgroupTree(self.cgroup_dir / name, f"{self._cgroup_name}/{name}")
            except FileExistsError:
                continue  # a leftover of a worker that had this pid before (and is gone)
            except OSError as exc:
                self.give_up_cgroups(f"cannot create {self.cgroup_dir / name}: {exc}")
        return AdoptedTree(self)

    def give_up_cgroups(self, reason: str) -> None:
        logger.warning("job processes: cgroups unusable (%s); tracking them from /proc", reason)
        self.cgroup_dir = None

    def started(self, pid: int) -> None:
        """`pid` is a job's main process: asyncio reaps it, so the orphan reaper must not."""
        self._mains.add(pid)

    def finished(self, pid: int) -> None:
        self._mains.discard(pid)

    def adopted(self, table: dict[int, ProcessInfo]) -> list[ProcessInfo]:
        """Children of this process that a job left behind (see `AdoptedTree`)."""
        me = os.getpid()
        return [
            p
            for p in table.values()
            if p.ppid == me and p.pid not in self._mains and p.identity not in self._older
        ]

    def reap_orphans(self) -> int:
        """Reap every exited child but the jobs' main processes; returns how many."""
        me = os.getpid()
        reaped = 0
        for process in read_processes().values():
            if process.ppid != me or process.alive or process.pid in self._mains:
                continue
            with contextlib.suppress(ChildProcessError):
                if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG) is not None:
                    reaped += 1
        return reaped


# One per process, because what it stands for is per process: being a child subreaper, and
# reaping every orphan the process adopts.
_installed: Containment | None = None


def install(mode: ContainmentMode = "auto") -> Containment:
    """Make this process hold its jobs' whole trees; call it once, at start, in a process
    whose only children are jobs (`kelpie worker`): it adopts and reaps every orphan.

    `auto` uses cgroup v2 when it is usable and the subreaper otherwise; `cgroup` raises
    ContainmentUnavailable when it is not.
    """
    global _installed
    if _installed is not None:
        return _installed
    _become_subreaper()
    cgroup_dir: Path | None = None
    cgroup_name = ""
    if mode != "subreaper":
        try:
            cgroup_dir, cgroup_name = usable_cgroup()
        except ContainmentUnavailable as exc:
            if mode == "cgroup":
                raise
            logger.info("job processes: %s; tracking them from /proc instead", exc)
    _installed = Containment(cgroup_dir, cgroup_name)
    if cgroup_dir is not None:
        logger.info("job processes: each job in its own cgroup under %s", cgroup_dir)
        clear_stale_cgroups(cgroup_dir)
    return _installed


def installed() -> Containment:
    """This process's containment, installed with `auto` on first use."""
    return _installed if _installed is not None else install()


def clear_stale_cgroups(directory: Path) -> None:
    """Kill and remove the job cgroups of workers that are gone (killed, not stopped: a
    worker that stops removes its own), so a restarted worker finds no job of theirs still
    running on the GPU. Those of a live worker (two in one container) are left alone."""
    me = str(os.getpid())
    for stale in directory.glob("kelpie-job-*-*"):
        worker_pid = stale.name.split("-")[2]
        # This process's pid on a cgroup it has not made yet: a worker before a restart of
        # the container (new pid namespace, same cgroup) had it.
        if worker_pid != me and Path(f"/proc/{worker_pid}").exists():
            continue
        try:
            _kill_cgroup(stale)
            _remove_cgroup(stale)
        except OSError as exc:
            logger.warning("could not clear the stale job cgroup %s: %s", stale, exc)
            continue
        logger.warning("job processes: killed what a gone worker left in %s", stale)


def _kill_cgroup(cgroup: Path) -> bool:
    """SIGKILL every process in `cgroup`; True once it is empty (within KILL_PATIENCE_S)."""
    (cgroup / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + KILL_PATIENCE_S
    pause = _POLL_MIN_S
    while _populated(cgroup):
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(_POLL_MAX_S, pause * 2)
    return True


def _remove_cgroup(cgroup: Path) -> None:
    """Remove an empty cgroup and any the job made inside it, innermost first."""
    for folder, _, _ in os.walk(cgroup, topdown=False):
        os.rmdir(folder)


def _populated(cgroup: Path) -> bool:
    events = (cgroup / "cgroup.events").read_text().split()
    return events[events.index("populated") + 1] == "1"


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise ContainmentUnavailable(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(code)}")


def usable_cgroup() -> tuple[Path, str]:
    """This process's cgroup v2 folder and name, if jobs can get child cgroups in it.

    Raises ContainmentUnavailable saying why not (most containers mount it read-only).
    """
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError as exc:
        raise ContainmentUnavailable(f"cannot read /proc/self/cgroup: {exc}") from exc
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if own is None:
        raise ContainmentUnavailable("this process is in no cgroup v2 hierarchy")
    directory = _cgroup2_folder(own)
    if directory is None:
        raise ContainmentUnavailable(f"cgroup {own} is not visible under a cgroup2 mount")
    probe = directory / f"kelpie-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError as exc:
        reason = f"cannot create a cgroup in {directory}: {exc.strerror}"
        raise ContainmentUnavailable(reason) from exc
    try:
        if not (probe / "cgroup.kill").exists():  # (a root cgroup has none of its own)
            raise ContainmentUnavailable("no cgroup.kill (cgroups need Linux 5.14 or newer)")
    finally:
        probe.rmdir()
    if not os.access(directory / "cgroup.procs", os.W_OK):
        raise ContainmentUnavailable(f"{directory / 'cgroup.procs'} is not writable")
    return directory, own.rstrip("/")


def _cgroup2_folder(own: str) -> Path | None:
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        before, _, after = line.partition(" - ")
        if not after.startswith("cgroup2 "):
            continue
        fields = before.split()
        root, mountpoint = _unescape(fields[3]), _unescape(fields[4])
        if own == root or own.startswith(root.rstrip("/") + "/"):
            return Path(mountpoint) / own[len(root) :].lstrip("/")
    return None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
