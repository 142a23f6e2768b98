"""SQLite store: the embedded default, one database file.

Every write is a function of the write connection, run by one writer thread per process
(kelpie.store._group_commit): whatever the API's requests queued meanwhile runs in one
`BEGIN IMMEDIATE` transaction, each write in its own savepoint, and one COMMIT (one fsync)
answers them all. Several `kelpie serve` processes may share one file: `BEGIN IMMEDIATE`
takes the file's write lock, so writers of all processes are serialized. Reads use a second,
read-only connection; WAL mode lets them proceed while a write is under way.

SQLite has no cross-process notification, so `listen_for_new_jobs` watches the file: every
NEW_JOBS_CHECK_S it asks `PRAGMA data_version` (in shared memory, no I/O) whether any other
connection has committed, and only then reads the jobs added since it last looked.

Times are REAL unix epoch seconds (UTC) taken inside the write transaction, so they follow
the order in which writers hold the lock: from this process's wall clock, or from the clock
the store was given (kelpie.store.clock: tests move it instead of waiting).

Every statement the store runs is in queries/sqlite.sql, whole and named, and is run by its
name from `_SQL`; the connections' settings (the PRAGMAs run when each connection opens) are
set here, and the writer's transaction control is in _group_commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import aiosqlite

from kelpie.store._common import (
    CANCELED_MESSAGE,
    IDEMPOTENCY_JOBS_GONE,
    IDEMPOTENCY_KEY_LIFETIME_S,
    IDEMPOTENCY_KEY_REUSED,
    MAX_WORKER_EVENTS_PER_ATTEMPT,
    OUTAGE_GAP_SECONDS,
    OUTAGE_GRACE_SECONDS,
    PURGED_MESSAGE,
    STALLED_MESSAGE,
    RowDecoder,
    as_job_status,
    checkpoint_message,
    claimed_message,
    completed_message,
    ended_by_interruptions,
    expired_objects,
    failure_message,
    interrupted_message,
    interruption_event_data,
    label_rows,
    lost_message,
    manifest_from_json,
    manifest_to_json,
    new_id,
    new_webhook_secret,
    new_webhook_token,
    page_offset,
    pending_reason_of,
    progress_json,
    progress_message,
    progress_milestone,
    replayed_jobs,
    stalled_message,
    stalled_reason,
    webhook_payload,
)
from kelpie.store._group_commit import GroupCommitWriter, execute_when_not_busy
from kelpie.store.clock import Clock
from kelpie.store.goodput import (
    GroupLedger,
    JobLedger,
    attempt_ledger,
    group_ledger,
    upload_seconds_of,
)
from kelpie.store.migrations import load_migrations
from kelpie.store.models import (
    RECENT_WORKER_SECONDS,
    WORKER_RETENTION_SECONDS,
    ApiKey,
    Attempt,
    Blocked,
    CancelOutcome,
    Checkpoint,
    CommitOutcome,
    CommitResult,
    FailureResult,
    HeldOutcome,
    IdempotentRequest,
    Job,
    JobEvent,
    JobQuery,
    JobStatus,
    ManifestEntry,
    NewJob,
    PendingReason,
    Principal,
    ScalingRule,
    ScalingRulePatch,
    Submitted,
    User,
    WebhookEvent,
    Worker,
    WorkerSighting,
)
from kelpie.store.overview import (
    ActivityBucket,
    BlockedMachine,
    GroupCounts,
    StoreMetrics,
    activity_series,
    activity_tallies,
    group_counts,
    store_metrics,
)
from kelpie.store.protocol import (
    AlreadyExists,
    IdempotencyConflict,
    InvalidChange,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from kelpie.store.queries import QueryFileError, load_queries

logger = logging.getLogger(__name__)
_SQL = load_queries("sqlite")
_decode = RowDecoder(time=lambda value: datetime.fromtimestamp(value, UTC), json=json.loads)

T = TypeVar("T")
Params = Mapping[str, Any] | Sequence[Any]

# The read connection waits this long for the file lock (busy_timeout), rarely needed in WAL
# mode. The write connection waits in its own loop (see _group_commit).
_BUSY_TIMEOUT_S = 10.0
# How often the new-jobs watcher asks whether anything was committed; the worst case for a
# long poll in one process to hear of a job submitted through another.
NEW_JOBS_CHECK_S = 0.02

# SQLite errors that mean "the database cannot be used now", not "this call is wrong": the
# file locked for longer than the writer waits, a disk I/O error, a full disk.
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_PROTOCOL,
    }
)

# The claim, by name for the plan tests (tests/support/claim_plan.py).
_CLAIM = _SQL["claim"]


def _split_statements(script: str) -> list[str]:
    """The statements of a migration file, for execution one by one inside our transaction
    (`executescript` would commit first)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    leftover = [ln for ln in buffer.splitlines() if ln.strip() and not ln.strip().startswith("--")]
    if leftover:
        raise StoreError(f"incomplete SQL statement at the end of a migration: {leftover[0]!r}")
    return statements


def _as_unavailable(exc: sqlite3.Error) -> StoreUnavailable | None:
    primary_code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # extended codes: IOERR_WRITE, ...
    if primary_code in _UNAVAILABLE_CODES:
        return StoreUnavailable(f"SQLite database unusable: {exc}")
    return None


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _dt_or_none(value: float | None) -> datetime | None:
    return None if value is None else _dt(value)


def _all(conn: sqlite3.Connection, sql: str, params: Params = ()) -> list[sqlite3.Row]:
    return conn.execute(sql, params).fetchall()


def _one(conn: sqlite3.Connection, sql: str, params: Params = ()) -> sqlite3.Row | None:
    # fetchall, not fetchone: a statement left unfinished would block RELEASE and COMMIT
    rows = _all(conn, sql, params)
    return rows[0] if rows else None


def _queue_event(
    conn: sqlite3.Connection, job: Job, status: JobStatus, machine_id: str, now: float
) -> None:
    """Writes the job's webhook event, if it has a webhook, in the caller's transaction."""
    if job.webhook is None:
        return
    payload = webhook_payload(status, job.id, machine_id, job.container_group_id)
    conn.execute(
        _SQL["queue_webhook_event"],
        (job.user_id, job.webhook, json.dumps(payload), now, now),
    )


def _insert_jobs(
    conn: sqlite3.Connection,
    user_id: str,
    ids: Sequence[str],
    jobs: Sequence[NewJob],
    specs: Sequence[str],
    now: float,
) -> None:
    """Inserts the jobs, pending, and their labels, in the caller's transaction."""
    conn.executemany(
        _SQL["insert_job"],
        [
            (
                job_id,
                user_id,
                job.container_group_id,
                now,
                job.max_failures,
                job.heartbeat_interval,
                job.webhook,
                spec,
                job.org_name,
                job.project_name,
                job.checkpoint_keep,
                job.name,
                job.max_interruptions,
                job.priority,
                job.logs_prefix,
                job.stall_timeout,
            )
            for job_id, job, spec in zip(ids, jobs, specs, strict=True)
        ],
    )
    conn.executemany(
        _SQL["insert_job_label"],
        [
            row
            for job_id, job in zip(ids, jobs, strict=True)
            for row in label_rows(job_id, job.labels)
        ],
    )


