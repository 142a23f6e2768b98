"""The checkpoint engine of one attempt: restore, watch, snapshot, upload, commit, clean up.

    engine = CheckpointEngine(storage, committer, plan.checkpoints, attempt_id=…, …)
    report = await engine.restore()          # before the job starts; report.warnings
    await engine.start()                     # watch (and clean the bucket) while it runs
    env.update(engine.environment())         # KELPIE_CHECKPOINT_COMMIT_FILE
    …                                        # engine.lost / engine.died may be set
    await engine.finish(exit_kind, deadline) # after the job exited
    await engine.close()                     # always

A generation is taken when the folders are quiet: `settle` seconds without a change event,
the scan not changed without an event, and no file there held open for writing (descriptor
or writable shared mapping). Or at once when the job creates the commit marker. The files
to upload are opened at that moment, so a job that writes aside and renames can carry on:
the open descriptors keep the snapshot's bytes. Each is read once, hashed while uploaded,
and checked unchanged before its object is completed; the manifest then goes to the API
(`Committer.commit`), which keeps it. See docs/worker.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kelpie.client import ApiUnavailable, AsyncKelpieClient, Conflict, KelpieError
from kelpie.schemas import (
    MAX_CHECKPOINT_FILES,
    CheckpointCommit,
    CheckpointCommitted,
    CheckpointFile,
    CheckpointManifestOut,
    CheckpointOut,
    JobOut,
)
from kelpie.storage import FileChangedError, FileStamp, RemoteObject, StorageError, Uploaded
from kelpie.worker.checkpoints.generations import (
    ExitKind,
    FileId,
    GenerationPlan,
    KnownFile,
    StoredFile,
    manifest,
    plan_generation,
    same_as,
)
from kelpie.worker.checkpoints.layout import attempt_of, job_area, object_key
from kelpie.worker.checkpoints.quiet import (
    Look,
    Scan,
    judge,
    next_blocked_poll,
    next_look,
    snapshot_is_consistent,
)
from kelpie.worker.checkpoints.restore import (
    RestoreReader,
    RestoreReport,
    RestoreStorage,
    api_call,
    restore,
)
from kelpie.worker.checkpoints.watch import FolderWatch, scan_folders
from kelpie.worker.checkpoints.writers import open_for_writing
from kelpie.worker.plan import CheckpointTarget
from kelpie.worker.tasks import cancel_and_wait, spawn

logger = logging.getLogger("kelpie.worker.checkpoints")

COMMIT_FILE_VARIABLE = "KELPIE_CHECKPOINT_COMMIT_FILE"
MODE_VARIABLE = "KELPIE_CHECKPOINT_MODE"
"""In a job's `environment`, `explicit` says: only the commit file makes generations."""
COMMIT_RETRY_S = (1.0, 2.0)  # an unreachable API: commit again after 1 to 2 s
LEASE_WAIT_S = 0.5  # the lease is unconfirmed: look again this often
CLEANUP_TIMEOUT_S = 15.0
CLOSE_UPLOAD_WAIT_S = 5.0  # closing: how long uploads in flight may run to their end
FD_RESERVE = 128  # descriptors left to the worker itself when pinning a snapshot


class Committer(RestoreReader, Protocol):
    """How the engine speaks to the API about this attempt's generations (and, to restore
    a new job, about the earlier jobs under its prefixes).

    `commit` raises `kelpie.client.Conflict` when this attempt no longer holds the job (or the
    number does not go forward), `ApiUnavailable` when the API could not be reached.
    `lease_ok()` is False while the holder cannot confirm its lease (no heartbeat answered
    for 2 x heartbeat_interval): nothing is committed then.
    """

    def lease_ok(self) -> bool: ...

    async def commit(
        self, generation: int, files: list[CheckpointFile], upload_seconds: float | None = None
    ) -> CheckpointCommitted:
        """`upload_seconds`: from the generation's files being complete to now (its cost)."""


class CheckpointStorage(RestoreStorage, Protocol):
    """The part of `kelpie.storage.ObjectStorage` the engine uses."""

    async def upload_verified(
        self,
        source: Path | int,
        bucket: str,
        key: str,
        *,
        compress: bool = False,
        expect: FileStamp | None = None,
    ) -> Uploaded: ...

    async def list_objects(self, bucket: str, prefix: str) -> list[RemoteObject]: ...

    async def delete_objects(self, bucket: str, keys: Sequence[str]) -> None: ...


