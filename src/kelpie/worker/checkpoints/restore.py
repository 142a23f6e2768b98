"""Bringing a job's checkpoint folders back before it starts.

With committed generations: exactly the newest one that reads back whole, every file
checked against its size and SHA-256 while it downloads, falling back generation by
generation past a missing or corrupt object (each fallback is reported).

Without any of its own: the newest generation of an earlier job of the same user that
committed under the same checkpoint prefixes (a job that failed for good, was cancelled or
completed, resubmitted with the same prefix), with the same verification and fallbacks.
Those jobs are found by their folders under `<prefix>.kelpie/`, and each is checked with the
API: another user's job (not found, or a different `user_id`) is never restored from.

Without either: the plain objects under each prefix, as the reference worker left them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol, TypeVar

from kelpie.backoff import Backoff
from kelpie.client import ApiUnavailable, KelpieError, NotFoundError
from kelpie.schemas import (
    CheckpointManifestOut,
    CheckpointOut,
    JobOut,
    JobStatus,
    normalize_prefix,
)
from kelpie.storage import FileStamp, ObjectDamaged, TransferStats, VerifiedDownload
from kelpie.worker.checkpoints.generations import FileId, KnownFile, StoredFile
from kelpie.worker.checkpoints.layout import is_job_id
from kelpie.worker.plan import CheckpointTarget

logger = logging.getLogger("kelpie.worker.checkpoints")

T = TypeVar("T")
API_RETRY = Backoff(base=1.0, cap=10.0, floor=0.5)
FINISHED: frozenset[JobStatus] = frozenset({"completed", "canceled", "failed"})
"""Jobs whose checkpoints a new job may start from: they will never commit again."""
MAX_EARLIER_JOBS = 100
"""Job folders under one `.kelpie/` looked up with the API at most (the rest are ignored)."""


class GenerationReader(Protocol):
    """The part of the API a restore reads: committed generations and their files."""

    async def generations(self) -> list[CheckpointOut]: ...

    async def manifest(self, generation: int) -> CheckpointManifestOut: ...


class EarlierJobsReader(Protocol):
    """Other jobs as the API shows them to this worker (NotFoundError: not visible)."""

    async def other_job(self, job_id: str) -> JobOut: ...

    async def other_generations(self, job_id: str) -> list[CheckpointOut]: ...

    async def other_manifest(self, job_id: str, generation: int) -> CheckpointManifestOut: ...


class RestoreReader(GenerationReader, EarlierJobsReader, Protocol):
    pass


class RestoreStorage(Protocol):
    async def download_verified(self, items: Sequence[VerifiedDownload]) -> TransferStats: ...

    async def download_prefix(
        self,
        bucket: str,
        prefix: str,
        local_dir: Path,
        *,
        pattern: re.Pattern[str] | None = None,
        decompress: bool = True,
    ) -> TransferStats: ...

    async def list_folders(self, bucket: str, prefix: str) -> list[str]: ...


@dataclass(frozen=True)
class Fallback:
    """A generation that could not be restored, and why (the first file that failed)."""

    generation: int
    reason: str
    target: int | None = None
    path: str | None = None
    job: str | None = None
    """The earlier job the generation belongs to; None for the job's own."""

    def describe(self) -> str:
        where = "" if self.path is None else f" (target {self.target}, {self.path})"
        of = "" if self.job is None else f" of job {self.job}"
        generation = f"checkpoint generation {self.generation}{of}"
        return f"{generation} could not be restored{where}: {self.reason}"


