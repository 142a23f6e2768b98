"""`kelpie worker`: poll for a job, carry it through, repeat; leave cleanly when told to.

SIGTERM or SIGINT (the node going away) only sets the stop event. Shutdown then runs in
phases: stop claiming (the long-poll is abandoned), pass SIGTERM to the job, flush its
checkpoints within the grace period, report `interrupted`, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from pydantic import ValidationError

from kelpie.backoff import Backoff
from kelpie.client import ApiUnavailable, AsyncKelpieClient, KelpieError
from kelpie.schemas import JobOut
from kelpie.settings_errors import describe_settings_errors
from kelpie.worker.config import WorkerSettings
from kelpie.worker.identity import WorkerNameLock, WorkerNameTaken, hold_worker_name, on_saladcloud
from kelpie.worker.imds import ImdsClient
from kelpie.worker.job import JobAttempt, Outcome, Storage, empty_dirs
from kelpie.worker.node import Node
from kelpie.worker.proctree import ContainmentUnavailable, install
from kelpie.worker.tasks import cancel_and_wait, spawn

logger = logging.getLogger("kelpie.worker")

EXIT_OK = 0
EXIT_BAD_CONFIG = 2
# Between failed polls (or after a storage outage): 2 s doubling to 30 s, at least 0.5 s.
POLL_BACKOFF = Backoff(base=2.0, cap=30.0, floor=0.5)
CLIENT_TIMEOUT_S = 10.0


class Worker:
    """The poll loop of one worker. `stop()` may be called any number of times, from anywhere
    on the loop (signal handlers call it)."""

    def __init__(
        self,
        settings: WorkerSettings,
        client: AsyncKelpieClient,
        storage: Storage | None,
        node: Node,
    ) -> None:
        self._settings = settings
        self._client = client
        self._storage = storage
        self._node = node
        self._stopping = asyncio.Event()
        self._consecutive_failures = 0

    def stop(self) -> None:
        if not self._stopping.is_set():
            logger.warning("worker: stopping (no new jobs; a running job is handed back)")
            self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> int:
        settings = self._settings
        logger.info(
            "worker: machine %s, group %s, API %s, checkpoints in %s",
            settings.machine_id,
            settings.container_group_id,
            settings.api_url,
            settings.checkpoint_dir,
        )
        await asyncio.to_thread(empty_dirs, settings.job_dirs, create=True)
        self._node.idle()
        idle_since = time.monotonic()
        failed_polls = 0
        storage_outages = 0
        while not self.stopping:
            if self._idle_too_long(idle_since):
                await self._leave_idle_node()
                return EXIT_OK
            try:
                job = await self._poll(self._poll_wait(idle_since))
            except ApiUnavailable as exc:
                failed_polls += 1
                await self._back_off(failed_polls, f"API unreachable: {exc}")
                continue
            except KelpieError as exc:
                failed_polls += 1
                await self._back_off(
                    failed_polls, f"API refused the poll ({exc.status_code}): {exc}"
                )
                continue
            failed_polls = 0
            if job is None:
                continue
            outcome = await JobAttempt(
                job, settings, self._client, self._storage, self._node, self._stopping
            ).run()
            self._node.idle()
            idle_since = time.monotonic()
            if await self._too_many_failures(outcome):
                return EXIT_OK
            if outcome is Outcome.STORAGE_UNAVAILABLE:
                storage_outages += 1
                await self._back_off(storage_outages, "the bucket could not be reached")
            elif outcome is not Outcome.DROPPED:
                storage_outages = 0
        logger.info("worker: stopped")
        return EXIT_OK

    async def _poll(self, wait: float) -> JobOut | None:
        """One claim, abandoned if the worker starts stopping first."""
        # Awaited right here, so a plain task: its errors are the caller's to handle.
        poll = asyncio.create_task(
            self._client.poll_work(
                self._settings.machine_id, self._settings.container_group_id, wait=wait
            ),
            name="poll-work",
        )
        stop = spawn(self._stopping.wait(), "worker-stopping")
        try:
            await asyncio.wait({poll, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait([stop])
        if poll.done():
            return poll.result()
        await cancel_and_wait([poll])
        return None

    def _poll_wait(self, idle_since: float) -> float:
        wait = self._settings.poll_wait_s
        limit = self._settings.max_time_with_no_work_s
        if limit > 0:
            left = limit - (time.monotonic() - idle_since)
            wait = max(0.0, min(wait, left))
        return round(wait, 3)

    def _idle_too_long(self, idle_since: float) -> bool:
        limit = self._settings.max_time_with_no_work_s
        return limit > 0 and time.monotonic() - idle_since >= limit

    async def _leave_idle_node(self) -> None:
        limit = self._settings.max_time_with_no_work_s
        logger.info("worker: no work for %.0f s, exiting", limit)
        if self._settings.reallocate_on_idle:
            await self._node.reallocate(f"kelpie worker: no work for {limit:.0f} s")

    async def _too_many_failures(self, outcome: Outcome) -> bool:
        """Count failures this node may be causing; ask for another node after too many."""
        if outcome is Outcome.COMPLETED:
            self._consecutive_failures = 0
        elif outcome is Outcome.FAILED:
            self._consecutive_failures += 1
        limit = self._settings.max_job_failures
        if limit == 0 or self._consecutive_failures < limit or self.stopping:
            return False
        count, self._consecutive_failures = self._consecutive_failures, 0
        reason = f"kelpie worker: {count} jobs failed in a row on this machine"
        if await self._node.reallocate(reason):
            logger.warning("worker: exiting, SaladCloud is moving this container to another node")
            return True
        return False

    async def _back_off(self, failures: int, why: str) -> None:
        delay = POLL_BACKOFF.delay(failures)
        logger.warning("worker: %s; polling again in %.1f s", why, delay)
        try:
            async with asyncio.timeout(delay):
                await self._stopping.wait()
        except TimeoutError:
            pass


def _storage_from_env(settings: WorkerSettings) -> Storage | None:
    from kelpie.storage import ObjectStorage, S3Settings, StorageError

    try:
        s3 = S3Settings.from_env(os.environ)
    except (StorageError, ValueError) as exc:
        logger.warning("worker: no usable S3 settings (%s); jobs that move files will fail", exc)
        return None
    storage: Storage = ObjectStorage(
        s3,
        concurrency=settings.transfer_concurrency,
        retry_window_s=settings.storage_retry_s,
    )
    return storage


async def serve(settings: WorkerSettings) -> int:
    """Run a worker until it stops; returns the process exit code."""
    loop = asyncio.get_running_loop()
    client = AsyncKelpieClient(settings.api_url, settings.api_key, timeout=CLIENT_TIMEOUT_S)
    node = Node(ImdsClient(settings.imds_url))
    worker = Worker(settings, client, _storage_from_env(settings), node)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    try:
        return await worker.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await node.aclose()
        await client.aclose()


def _configure_logging() -> None:
    level = os.environ.get("KELPIE_LOG_LEVEL", "info").upper()
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level if level in logging.getLevelNamesMapping() else logging.INFO)
    # One line per HTTP request would drown the job's own output.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _read_settings(name: str | None = None) -> WorkerSettings | None:
    """The settings, or None after logging each problem on a line of its own."""
    try:
        return WorkerSettings() if name is None else WorkerSettings(worker_name=name)
    except ValidationError as exc:
        for line in describe_settings_errors(exc, WorkerSettings):
            logger.error("worker: invalid configuration: %s", line)
        return None


def _load_settings() -> tuple[WorkerSettings, WorkerNameLock | None] | None:
    """Settings from the environment; off SaladCloud also the worker name, held until exit."""
    settings = _read_settings()
    if settings is None:
        return None
    if on_saladcloud(os.environ):
        return settings, None
    try:
        lock = hold_worker_name(settings.worker_home, settings.worker_name)
    except WorkerNameTaken as exc:
        logger.error("worker: invalid configuration: KELPIE_WORKER_NAME: %s", exc)
        return None
    except OSError as exc:
        logger.error("worker: invalid configuration: KELPIE_WORKER_HOME: %s", exc)
        return None
    named = _read_settings(lock.name)
    if named is None:
        lock.release()
        return None
    return named, lock


def main() -> int:
    """Entry point of `kelpie worker`: settings from the environment, the loop, the exit code."""
    _configure_logging()
    loaded = _load_settings()
    if loaded is None:
        return EXIT_BAD_CONFIG
    settings, _name_lock = loaded  # held by this process until it exits
    try:
        # Before anything else runs: children the worker has now are not a job's.
        install(settings.containment)
    except ContainmentUnavailable as exc:
        logger.error("worker: KELPIE_WORKER_CONTAINMENT=%s: %s", settings.containment, exc)
        return EXIT_BAD_CONFIG
    # The stock loop: a worker handles a few requests a second, and uvloop would cost ~3 MB
    # of the idle footprint for no measurable gain.
    return asyncio.run(serve(settings))