class ApiCommitter:
    """`Committer` over the kelpie API client, for the attempt `attempt_id` of `job_id`."""

    def __init__(
        self,
        client: AsyncKelpieClient,
        job_id: str,
        *,
        machine_id: str,
        container_group_id: str,
        attempt_id: int,
        lease_ok: Callable[[], bool],
    ) -> None:
        self._client = client
        self._job_id = job_id
        self._machine_id = machine_id
        self._group_id = container_group_id
        self._attempt_id = attempt_id
        self._lease_ok = lease_ok

    def lease_ok(self) -> bool:
        return self._lease_ok()

    async def commit(
        self, generation: int, files: list[CheckpointFile], upload_seconds: float | None = None
    ) -> CheckpointCommitted:
        commit = CheckpointCommit(
            machine_id=self._machine_id,
            container_group_id=self._group_id,
            attempt_id=self._attempt_id,
            generation=generation,
            files=files,
            upload_seconds=None if upload_seconds is None else round(upload_seconds, 3),
        )
        return await self._client.commit_checkpoint(self._job_id, commit)

    async def generations(self) -> list[CheckpointOut]:
        return await self._client.list_checkpoints(self._job_id)

    async def manifest(self, generation: int) -> CheckpointManifestOut:
        return await self._client.get_checkpoint(self._job_id, generation)

    async def other_job(self, job_id: str) -> JobOut:
        return await self._client.get_job(job_id)

    async def other_generations(self, job_id: str) -> list[CheckpointOut]:
        return await self._client.list_checkpoints(job_id)

    async def other_manifest(self, job_id: str, generation: int) -> CheckpointManifestOut:
        return await self._client.get_checkpoint(job_id, generation)


@dataclass
class CheckpointStats:
    generations: int = 0
    """Generations this attempt committed."""
    uploads: int = 0
    uploaded_bytes: int = 0
    """Bytes of the files uploaded (before gzip)."""
    reused: int = 0
    """Files committed without an upload: unchanged since a generation before."""
    abandoned: int = 0
    """Generation attempts given up because a file changed while it was uploaded."""