def _new_jobs(
    user_id: str, ids: Sequence[str], jobs: Sequence[NewJob], specs: Sequence[str], now: float
) -> list[Job]:
    """The jobs `_insert_jobs` stored, as a read would return them."""
    return [
        Job(
            id=job_id,
            user_id=user_id,
            status="pending",
            container_group_id=job.container_group_id,
            created=_dt(now),
            started=None,
            completed=None,
            canceled=None,
            failed=None,
            heartbeat=None,
            num_failures=0,
            num_heartbeats=0,
            machine_id=None,
            last_exit_code=None,
            last_error=None,
            max_failures=job.max_failures,
            heartbeat_interval=job.heartbeat_interval,
            webhook=job.webhook,
            spec=json.loads(spec),
            org_name=job.org_name,
            project_name=job.project_name,
            checkpoint_keep=job.checkpoint_keep,
            name=job.name,
            max_interruptions=job.max_interruptions,
            priority=job.priority,
            logs_prefix=job.logs_prefix,
            stall_timeout=job.stall_timeout,
        )
        for job_id, job, spec in zip(ids, jobs, specs, strict=True)
    ]


def _end_running_attempt(
    conn: sqlite3.Connection,
    job_id: str,
    outcome: str,
    now: float,
    exit_code: int | None = None,
) -> None:
    conn.execute(
        _SQL["end_running_attempt"],
        (outcome, now, exit_code, job_id),
    )


def _add_event(
    conn: sqlite3.Connection,
    job_id: str,
    kind: str,
    message: str,
    now: float,
    *,
    attempt_id: int | None = None,
    machine_id: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> None:
    conn.execute(
        _SQL["add_event"],
        (
            job_id,
            attempt_id,
            machine_id,
            kind,
            message,
            None if data is None else json.dumps(dict(data)),
            now,
        ),
    )


def _record_phase(
    conn: sqlite3.Connection,
    attempt_id: int,
    kind: str,
    data: Mapping[str, Any] | None,
    now: float,
) -> None:
    """A worker event that marks a phase of its attempt is kept on the attempt too (the
    goodput ledger reads it there), whether or not the event itself is kept."""
    if kind == "started":
        conn.execute(_SQL["attempt_command_started"], (now, attempt_id))
    elif kind == "outputs_uploaded" and (seconds := upload_seconds_of(data)) is not None:
        conn.execute(_SQL["attempt_upload_seconds"], (seconds, attempt_id))


def _record_progress(
    conn: sqlite3.Connection,
    held: sqlite3.Row,
    progress: Mapping[str, Any],
    machine_id: str,
    now: float,
) -> None:
    """The holder's beat brought the job's progress: recorded (with a new stall deadline)
    when it changed, and a `progress` event at a milestone."""
    stored = progress_json(progress)
    if held["progress"] == stored:
        return
    conn.execute(
        _SQL["record_progress"],
        (stored, now, now, held["id"]),
    )
    previous = None if held["progress"] is None else json.loads(held["progress"])
    if progress_milestone(previous, progress):
        _add_event(
            conn,
            held["id"],
            "progress",
            progress_message(progress),
            now,
            attempt_id=held["attempt_id"],
            machine_id=machine_id,
            data=progress,
        )


def _end_held_attempt(
    conn: sqlite3.Connection,
    job: Job,
    outcome: str,
    now: float,
    message: str,
    exit_code: int | None = None,
    data: Mapping[str, Any] | None = None,
) -> None:
    """The holder's attempt ends with `outcome`, and the job's record says so."""
    _end_running_attempt(conn, job.id, outcome, now, exit_code)
    _add_event(
        conn,
        job.id,
        outcome,
        message,
        now,
        attempt_id=job.attempt_id,
        machine_id=job.machine_id,
        data=data,
    )


class _NewJobsWatch:
    """Which groups got pending jobs since the last look, through any connection to the file.

    Runs on the event loop: `PRAGMA data_version` reads shared memory, and the rows added in
    one NEW_JOBS_CHECK_S come by rowid, in microseconds; a thread hop would cost more. A job
    whose rowid was freed and reused (the newest job purged, then a new one added) is not
    announced; the API's periodic re-check finds it.
    """

    def __init__(self, path: str) -> None:
        # timeout=0: never wait on the loop for a lock; a locked file is looked at again later.
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=0)
        self._conn.execute("PRAGMA query_only = ON")
        self._version: int | None = None
        self._last_seq: int | None = None  # None: the newest job is still to be read
        with contextlib.suppress(sqlite3.Error):  # locked: read it at the first look
            self.new_pending_groups()

    def new_pending_groups(self) -> list[str]:
        version = self._conn.execute(_SQL["data_version"]).fetchone()[0]
        if version == self._version:
            return []  # nothing was committed by another connection
        if self._last_seq is None:
            self._last_seq = self._conn.execute(_SQL["newest_job_seq"]).fetchone()[0]
            self._version = version
            return []
        self._version = version
        rows = self._conn.execute(_SQL["jobs_added_since"], (self._last_seq,)).fetchall()
        if not rows:
            return []
        self._last_seq = rows[-1][0]
        return sorted({group for _, group, status in rows if status == "pending"})

    def close(self) -> None:
        self._conn.close()


