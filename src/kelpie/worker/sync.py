"""Live upload of a running job's output folders to the bucket, each file once it is complete.

Checkpoint folders are not synced file by file: they are committed whole, as generations
(`kelpie.worker.checkpoints`).

"Completely written" means the writer closed the file (inotify IN_CLOSE_WRITE) or renamed
it into place (IN_MOVED_TO), both seen through watchdog. A periodic sweep catches what
inotify missed (queue overflow, files written before the watch began): a file is uploaded by
the sweep only when its size and mtime held still across two sweeps *and* no process has it
open for writing (read from /proc). A half-written file held open is never uploaded.

Every path that needs work goes into one pending map, so ten closes of one file while an
upload runs cost one more upload, not ten. When a path's turn comes, it is uploaded if it is
there and differs from what was last uploaded; outputs are never deleted in the bucket. An
upload that finds the file changing while it reads it stores nothing (FileChangedError) and
the path waits for its next close or sweep; a failed transfer stays pending and is retried
with backoff, so no output is dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from watchdog.events import (
    DirMovedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from kelpie.backoff import Backoff
from kelpie.storage import FileChangedError, StorageError
from kelpie.worker.plan import UploadTarget
from kelpie.worker.tasks import cancel_and_wait, spawn

logger = logging.getLogger("kelpie.worker.sync")

RETRY_BACKOFF = Backoff(base=0.5, cap=30.0)
_WATCHED_EVENTS: list[type[FileSystemEvent]] = [FileClosedEvent, FileMovedEvent, DirMovedEvent]


class Uploader(Protocol):
    """The part of `kelpie.storage.ObjectStorage` live sync needs."""

    async def upload_file(
        self, local_path: Path, bucket: str, key: str, *, compress: bool = False
    ) -> int: ...


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_size, st.st_mtime_ns)


@dataclass
class _Failure:
    attempts: int
    error: str


@dataclass
class SyncStats:
    uploads: int = 0
    bytes: int = 0
    failures: dict[str, str] = field(default_factory=dict)


class LiveSync:
    """Uploads the completely written files of `targets` while the job runs.

    `start()` after the downloads (files already there count as in the bucket), `flush()`
    when the job has exited, `close()` always. `died` is set if a task of this sync crashed.
    """

    def __init__(
        self,
        storage: Uploader,
        targets: Sequence[UploadTarget],
        *,
        compress: bool,
        concurrency: int,
        sweep_interval: float,
        open_for_writing: Callable[[set[str]], set[str]] | None = None,
    ) -> None:
        self._storage = storage
        self._targets = tuple(targets)
        self._compress = compress
        self._slots = asyncio.Semaphore(concurrency)
        self._sweep_interval = sweep_interval
        self._open_for_writing = open_for_writing or files_open_for_writing
        self._synced: dict[tuple[int, Path], FileState] = {}
        self._pending: dict[Path, float] = {}
        self._in_flight: set[Path] = set()
        self._failures: dict[Path, _Failure] = {}
        self._last_seen: dict[Path, FileState] = {}
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._observer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.died = asyncio.Event()
        self.stats = SyncStats()

    @property
    def dirs(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(target.local_dir for target in self._targets))

    async def start(self) -> None:
        """Record what is there as already synced, then watch and sweep."""
        if not self._targets:
            return
        self._loop = asyncio.get_running_loop()
        for path, state in await asyncio.to_thread(self._scan):
            for index, _key in self._keys(path):
                self._synced[(index, path)] = state
        try:
            self._observer = await asyncio.to_thread(self._start_observer)
        except OSError as exc:  # e.g. ENOSPC: the inotify watch limit of the node
            logger.warning("cannot watch %s (%s); relying on the periodic sweep", self.dirs, exc)
        self._track(spawn(self._dispatch(), "sync-dispatch"))
        self._track(spawn(self._sweep_forever(), "sync-sweep"))

    async def flush(self, deadline: float) -> dict[str, str]:
        """Upload everything not yet in the bucket; returns {path: error} of what could not be.

        For after the job exited: every file is final, so no stability wait and no open check.
        Failing transfers are retried with backoff until `deadline` (monotonic).
        """
        if not self._targets:
            return {}
        await self._sweep_once(final=True)
        for path in list(self._pending):
            self._pending[path] = 0.0
        self._changed.set()
        while (self._pending or self._in_flight) and not self.died.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._idle.clear()
            if self._pending or self._in_flight:
                try:
                    async with asyncio.timeout(remaining):
                        await self._idle.wait()
                except TimeoutError:
                    break
        outstanding = {
            str(path): (
                self._failures[path].error if path in self._failures else "not uploaded in time"
            )
            for path in (*self._pending, *self._in_flight)
        }
        self.stats.failures = outstanding
        return outstanding

    async def close(self) -> None:
        """Stop watching and uploading at once (in-flight transfers are cancelled)."""
        if self._observer is not None:
            observer, self._observer = self._observer, None
            await asyncio.to_thread(_stop_observer, observer)
        await cancel_and_wait(self._tasks)

    # -- watching ------------------------------------------------------------------------

    def _start_observer(self) -> Any:
        from watchdog.observers import Observer  # only once a job syncs: keeps idle RSS down

        observer = Observer()
        handler = _Handler(self._from_thread)
        for directory in _outermost(self.dirs):
            directory.mkdir(parents=True, exist_ok=True)
            observer.schedule(handler, str(directory), recursive=True, event_filter=_WATCHED_EVENTS)
        observer.daemon = True
        observer.start()
        return observer

    def _from_thread(self, event: FileSystemEvent) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._on_event, event)
            except RuntimeError:  # the loop closed between the check and the call
                return

    def _on_event(self, event: FileSystemEvent) -> None:
        paths: list[Path] = []
        if isinstance(event, DirMovedEvent):
            # A folder moved into place is picked up file by file.
            paths.extend(path for path, _ in _walk_files([Path(os.fsdecode(event.dest_path))]))
        elif isinstance(event, FileMovedEvent):
            paths.append(Path(os.fsdecode(event.dest_path)))
        else:
            paths.append(Path(os.fsdecode(event.src_path)))
        for path in paths:
            self._enqueue(path)

    # -- the pending map -----------------------------------------------------------------

    def _enqueue(self, path: Path, not_before: float = 0.0) -> None:
        if not any(True for _ in self._keys(path)):
            return
        current = self._pending.get(path)
        self._pending[path] = not_before if current is None else min(current, not_before)
        self._idle.clear()
        self._changed.set()

    def _keys(self, path: Path) -> Iterator[tuple[int, str]]:
        for index, target in enumerate(self._targets):
            key = target.key_for(path)
            if key is not None:
                yield index, key

    async def _dispatch(self) -> None:
        while True:
            self._changed.clear()
            now = time.monotonic()
            next_due: float | None = None
            for path, due in list(self._pending.items()):
                if path in self._in_flight:
                    continue
                if due <= now:
                    del self._pending[path]
                    self._in_flight.add(path)
                    self._track(spawn(self._reconcile(path), "sync-transfer"))
                else:
                    next_due = due if next_due is None else min(next_due, due)
            if not self._pending and not self._in_flight:
                self._idle.set()
            timeout = None if next_due is None else max(0.0, next_due - now)
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def _reconcile(self, path: Path) -> None:
        try:
            async with self._slots:
                await self._transfer(path)
        except FileChangedError as exc:
            # Still being written: its close (or the sweep, once it holds still) brings it back.
            logger.debug("sync of %s put off: %s", path, exc)
            self._failures.pop(path, None)
        except (StorageError, OSError) as exc:
            self._retry_later(path, exc)
        except Exception:
            self.died.set()
            raise
        else:
            self._failures.pop(path, None)
        finally:
            self._in_flight.discard(path)
            self._changed.set()

    async def _transfer(self, path: Path) -> None:
        try:
            st: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            return
        for index, key in list(self._keys(path)):
            target = self._targets[index]
            synced = self._synced.get((index, path))
            if st is None:
                self._synced.pop((index, path), None)
                continue
            state = FileState.of(st)
            if synced == state:
                continue
            started = time.monotonic()
            size = await self._storage.upload_file(
                path, target.bucket, key, compress=self._compress
            )
            after = _state_or_none(path)
            if after != state:
                # Rewritten during the upload: the bucket may hold a torn copy until the next
                # close, which will come; look again rather than trust this one.
                self._enqueue(path)
                continue
            self._synced[(index, path)] = state
            self.stats.uploads += 1
            self.stats.bytes += size
            logger.info(
                "uploaded %s to s3://%s/%s (%d bytes, %.0f ms)",
                path,
                target.bucket,
                key,
                size,
                (time.monotonic() - started) * 1000,
            )

    def _retry_later(self, path: Path, exc: BaseException) -> None:
        failure = self._failures.setdefault(path, _Failure(0, ""))
        failure.attempts += 1
        failure.error = f"{type(exc).__name__}: {exc}"
        delay = RETRY_BACKOFF.delay(failure.attempts)
        logger.warning(
            "sync of %s failed (attempt %d), retrying in %.1f s: %s",
            path,
            failure.attempts,
            delay,
            failure.error,
        )
        self._enqueue(path, time.monotonic() + delay)

    # -- the sweep -----------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            await self._sweep_once(final=False)

    async def _sweep_once(self, *, final: bool) -> None:
        files = dict(await asyncio.to_thread(self._scan))
        candidates: dict[Path, FileState] = {}
        for path, state in files.items():
            if path in self._pending or path in self._in_flight:
                continue
            if any(self._synced.get((index, path)) != state for index, _ in self._keys(path)):
                stable = self._last_seen.get(path) == state
                if final or stable:
                    candidates[path] = state
        self._last_seen = files
        if candidates and not final:
            held = await asyncio.to_thread(self._open_for_writing, {str(p) for p in candidates})
            for name in held:
                logger.debug("sweep: %s is still open for writing; not uploaded", name)
                candidates.pop(Path(name), None)
        for path in candidates:
            self._enqueue(path)
        logger.debug("sweep: %d files, %d to upload", len(files), len(candidates))

    def _scan(self) -> list[tuple[Path, FileState]]:
        return [
            (path, state)
            for path, state in _walk_files(self.dirs)
            if any(True for _ in self._keys(path))
        ]

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.died.set()


class _Handler(FileSystemEventHandler):
    def __init__(self, forward: Callable[[FileSystemEvent], None]) -> None:
        self._forward = forward

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._forward(event)


def _stop_observer(observer: Any) -> None:
    observer.stop()
    observer.join(timeout=5)


def _state_or_none(path: Path) -> FileState | None:
    try:
        return FileState.of(path.stat())
    except FileNotFoundError:
        return None


def _walk_files(dirs: Iterable[Path]) -> Iterator[tuple[Path, FileState]]:
    for directory in _outermost(dirs):
        for root, _dirs, names in os.walk(directory):
            for name in names:
                path = Path(root, name)
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield path, FileState.of(st)


def _outermost(dirs: Iterable[Path]) -> list[Path]:
    """Drop folders nested in another one, so each file is seen once."""
    ordered = sorted(set(dirs), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for directory in ordered:
        if not any(directory.is_relative_to(outer) for outer in kept):
            kept.append(directory)
    return kept


def files_open_for_writing(paths: set[str]) -> set[str]:
    """Those of `paths` that some process on this machine has open for writing (Linux /proc)."""
    found: set[str] = set()
    try:
        pids = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target in paths and _fd_writable(pid, fd):
                found.add(target)
    return found


def _fd_writable(pid: str, fd: str) -> bool:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as info:
            for line in info:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError):
        return False
    return False