@dataclass(frozen=True)
class RestoreReport:
    """What a restore put in the checkpoint folders."""

    generation: int | None
    """The generation restored; None when none was (no generations, or none readable)."""
    newest: int | None
    """The newest committed generation, restorable or not."""
    files: int
    bytes: int
    plain: bool
    """True when the folders came from plain objects: the job has no generation yet."""
    fallbacks: tuple[Fallback, ...] = ()
    known: Mapping[FileId, KnownFile] = field(default_factory=dict, repr=False)
    """Each restored file's stamp and object, so unchanged files are not uploaded again."""
    source_job: str | None = None
    """The earlier job whose generation `generation` is; None when it is the job's own."""

    @property
    def warnings(self) -> list[str]:
        """Lines for the attempt's record: every fallback, and a start without checkpoints
        although generations exist."""
        lines = [fallback.describe() for fallback in self.fallbacks]
        of = "" if self.source_job is None else f" of job {self.source_job}"
        if self.newest is not None and self.generation is None:
            lines.append(
                "no checkpoint generation could be restored; the job starts without checkpoints"
            )
        elif self.fallbacks and self.generation is not None:
            lines.append(f"restored the older checkpoint generation {self.generation}{of}")
        elif self.fallbacks:
            lines.append("no earlier job's checkpoint generation could be restored")
        return lines


async def restore(
    targets: Sequence[CheckpointTarget],
    reader: RestoreReader,
    storage: RestoreStorage,
    *,
    job_id: str,
    user_id: str,
) -> RestoreReport:
    """Fill the (empty) checkpoint folders of `targets` of job `job_id` of user `user_id`;
    see the module docstring."""
    if not targets:
        return RestoreReport(None, None, 0, 0, plain=False)
    generations = await api_call(reader.generations)
    if not generations:
        earlier = await _restore_earlier(targets, reader, storage, job_id, user_id)
        if earlier.generation is not None:
            return earlier
        plain = await _restore_plain(targets, storage)
        return dataclasses.replace(plain, fallbacks=earlier.fallbacks)
    newest = max(g.generation for g in generations)
    fallbacks: list[Fallback] = []
    for listed in sorted((g for g in generations if g.kept), key=lambda g: -g.generation):
        try:
            manifest = await api_call(functools.partial(reader.manifest, listed.generation))
        except NotFoundError:
            fallbacks.append(Fallback(listed.generation, "its record is gone (expired)"))
            continue
        outcome = await _restore_generation(manifest, targets, storage)
        if isinstance(outcome, Fallback):
            logger.warning("%s; trying the generation before", outcome.describe())
            fallbacks.append(outcome)
            continue
        files, nbytes, known = outcome
        logger.info(
            "restored checkpoint generation %d: %d files, %d bytes",
            manifest.generation,
            files,
            nbytes,
        )
        return RestoreReport(
            manifest.generation, newest, files, nbytes, False, tuple(fallbacks), known
        )
    logger.error("no checkpoint generation could be restored; starting without checkpoints")
    return RestoreReport(None, newest, 0, 0, False, tuple(fallbacks))


async def _restore_earlier(
    targets: Sequence[CheckpointTarget],
    reader: EarlierJobsReader,
    storage: RestoreStorage,
    job_id: str,
    user_id: str,
) -> RestoreReport:
    """The newest generation that reads back whole of the earlier jobs of `user_id` under
    the same prefixes: the job that committed last first, its generations newest first."""
    fallbacks: list[Fallback] = []
    for other, kept, index_map in await _earlier_jobs(targets, reader, storage, job_id, user_id):
        for listed in sorted(kept, key=lambda g: -g.generation):
            try:
                manifest = await api_call(
                    functools.partial(reader.other_manifest, other.id, listed.generation)
                )
            except NotFoundError:
                fallbacks.append(
                    Fallback(listed.generation, "its record is gone (expired)", job=other.id)
                )
                continue
            outcome = await _restore_generation(manifest, targets, storage, index_map)
            if isinstance(outcome, Fallback):
                outcome = dataclasses.replace(outcome, job=other.id)
                logger.warning("%s; trying the generation before", outcome.describe())
                fallbacks.append(outcome)
                continue
            files, nbytes, known = outcome
            logger.info(
                "restored checkpoint generation %d of the earlier job %s: %d files, %d bytes",
                manifest.generation,
                other.id,
                files,
                nbytes,
            )
            return RestoreReport(
                manifest.generation,
                None,
                files,
                nbytes,
                False,
                tuple(fallbacks),
                known,
                source_job=other.id,
            )
    return RestoreReport(None, None, 0, 0, False, tuple(fallbacks))


