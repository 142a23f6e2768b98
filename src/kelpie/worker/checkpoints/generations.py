"""What a generation is made of, and what it must upload: the bookkeeping, without I/O.

A file is named by its `FileId` (target index, path in the folder). What the engine knows
of a file is a `KnownFile`: how the file looked when it was hashed (its `FileStamp`) and the
object holding those bytes. A file whose stamp is unchanged keeps its object: the next
manifest points at the old key and nothing is uploaded again.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from kelpie.schemas import CheckpointFile
from kelpie.storage import FileStamp

FileId = tuple[int, str]
"""A file of a generation: (checkpoint target index, path relative to its folder)."""


@dataclass(frozen=True)
class StoredFile:
    """An object holding one file's bytes: `size` and `sha256` are of the plain bytes."""

    bucket: str
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class KnownFile:
    stamp: FileStamp
    """The file as it was when its bytes were hashed into `stored`."""
    stored: StoredFile


@dataclass(frozen=True)
class GenerationPlan:
    """Files whose objects are reused as they are, and files to upload."""

    reuse: Mapping[FileId, StoredFile]
    upload: Mapping[FileId, FileStamp]


def plan_generation(
    files: Mapping[FileId, FileStamp], *known: Mapping[FileId, KnownFile]
) -> GenerationPlan:
    """Split `files` (the folders at the moment) into reuse and upload: a file reuses the
    object of the first of `known` that saw it with the very same stamp."""
    reuse: dict[FileId, StoredFile] = {}
    upload: dict[FileId, FileStamp] = {}
    for file_id, stamp in files.items():
        match = next(
            (k[file_id].stored for k in known if file_id in k and k[file_id].stamp == stamp),
            None,
        )
        if match is None:
            upload[file_id] = stamp
        else:
            reuse[file_id] = match
    return GenerationPlan(reuse, upload)


def same_as(files: Mapping[FileId, FileStamp], committed: Mapping[FileId, KnownFile]) -> bool:
    """True when the folders hold exactly the committed generation: same files, untouched."""
    return files.keys() == committed.keys() and all(
        committed[file_id].stamp == stamp for file_id, stamp in files.items()
    )


def manifest(stored: Mapping[FileId, StoredFile]) -> list[CheckpointFile]:
    """The commit's file list, in a stable order (target, then path)."""
    return [
        CheckpointFile(target=index, path=path, key=s.key, size=s.size, sha256=s.sha256)
        for (index, path), s in sorted(stored.items())
    ]


class ExitKind(enum.Enum):
    """How the job's process ended, as far as its checkpoint folders are concerned."""

    SUCCEEDED = "succeeded"
    """Exit code 0."""
    HANDED_BACK = "handed back"
    """Exited by itself, with an exit code, after the worker sent it SIGTERM: it had the
    chance to save what it wanted."""
    KILLED = "killed"
    """Ended by a signal: SIGKILL after the stop grace, the OOM killer, a crash."""
    FAILED = "failed"
    """Any other non-zero exit."""

    @classmethod
    def of(cls, exit_code: int, signal: int | None, *, terminated_by_worker: bool) -> ExitKind:
        """The kind of an exit (`runner.ExitStatus` fields) of a job the worker did or did
        not ask to stop."""
        if signal is not None:
            return cls.KILLED
        if exit_code == 0:
            return cls.SUCCEEDED
        return cls.HANDED_BACK if terminated_by_worker else cls.FAILED

    @property
    def folders_are_final(self) -> bool:
        """True when the folders as the job left them make a generation: the job ended on its
        own terms. Otherwise a file may have been cut mid-write, and only a snapshot taken
        at a quiet moment before the end may still be committed."""
        return self in (ExitKind.SUCCEEDED, ExitKind.HANDED_BACK)
