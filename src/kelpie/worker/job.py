"""One job on this worker, from claim to report: download, run, sync, report, clean up.

The phases of an attempt and what ends it:

    claimed ─▶ plan ─▶ download, restore ─▶ run ─▶ final generation, outputs ─▶ completed
                 │          │                   ├─ exit ≠ 0 / signal ─▶ finish generation ─▶ failed
                 │          │                   ├─ lease lost ─▶ stop the job (no report)
                 │          │                   └─ worker stopping ─▶ SIGTERM, final generation,
                 │          │                                         report interrupted
                 │          └── storage unreachable ─▶ report interrupted (not the job's fault)
                 └── bad input, missing bucket, command not found ─▶ report failed

While the job runs its checkpoint folders are committed as generations
(`kelpie.worker.checkpoints`); its output folders are uploaded file by file (`LiveSync`).

Every call about the job carries the claim's attempt id: a call the API refuses (409) means
another attempt holds the job now, and this one drops it without another word.

Heartbeats run from the claim to the report, so a long download or a long final upload
keeps the lease. Whatever happens, the job's process is gone and its folders are empty
when `JobAttempt.run()` returns.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kelpie.client import ApiUnavailable, AsyncKelpieClient, KelpieError
from kelpie.schemas import JobEventIn, JobOut, WorkerEventKind
from kelpie.storage import StorageError, TransferStats
from kelpie.worker.capture import OutputCapture
from kelpie.worker.checkpoints import (
    ApiCommitter,
    CheckpointEngine,
    CheckpointStorage,
    ExitKind,
    RestoreReport,
    explicit_only,
)
from kelpie.worker.config import WorkerSettings
from kelpie.worker.environment import job_environment
from kelpie.worker.heartbeat import Heartbeat
from kelpie.worker.logs import JobLogs, logs_location, stderr_tail
from kelpie.worker.node import Node
from kelpie.worker.plan import Download, InvalidJob, TransferPlan, UploadTarget, plan_transfers
from kelpie.worker.progress import ProgressFile
from kelpie.worker.runner import ExitStatus, JobProcess, JobStartError
from kelpie.worker.sync import LiveSync, Uploader
from kelpie.worker.tasks import cancel_and_wait, spawn

logger = logging.getLogger("kelpie.worker")

T = TypeVar("T")

REPORT_BACKOFF_MAX_S = 10.0
MAX_ERROR_CHARS = 4000
EVENT_FLUSH_S = 2.0
OUTPUT_END_S = 2.0
"""After the job's processes are gone, how long its output may take to reach its end (longer
only when a process escaped the job's tree and still holds it)."""
STOPPING_LOG_FLUSH_S = 3.0
"""Once the worker is stopping, the most the last log pieces may hold the hand-back."""
STORAGE_DOWN_LOG_FLUSH_S = 1.0
"""The same when the job is handed back because its bucket cannot be reached."""


class Storage(Uploader, CheckpointStorage, Protocol):
    """The part of `kelpie.storage.ObjectStorage` the worker uses."""

    async def put_object(self, bucket: str, key: str, data: bytes) -> None: ...

    async def download_prefix(
        self,
        bucket: str,
        prefix: str,
        local_dir: Path,
        *,
        pattern: Any = None,
        decompress: bool = True,
    ) -> TransferStats: ...

    async def upload_dir(
        self,
        local_dir: Path,
        bucket: str,
        prefix: str,
        *,
        pattern: Any = None,
        compress: bool = False,
    ) -> TransferStats: ...


class Outcome(enum.Enum):
    """How an attempt ended, as the poll loop needs to know it."""

    COMPLETED = "completed"
    FAILED = "failed"
    """The job failed here (exit ≠ 0, signal, transfers): counts toward MAX_JOB_FAILURES."""
    REJECTED = "rejected"
    """Reported failed for a reason no other node would fix (bad input, command not found)."""
    DROPPED = "dropped"
    INTERRUPTED = "interrupted"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    """Handed back because the bucket could not be reached: the worker waits a while."""


class _Disturbed(Exception):
    """The phase was cut short: the worker is stopping, or the lease is lost."""


class _StorageUnavailable(Exception):
    """The bucket could not be reached for as long as retries went on."""


