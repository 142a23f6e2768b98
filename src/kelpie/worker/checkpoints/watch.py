"""Change events from the checkpoint folders and the commit marker, and folder scans.

Events come from watchdog (inotify) on its own thread. The engine only needs to know that
something changed and when, so each event costs a counter increment and, at most once per
wake-up, one call into the event loop: a job writing a large file in small pieces does not
flood the loop.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from kelpie.storage import FileStamp
from kelpie.worker.checkpoints.generations import FileId
from kelpie.worker.plan import CheckpointTarget

_FOLDER_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]
_MARKER_EVENTS: list[type[FileSystemEvent]] = [FileCreatedEvent, FileClosedEvent, FileMovedEvent]


class FolderWatch:
    """Counts change events under `folders`, notes marker events in `marker_dir`, and sets
    `wake` whenever either happens."""

    def __init__(self, folders: Sequence[Path], marker_dir: Path) -> None:
        self._folders = outermost(folders)
        self._marker_dir = marker_dir
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = False
        self._observer: Any = None
        self.events = 0
        self.last_change: float | None = None
        self.wake = asyncio.Event()
        self.wake_on_change = True
        """False while the engine waits for changes to settle: then a change need not wake
        it (a job writing a large file sends thousands of events)."""

    def start(self) -> None:
        """Begin watching (call from the event loop; raises OSError, e.g. ENOSPC when the
        node's inotify watch limit is reached: the caller then relies on sweeps)."""
        from watchdog.observers import Observer  # only once a job has checkpoints

        self._loop = asyncio.get_running_loop()
        observer = Observer()
        folder_handler = _Handler(self._on_change)
        for folder in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            observer.schedule(
                folder_handler, str(folder), recursive=True, event_filter=_FOLDER_EVENTS
            )
        observer.schedule(
            _Handler(self._on_marker),
            str(self._marker_dir),
            recursive=False,
            event_filter=_MARKER_EVENTS,
        )
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    def note_change(self) -> None:
        """Count a change found without an event (by a scan)."""
        self._on_change()

    def _on_change(self) -> None:
        with self._lock:
            self.events += 1
            self.last_change = time.monotonic()
        if self.wake_on_change:
            self._wake_loop()

    def _on_marker(self) -> None:
        self._wake_loop()

    def _wake_loop(self) -> None:
        loop = self._loop
        with self._lock:
            if self._wake_pending or loop is None or loop.is_closed():
                return
            self._wake_pending = True
        try:
            loop.call_soon_threadsafe(self._woken)
        except RuntimeError:  # the loop closed meanwhile
            return

    def _woken(self) -> None:
        with self._lock:
            self._wake_pending = False
        self.wake.set()


class _Handler(FileSystemEventHandler):
    def __init__(self, forward: Callable[[], None]) -> None:
        self._forward = forward

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._forward()


def scan_folders(targets: Sequence[CheckpointTarget]) -> dict[FileId, FileStamp]:
    """Every regular file of every target that belongs to generations, with its stamp.

    Symbolic links are not followed and not part of generations.
    """
    files: dict[FileId, FileStamp] = {}
    for target in targets:
        for path, st in _walk(target.local_dir):
            relative = target.relative_path(path)
            if relative is not None:
                files[(target.index, relative)] = FileStamp.of(st)
    return files


def _walk(folder: Path) -> Iterable[tuple[Path, os.stat_result]]:
    pending = [str(folder)]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                pending.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                yield Path(entry.path), st


def outermost(folders: Iterable[Path]) -> list[Path]:
    """Drop folders nested in another one, so each is watched once."""
    ordered = sorted(set(folders), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for folder in ordered:
        if not any(folder.is_relative_to(outer) for outer in kept):
            kept.append(folder)
    return kept