@dataclass
class _Snapshot:
    """The folders at one moment, with the files to upload held open."""

    files: dict[FileId, FileStamp]
    plan: GenerationPlan
    handles: dict[FileId, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in self.handles.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.handles.clear()


def explicit_only(job_environment: Mapping[str, str]) -> bool:
    """True when the job asks for generations made by its commit file only."""
    return job_environment.get(MODE_VARIABLE, "").strip().lower() == "explicit"


class CheckpointEngine:
    """Commits the checkpoint folders of one attempt as generations (module docstring).

    With `explicit_only` (the job's `KELPIE_CHECKPOINT_MODE=explicit`), and in any case once
    the job has used the commit file, only the commit file makes generations (and a final
    one after a clean exit): a job that marks its sets gets exactly the sets it marked.
    """

    def __init__(
        self,
        storage: CheckpointStorage,
        committer: Committer,
        targets: Sequence[CheckpointTarget],
        *,
        job_id: str,
        user_id: str,
        attempt_id: int,
        compress: bool,
        settle_s: float,
        sweep_interval_s: float,
        upload_concurrency: int,
        explicit_only: bool = False,
    ) -> None:
        self._storage = storage
        self._committer = committer
        self._targets = tuple(targets)
        self._by_index = {t.index: t for t in self._targets}
        self._job_id = job_id
        self._user_id = user_id
        self._attempt_id = attempt_id
        self._compress = compress
        self._settle = settle_s
        self._sweep_interval = sweep_interval_s
        self._upload_slots = asyncio.Semaphore(upload_concurrency)
        self._marker_dir = Path(tempfile.mkdtemp(prefix="kelpie-checkpoint-"))
        for target in self._targets:
            if self._marker_dir.is_relative_to(target.local_dir):
                raise ValueError(f"the temporary folder {self._marker_dir} is a checkpoint folder")
        self._watch = FolderWatch([t.local_dir for t in self._targets], self._marker_dir)
        self._real_dirs: dict[int, str] = {}
        self._restored: RestoreReport | None = None
        self._committed: dict[FileId, KnownFile] = {}
        self._uploaded: dict[FileId, KnownFile] = {}
        """Objects this attempt uploaded that no committed generation holds (yet)."""
        self._newest = 0
        self._unanswered: set[int] = set()
        self._to_delete: set[tuple[str, str]] = set()
        self._closing = False
        """Objects no kept generation holds any more, not deleted yet: `close` tries again."""
        """Generations whose commit was sent without a definite answer."""
        self._previous: Scan | None = None
        self._events_seen = 0
        self._recheck_at: float | None = None
        self._blocked_delay: float | None = None
        self._explicit_only = explicit_only
        self._watching: asyncio.Task[None] | None = None
        self._generation: asyncio.Task[bool] | None = None
        self._cleaning: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self.died = asyncio.Event()
        self.died_reason: str | None = None
        self.stats = CheckpointStats()
        self.last_committed_at: float | None = None
        """When (monotonic) this attempt last committed a generation: the job's work before
        then is safe."""

    # -- the caller's interface ----------------------------------------------------------

    @property
    def commit_file(self) -> Path:
        """The file a job creates to say "my checkpoint folders are complete now"."""
        return self._marker_dir / "commit"

    @property
    def committed_generation(self) -> int | None:
        """The newest generation committed (by any attempt), None before the first."""
        return self._newest or None

    def environment(self) -> dict[str, str]:
        """What the job's environment gets from the engine."""
        return {COMMIT_FILE_VARIABLE: str(self.commit_file)}

    async def restore(self) -> RestoreReport:
        """Fill the (empty) checkpoint folders before the job starts: the newest committed
        generation that reads back whole; for a job without any, an earlier job's under the
        same prefixes, or the plain objects. `warnings` of the report belong in the
        attempt's record."""
        report = await restore(
            self._targets,
            self._committer,
            self._storage,
            job_id=self._job_id,
            user_id=self._user_id,
        )
        self._restored = report
        # Only objects in this job's own area are ever named by its generations: files
        # restored from an earlier job (or from objects of an older layout) are uploaded
        # again with the first generation, so no other job's objects are relied on.
        self._committed = {
            file_id: known
            for file_id, known in report.known.items()
            if self._in_own_area(file_id[0], known.stored.key)
        }
        self._newest = report.newest or 0
        return report

    async def start(self) -> None:
        """Watch the folders (after `restore`), and clean the bucket's leftovers meanwhile."""
        if self._restored is None:
            raise RuntimeError("restore() must run before start()")
        if not self._targets:
            return
        for target in self._targets:
            await asyncio.to_thread(target.local_dir.mkdir, parents=True, exist_ok=True)
            self._real_dirs[target.index] = str(await asyncio.to_thread(target.local_dir.resolve))
        self._previous = Scan(await asyncio.to_thread(scan_folders, self._targets), 0)
        try:
            self._watch.start()
        except OSError as exc:  # e.g. ENOSPC: the node's inotify watch limit
            logger.warning("cannot watch the checkpoint folders (%s); relying on sweeps", exc)
        self._watching = self._supervised(self._watch_forever(), "checkpoint-watch")
        self._cleaning = self._supervised(self._clean_bucket(), "checkpoint-bucket-clean")

    async def finish(self, exit_kind: ExitKind, deadline: float) -> str | None:
        """After the job's process exited: commit what is worth keeping by `deadline`
        (monotonic). Returns None when done, else why not (for the attempt's record).

        A job that ended on its own terms (exit 0, or an exit after the worker's SIGTERM)
        has its folders committed as they are. Otherwise only a generation already taken
        at a quiet moment is finished: a file cut mid-write is never committed.
        """
        if not self._targets:
            return None
        await self._stop_watching()
        if not await self._wait_generation(deadline):
            return "the last checkpoint generation was not committed before the deadline"
        if self.lost.is_set() or self.died.is_set():
            return self.lost_reason or self.died_reason
        if not exit_kind.folders_are_final:
            return None
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await self._final_generation(deadline)
        except TimeoutError:
            return "the final checkpoint generation was not committed before the deadline"

    async def close(self) -> None:
        """Stop everything (uploads in flight get a few seconds to end, then are aborted),
        delete this attempt's objects no committed generation holds, and remove the commit
        marker's folder."""
        await self._stop_watching()
        self._closing = True  # nothing is committed from here on
        # Uploads in flight run to their end first: a PUT aborted on this side can still
        # land on the server after the DELETE meant for it, and stay behind for good.
        await self._wait_generation(time.monotonic() + CLOSE_UPLOAD_WAIT_S)
        await cancel_and_wait([self._generation, self._cleaning])
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                await self._delete_uncommitted()
                await self._delete(list(self._to_delete))  # expired, if cut short before
        except TimeoutError:
            logger.warning("checkpoints: leftovers not deleted in time; the next holder will")
        await asyncio.to_thread(shutil.rmtree, self._marker_dir, ignore_errors=True)

    # -- watching --------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        next_sweep = time.monotonic() + self._sweep_interval
        sweep_due = False
        while not self.lost.is_set():
            self._watch.wake.clear()  # before reading the state: a later event wakes the wait
            explicit = await asyncio.to_thread(self.commit_file.exists)
            self._explicit_only = self._explicit_only or explicit
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep, sweep_due = now + self._sweep_interval, True
            events_pending = self._watch.events != self._events_seen
            due = next_look(
                now,
                settle=self._settle,
                explicit=explicit,
                explicit_only=self._explicit_only,
                events_pending=events_pending,
                last_change=self._watch.last_change,
                sweep_due=sweep_due,
                recheck_at=self._recheck_at,
            )
            if due > now:
                # While changes settle, more changes only move the deadline: no wake-up needed.
                self._watch.wake_on_change = not events_pending and not self._explicit_only
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(due, next_sweep) - now):
                        await self._watch.wake.wait()
                continue
            sweep_due = False
            await self._look(explicit)

    async def _look(self, explicit: bool) -> None:
        self._recheck_at = None
        self._events_seen = self._watch.events
        scan = Scan(await asyncio.to_thread(scan_folders, self._targets), self._events_seen)
        verdict = judge(scan, previous=self._previous, committed=self._committed, explicit=explicit)
        self._previous = scan
        if verdict is Look.COMMITTED:
            self._blocked_delay = None
            if explicit:
                await asyncio.to_thread(self._take_marker)
            return
        if verdict is Look.UNEXPLAINED:
            self._recheck_at = time.monotonic() + self._settle
            return
        held = await asyncio.to_thread(self._held_for_writing)
        if held:
            self._blocked_delay = next_blocked_poll(self._blocked_delay)
            self._recheck_at = time.monotonic() + self._blocked_delay
            logger.debug("checkpoints: %d file(s) open for writing, e.g. %s", len(held), min(held))
            return
        self._blocked_delay = None
        snapshot = await asyncio.to_thread(self._pin, scan)
        if snapshot is None:
            self._recheck_at = time.monotonic() + self._settle
            return
        if explicit:
            await asyncio.to_thread(self._take_marker)
        self._generation = spawn(self._make_generation(snapshot, None), "checkpoint-generation")
        if not await asyncio.shield(self._generation):
            # not committed (a file changed while uploaded, S3 failing): try again later
            self._recheck_at = time.monotonic() + max(self._settle, 1.0)

    def _held_for_writing(self) -> set[FileId]:
        held: set[FileId] = set()
        for path in open_for_writing(self._real_dirs.values()):
            for index, real in self._real_dirs.items():
                if not path.startswith(real + "/"):
                    continue
                target = self._by_index[index]
                relative = target.relative_path(target.local_dir / path[len(real) + 1 :])
                if relative is not None:
                    held.add((index, relative))
        return held

    def _pin(self, scan: Scan) -> _Snapshot | None:
        """Open the files to upload and check the moment held still (runs in a thread)."""
        plan = plan_generation(scan.files, self._uploaded, self._committed)
        snapshot = _Snapshot(dict(scan.files), plan)
        budget = _descriptor_budget()
        try:
            for file_id in list(plan.upload)[:budget]:
                path = self._path_of(file_id)
                snapshot.handles[file_id] = os.open(
                    path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
                )
            opened = {
                file_id: FileStamp.of(os.fstat(fd)) for file_id, fd in snapshot.handles.items()
            }
            rescan = Scan(scan_folders(self._targets), self._watch.events)
        except OSError as exc:  # deleted or replaced meanwhile: the moment has passed
            logger.debug("checkpoints: snapshot given up: %s", exc)
            snapshot.close()
            return None
        if not snapshot_is_consistent(scan, opened, rescan):
            snapshot.close()
            return None
        return snapshot

    def _take_marker(self) -> None:
        """Remove the commit marker: renamed away first, so a job that creates it again at
        once makes a new request rather than having it removed too."""
        taken = self._marker_dir / ".taken"
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.commit_file, taken)
            taken.unlink()

    def _in_own_area(self, index: int, key: str) -> bool:
        target = self._by_index.get(index)
        return target is not None and key.startswith(job_area(target, self._job_id))

    def _path_of(self, file_id: FileId) -> Path:
        index, relative = file_id
        return self._by_index[index].local_dir / relative

    # -- generations -----------------------------------------------------------------------

    async def _make_generation(self, snapshot: _Snapshot, deadline: float | None) -> bool:
        """Upload and commit `snapshot`; True once it is committed."""
        began = time.monotonic()
        number = self._newest + 1
        try:
            uploaded = await self._upload(snapshot, number)
        except FileChangedError as exc:
            self.stats.abandoned += 1
            logger.info("checkpoint generation %d given up, a file changed: %s", number, exc)
            return False
        except StorageError as exc:
            logger.warning("checkpoint generation %d not uploaded: %s", number, exc)
            return False
        finally:
            snapshot.close()
        stored = {**snapshot.plan.reuse, **uploaded}
        committed = await self._commit(number, snapshot.files, stored, deadline, began)
        if committed:
            self.stats.reused += len(snapshot.plan.reuse)
        return committed

    async def _upload(self, snapshot: _Snapshot, number: int) -> dict[FileId, StoredFile]:
        uploaded: dict[FileId, StoredFile] = {}

        async def one(file_id: FileId, stamp: FileStamp) -> None:
            target = self._by_index[file_id[0]]
            key = object_key(
                target,
                self._job_id,
                self._attempt_id,
                number,
                file_id[1],
                compress=self._compress,
            )
            source: Path | int = snapshot.handles.get(file_id, self._path_of(file_id))
            try:
                async with self._upload_slots:
                    result = await self._storage.upload_verified(
                        source, target.bucket, key, compress=self._compress, expect=stamp
                    )
            except BaseException:
                # Cut short (a changed file, an outage, the worker stopping): the object may
                # still have landed, so it is deleted with the other leftovers.
                self._to_delete.add((target.bucket, key))
                raise
            self._to_delete.discard((target.bucket, key))  # a retry of the same generation
            stored = StoredFile(target.bucket, key, result.size, result.sha256)
            self._uploaded[file_id] = KnownFile(stamp, stored)
            uploaded[file_id] = stored
            self.stats.uploads += 1
            self.stats.uploaded_bytes += result.size

        await _all_or_nothing(one(f, s) for f, s in snapshot.plan.upload.items())
        return uploaded

    async def _commit(
        self,
        number: int,
        stamps: Mapping[FileId, FileStamp],
        stored: Mapping[FileId, StoredFile],
        deadline: float | None,
        began: float,
    ) -> bool:
        files = manifest(stored)
        if len(files) > MAX_CHECKPOINT_FILES:
            self._die(
                f"the checkpoint folders hold {len(files)} files; a generation may have at "
                f"most {MAX_CHECKPOINT_FILES}"
            )
            return False
        while True:
            if (
                self.lost.is_set()
                or self._closing
                or (deadline is not None and time.monotonic() >= deadline)
            ):
                return False
            if not self._committer.lease_ok():
                await asyncio.sleep(LEASE_WAIT_S)
                continue
            self._unanswered.add(number)
            try:
                answer = await self._committer.commit(
                    number, files, upload_seconds=time.monotonic() - began
                )
            except Conflict as exc:
                self._lose(f"checkpoint generation {number} refused: {exc}")
                return False
            except ApiUnavailable as exc:
                logger.warning("checkpoint generation %d: API unreachable (%s)", number, exc)
                await asyncio.sleep(random.uniform(*COMMIT_RETRY_S))
                continue
            except KelpieError as exc:
                self._die(f"the API refused checkpoint generation {number}: {exc}")
                return False
            break
        self._unanswered.discard(number)
        self._newest = number
        self.last_committed_at = time.monotonic()
        self._committed = {fid: KnownFile(stamps[fid], s) for fid, s in stored.items()}
        committed_keys = {(s.bucket, s.key) for s in stored.values()}
        leftovers = [
            (k.stored.bucket, k.stored.key)
            for k in self._uploaded.values()
            if (k.stored.bucket, k.stored.key) not in committed_keys
        ]
        self._uploaded.clear()
        self.stats.generations += 1
        logger.info(
            "committed checkpoint generation %d: %d files, %d bytes",
            number,
            len(files),
            sum(f.size for f in files),
        )
        self._to_delete.update([*leftovers, *((o.bucket, o.key) for o in answer.expired)])
        self._to_delete.difference_update(committed_keys)
        await self._delete(list(self._to_delete))
        return True

    async def _final_generation(self, deadline: float) -> str | None:
        """The folders as the job left them, committed (nothing writes there any more)."""
        while True:
            scan = Scan(await asyncio.to_thread(scan_folders, self._targets), self._watch.events)
            if same_as(scan.files, self._committed):
                return None
            snapshot = await asyncio.to_thread(self._pin, scan)
            if snapshot is not None and await self._make_generation(snapshot, deadline):
                return None
            if self.lost.is_set() or self.died.is_set():
                return self.lost_reason or self.died_reason
            if time.monotonic() >= deadline:
                return "the final checkpoint generation was not committed before the deadline"
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    async def _wait_generation(self, deadline: float) -> bool:
        """Let a generation in flight finish by `deadline`; False if it had to be stopped."""
        task = self._generation
        if task is None or task.done():
            return True
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
        if done:
            return True
        await cancel_and_wait([task])
        return False

    # -- the bucket ------------------------------------------------------------------------

    async def _clean_bucket(self) -> None:
        """Delete what earlier attempts of this job left in its own area of each prefix
        (`<prefix>.kelpie/<job id>/`): every object no kept generation holds and no later
        attempt (a newer holder) uploaded. Other jobs' areas are never listed or touched."""
        kept: set[tuple[str, str]] = set()
        for listed in await api_call(self._committer.generations):
            if listed.kept:
                try:
                    found = await api_call(
                        functools.partial(self._committer.manifest, listed.generation)
                    )
                except KelpieError as exc:
                    logger.warning("checkpoints: bucket not cleaned (%s)", exc)
                    return
                kept.update((f.bucket, f.key) for f in found.manifest)
        for target in self._targets:
            area = job_area(target, self._job_id)
            try:
                objects = await self._storage.list_objects(target.bucket, area)
            except StorageError as exc:
                logger.warning("checkpoints: bucket not cleaned (%s)", exc)
                continue
            stale = [
                obj.key
                for obj in objects
                if obj.key.startswith(area)
                and (target.bucket, obj.key) not in kept
                and (attempt_of(target, self._job_id, obj.key) or 0) < self._attempt_id
            ]
            if stale:
                logger.info(
                    "checkpoints: deleting %d leftover objects under s3://%s/%s",
                    len(stale),
                    target.bucket,
                    area,
                )
                await self._delete([(target.bucket, key) for key in stale])

    async def _delete_uncommitted(self) -> None:
        """Delete this attempt's uploads that no committed generation holds. A commit sent
        without an answer may have succeeded: then the API is asked first, and when it
        cannot be asked the objects stay for the next holder's clean-up."""
        if not self._uploaded:
            return
        keep: set[tuple[str, str]] = set()
        if self._unanswered:
            try:
                listed = await self._committer.generations()
                for entry in listed:
                    if (
                        entry.generation in self._unanswered
                        and entry.attempt_id == self._attempt_id
                    ):
                        found = await self._committer.manifest(entry.generation)
                        keep.update((f.bucket, f.key) for f in found.manifest)
            except KelpieError as exc:
                logger.warning("checkpoints: cannot ask the API (%s); leftovers stay", exc)
                return
        doomed = [
            (k.stored.bucket, k.stored.key)
            for k in self._uploaded.values()
            if (k.stored.bucket, k.stored.key) not in keep
        ]
        self._uploaded.clear()
        await self._delete(doomed)

    async def _delete(self, objects: Iterable[tuple[str, str]]) -> None:
        """Best effort: a failure is logged, and the next holder's clean-up retries."""
        by_bucket: dict[str, list[str]] = {}
        for bucket, key in objects:
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            try:
                await self._storage.delete_objects(bucket, keys)
            except StorageError as exc:
                logger.warning("checkpoints: could not delete %d objects: %s", len(keys), exc)
                continue
            self._to_delete.difference_update((bucket, key) for key in keys)

    # -- supervision -----------------------------------------------------------------------

    def _supervised(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = spawn(work, name)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._die(f"checkpoint task {task.get_name()} crashed: {task.exception()!r}")

    def _lose(self, reason: str) -> None:
        logger.warning("checkpoints: %s; this attempt no longer holds the job", reason)
        self.lost_reason = reason
        self.lost.set()

    def _die(self, reason: str) -> None:
        logger.error("checkpoints: %s", reason)
        if self.died_reason is None:
            self.died_reason = reason
        self.died.set()

    async def _stop_watching(self) -> None:
        await asyncio.to_thread(self._watch.stop)
        await cancel_and_wait([self._watching])


def _descriptor_budget() -> int:
    """Files a snapshot may hold open; the rest are read by path (and verified just as well)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    return max(0, soft - in_use - FD_RESERVE)


async def _all_or_nothing(jobs: Iterable[Coroutine[Any, Any, None]]) -> None:
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        await cancel_and_wait(tasks)
        raise