class SqliteStore:
    """The Store on one SQLite file (see module docstring for the concurrency model)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Clock | None = None,
    ) -> None:
        # FULL: a commit (the 202 of a submission) survives power loss, not just a crash.
        self._path = os.fspath(path)
        self._synchronous = synchronous
        self._clock = clock
        self._writer: GroupCommitWriter | None = None
        self._reader: aiosqlite.Connection | None = None
        self._new_job_listeners: list[Callable[[str], None]] = []
        self._watcher: asyncio.Task[None] | None = None

    def _time(self) -> float:
        """Now, in unix seconds: the store's clock, else the wall clock."""
        return time.time() if self._clock is None else self._clock().timestamp()

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        if self._writer is not None:
            raise StoreError("store is already open")
        try:
            self._writer = GroupCommitWriter(self._connect_writer, name="kelpie-sqlite-writer")
            await self._writer.start()
            await self._write(self._migrate)
            self._reader = await self._connect_reader()
        except sqlite3.Error as exc:
            await self.close()
            if (unavailable := _as_unavailable(exc)) is not None:
                raise unavailable from exc
            raise
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        self._new_job_listeners.clear()
        if self._reader is not None:
            await self._reader.close()
        if self._writer is not None:
            await self._writer.stop()
        self._reader = self._writer = None

    async def listen_for_new_jobs(self, on_new_jobs: Callable[[str], None]) -> None:
        """Hears jobs submitted through any connection to the file, this process's included."""
        self._read_conn()  # the store is open
        self._new_job_listeners.append(on_new_jobs)
        if self._watcher is None:
            watch = _NewJobsWatch(self._path)
            self._watcher = asyncio.create_task(
                self._watch_new_jobs(watch), name="kelpie-sqlite-new-jobs"
            )

    async def _watch_new_jobs(self, watch: _NewJobsWatch) -> None:
        try:
            while True:
                await asyncio.sleep(NEW_JOBS_CHECK_S)
                try:
                    groups = watch.new_pending_groups()
                except sqlite3.Error as exc:  # the file is locked (recovery): look again
                    logger.debug("watching for new jobs: %s", exc)
                    continue
                for group in groups:
                    for listener in self._new_job_listeners:
                        try:
                            listener(group)
                        except Exception:  # one listener failing must not deafen the rest
                            logger.exception("new-jobs listener failed")
        finally:
            watch.close()

    async def ping(self) -> None:
        """Takes the file's write lock and lets it go: fails while the file cannot be written."""

        def nothing(conn: sqlite3.Connection) -> None:
            return None

        await self._write(nothing)

    def _connect_writer(self) -> sqlite3.Connection:
        """The write connection, opened on the writer thread that alone uses it."""
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=0)
        try:
            conn.row_factory = sqlite3.Row
            rows = execute_when_not_busy(conn, "PRAGMA journal_mode = WAL")
            if rows[0][0] != "wal":
                logger.warning(
                    "SQLite refused WAL mode (journal_mode=%s): reads wait on writes", rows[0][0]
                )
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _connect_reader(self) -> aiosqlite.Connection:
        """The read connection; the writer has put the file in WAL mode already."""
        conn = await aiosqlite.connect(self._path, isolation_level=None, timeout=_BUSY_TIMEOUT_S)
        try:
            conn.row_factory = sqlite3.Row
            await conn.execute("PRAGMA query_only = ON")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _write(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Runs `operation` in the writer's next group commit (its own savepoint); returns
        once it is durably committed. Raising inside `operation` undoes only its changes."""
        if self._writer is None:
            raise StoreUnavailable("store is not open: call open() first")
        try:
            return await self._writer.run(operation)
        except sqlite3.Error as exc:
            if (unavailable := _as_unavailable(exc)) is not None:
                raise unavailable from exc
            raise

    async def _execute(self, sql: str, params: Params = ()) -> None:
        """One write statement in the next group commit."""

        def execute(conn: sqlite3.Connection) -> None:
            conn.execute(sql, params)

        await self._write(execute)

    def _read_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreUnavailable("store is not open: call open() first")
        return self._reader

    async def _read(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        try:
            return list(await self._read_conn().execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            if (unavailable := _as_unavailable(exc)) is not None:
                raise unavailable from exc
            raise

    async def _read_one(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        rows = await self._read(sql, params)
        return rows[0] if rows else None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(_SQL["create_schema_migrations"])
        applied = {row[0] for row in _all(conn, _SQL["applied_migrations"])}
        migrations = load_migrations("sqlite")
        newest_known = max((m.version for m in migrations), default=0)
        if applied and max(applied) > newest_known:
            raise StoreError(
                f"database schema version {max(applied)} is newer than this kelpie"
                f" ({newest_known}): upgrade kelpie"
            )
        for migration in migrations:
            if migration.version in applied:
                continue
            for statement in _split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                _SQL["record_migration"],
                (migration.version, time.time()),  # when it really ran, whatever the clock
            )
            logger.info("applied migration %s to %s", migration.name, self._path)

    # -- users and keys ----------------------------------------------------------------
    async def ensure_admin(self, username: str, key_hash: str) -> User:
        def ensure(conn: sqlite3.Connection) -> User:
            now = self._time()
            conn.execute(
                _SQL["insert_admin"],
                (new_id(), username, now, new_webhook_secret(), new_webhook_token()),
            )
            row = _one(conn, _SQL["make_admin"], (username,))
            assert row is not None  # inserted or already there, inside this transaction
            user = _decode.user(row)
            conn.execute(
                _SQL["bootstrap_key"],
                (new_id(), key_hash, user.id, now),
            )
            conn.execute(_SQL["revoke_other_bootstrap_keys"], (key_hash,))
            return user

        return await self._write(ensure)

    async def create_user(self, username: str, *, is_admin: bool = False) -> User:
        def insert(conn: sqlite3.Connection) -> sqlite3.Row | None:
            return _one(
                conn,
                _SQL["create_user"],
                (
                    new_id(),
                    username,
                    self._time(),
                    int(is_admin),
                    new_webhook_secret(),
                    new_webhook_token(),
                ),
            )

        try:
            row = await self._write(insert)
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"username {username!r} is taken") from exc
        assert row is not None
        return _decode.user(row)

    async def get_user(self, user_id: str) -> User | None:
        row = await self._read_one(_SQL["get_user"], (user_id,))
        return None if row is None else _decode.user(row)

    async def add_api_key(
        self, user_id: str, key_hash: str, org_name: str | None, project_name: str | None
    ) -> ApiKey:
        def insert(conn: sqlite3.Connection) -> ApiKey:
            if _one(conn, _SQL["user_exists"], (user_id,)) is None:
                raise NotFound(f"no user {user_id}")
            try:
                row = _one(
                    conn,
                    _SQL["add_api_key"],
                    (new_id(), key_hash, user_id, org_name, project_name, self._time()),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists("an API key with this hash exists") from exc
            assert row is not None
            return _decode.api_key(row)

        return await self._write(insert)

    async def list_api_keys(self, user_id: str) -> list[ApiKey]:
        rows = await self._read(
            _SQL["list_api_keys"],
            (user_id,),
        )
        return [_decode.api_key(row) for row in rows]

    async def revoke_api_key(self, user_id: str, key_id: str) -> bool:
        def revoke(conn: sqlite3.Connection) -> bool:
            return bool(
                _all(
                    conn,
                    _SQL["revoke_api_key"],
                    (key_id, user_id),
                )
            )

        return await self._write(revoke)

    async def principal_for_key(self, key_hash: str) -> Principal | None:
        row = await self._read_one(
            _SQL["principal_for_key"],
            (key_hash,),
        )
        if row is None:
            return None
        return Principal(
            user=_decode.user(row), org_name=row["org_name"], project_name=row["project_name"]
        )

    async def delete_non_admin_users(self) -> None:
        await self._execute(_SQL["delete_non_admin_users"])

    # -- jobs, user side ---------------------------------------------------------------
    async def create_jobs(self, user_id: str, jobs: Sequence[NewJob]) -> list[Job]:
        ids = [new_id() for _ in jobs]
        specs = [json.dumps(dict(job.spec)) for job in jobs]

        def insert(conn: sqlite3.Connection) -> float:
            now = self._time()
            _insert_jobs(conn, user_id, ids, jobs, specs, now)
            return now

        try:
            now = await self._write(insert)
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"batch rejected, no job stored: {exc}") from exc
        return _new_jobs(user_id, ids, jobs, specs, now)

    async def create_jobs_once(
        self, user_id: str, jobs: Sequence[NewJob], request: IdempotentRequest
    ) -> Submitted:
        ids = [new_id() for _ in jobs]
        specs = [json.dumps(dict(job.spec)) for job in jobs]

        def insert(conn: sqlite3.Connection) -> Submitted:
            now = self._time()
            earlier = _one(
                conn,
                _SQL["idempotency_key"],
                (user_id, request.key),
            )
            if earlier is not None and earlier["created"] > now - IDEMPOTENCY_KEY_LIFETIME_S:
                if earlier["fingerprint"] != request.fingerprint:
                    raise IdempotencyConflict(IDEMPOTENCY_KEY_REUSED)
                rows = _all(
                    conn,
                    _SQL["jobs_by_ids"],
                    (earlier["job_ids"],),
                )
                found = replayed_jobs(
                    json.loads(earlier["job_ids"]), [_decode.job(row) for row in rows]
                )
                if found is None:
                    raise IdempotencyConflict(IDEMPOTENCY_JOBS_GONE)
                return Submitted(found, replayed=True, status_code=earlier["status_code"])
            conn.execute(
                _SQL["save_idempotency_key"],
                (
                    user_id,
                    request.key,
                    request.fingerprint,
                    request.status_code,
                    json.dumps(ids),
                    now,
                ),
            )
            _insert_jobs(conn, user_id, ids, jobs, specs, now)
            created = _new_jobs(user_id, ids, jobs, specs, now)
            return Submitted(created, replayed=False, status_code=request.status_code)

        try:
            return await self._write(insert)
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"batch rejected, no job stored: {exc}") from exc

    async def purge_idempotency_keys(self) -> int:
        cutoff = self._time() - IDEMPOTENCY_KEY_LIFETIME_S

        def purge(conn: sqlite3.Connection) -> int:
            return conn.execute(_SQL["purge_idempotency_keys"], (cutoff,)).rowcount

        return await self._write(purge)

    async def get_job(self, job_id: str, user_id: str | None) -> Job | None:
        row = await self._read_one(
            _SQL["get_job"],
            {"job_id": job_id, "user_id": user_id},
        )
        return None if row is None else _decode.job(row)

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        conditions, params = _job_filters(query, await self._label_plan(query))
        page = _SQL["list_jobs_oldest_first"] if query.ascending else _SQL["list_jobs_newest_first"]
        params["limit"] = query.page_size
        params["offset"] = page_offset(query.page, query.page_size)
        rows = await self._read(_with_filters(page, conditions), params)
        return [_decode.job(row) for row in rows]

    async def _label_plan(self, query: JobQuery) -> _LabelPlan | None:
        """How to find jobs by their labels. SQLite plans a statement once, not knowing how
        many jobs carry a label: a label few jobs carry is best found through its own index
        (then sorted), one many carry by walking the jobs newest first and checking each.
        A capped count of each label decides."""
        if not query.labels:
            return None
        counts = []
        for key, value in query.labels:
            row = await self._read_one(_SQL["label_count"], (key, value, RARE_LABEL_JOBS + 1))
            assert row is not None
            counts.append(int(row[0]))
        rarest = sorted(range(len(counts)), key=counts.__getitem__)
        labels = tuple(query.labels[i] for i in rarest)
        return _LabelPlan(labels, from_labels=counts[rarest[0]] <= RARE_LABEL_JOBS)

    async def cancel_job(self, job_id: str, user_id: str | None) -> CancelOutcome:
        params = {"job_id": job_id, "user_id": user_id}

        def cancel(conn: sqlite3.Connection) -> CancelOutcome:
            now = self._time()
            canceled = _all(
                conn,
                _SQL["cancel_job"],
                {**params, "now": now},
            )
            if canceled:
                _end_running_attempt(conn, job_id, "canceled", now)
                _add_event(conn, job_id, "canceled", CANCELED_MESSAGE, now)
                return CancelOutcome.CANCELED
            row = _one(conn, _SQL["job_status"], params)
            if row is None:
                return CancelOutcome.NOT_FOUND
            # the update takes every pending or running job, so this one has ended for good
            if row["status"] == "canceled":
                return CancelOutcome.ALREADY_CANCELED
            return CancelOutcome.ALREADY_ENDED

        return await self._write(cancel)

    async def purge_group(self, user_id: str, container_group_id: str) -> int:
        params = {"user_id": user_id, "group": container_group_id}

        def purge(conn: sqlite3.Connection) -> int:
            now = self._time()
            canceled = _all(
                conn,
                _SQL["cancel_running_of_group"],
                {**params, "now": now},
            )
            conn.executemany(
                _SQL["cancel_attempt"],
                [(now, row["id"]) for row in canceled],
            )
            for row in canceled:
                _add_event(conn, row["id"], "canceled", PURGED_MESSAGE, now)
            deleted = _all(
                conn,
                _SQL["delete_pending_of_group"],
                params,
            )
            return len(canceled) + len(deleted)

        return await self._write(purge)

    async def delete_all_jobs(self) -> None:
        await self._execute(_SQL["delete_all_jobs"])

    async def list_attempts(self, job_id: str, user_id: str | None) -> list[Attempt] | None:
        if await self.get_job(job_id, user_id) is None:
            return None
        rows = await self._read(_SQL["list_attempts"], (job_id,))
        warnings: dict[int, list[str]] = {}
        for event in await self._read(_SQL["attempt_warnings"], (job_id,)):
            warnings.setdefault(event["attempt_id"], []).append(event["message"])
        return [_decode.attempt(row, warnings.get(row["id"], ())) for row in rows]

    # -- jobs, worker side -------------------------------------------------------------
    async def claim_job(
        self, machine_id: str, container_group_id: str, user_id: str | None
    ) -> Job | None:
        def claim(conn: sqlite3.Connection) -> Job | None:
            now = self._time()
            # one statement picks and takes the job, under the file's write lock
            row = _one(
                conn,
                _CLAIM,
                {
                    "machine_id": machine_id,
                    "group": container_group_id,
                    "user_id": user_id,
                    "now": now,
                },
            )
            if row is None:
                return None
            job = _decode.job(row)
            attempt_id = job.attempt_id
            # a running attempt left on the job belongs to the stalled previous holder
            lost = _all(
                conn,
                _SQL["lose_running_attempts"],
                (now, job.id),
            )
            for attempt in lost:
                _add_event(
                    conn,
                    job.id,
                    "lost",
                    lost_message(machine_id),
                    now,
                    attempt_id=attempt["id"],
                    machine_id=attempt["machine_id"],
                )
            conn.execute(
                _SQL["insert_attempt"],
                (attempt_id, job.id, machine_id, now),
            )
            _add_event(
                conn,
                job.id,
                "claimed",
                claimed_message(machine_id),
                now,
                attempt_id=attempt_id,
                machine_id=machine_id,
            )
            _queue_event(conn, job, "running", machine_id, now)
            return job

        return await self._write(claim)

    async def heartbeat(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> JobStatus | None:
        params = _held_params(job_id, machine_id, user_id, attempt_id)

        def beat(conn: sqlite3.Connection) -> JobStatus | None:
            now = self._time()
            beaten = _all(
                conn,
                _SQL["heartbeat"],
                {**params, "now": now},
            )
            if beaten:
                if progress is not None:
                    _record_progress(conn, beaten[0], progress, machine_id, now)
                return "running"
            row = _one(conn, _SQL["job_status"], params)
            if row is None:
                return None
            # still running means another machine holds it now: this one must drop the job
            return "canceled" if row["status"] == "running" else as_job_status(row["status"])

        return await self._write(beat)

    async def complete_if_held(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int | None = None,
    ) -> HeldOutcome:
        params = _held_params(job_id, machine_id, user_id, attempt_id)

        def complete(conn: sqlite3.Connection) -> HeldOutcome:
            now = self._time()
            row = _one(
                conn,
                _SQL["complete_held"],
                {**params, "now": now},
            )
            if row is None:
                return _why_not_held(conn, params)
            job = _decode.job(row)
            _end_held_attempt(conn, job, "completed", now, completed_message(machine_id))
            _queue_event(conn, job, "completed", machine_id, now)
            return HeldOutcome.DONE

        return await self._write(complete)

    async def fail_if_held(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        exit_code: int | None,
        error: str | None,
        attempt_id: int | None = None,
        *,
        fail_now: bool = False,
    ) -> FailureResult:
        params = _held_params(job_id, machine_id, user_id, attempt_id)

        def fail(conn: sqlite3.Connection) -> FailureResult:
            now = self._time()
            row = _one(
                conn,
                _SQL["fail_held"],
                {
                    **params,
                    "now": now,
                    "exit_code": exit_code,
                    "error": error,
                    "fail_now": fail_now,
                },
            )
            if row is None:
                return FailureResult(_why_not_held(conn, params))
            job = _decode.job(row)
            conn.execute(_SQL["block_machine"], (job_id, machine_id, now))
            _end_held_attempt(
                conn,
                job,
                "failed",
                now,
                failure_message(
                    machine_id, exit_code, error, ended=job.status == "failed", fail_now=fail_now
                ),
                exit_code,
                {"exit_code": exit_code, "error": error},
            )
            if job.status == "failed":
                _queue_event(conn, job, "failed", machine_id, now)
            count = _one(
                conn,
                _SQL["tenant_blocked_jobs"],
                {"machine_id": machine_id, "user_id": job.user_id},
            )
            assert count is not None
            return FailureResult(HeldOutcome.DONE, job, machine_blocked_jobs=count[0])

        return await self._write(fail)

    async def interrupt_if_held(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int | None = None,
        *,
        exit_code: int | None = None,
    ) -> HeldOutcome:
        params = _held_params(job_id, machine_id, user_id, attempt_id)

        def interrupt(conn: sqlite3.Connection) -> HeldOutcome:
            now = self._time()
            row = _one(
                conn,
                _SQL["interrupt_held"],
                {**params, "now": now},
            )
            if row is None:
                return _why_not_held(conn, params)
            job = _decode.job(row)
            message = interrupted_message(machine_id, exit_code)
            if job.status == "failed":
                message = ended_by_interruptions(message, job.last_error or "")
                _queue_event(conn, job, "failed", machine_id, now)
            _end_held_attempt(
                conn,
                job,
                "interrupted",
                now,
                message,
                exit_code,
                interruption_event_data(exit_code),
            )
            return HeldOutcome.DONE

        return await self._write(interrupt)

    async def end_stalled_out_of_interruptions(self) -> list[Job]:
        # Asked every second by every API process: the common answer, none, is read without
        # taking the file's write lock.
        if not await self._read(_SQL["any_out_of_interruptions"], {"now": self._time()}):
            return []

        def end(conn: sqlite3.Connection) -> list[Job]:
            now = self._time()
            rows = _all(
                conn,
                _SQL["end_out_of_interruptions"],
                {"now": now},
            )
            jobs = [_decode.job(row) for row in rows]
            for job in jobs:
                conn.execute(
                    _SQL["lose_attempt"],
                    (now, None if job.heartbeat is None else job.heartbeat.timestamp(), job.id),
                )
                _add_event(
                    conn,
                    job.id,
                    "lost",
                    ended_by_interruptions(STALLED_MESSAGE, job.last_error or ""),
                    now,
                    attempt_id=job.attempt_id,
                    machine_id=job.machine_id,
                )
                _queue_event(conn, job, "failed", job.machine_id or "", now)
            return jobs

        return await self._write(end)

    async def end_stalled_jobs(self) -> list[Job]:
        # Asked every second by every API process: the common answer, none, is read without
        # taking the file's write lock.
        if not await self._read(_SQL["any_stalled"], {"now": self._time()}):
            return []

        def end(conn: sqlite3.Connection) -> list[Job]:
            now = self._time()
            found = _all(conn, _SQL["stalled_jobs"], {"now": now})
            stopped: list[Job] = []
            for held in found:
                reason = stalled_reason(held["stall_timeout"])
                row = _one(
                    conn,
                    _SQL["fail_stalled_job"],
                    {"id": held["id"], "now": now, "error": reason},
                )
                assert row is not None  # the writer holds the lock since the read
                job = _decode.job(row)
                machine_id = held["machine_id"]
                conn.execute(_SQL["block_machine"], (job.id, machine_id, now))
                _end_running_attempt(conn, job.id, "failed", now)
                _add_event(
                    conn,
                    job.id,
                    "stalled",
                    stalled_message(machine_id, reason, ended=job.status == "failed"),
                    now,
                    attempt_id=job.attempt_id,
                    machine_id=machine_id,
                    data={"exit_code": None, "error": reason, "stall_timeout": job.stall_timeout},
                )
                if job.status == "failed":
                    _queue_event(conn, job, "failed", machine_id, now)
                stopped.append(job)
            return stopped

        return await self._write(end)

    # -- workers -----------------------------------------------------------------------
    async def note_workers_seen(self, sightings: Sequence[WorkerSighting]) -> None:
        if not sightings:
            return

        def note(conn: sqlite3.Connection) -> None:
            now = self._time()
            conn.executemany(
                _SQL["note_worker"],
                [
                    {
                        "user_id": seen.user_id,
                        "group": seen.container_group_id,
                        "machine_id": seen.machine_id,
                        "any_user": seen.any_user,
                        "version": seen.version,
                        "polled": seen.polled,
                        "now": now,
                    }
                    for seen in sightings
                ],
            )

        await self._write(note)

    async def purge_workers(self) -> int:
        cutoff = self._time() - WORKER_RETENTION_SECONDS

        def purge(conn: sqlite3.Connection) -> int:
            return conn.execute(_SQL["purge_workers"], (cutoff,)).rowcount

        return await self._write(purge)

    async def list_workers(
        self, user_id: str | None, container_group_id: str | None, seen_within_seconds: float
    ) -> list[Worker]:
        rows = await self._read(
            _SQL["list_workers"],
            {
                "user_id": user_id,
                "group": container_group_id,
                "since": self._time() - seen_within_seconds,
            },
        )
        return [_decode.worker(row) for row in rows]

    async def pending_reason(self, job: Job) -> PendingReason | None:
        if job.status != "pending":
            return None
        params = {
            "job_id": job.id,
            "user_id": job.user_id,
            "group": job.container_group_id,
            "since": self._time() - RECENT_WORKER_SECONDS,
        }
        machines = await self._read_one(_SQL["recent_machines"], params)
        ahead = await self._read_one(_SQL["jobs_ahead"], params)
        if machines is None or ahead is None:
            return None  # deleted meanwhile
        return pending_reason_of(
            machines["machines"], machines["blocked"], machines["busy"], ahead[0]
        )

    # -- checkpoints and events --------------------------------------------------------
    async def commit_checkpoint(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int,
        generation: int,
        manifest: Sequence[ManifestEntry],
        upload_seconds: float | None = None,
    ) -> CommitResult:
        params = _held_params(job_id, machine_id, user_id, attempt_id)
        stored = manifest_to_json(manifest)
        size = sum(entry.size for entry in manifest)

        def commit(conn: sqlite3.Connection) -> CommitResult:
            now = self._time()
            job_row = _one(
                conn,
                _SQL["checkpoint_state"],
                params,
            )
            if job_row is None:
                return CommitResult(CommitOutcome.NOT_FOUND)
            newest = job_row["checkpoint_generation"]
            same = _one(
                conn,
                _SQL["get_checkpoint"],
                (job_id, generation),
            )
            if same is not None:
                repeated = same["attempt_id"] == attempt_id and (
                    same["manifest"] is None or json.loads(same["manifest"]) == stored
                )
                if repeated:
                    return CommitResult(
                        CommitOutcome.REPEATED, _decode.checkpoint(same, with_manifest=False)
                    )
                return CommitResult(CommitOutcome.NOT_NEWER, newest=newest)
            if _one(conn, _SQL["is_held"], params) is None:
                return CommitResult(CommitOutcome.NOT_HOLDER)
            if newest is not None and generation <= newest:
                return CommitResult(CommitOutcome.NOT_NEWER, newest=newest)
            conn.execute(
                _SQL["insert_checkpoint"],
                (
                    job_id,
                    generation,
                    attempt_id,
                    machine_id,
                    now,
                    len(manifest),
                    size,
                    json.dumps(stored),
                    upload_seconds,
                ),
            )
            conn.execute(_SQL["set_checkpoint_generation"], (generation, job_id))
            conn.execute(
                _SQL["count_commit"], {"attempt_id": attempt_id, "now": now, "s": upload_seconds}
            )
            kept_rows = _all(
                conn,
                _SQL["kept_manifests"],
                (job_id,),
            )
            keep = job_row["checkpoint_keep"]
            dropped = kept_rows[keep:]
            if dropped:
                conn.executemany(
                    _SQL["drop_manifest"],
                    [(job_id, row["generation"]) for row in dropped],
                )
            expired = expired_objects(
                (manifest_from_json(json.loads(row["manifest"])) for row in dropped),
                (manifest_from_json(json.loads(row["manifest"])) for row in kept_rows[:keep]),
            )
            checkpoint = Checkpoint(
                job_id, generation, attempt_id, machine_id, _dt(now), len(manifest), size, True
            )
            _add_event(
                conn,
                job_id,
                "checkpoint_committed",
                checkpoint_message(generation, len(manifest), size),
                now,
                attempt_id=attempt_id,
                machine_id=machine_id,
                data={"generation": generation, "files": len(manifest), "bytes": size},
            )
            return CommitResult(CommitOutcome.DONE, checkpoint, newest=generation, expired=expired)

        return await self._write(commit)

    async def list_checkpoints(self, job_id: str, user_id: str | None) -> list[Checkpoint] | None:
        if await self.get_job(job_id, user_id) is None:
            return None
        rows = await self._read(
            _SQL["list_checkpoints"],
            (job_id,),
        )
        return [_decode.checkpoint(row, with_manifest=False) for row in rows]

    async def get_checkpoint(
        self, job_id: str, user_id: str | None, generation: int
    ) -> Checkpoint | None:
        if await self.get_job(job_id, user_id) is None:
            return None
        row = await self._read_one(
            _SQL["get_checkpoint"],
            (job_id, generation),
        )
        return None if row is None else _decode.checkpoint(row, with_manifest=True)

    async def add_worker_event(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int,
        kind: str,
        message: str,
        data: Mapping[str, Any] | None,
    ) -> HeldOutcome:
        params = _held_params(job_id, machine_id, user_id, attempt_id)

        def add(conn: sqlite3.Connection) -> HeldOutcome:
            if _one(conn, _SQL["is_held"], params) is None:
                return _why_not_held(conn, params)
            now = self._time()
            _record_phase(conn, attempt_id, kind, data, now)
            count = _one(
                conn,
                _SQL["attempt_event_count"],
                (job_id, attempt_id),
            )
            assert count is not None
            if count[0] < MAX_WORKER_EVENTS_PER_ATTEMPT:
                _add_event(
                    conn,
                    job_id,
                    kind,
                    message,
                    now,
                    attempt_id=attempt_id,
                    machine_id=machine_id,
                    data=data,
                )
            return HeldOutcome.DONE

        return await self._write(add)

    async def list_job_events(
        self, job_id: str, user_id: str | None, after_id: int = 0, limit: int = 1000
    ) -> list[JobEvent] | None:
        if await self.get_job(job_id, user_id) is None:
            return None
        rows = await self._read(
            _SQL["list_job_events"],
            (job_id, after_id, limit),
        )
        return [_decode.event(row) for row in rows]

    # -- goodput -----------------------------------------------------------------------
    async def job_goodput(self, job_id: str, user_id: str | None) -> JobLedger | None:
        job = await self.get_job(job_id, user_id)
        if job is None:
            return None
        rows = await self._read(
            _SQL["job_goodput"],
            {"job_id": job_id, "user_id": user_id, "now": self._time()},
        )
        return JobLedger(job.id, job.status, [attempt_ledger(row) for row in rows])

    async def group_goodput(
        self, user_id: str | None, container_group_id: str, since: datetime, until: datetime
    ) -> GroupLedger:
        rows = await self._read(
            _SQL["group_goodput"],
            {
                "group": container_group_id,
                "user_id": user_id,
                "since": since.timestamp(),
                "until": until.timestamp(),
                "now": self._time(),
            },
        )
        return group_ledger(container_group_id, since, until, rows[0])

    async def note_api_alive(self) -> float:
        def note(conn: sqlite3.Connection) -> float:
            now = self._time()
            row = _one(conn, _SQL["api_last_seen"])
            if row is None:
                # First start on this database (or after an upgrade): the last sign of life
                # is the newest heartbeat heard.
                heard = _one(conn, _SQL["newest_running_heartbeat"])
                last_seen = heard[0] if heard is not None and heard[0] is not None else now
            else:
                last_seen = row["last_seen"]
            gap = now - last_seen
            if gap > OUTAGE_GAP_SECONDS:
                # Nobody could hear heartbeats since `last_seen`: a job whose lease was
                # still good then gets a full lease from now, to beat again.
                conn.execute(
                    _SQL["extend_leases_after_outage"],
                    {"now": now, "last_seen": last_seen, "grace": OUTAGE_GRACE_SECONDS},
                )
            conn.execute(
                _SQL["note_api_alive"],
                {"now": now},
            )
            return gap if gap > OUTAGE_GAP_SECONDS else 0.0

        return await self._write(note)

    async def claim_reallocation(
        self, user_id: str, machine_id: str, threshold: int
    ) -> Blocked | None:
        params = {"user_id": user_id, "machine_id": machine_id}

        def mark(conn: sqlite3.Connection) -> Blocked | None:
            count = _one(conn, _SQL["tenant_blocked_jobs"], params)
            assert count is not None
            if count[0] < threshold or count[0] == 0:
                return None
            inserted = _all(
                conn,
                _SQL["insert_reallocation"],
                {**params, "now": self._time()},
            )
            if not inserted:
                return None
            where = _one(
                conn,
                _SQL["last_blocked_job"],
                params,
            )
            assert where is not None  # count > 0 and job_blocks rows always have their job
            return Blocked(
                user_id=user_id,
                machine_id=machine_id,
                container_group_id=where["container_group_id"],
                org_name=where["org_name"],
                project_name=where["project_name"],
                blocked_jobs=count[0],
            )

        return await self._write(mark)

    # -- webhook outbox ----------------------------------------------------------------
    async def claim_webhook_events(
        self,
        limit: int,
        lease_seconds: float,
        *,
        per_receiver: int | None = None,
        allowances: Mapping[str, int] | None = None,
    ) -> list[WebhookEvent]:
        token = new_id()
        params = {
            "limit": limit,
            "per_receiver": limit if per_receiver is None else per_receiver,
            "allowances": json.dumps(dict(allowances or {})),
            "token": token,
        }

        def lease(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            now = self._time()
            return _all(
                conn,
                _SQL["claim_webhook_events"],
                {**params, "now": now, "until": now + lease_seconds},
            )

        rows = await self._write(lease)
        events = [
            WebhookEvent(
                id=row["id"],
                user_id=row["user_id"],
                url=row["url"],
                payload=json.loads(row["payload"]),
                attempts=row["attempts"],
                created=_dt(row["created"]),
                lease_token=token,
                receiver=row["receiver"],
            )
            for row in rows
        ]
        return sorted(events, key=lambda event: event.id)

    async def webhook_delivered(self, event: WebhookEvent) -> bool:
        return await self._record_webhook_outcome(_SQL["webhook_delivered"], event, {})

    async def webhook_retry_later(
        self, event: WebhookEvent, delay_seconds: float, error: str
    ) -> bool:
        return await self._record_webhook_outcome(
            _SQL["webhook_retry_later"],
            event,
            {"delay": delay_seconds, "error": error},
        )

    async def webhook_give_up(self, event: WebhookEvent, error: str) -> bool:
        return await self._record_webhook_outcome(_SQL["webhook_give_up"], event, {"error": error})

    async def webhook_postpone(self, event: WebhookEvent, delay_seconds: float) -> bool:
        def release(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                _SQL["webhook_postpone"],
                {
                    "now": self._time(),
                    "delay": delay_seconds,
                    "id": event.id,
                    "token": event.lease_token,
                },
            )
            return cursor.rowcount == 1

        return await self._write(release)

    async def postpone_receiver_webhooks(self, receiver: str, delay_seconds: float) -> int:
        def postpone(conn: sqlite3.Connection) -> int:
            now = self._time()
            cursor = conn.execute(
                _SQL["postpone_receiver_webhooks"],
                {"receiver": receiver, "until": now + delay_seconds, "now": now},
            )
            return cursor.rowcount

        return await self._write(postpone)

    async def _record_webhook_outcome(
        self, statement: str, event: WebhookEvent, params: dict[str, Any]
    ) -> bool:
        """The attempt's outcome (`statement`), written only while its claim holds the lease."""

        def record(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                statement,
                {**params, "now": self._time(), "id": event.id, "token": event.lease_token},
            )
            return cursor.rowcount == 1

        return await self._write(record)

    async def purge_finished_webhooks(self, older_than_seconds: float) -> int:
        cutoff = self._time() - older_than_seconds

        def purge(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(_SQL["purge_finished_webhooks"], (cutoff,))
            return cursor.rowcount

        return await self._write(purge)

    async def pending_webhook_count(self) -> int:
        row = await self._read_one(_SQL["pending_webhook_count"])
        assert row is not None
        return int(row[0])

    # -- scaling rules -----------------------------------------------------------------
    async def create_scaling_rule(self, rule: ScalingRule) -> ScalingRule:
        def insert(conn: sqlite3.Connection) -> sqlite3.Row | None:
            now = self._time()
            return _one(
                conn,
                _SQL["create_scaling_rule"],
                (
                    rule.user_id,
                    rule.container_group_id,
                    rule.min_replicas,
                    rule.max_replicas,
                    rule.idle_threshold_seconds,
                    now,
                    now,
                    rule.org_name,
                    rule.project_name,
                ),
            )

        try:
            row = await self._write(insert)
        except sqlite3.IntegrityError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
                raise AlreadyExists(
                    f"a scaling rule for {rule.container_group_id!r} exists"
                ) from exc
            raise
        assert row is not None
        return _decode.rule(row)

    async def list_scaling_rules(self, user_id: str | None) -> list[ScalingRule]:
        rows = await self._read(
            _SQL["list_scaling_rules"],
            {"user_id": user_id},
        )
        return [_decode.rule(row) for row in rows]

    async def get_scaling_rule(
        self, user_id: str | None, container_group_id: str
    ) -> ScalingRule | None:
        row = await self._read_one(
            _SQL["get_scaling_rule"],
            {"user_id": user_id, "group": container_group_id},
        )
        return None if row is None else _decode.rule(row)

    async def update_scaling_rule(
        self, user_id: str | None, container_group_id: str, patch: ScalingRulePatch
    ) -> ScalingRule | None:
        params = {
            "min": patch.min_replicas,
            "max": patch.max_replicas,
            "idle": patch.idle_threshold_seconds,
            "group": container_group_id,
            "user_id": user_id,
        }

        def update(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            rows = _all(
                conn,
                _SQL["update_scaling_rule"],
                {**params, "now": self._time()},
            )
            if not rows and _one(
                conn,
                _SQL["scaling_rule_exists"],
                params,
            ):
                raise InvalidChange("min_replicas must not be greater than max_replicas")
            return rows

        rows = await self._write(update)
        rules = sorted((_decode.rule(row) for row in rows), key=lambda r: (r.created, r.user_id))
        return rules[0] if rules else None

    async def delete_scaling_rule(self, user_id: str | None, container_group_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            return bool(
                _all(
                    conn,
                    _SQL["delete_scaling_rule"],
                    {"user_id": user_id, "group": container_group_id},
                )
            )

        return await self._write(delete)

    async def delete_all_scaling_rules(self) -> None:
        await self._execute(_SQL["delete_all_scaling_rules"])

    async def count_active_jobs(
        self, user_id: str, container_group_id: str, idle_threshold_seconds: int
    ) -> int:
        row = await self._read_one(
            _SQL["count_active_jobs"],
            {
                "user_id": user_id,
                "group": container_group_id,
                "since": self._time() - idle_threshold_seconds,
            },
        )
        assert row is not None
        return int(row[0])

    async def try_lease(self, name: str, holder: str, ttl_seconds: float) -> bool:
        def take(conn: sqlite3.Connection) -> bool:
            now = self._time()
            return bool(
                _all(
                    conn,
                    _SQL["try_lease"],
                    {"name": name, "holder": holder, "until": now + ttl_seconds, "now": now},
                )
            )

        return await self._write(take)

    # -- operator views: the dashboard and /metrics (read-only) -------------------------
    async def metrics_snapshot(self) -> StoreMetrics:
        rows = await self._read(_SQL["metrics"])
        return store_metrics((tuple(row) for row in rows), _dt_any)

    async def group_counts(
        self, user_id: str | None, container_group_id: str | None = None
    ) -> list[GroupCounts]:
        statement = _GROUP_COUNTS[user_id is not None, container_group_id is not None]
        rows = await self._read(
            statement, {"user_id": user_id, "container_group_id": container_group_id}
        )
        return group_counts(tuple(row) for row in rows)

    async def blocked_machines(
        self, user_id: str | None, container_group_id: str, limit: int = 100
    ) -> list[BlockedMachine]:
        statement = (
            _SQL["blocked_machines"] if user_id is None else _SQL["blocked_machines_of_user"]
        )
        rows = await self._read(
            statement,
            {"user_id": user_id, "container_group_id": container_group_id, "limit": limit},
        )
        return [BlockedMachine(row[0], int(row[1]), _dt(row[2]), bool(row[3])) for row in rows]

    async def group_activity(
        self,
        user_id: str | None,
        container_group_id: str,
        since: datetime,
        bucket_seconds: float,
        buckets: int,
    ) -> list[ActivityBucket]:
        statement = _SQL["group_activity"] if user_id is None else _SQL["group_activity_of_user"]
        start = since.timestamp()
        rows = await self._read(
            statement,
            {
                "user_id": user_id,
                "container_group_id": container_group_id,
                "since": start,
                "until": start + bucket_seconds * buckets,
                "width": bucket_seconds,
            },
        )
        tallies = activity_tallies((tuple(row) for row in rows), since, bucket_seconds, buckets)
        return activity_series(tallies)


def _held_params(
    job_id: str, machine_id: str, user_id: str | None, attempt_id: int | None
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "machine_id": machine_id,
        "user_id": user_id,
        "attempt_id": attempt_id,
    }


def _why_not_held(conn: sqlite3.Connection, params: Mapping[str, Any]) -> HeldOutcome:
    row = _one(conn, _SQL["job_visible"], params)
    return HeldOutcome.NOT_FOUND if row is None else HeldOutcome.NOT_HOLDER


@dataclasses.dataclass(frozen=True)
class _LabelPlan:
    labels: tuple[tuple[str, str], ...]
    """The query's labels, the one fewest jobs carry first."""
    from_labels: bool
    """Find the jobs through the rarest label's index, then check the others (else walk the
    jobs, checking every label)."""


# A label no more jobs than this carry is where a label filter starts.
RARE_LABEL_JOBS = 2000

# Where a list_jobs statement takes the conditions of its query's filters.
_FILTERS_MARK = "{filters}"
for _name in ("list_jobs_newest_first", "list_jobs_oldest_first"):
    if _SQL[_name].count(_FILTERS_MARK) != 1:
        raise QueryFileError(f"sqlite.sql: {_name} must hold {_FILTERS_MARK} once")


def _with_filters(statement: str, conditions: Sequence[str]) -> str:
    """The list_jobs statement with `WHERE` and the conditions (from `_job_filters`, a closed
    set, never a value) in place of its mark, or nothing there when there are none."""
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    return statement.replace(_FILTERS_MARK, where)


def _job_filters(
    query: JobQuery, labels: _LabelPlan | None = None
) -> tuple[list[str], dict[str, Any]]:
    """The conditions of the filters given, and their parameters, for `_with_filters`: only
    those, so that the planner picks the index that fits them. Each condition is one of the
    closed set that the list_jobs statements of queries/sqlite.sql describe; values are always
    parameters."""
    conditions: list[str] = []
    params: dict[str, Any] = {}
    filters: Iterable[tuple[str, str | None]] = (
        ("user_id", query.user_id),
        ("status", query.status),
        ("container_group_id", query.container_group_id),
    )
    for column, value in filters:
        if value is not None:
            conditions.append(f"{column} = :{column}")
            params[column] = value
    if query.name is not None:
        conditions.append("name = :name")
        params["name"] = query.name
    for i, (key, value) in enumerate(labels.labels if labels is not None else ()):
        label = f"key = :label_key_{i} AND value = :label_value_{i}"
        if labels is not None and labels.from_labels and i == 0:
            conditions.append(f"id IN (SELECT job_id FROM job_labels WHERE {label})")
        else:
            conditions.append(
                f"EXISTS (SELECT 1 FROM job_labels WHERE {label} AND job_id = jobs.id)"
            )
        params[f"label_key_{i}"] = key
        params[f"label_value_{i}"] = value
    return conditions, params


# -- operator views: the dashboard and /metrics (read-only) ---------------------------------

# A group's job counts by whether the caller is one user and whether it asks for one group:
# a whole statement each, each planned on the index that fits it.
_GROUP_COUNTS = {
    (False, False): _SQL["group_counts"],
    (True, False): _SQL["group_counts_of_user"],
    (False, True): _SQL["group_counts_of_group"],
    (True, True): _SQL["group_counts_of_user_in_group"],
}


def _dt_any(value: object) -> datetime:
    assert isinstance(value, int | float)
    return _dt(value)