async def _earlier_jobs(
    targets: Sequence[CheckpointTarget],
    reader: EarlierJobsReader,
    storage: RestoreStorage,
    job_id: str,
    user_id: str,
) -> list[tuple[JobOut, list[CheckpointOut], dict[int, int]]]:
    """The finished jobs of `user_id` with kept generations whose checkpoint prefixes are
    all among this job's, each with its kept generations and the map from its target
    numbers to this job's; the one that committed last first."""
    ours = {(t.bucket, t.prefix): t.index for t in targets}
    names: set[str] = set()
    for target in targets:
        folders = await storage.list_folders(target.bucket, target.area)
        names.update(n for n in folders if is_job_id(n) and n != job_id)
    if len(names) > MAX_EARLIER_JOBS:
        logger.warning(
            "checkpoints: %d job folders under the checkpoint prefixes; looking at %d",
            len(names),
            MAX_EARLIER_JOBS,
        )
    found: list[tuple[JobOut, list[CheckpointOut], dict[int, int]]] = []
    for name in sorted(names)[:MAX_EARLIER_JOBS]:
        try:
            other = await api_call(functools.partial(reader.other_job, name))
        except NotFoundError:
            continue  # another user's job, or one deleted
        except KelpieError as exc:
            logger.warning("checkpoints: job %s not considered: %s", name, exc)
            continue
        if other.user_id != user_id or other.status not in FINISHED:
            continue
        index_map: dict[int, int] = {}
        for index, place in enumerate(checkpoint_prefixes(other)):
            if place not in ours:
                break
            index_map[index] = ours[place]
        else:
            try:
                listed = await api_call(functools.partial(reader.other_generations, name))
            except KelpieError as exc:
                logger.warning("checkpoints: job %s not considered: %s", name, exc)
                continue
            kept = [g for g in listed if g.kept]
            if kept and index_map:
                found.append((other, kept, index_map))
    found.sort(key=lambda item: max(g.created for g in item[1]), reverse=True)
    return found


def checkpoint_prefixes(job: JobOut) -> list[tuple[str, str]]:
    """(bucket, prefix) of each checkpoint target of `job`, numbered as its commits name
    them: `sync.during[i]` is i, else the legacy checkpoint prefix is 0."""
    if job.sync is not None:
        return [(e.bucket, normalize_prefix(e.prefix)) for e in job.sync.during]
    if job.checkpoint_bucket is None or job.checkpoint_prefix is None:
        return []
    return [(job.checkpoint_bucket, normalize_prefix(job.checkpoint_prefix))]


async def _restore_plain(
    targets: Sequence[CheckpointTarget], storage: RestoreStorage
) -> RestoreReport:
    sources = [t.plain_restore for t in targets if t.plain_restore is not None]
    results = await asyncio.gather(
        *(
            storage.download_prefix(
                d.bucket, d.prefix, d.local_dir, pattern=d.pattern, decompress=True
            )
            for d in sources
        )
    )
    files, nbytes = sum(r.files for r in results), sum(r.bytes for r in results)
    if files:
        logger.info("restored %d plain checkpoint files (%d bytes)", files, nbytes)
    return RestoreReport(None, None, files, nbytes, plain=True)


