"""Which files under some folders are open for writing by any process on this machine.

Read from Linux's /proc: a descriptor opened for writing (`/proc/PID/fd` + the access mode
in `/proc/PID/fdinfo`), or a writable *shared* memory mapping (`/proc/PID/maps`, permissions
`w` and `s`), which outlives the descriptor it was made from: a job may close the file and
keep writing through the mapping. Processes of other users cannot be inspected and are
skipped, so the job should run as the worker's user (as it does in a container).

The scan reads only what it must: every process's descriptor links, `fdinfo` only for
links into the folders, and a process's maps only past a quick substring test.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

PROC = "/proc"
_DELETED = " (deleted)"


def open_for_writing(folders: Iterable[str]) -> set[str]:
    """Paths under `folders` (real paths, as /proc shows them) held open for writing."""
    prefixes = tuple(folder.rstrip("/") + "/" for folder in folders)
    if not prefixes:
        return set()
    encoded = tuple(os.fsencode(prefix) for prefix in prefixes)
    found: set[str] = set()
    try:
        pids = [entry for entry in os.listdir(PROC) if entry.isdigit()]
    except OSError:
        return found
    for pid in pids:
        found.update(_writable_descriptors(pid, prefixes))
        found.update(_shared_writable_mappings(pid, encoded))
    return {path for path in found if not _deleted(path)}


def _writable_descriptors(pid: str, prefixes: tuple[str, ...]) -> Iterable[str]:
    fd_dir = f"{PROC}/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:  # gone, or another user's process
        return
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith(prefixes) and _fd_writable(pid, fd):
            yield target


def _fd_writable(pid: str, fd: str) -> bool:
    try:
        with open(f"{PROC}/{pid}/fdinfo/{fd}") as info:
            for line in info:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError):
        return False
    return False


def _shared_writable_mappings(pid: str, prefixes: tuple[bytes, ...]) -> Iterable[str]:
    try:
        with open(f"{PROC}/{pid}/maps", "rb") as maps:
            data = maps.read()
    except OSError:
        return
    if not any(prefix in data for prefix in prefixes):
        return
    for line in data.splitlines():
        # address perms offset device inode pathname; the pathname may contain spaces
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[1][1:2] == b"w" and fields[1][3:4] == b"s":
            path = fields[5]
            if path.startswith(prefixes):
                yield os.fsdecode(path)


def _deleted(path: str) -> bool:
    """A file deleted while held open is shown with a suffix; it is no longer in the folder."""
    return path.endswith(_DELETED) and not os.path.lexists(path)