class _Failure(Exception):
    def __init__(self, reason: str, *, exit_code: int | None = None, local: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code
        self.local = local


class JobAttempt:
    """This worker holding one job once."""

    def __init__(
        self,
        job: JobOut,
        settings: WorkerSettings,
        client: AsyncKelpieClient,
        storage: Storage | None,
        node: Node,
        stopping: asyncio.Event,
    ) -> None:
        self.job = job
        self._settings = settings
        self._client = client
        self._storage = storage
        self._node = node
        self._stopping = stopping
        self._progress = ProgressFile(self._warn)
        self._heartbeat = Heartbeat(
            client,
            job.id,
            settings.machine_id,
            settings.container_group_id,
            job.attempt_id,
            float(job.heartbeat_interval),
            self._beat,
            self._progress.read,
        )
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[bool] | None = None
        self._process: JobProcess | None = None
        self._logs: JobLogs | None = None
        self._capture: OutputCapture | None = None
        self._logs_done = False
        self._stderr_tail = ""
        self._live: LiveSync | None = None
        self._checkpoints: CheckpointEngine | None = None
        self._terminated = False
        """The worker sent the job SIGTERM (its node is going away): an exit that follows is
        the job's own hand-back, and its checkpoint folders are final."""
        self._dirs: tuple[Path, ...] = settings.job_dirs
        self.warnings: list[str] = []
        """What a user should know about this attempt that did not stop it."""
        self._events: set[asyncio.Task[None]] = set()
        self._began = time.monotonic()

    async def run(self) -> Outcome:
        logger.info("job %s: claimed (%s)", self.job.id, self.job.command)
        self._began = time.monotonic()
        self._node.working(0.0)
        self._heartbeat_task = spawn(self._heartbeat.run(), f"heartbeat-{self.job.id}")
        self._stop_task = spawn(self._stopping.wait(), "worker-stopping")
        try:
            return await self._attempt()
        except Exception as exc:
            # A bug of ours: say so in the job's record rather than leave its lease to expire.
            logger.exception("job %s: the worker failed while carrying it", self.job.id)
            await self._kill_process()
            return await self._report_failed(f"kelpie worker error: {exc!r}", None, local=False)
        finally:
            await self._clean_up()

    # -- phases ------------------------------------------------------------------------------

    async def _attempt(self) -> Outcome:
        try:
            plan = plan_transfers(self.job, self._settings)
        except InvalidJob as exc:
            return await self._report_failed(str(exc), None, local=False)
        self._dirs = plan.local_dirs
        try:
            await self._guarded(asyncio.to_thread(empty_dirs, plan.local_dirs, create=True))
            await self._guarded(self._download(plan))
            self._checkpoints = self._checkpoint_engine(plan)
            if self._checkpoints is not None:
                await self._guarded(self._restore(self._checkpoints))
                await self._checkpoints.start()
            self._live = self._live_sync(plan)
            await self._live.start()
            self._process = await self._start_process(plan)
            status = await self._guarded(self._wait_within_max_duration(), running=True)
        except _Disturbed:
            return await self._disturbed()
        except _StorageUnavailable as exc:
            return await self._hand_back_for_storage(str(exc))
        except _Failure as exc:
            return await self._fail_after_flush(exc.reason, exc.exit_code, local=exc.local)
        if not status.succeeded:
            return await self._fail_after_flush(status.describe(), status.exit_code, local=True)
        return await self._finish(plan)

    def _checkpoint_engine(self, plan: TransferPlan) -> CheckpointEngine | None:
        if not plan.checkpoints:
            return None
        if self.job.attempt_id is None:
            raise _Failure(
                "the API answered the claim without an attempt id; checkpoints cannot be"
                " committed (is the API older than this worker?)",
                local=False,
            )
        committer = ApiCommitter(
            self._client,
            self.job.id,
            machine_id=self._settings.machine_id,
            container_group_id=self._settings.container_group_id,
            attempt_id=self.job.attempt_id,
            lease_ok=self._heartbeat.lease_ok,
        )
        return CheckpointEngine(
            self._require_storage(),
            committer,
            plan.checkpoints,
            job_id=self.job.id,
            user_id=self.job.user_id,
            attempt_id=self.job.attempt_id,
            compress=plan.compress,
            settle_s=self._settings.checkpoint_settle_s,
            sweep_interval_s=self._settings.sweep_interval_s,
            upload_concurrency=self._settings.upload_concurrency,
            explicit_only=explicit_only(self.job.environment),
        )

    async def _restore(self, engine: CheckpointEngine) -> None:
        try:
            report = await engine.restore()
        except StorageError as exc:
            if exc.transient:
                raise _StorageUnavailable(f"checkpoint restore failed: {exc}") from exc
            raise _Failure(f"checkpoint restore failed: {exc}", local=False) from exc
        self._record_restore(report)

    def _record_restore(self, report: RestoreReport) -> None:
        if report.generation is not None and report.source_job is not None:
            self._event(
                "checkpoint_restored",
                f"restored checkpoint generation {report.generation} of job"
                f" {report.source_job} ({report.files} files, {report.bytes} bytes): this job"
                " had none of its own",
                {
                    "job": report.source_job,
                    "generation": report.generation,
                    "files": report.files,
                    "bytes": report.bytes,
                },
            )
        elif report.generation is not None:
            self._event(
                "checkpoint_restored",
                f"restored checkpoint generation {report.generation}"
                f" ({report.files} files, {report.bytes} bytes)",
                {"generation": report.generation, "files": report.files, "bytes": report.bytes},
            )
        elif report.plain and report.files:
            self._event(
                "checkpoint_restored",
                f"restored {report.files} plain checkpoint files ({report.bytes} bytes)",
                {"files": report.files, "bytes": report.bytes},
            )
        for fallback in report.fallbacks:
            data: dict[str, str | int] = {"generation": fallback.generation}
            if fallback.job is not None:
                data["job"] = fallback.job
            self._event("checkpoint_fallback", fallback.describe(), data)
        for line in report.warnings[len(report.fallbacks) :]:
            self._warn(line)

    async def _download(self, plan: TransferPlan) -> None:
        if not plan.downloads:
            return
        storage = self._require_storage()
        started = time.monotonic()
        results = await asyncio.gather(
            *(self._download_one(storage, item) for item in plan.downloads),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        files = sum(r.files for r in results if isinstance(r, TransferStats))
        size = sum(r.bytes for r in results if isinstance(r, TransferStats))
        seconds = time.monotonic() - started
        logger.info(
            "job %s: downloaded %d files (%d bytes) in %.2f s", self.job.id, files, size, seconds
        )
        self._event(
            "inputs_downloaded",
            f"downloaded {files} files ({size} bytes) in {seconds:.1f} s",
            {"files": files, "bytes": size, "seconds": round(seconds, 3)},
        )

    async def _download_one(self, storage: Storage, item: Download) -> TransferStats:
        try:
            stats = await storage.download_prefix(
                item.bucket, item.prefix, item.local_dir, pattern=item.pattern, decompress=True
            )
        except StorageError as exc:
            if exc.transient:
                raise _StorageUnavailable(f"download of {item.source} failed: {exc}") from exc
            # A missing bucket or refused credentials are the submitter's, not this node's.
            raise _Failure(f"download of {item.source} failed: {exc}", local=False) from exc
        if item.warn_if_empty and stats.files == 0:
            self._warn(
                f"input prefix {item.source} holds no objects: the job runs without inputs "
                "(leave input_bucket/input_prefix out for a job that has none)"
            )
        return stats

    async def _start_process(self, plan: TransferPlan) -> JobProcess:
        env = job_environment(
            os.environ, dirs=plan.dirs, job_id=self.job.id, job_env=self.job.environment
        )
        if self._checkpoints is not None:
            env.update(self._checkpoints.environment())
        env.update(self._progress.environment())
        logs = self._logs = JobLogs(
            self._storage,
            logs_location(self.job),
            self.job.attempt_id,
            piece_s=self._settings.log_piece_s,
        )
        capture = OutputCapture(logs.write)
        logs.start()
        try:
            process = await JobProcess.start(
                self.job.command,
                self.job.arguments,
                env,
                cwd=plan.working_dir,
                output=capture.child_fds,
            )
        except JobStartError as exc:
            capture.close()
            raise _Failure(exc.reason, exit_code=exc.exit_code, local=False) from exc
        except BaseException:
            capture.close()
            raise
        capture.start()
        self._capture = capture
        data = {"logs": logs.where} if logs.where else None
        self._event("started", f"started {self.job.command} (pid {process.pid})", data)
        return process

    async def _finish_logs(self, at_most_s: float | None = None) -> str:
        """Once the job's processes are gone: wait for its output to end, upload the last
        pieces (within KELPIE_WORKER_LOG_FLUSH_S, or `at_most_s`), and return the end of
        its stderr."""
        if self._logs is None or self._logs_done:
            return self._stderr_tail
        self._logs_done = True
        capture = self._capture
        if capture is not None and not await asyncio.to_thread(capture.wait, OUTPUT_END_S):
            logger.warning(
                "job %s: a process outside the job's tree still holds its output",
                self.job.id,
            )
        flush_s = self._settings.log_flush_s
        if self._stopping.is_set():
            flush_s = min(flush_s, STOPPING_LOG_FLUSH_S)
        if at_most_s is not None:
            flush_s = min(flush_s, at_most_s)
        await self._logs.finish(flush_s)
        if self._logs.warning is not None:
            self._warn(self._logs.warning)
        self._stderr_tail = stderr_tail(self._logs.spool.tail("stderr"))
        return self._stderr_tail

    async def _wait_within_max_duration(self) -> ExitStatus:
        """The command's exit; a failure (`timed out`) once it has run `max_duration`."""
        assert self._process is not None
        limit = self.job.max_duration
        if limit is None:
            return await self._process.wait()
        try:
            # the wait is shielded: timing out leaves the process to _fail_after_flush
            return await asyncio.wait_for(self._process.wait(), limit)
        except TimeoutError:
            logger.warning("job %s: ran longer than max_duration (%d s)", self.job.id, limit)
            raise _Failure(timed_out_reason(limit), local=False) from None

    async def _finish(self, plan: TransferPlan) -> Outcome:
        """Exit 0: every upload done, then `completed`."""
        self._node.finishing()
        started = time.monotonic()
        deadline = started + self._settings.upload_retry_s
        try:
            await self._guarded(self._final_uploads(plan, deadline))
        except _Disturbed:
            return await self._disturbed()
        except _StorageUnavailable as exc:
            return await self._hand_back_for_storage(str(exc))
        except _Failure as exc:
            return await self._report_failed(exc.reason, 0, local=True)
        seconds = time.monotonic() - started
        # Sent before the report: an attempt that has ended may post nothing more.
        await self._event_sent(
            "outputs_uploaded",
            f"final uploads took {seconds:.1f} s",
            {"seconds": round(seconds, 3)},
        )
        logger.info("job %s: completed", self.job.id)
        if await self._report("completed", self._client.report_completed):
            return Outcome.COMPLETED
        return Outcome.DROPPED

    async def _final_uploads(self, plan: TransferPlan, deadline: float) -> None:
        if self._checkpoints is not None:
            why_not = await self._checkpoints.finish(ExitKind.SUCCEEDED, deadline)
            if self._checkpoints.lost.is_set():
                raise _Disturbed()
            if why_not is not None:
                self._warn(f"the final checkpoint was not committed: {why_not}")
        if self._live is not None:
            failures = await self._live.flush(deadline)
            if failures:
                raise _Failure(_upload_failure(failures))
        live_targets = set(plan.live_outputs)
        for target in plan.after:
            if target not in live_targets:  # the live sync already carried those
                await self._upload_dir_until(target, plan.compress, deadline)

    async def _upload_dir_until(
        self, target: UploadTarget, compress: bool, deadline: float
    ) -> None:
        storage = self._require_storage()
        attempt = 0
        while True:
            try:
                stats = await storage.upload_dir(
                    target.local_dir,
                    target.bucket,
                    target.prefix,
                    pattern=target.pattern,
                    compress=compress,
                )
            except (StorageError, OSError) as exc:
                attempt += 1
                delay = min(REPORT_BACKOFF_MAX_S, 0.5 * 2**attempt)
                if time.monotonic() + delay > deadline:
                    what = (
                        f"upload of {target.local_dir} to s3://{target.bucket}/{target.prefix} "
                        f"failed: {exc}"
                    )
                    if isinstance(exc, StorageError) and exc.transient:
                        raise _StorageUnavailable(what) from exc
                    raise _Failure(what) from exc
                logger.warning(
                    "upload of %s failed, retrying in %.1f s: %s", target.local_dir, delay, exc
                )
                await asyncio.sleep(delay)
                continue
            logger.info(
                "job %s: uploaded %d files from %s", self.job.id, stats.files, target.local_dir
            )
            return

    async def _fail_after_flush(
        self, reason: str, exit_code: int | None, *, local: bool
    ) -> Outcome:
        """A failed run still hands its checkpoints on: the next machine resumes from them."""
        status = await self._stop_process([signal.SIGTERM])
        await self._finish_checkpoints(status)
        if self._live is not None and not self._live.died.is_set():
            failures = await self._live.flush(time.monotonic() + self._settings.upload_grace_s)
            if failures:
                reason = f"{reason}; {_upload_failure(failures)}"
        return await self._report_failed(reason, exit_code, local=local)

    async def _hand_back_for_storage(self, reason: str) -> Outcome:
        """The bucket is unreachable: not the job's fault nor this node's. Hand the job back
        without counting a failure; the worker waits before it claims again."""
        logger.warning("job %s: handing the job back, storage unreachable: %s", self.job.id, reason)
        await self._stop_process([signal.SIGTERM])
        await self._finish_logs(at_most_s=STORAGE_DOWN_LOG_FLUSH_S)  # the bucket is down
        self._event("warning", f"handed back: storage unreachable ({reason[:500]})", None)
        if await self._report("interrupted", self._client.report_interrupted):
            return Outcome.STORAGE_UNAVAILABLE
        return Outcome.DROPPED

    async def _disturbed(self) -> Outcome:
        if self._lease_lost() is not None:
            return await self._drop()
        return await self._interrupt()

    def _lease_lost(self) -> str | None:
        if self._heartbeat.lost_reason is not None:
            return self._heartbeat.lost_reason
        if self._checkpoints is not None and self._checkpoints.lost.is_set():
            return self._checkpoints.lost_reason or "a checkpoint commit was refused"
        if self._heartbeat_finished():
            return "heartbeat task ended"
        return None

    async def _drop(self) -> Outcome:
        """The job is not ours any more: another machine may be running it now, so this
        attempt commits and uploads nothing more, and the process goes (SIGINT, SIGTERM,
        SIGKILL)."""
        reason = self._lease_lost() or "lease lost"
        logger.warning("job %s: dropping it, %s", self.job.id, reason)
        if self._live is not None:
            await self._live.close()
        if self._checkpoints is not None:
            await self._checkpoints.close()
        status = await self._stop_process([signal.SIGINT, signal.SIGTERM])
        if status is not None:
            logger.info("job %s: process %s", self.job.id, status.describe())
        return Outcome.DROPPED

    async def _interrupt(self) -> Outcome:
        """This worker is going away: SIGTERM the job, commit its checkpoints, hand it back."""
        logger.warning("job %s: worker stopping, handing the job back", self.job.id)
        self._terminated = True
        status = await self._stop_process([signal.SIGTERM])
        if status is not None:
            logger.info("job %s: process %s", self.job.id, status.describe())
        await self._finish_checkpoints(status)
        if self._checkpoints is not None and self._checkpoints.lost.is_set():
            return await self._drop()
        if self._live is not None and not self._live.died.is_set():
            failures = await self._live.flush(time.monotonic() + self._settings.upload_grace_s)
            if failures:
                logger.error(
                    "job %s: checkpoints not uploaded before hand-back: %s",
                    self.job.id,
                    _upload_failure(failures),
                )
        if await self._report("interrupted", self._client.report_interrupted):
            return Outcome.INTERRUPTED
        return Outcome.DROPPED

    async def _stop_process(self, signals: list[int]) -> ExitStatus | None:
        """Stop the job's process (if it runs) with `signals`, then SIGKILL after the grace."""
        if self._process is None:
            return None
        if self._process.status is not None:
            return self._process.status
        if signal.SIGTERM in signals:
            self._terminated = True
        return await self._process.stop(signals, self._settings.stop_grace_s)

    async def _finish_checkpoints(self, status: ExitStatus | None) -> None:
        """Commit what the job's end allows, within the upload grace (see ExitKind)."""
        engine = self._checkpoints
        if engine is None or engine.lost.is_set():
            return
        if status is None:
            kind = ExitKind.KILLED  # never started, or gone: only a quiet snapshot counts
        else:
            kind = ExitKind.of(
                status.exit_code, status.signal, terminated_by_worker=self._terminated
            )
        deadline = time.monotonic() + self._settings.upload_grace_s
        why_not = await engine.finish(kind, deadline)
        if why_not is not None and not engine.lost.is_set():
            self._warn(f"checkpoints at the end of the attempt: {why_not}")

    # -- reports -----------------------------------------------------------------------------

    async def _report_failed(self, reason: str, exit_code: int | None, *, local: bool) -> Outcome:
        # The job's stderr is in the container's output already: logged without its end.
        logger.error("job %s: failed (exit code %s): %s", self.job.id, exit_code, reason[:2000])
        tail = await self._finish_logs()
        if tail:
            head = reason[: max(200, MAX_ERROR_CHARS - len(tail) - 20)]
            reason = f"{head}; stderr ends:\n{tail}"
        reason = reason[:MAX_ERROR_CHARS]

        async def call(job_id: str, machine_id: str, group_id: str, attempt_id: int | None) -> None:
            await self._client.report_failed(
                job_id, machine_id, group_id, exit_code, reason, attempt_id
            )

        if not await self._report("failed", call):
            return Outcome.DROPPED
        return Outcome.FAILED if local else Outcome.REJECTED

    async def _report(
        self, what: str, call: Callable[[str, str, str, int | None], Awaitable[None]]
    ) -> bool:
        """Send a final report, retrying while the API is unreachable; True once it took
        effect, False if the API refused it (another attempt holds the job) or, when the
        worker is stopping, could not be reached in time.

        A finished job waits for the API as long as it takes; once the worker is stopping,
        only until the upload grace runs out (the node is going away: the lease will expire
        and another machine will resume from the checkpoints).
        """
        await self._finish_logs()  # the job's output is all in its bucket before it ends
        attempt = 0
        give_up_at: float | None = None
        while True:
            if self._stopping.is_set() and give_up_at is None:
                give_up_at = time.monotonic() + self._settings.upload_grace_s
            budget = None if give_up_at is None else max(1.0, give_up_at - time.monotonic())
            try:
                # Once stopping, a hanging API must not hold the node past its grace.
                async with asyncio.timeout(budget):
                    await call(
                        self.job.id,
                        self._settings.machine_id,
                        self._settings.container_group_id,
                        self.job.attempt_id,
                    )
                logger.info("job %s: reported %s", self.job.id, what)
                return True
            except (ApiUnavailable, TimeoutError) as exc:
                attempt += 1
                if give_up_at is not None and time.monotonic() >= give_up_at:
                    logger.error("job %s: could not report %s: %s", self.job.id, what, exc)
                    return False
                delay = random.uniform(0.5, min(REPORT_BACKOFF_MAX_S, 2.0**attempt))
                logger.warning(
                    "job %s: reporting %s: API unreachable, again in %.1f s (%s)",
                    self.job.id,
                    what,
                    delay,
                    exc,
                )
                await self._sleep_or_stop(delay)
            except KelpieError as exc:
                logger.warning(
                    "job %s: the API refused the %s report (%s): %s",
                    self.job.id,
                    what,
                    exc.status_code,
                    exc,
                )
                return False

    async def _sleep_or_stop(self, delay: float) -> None:
        if self._stopping.is_set():
            await asyncio.sleep(delay)
            return
        try:
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        except TimeoutError:
            pass

    # -- helpers -----------------------------------------------------------------------------

    async def _guarded(self, work: Coroutine[Any, Any, T], *, running: bool = False) -> T:
        """Run `work` unless the worker starts stopping or the lease is lost first. With
        `running` (the job's process runs), also unless the file sync or the checkpoints
        stop working, or a checkpoint commit is refused (another attempt holds the job)."""
        # Awaited right here, so a plain task: its errors are the caller's to handle.
        task: asyncio.Task[T] = asyncio.create_task(work, name=f"job-{self.job.id}-phase")
        watched: set[asyncio.Future[Any]] = {task}
        for guard in (self._heartbeat_task, self._stop_task):
            if guard is not None:
                watched.add(guard)
        events: list[asyncio.Event] = []
        if running and self._live is not None:
            events.append(self._live.died)
        if self._checkpoints is not None:
            events.append(self._checkpoints.lost)
            if running:
                events.append(self._checkpoints.died)
        waiters = [spawn(event.wait(), "job-guard") for event in events]
        watched.update(waiters)
        try:
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(waiters)
        if task.done():
            return task.result()
        await cancel_and_wait([task])
        if self._live is not None and self._live.died.is_set():
            raise _Failure("the worker's output sync stopped working; see the worker log")
        engine = self._checkpoints
        if engine is not None and engine.died.is_set() and not engine.lost.is_set():
            raise _Failure(f"checkpoints stopped working: {engine.died_reason}")
        if self._heartbeat_task is not None and self._heartbeat_task.done():
            exc = None if self._heartbeat_task.cancelled() else self._heartbeat_task.exception()
            if exc is not None:
                raise _Failure(f"the worker's heartbeat task crashed: {exc!r}", local=False)
        raise _Disturbed()

    def _warn(self, warning: str) -> None:
        logger.warning("job %s: %s", self.job.id, warning)
        self.warnings.append(warning)
        self._event("warning", warning, None)

    async def _event_sent(
        self, kind: WorkerEventKind, message: str, data: dict[str, Any] | None
    ) -> None:
        """`_event`, waiting (a moment at most) until it is sent."""
        sending = self._event(kind, message, data)
        if sending is not None:
            await asyncio.wait({sending}, timeout=EVENT_FLUSH_S)

    def _event(
        self, kind: WorkerEventKind, message: str, data: dict[str, Any] | None
    ) -> asyncio.Task[None] | None:
        """Tell the API, in the background, what this attempt saw (best effort: an event that
        cannot be sent is only logged). Returns the sending task."""
        if self.job.attempt_id is None:
            return None
        event = JobEventIn(
            machine_id=self._settings.machine_id,
            container_group_id=self._settings.container_group_id,
            attempt_id=self.job.attempt_id,
            kind=kind,
            message=message[:2000],
            data=data,
        )
        sending = spawn(self._send_event(event), f"event-{kind}")
        self._events.add(sending)
        return sending

    async def _send_event(self, event: JobEventIn) -> None:
        try:
            await self._client.add_job_event(self.job.id, event)
        except KelpieError as exc:
            logger.info("job %s: event %s not recorded: %s", self.job.id, event.kind, exc)

    def _beat(self, beats: int) -> None:
        """After each heartbeat: SaladCloud's deletion cost follows the work deleting this
        node would lose now."""
        self._node.working(self._work_at_risk_s())

    def _work_at_risk_s(self) -> float:
        """Seconds since the attempt began, or since its last committed checkpoint if later."""
        since = self._began
        engine = self._checkpoints
        if engine is not None and engine.last_committed_at is not None:
            since = max(since, engine.last_committed_at)
        return time.monotonic() - since

    def _heartbeat_finished(self) -> bool:
        return self._heartbeat_task is not None and self._heartbeat_task.done()

    def _live_sync(self, plan: TransferPlan) -> LiveSync:
        storage = self._require_storage() if plan.live_outputs else None
        return LiveSync(
            storage if storage is not None else _NoStorage(),
            plan.live_outputs,
            compress=plan.compress,
            concurrency=self._settings.upload_concurrency,
            sweep_interval=self._settings.sweep_interval_s,
        )

    def _require_storage(self) -> Storage:
        if self._storage is None:
            raise _Failure(
                "this job moves files but the worker has no S3 settings (AWS_* variables)",
                local=False,
            )
        return self._storage

    async def _kill_process(self) -> None:
        if self._process is not None and self._process.status is None:
            self._process.send_signal(signal.SIGKILL)
            await self._process.wait()

    async def _clean_up(self) -> None:
        await self._kill_process()
        await self._finish_logs()
        if self._live is not None:
            await self._live.close()
        if self._checkpoints is not None:
            await self._checkpoints.close()
        await cancel_and_wait([self._heartbeat_task, self._stop_task])
        # Events still in flight get a moment, not the node's remaining grace.
        if self._events:
            await asyncio.wait(self._events, timeout=EVENT_FLUSH_S)
            await cancel_and_wait(self._events)
        await asyncio.to_thread(empty_dirs, self._dirs, create=False)
        await asyncio.to_thread(self._progress.remove)


class _NoStorage:
    async def upload_file(
        self, local_path: Path, bucket: str, key: str, *, compress: bool = False
    ) -> int:
        raise StorageError("no S3 settings")


def timed_out_reason(max_duration: int) -> str:
    return f"timed out: the command ran longer than max_duration ({max_duration} s) and was stopped"


def _upload_failure(failures: dict[str, str]) -> str:
    shown = "; ".join(f"{path}: {error}" for path, error in list(failures.items())[:5])
    more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
    return f"{len(failures)} file(s) could not be uploaded after retries: {shown}{more}"


def empty_dirs(dirs: Iterable[Path], *, create: bool) -> None:
    """Remove everything inside `dirs` (never the folders themselves: they may be mounts)."""
    for directory in dirs:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue
