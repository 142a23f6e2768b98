"""When the checkpoint folders are quiet enough to take a generation: the decisions, no I/O.

The engine looks at the folders after every burst of change events has been followed by
`settle` seconds of silence, at every sweep, and when the job touches the commit marker. A
look scans the folders' stat stamps and decides here what that scan means. Only a
`CANDIDATE` goes on to the (more costly) check that no process holds a file open for writing.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

from kelpie.storage import FileStamp
from kelpie.worker.checkpoints.generations import FileId, KnownFile, same_as

BLOCKED_POLL_MIN_S = 0.05
BLOCKED_POLL_MAX_S = 1.0


class Look(enum.Enum):
    SETTLING = "settling"
    """Changes are still recent: look again once `settle` has passed since the last one."""
    COMMITTED = "committed"
    """The folders hold exactly the newest committed generation: nothing to do."""
    UNEXPLAINED = "unexplained"
    """The scan differs from the one before though no event came (a write through a memory
    mapping, or events lost): count it as a change just seen and let it settle."""
    CANDIDATE = "candidate"
    """Settled and different from the committed generation: check for writers, snapshot."""


@dataclass(frozen=True)
class Scan:
    """The folders' files (only those that belong to generations) and their stamps, and how
    many change events had arrived when the scan began."""

    files: Mapping[FileId, FileStamp]
    events_before: int


def judge(
    scan: Scan,
    *,
    previous: Scan | None,
    committed: Mapping[FileId, KnownFile],
    explicit: bool,
) -> Look:
    """What `scan` means. `previous` is the scan before it; `explicit` says the job touched
    the commit marker (no settle time: the job says its folders are complete)."""
    if same_as(scan.files, committed):
        return Look.COMMITTED
    if explicit:
        return Look.CANDIDATE
    unexplained = (
        previous is not None
        and scan.events_before == previous.events_before
        and scan.files != previous.files
    )
    return Look.UNEXPLAINED if unexplained else Look.CANDIDATE


def next_look(
    now: float,
    *,
    settle: float,
    explicit: bool,
    explicit_only: bool,
    events_pending: bool,
    last_change: float | None,
    sweep_due: bool,
    recheck_at: float | None,
) -> float:
    """When to look at the folders next: at once (<= now), at a time, or only when woken (inf).

    The commit file asks for a look at once (or at the recheck of a file held open). Otherwise
    changes always settle first: neither a sweep nor a recheck looks at the folders amid a
    burst of writes, where a set may be half written with no file open at that instant.
    """
    if explicit:
        return now if recheck_at is None else recheck_at
    if explicit_only:
        return math.inf
    if events_pending:
        return settled_at(last_change, settle)
    if sweep_due:
        return now
    return math.inf if recheck_at is None else recheck_at


def settled_at(last_change: float | None, settle: float) -> float:
    """The monotonic time from which the folders count as settled."""
    return float("-inf") if last_change is None else last_change + settle


def snapshot_is_consistent(
    scan: Scan,
    opened: Mapping[FileId, FileStamp],
    rescan: Scan,
) -> bool:
    """True when a snapshot shows one moment: the files opened for upload are the ones the
    scan saw, untouched, the scan after opening them shows the same folders, and no change
    event arrived in between."""
    return (
        rescan.events_before == scan.events_before
        and rescan.files == scan.files
        and all(scan.files.get(file_id) == stamp for file_id, stamp in opened.items())
    )


def next_blocked_poll(previous_delay: float | None) -> float:
    """How long to wait before checking again for a writer that holds a file open: quick at
    first (a writer about to close), then backing off to BLOCKED_POLL_MAX_S (a file held
    open for long: the /proc scan is not free). Closing a descriptor also sends an event,
    which ends the wait early; unmapping does not."""
    if previous_delay is None:
        return BLOCKED_POLL_MIN_S
    return min(BLOCKED_POLL_MAX_S, previous_delay * 2)