async def _restore_generation(
    manifest: CheckpointManifestOut,
    targets: Sequence[CheckpointTarget],
    storage: RestoreStorage,
    index_map: Mapping[int, int] | None = None,
) -> tuple[int, int, dict[FileId, KnownFile]] | Fallback:
    """Restore `manifest`; `index_map` turns the target numbers of an earlier job's manifest
    into this job's."""
    by_index = {t.index: t for t in targets}
    items: list[VerifiedDownload] = []
    owners: dict[tuple[str, str], FileId] = {}
    for entry in manifest.manifest:
        ours = entry.target if index_map is None else index_map.get(entry.target, -1)
        target = by_index.get(ours)
        if target is None or target.bucket != entry.bucket:
            return Fallback(manifest.generation, "not a target of this job", entry.target)
        if not _safe(entry.path):
            return Fallback(manifest.generation, "not a safe path", entry.target, entry.path)
        dest = target.local_dir.joinpath(*PurePosixPath(entry.path).parts)
        items.append(
            VerifiedDownload(
                entry.bucket, entry.key, dest, entry.size, entry.sha256, manifest.compressed
            )
        )
        owners[(entry.bucket, entry.key)] = (target.index, entry.path)
    try:
        stats = await storage.download_verified(items)
    except ObjectDamaged as exc:
        await asyncio.to_thread(_discard, items, targets)
        index, path = owners.get((exc.bucket, exc.key), (None, None))
        return Fallback(manifest.generation, exc.reason, index, path)
    except BaseException:
        await asyncio.to_thread(_discard, items, targets)
        raise
    known = await asyncio.to_thread(_stamps, items, owners)
    return stats.files, stats.bytes, known


def _stamps(
    items: Sequence[VerifiedDownload], owners: Mapping[tuple[str, str], FileId]
) -> dict[FileId, KnownFile]:
    return {
        owners[(item.bucket, item.key)]: KnownFile(
            FileStamp.of(item.dest.stat()),
            StoredFile(item.bucket, item.key, item.size, item.sha256),
        )
        for item in items
    }


def _discard(items: Sequence[VerifiedDownload], targets: Sequence[CheckpointTarget]) -> None:
    """Remove what a failed generation restore wrote: its files, then the folders it made
    that are empty now (deepest first), never a checkpoint folder itself."""
    roots = {t.local_dir for t in targets}
    folders: set[Path] = set()
    for item in items:
        item.dest.unlink(missing_ok=True)
        parent = item.dest.parent
        while parent not in roots and any(parent.is_relative_to(root) for root in roots):
            folders.add(parent)
            parent = parent.parent
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:  # not empty (another file lives there) or already gone
            continue


def _safe(path: str) -> bool:
    parts = path.split("/")
    return not path.startswith("/") and all(part not in ("", ".", "..") for part in parts)


async def api_call(call: Callable[[], Awaitable[T]]) -> T:
    """Make a read call, waiting out an unreachable API (1 s doubling to 10 s) for as long as
    it takes: without it no restore can be right. The caller bounds the wait."""
    failures = 0
    while True:
        try:
            return await call()
        except ApiUnavailable as exc:
            failures += 1
            delay = API_RETRY.delay(failures)
            logger.warning("checkpoints: API unreachable (%s); again in %.1f s", exc, delay)
            await asyncio.sleep(delay)


async def fetch_generation(
    storage: RestoreStorage, generation: CheckpointManifestOut, dest: Path
) -> TransferStats:
    """Download a committed generation's files into `dest/<target>/<path>` (`dest/<path>`
    when the job has a single checkpoint folder), each verified against the manifest.

    For people and tools outside a job (`kelpie jobs checkpoints download`, the demo); a
    job's own restore is `restore()`."""
    targets = {entry.target for entry in generation.manifest}
    items: list[VerifiedDownload] = []
    for entry in generation.manifest:
        if not _safe(entry.path):
            raise ValueError(f"the manifest names an unsafe path: {entry.path!r}")
        base = dest if targets == {0} else dest / str(entry.target)
        items.append(
            VerifiedDownload(
                entry.bucket,
                entry.key,
                base.joinpath(*PurePosixPath(entry.path).parts),
                entry.size,
                entry.sha256,
                generation.compressed,
            )
        )
    return await storage.download_verified(items)
