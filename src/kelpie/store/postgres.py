"""PostgreSQL store: asyncpg, a connection pool, plain SQL (every statement whole and named in
queries/postgresql.sql).

Every worker-side state change is one statement: the fenced `UPDATE … RETURNING` of the job,
with the attempt, block and webhook outbox writes as data-modifying CTEs of the same
statement, so they commit or vanish together in one round trip. Submissions are one
statement too; they are announced to the other API processes (LISTEN/NOTIFY) right after
they commit. Times come from the database clock (`now()`: the start of the statement's
transaction), unless the store was given a clock (kelpie.store.clock): every statement that
reads the time takes it as its last parameter, NULL for the database's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from kelpie.backoff import Backoff
from kelpie.store._common import (
    CANCELED_MESSAGE,
    IDEMPOTENCY_JOBS_GONE,
    IDEMPOTENCY_KEY_LIFETIME_S,
    IDEMPOTENCY_KEY_REUSED,
    MAX_WORKER_EVENTS_PER_ATTEMPT,
    NEW_JOBS_CHANNEL,
    OUTAGE_GAP_SECONDS,
    OUTAGE_GRACE_SECONDS,
    PURGED_MESSAGE,
    STALLED_MESSAGE,
    WARNING_EVENT_KINDS,
    RowDecoder,
    as_job_status,
    checkpoint_message,
    claimed_message,
    completed_message,
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
    progress_message,
    progress_milestone,
    replayed_jobs,
    stalled_message,
    stalled_reason,
    webhook_payload,
)
from kelpie.store._connection_pool import UNREACHABLE_ERRORS, ConnectionPool
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
_decode = RowDecoder(time=lambda value: value, json=lambda value: value)

# pg_advisory_xact_lock key serializing migrations of one database across processes
_MIGRATION_LOCK = int.from_bytes(b"kelpie:m", "big")
_LISTEN_RETRY = Backoff(base=0.5, cap=30.0, floor=0.25)
# A server that does not answer a connection attempt within this long counts as unreachable
# (asyncpg would wait 60 s).
CONNECT_TIMEOUT_S = 10.0
_LISTEN_ERRORS: tuple[type[BaseException], ...] = (*UNREACHABLE_ERRORS, asyncpg.PostgresError)

# Every statement is whole and named in queries/postgresql.sql; a name the file lacks fails
# here, at import.
_SQL = load_queries("postgresql")


def _with_placeholder(statement: str, placeholder: str) -> str:
    """A statement the code completes at run time, checked to hold its placeholder once
    (without it, filling it in would silently drop what it stands for)."""
    if statement.count(placeholder) != 1:
        raise QueryFileError(f"a statement must hold {placeholder} once: {statement}")
    return statement


# jobs, worker side
_CLAIM = _SQL["claim"]
_HEARTBEAT = _SQL["heartbeat"]
_HEARTBEAT_WITH_PROGRESS = _SQL["heartbeat_with_progress"]
_RECORD_PROGRESS = _SQL["record_progress"]
_ADD_PROGRESS_EVENT = _SQL["add_progress_event"]
_COMPLETE = _SQL["complete"]
_FAIL = _SQL["fail"]
_INTERRUPT = _SQL["interrupt"]
_END_STALLED_OUT_OF_INTERRUPTIONS = _SQL["end_stalled_out_of_interruptions"]
_ANY_STALLED_JOB = _SQL["any_stalled_job"]
_LOCK_STALLED_JOBS = _SQL["lock_stalled_jobs"]
_FAIL_STALLED = _SQL["fail_stalled"]
_BLOCK_MACHINE = _SQL["block_machine"]
_FAIL_RUNNING_ATTEMPT = _SQL["fail_running_attempt"]
_ADD_STALLED_EVENT = _SQL["add_stalled_event"]
_QUEUE_WEBHOOK_EVENT = _SQL["queue_webhook_event"]
_ADD_WORKER_EVENT = _SQL["add_worker_event"]
_JOB_STATUS = _SQL["job_status"]
_JOB_EXISTS = _SQL["job_exists"]
_CLAIM_REALLOCATION = _SQL["claim_reallocation"]
_NOTE_WORKER = _SQL["note_worker"]
# checkpoints
_LOCK_JOB_FOR_COMMIT = _SQL["lock_job_for_commit"]
_GET_CHECKPOINT = _SQL["get_checkpoint"]
_ADD_CHECKPOINT = _SQL["add_checkpoint"]
_SET_CHECKPOINT_GENERATION = _SQL["set_checkpoint_generation"]
_COUNT_COMMIT = _SQL["count_commit"]
_KEPT_MANIFESTS = _SQL["kept_manifests"]
_DROP_MANIFESTS = _SQL["drop_manifests"]
_ADD_CHECKPOINT_EVENT = _SQL["add_checkpoint_event"]
# submissions, and the user's changes to jobs
_CREATE_JOBS = _SQL["create_jobs"]
_TAKE_IDEMPOTENCY_KEY = _SQL["take_idempotency_key"]
_GET_IDEMPOTENCY_KEY = _SQL["get_idempotency_key"]
_JOBS_BY_IDS = _SQL["jobs_by_ids"]
_PURGE_IDEMPOTENCY_KEYS = _SQL["purge_idempotency_keys"]
_ANNOUNCE_NEW_JOBS = _SQL["announce_new_jobs"]
_CANCEL = _SQL["cancel"]
_LOCK_LIVE_JOBS_OF_GROUP = _SQL["lock_live_jobs_of_group"]
_PURGE_GROUP = _SQL["purge_group"]
_DELETE_ALL_JOBS = _SQL["delete_all_jobs"]
# reads
_GET_JOB = _SQL["get_job"]
# completed at run time: list_jobs puts its filters in place of {filters}
_LIST_JOBS_NEWEST_FIRST = _with_placeholder(_SQL["list_jobs_newest_first"], "{filters}")
_LIST_JOBS_OLDEST_FIRST = _with_placeholder(_SQL["list_jobs_oldest_first"], "{filters}")
_LIST_ATTEMPTS = _SQL["list_attempts"]
_ATTEMPT_WARNINGS = _SQL["attempt_warnings"]
_LIST_CHECKPOINTS = _SQL["list_checkpoints"]
_LIST_JOB_EVENTS = _SQL["list_job_events"]
_LIST_WORKERS = _SQL["list_workers"]
_PURGE_WORKERS = _SQL["purge_workers"]
_PENDING_REASON = _SQL["pending_reason"]
# users and keys
_ENSURE_ADMIN_USER = _SQL["ensure_admin_user"]
_MAKE_ADMIN = _SQL["make_admin"]
_ADD_BOOTSTRAP_KEY = _SQL["add_bootstrap_key"]
_REVOKE_OTHER_BOOTSTRAP_KEYS = _SQL["revoke_other_bootstrap_keys"]
_CREATE_USER = _SQL["create_user"]
_GET_USER = _SQL["get_user"]
_ADD_API_KEY = _SQL["add_api_key"]
_LIST_API_KEYS = _SQL["list_api_keys"]
_REVOKE_API_KEY = _SQL["revoke_api_key"]
_PRINCIPAL_FOR_KEY = _SQL["principal_for_key"]
_DELETE_NON_ADMIN_USERS = _SQL["delete_non_admin_users"]
# webhook outbox
_CLAIM_WEBHOOK_EVENTS = _SQL["claim_webhook_events"]
_WEBHOOK_DELIVERED = _SQL["webhook_delivered"]
_WEBHOOK_RETRY_LATER = _SQL["webhook_retry_later"]
_WEBHOOK_GIVE_UP = _SQL["webhook_give_up"]
_WEBHOOK_POSTPONE = _SQL["webhook_postpone"]
_POSTPONE_RECEIVER_WEBHOOKS = _SQL["postpone_receiver_webhooks"]
_PURGE_FINISHED_WEBHOOKS = _SQL["purge_finished_webhooks"]
_PENDING_WEBHOOK_COUNT = _SQL["pending_webhook_count"]
# scaling rules and leases
_CREATE_SCALING_RULE = _SQL["create_scaling_rule"]
_LIST_SCALING_RULES = _SQL["list_scaling_rules"]
_GET_SCALING_RULE = _SQL["get_scaling_rule"]
_UPDATE_SCALING_RULE = _SQL["update_scaling_rule"]
_SCALING_RULE_EXISTS = _SQL["scaling_rule_exists"]
_DELETE_SCALING_RULE = _SQL["delete_scaling_rule"]
_DELETE_ALL_SCALING_RULES = _SQL["delete_all_scaling_rules"]
_COUNT_ACTIVE_JOBS = _SQL["count_active_jobs"]
_TRY_LEASE = _SQL["try_lease"]
# goodput
_JOB_GOODPUT = _SQL["job_goodput"]
_GROUP_GOODPUT = _SQL["group_goodput"]
_CUSTOM_PLAN = _SQL["custom_plan"]
# operator views: the dashboard and /metrics (read-only)
_METRICS = _SQL["metrics"]
_GROUP_COUNTS = _SQL["group_counts"]
_GROUP_COUNTS_OF_USER = _SQL["group_counts_of_user"]
_GROUP_COUNTS_OF_GROUP = _SQL["group_counts_of_group"]
_GROUP_COUNTS_OF_USER_IN_GROUP = _SQL["group_counts_of_user_in_group"]
_BLOCKED_MACHINES = _SQL["blocked_machines"]
_BLOCKED_MACHINES_OF_USER = _SQL["blocked_machines_of_user"]
_GROUP_ACTIVITY = _SQL["group_activity"]
_GROUP_ACTIVITY_OF_USER = _SQL["group_activity_of_user"]
# the store's own upkeep: migrations, liveness
_PING = _SQL["ping"]
_LOCK_MIGRATIONS = _SQL["lock_migrations"]
_CREATE_SCHEMA_MIGRATIONS = _SQL["create_schema_migrations"]
_APPLIED_MIGRATIONS = _SQL["applied_migrations"]
_NOTE_MIGRATION = _SQL["note_migration"]
_LOCK_API_LIVENESS = _SQL["lock_api_liveness"]
_NEWEST_HEARTBEAT = _SQL["newest_heartbeat"]
_SECONDS_SINCE = _SQL["seconds_since"]
_EXTEND_LEASES_AFTER_OUTAGE = _SQL["extend_leases_after_outage"]
_NOTE_API_ALIVE = _SQL["note_api_alive"]


def _job_columns(ids: Sequence[str], jobs: Sequence[NewJob]) -> tuple[list[Any], ...]:
    """The arrays of `_CREATE_JOBS` after the user: one per column, then the labels."""
    labels = [
        row for job_id, job in zip(ids, jobs, strict=True) for row in label_rows(job_id, job.labels)
    ]
    return (
        list(ids),
        [job.container_group_id for job in jobs],
        [job.max_failures for job in jobs],
        [job.heartbeat_interval for job in jobs],
        [job.webhook for job in jobs],
        [json.dumps(dict(job.spec)) for job in jobs],
        [job.org_name for job in jobs],
        [job.project_name for job in jobs],
        [job.checkpoint_keep for job in jobs],
        [job.name for job in jobs],
        [job.max_interruptions for job in jobs],
        [job.priority for job in jobs],
        [job.logs_prefix for job in jobs],
        [job.stall_timeout for job in jobs],
        [job_id for job_id, _, _ in labels],
        [key for _, key, _ in labels],
        [value for _, _, value in labels],
    )


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )


class PostgresStore:
    """The Store on one PostgreSQL database; any number of processes may share it."""

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 2,
        max_connections: int = 10,
        clock: Clock | None = None,
    ) -> None:
        self._url = url
        self._clock = clock
        self._min_connections = min_connections
        self._max_connections = max_connections
        self._pool: ConnectionPool | None = None
        self._listen_conn: asyncpg.Connection[asyncpg.Record] | None = None
        self._new_job_listeners: list[Callable[[str], None]] = []
        self._relisten_task: asyncio.Task[None] | None = None
        self._unannounced: set[str] = set()
        self._announcing: asyncio.Task[None] | None = None
        self._closing = False

    def _now(self) -> datetime | None:
        """The time the statements take as their last parameter: the store's clock, else
        NULL, for the database clock (`now()`, the start of the transaction)."""
        return None if self._clock is None else self._clock()

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            raise StoreError("store is already open")
        self._closing = False
        self._pool = ConnectionPool(self._connect, self._max_connections)
        try:
            await self._pool.open(self._min_connections)
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self._closing = True
        if self._announcing is not None:
            await asyncio.gather(self._announcing, return_exceptions=True)
            self._announcing = None
        if self._relisten_task is not None:
            self._relisten_task.cancel()
            await asyncio.gather(self._relisten_task, return_exceptions=True)
            self._relisten_task = None
        if self._listen_conn is not None:
            await self._listen_conn.close()
            self._listen_conn = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        self._new_job_listeners.clear()

    async def ping(self) -> None:
        await self._connected().fetchval(_PING)

    async def _connect(self) -> asyncpg.Connection[asyncpg.Record]:
        conn = await asyncpg.connect(
            self._url,
            server_settings={"application_name": "kelpie"},
            timeout=CONNECT_TIMEOUT_S,
        )
        try:
            await _init_connection(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _connected(self) -> ConnectionPool:
        if self._pool is None:
            raise StoreUnavailable("store is not open: call open() first")
        return self._pool

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
        async with self._connected().acquire() as conn, conn.transaction():
            yield conn

    async def _migrate(self) -> None:
        migrations = load_migrations("postgresql")
        newest_known = max((m.version for m in migrations), default=0)
        async with self._transaction() as conn:
            # several processes may start at once against a fresh database
            await conn.execute(_LOCK_MIGRATIONS, _MIGRATION_LOCK)
            await conn.execute(_CREATE_SCHEMA_MIGRATIONS)
            applied = {row[0] for row in await conn.fetch(_APPLIED_MIGRATIONS)}
            if applied and max(applied) > newest_known:
                raise StoreError(
                    f"database schema version {max(applied)} is newer than this kelpie"
                    f" ({newest_known}): upgrade kelpie"
                )
            for migration in migrations:
                if migration.version in applied:
                    continue
                await conn.execute(migration.sql)
                await conn.execute(_NOTE_MIGRATION, migration.version)
                logger.info("applied migration %s", migration.name)

    async def listen_for_new_jobs(self, on_new_jobs: Callable[[str], None]) -> None:
        """One dedicated connection LISTENs for every caller; `create_jobs` NOTIFYs."""
        self._new_job_listeners.append(on_new_jobs)
        if self._listen_conn is None and self._relisten_task is None:
            try:
                await self._listen()
            except _LISTEN_ERRORS as exc:
                logger.warning("cannot listen for new jobs yet (%s); retrying", exc)
                self._relisten_task = asyncio.get_running_loop().create_task(
                    self._relisten(), name="kelpie-store-relisten"
                )

    async def _listen(self) -> None:
        conn = await asyncpg.connect(
            self._url, server_settings={"application_name": "kelpie"}, timeout=CONNECT_TIMEOUT_S
        )
        conn.add_termination_listener(self._on_listen_connection_lost)
        await conn.add_listener(NEW_JOBS_CHANNEL, self._on_notification)
        self._listen_conn = conn

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        for listener in self._new_job_listeners:
            try:
                listener(str(payload))
            except Exception:
                logger.exception("new-jobs listener failed")

    def _on_listen_connection_lost(self, _conn: object) -> None:
        self._listen_conn = None
        if not self._closing:
            logger.warning("lost the connection listening for new jobs; reconnecting")
            self._relisten_task = asyncio.get_running_loop().create_task(
                self._relisten(), name="kelpie-store-relisten"
            )

    async def _relisten(self) -> None:
        attempt = 0
        while not self._closing:
            delay = _LISTEN_RETRY.delay(attempt + 1)
            await asyncio.sleep(delay)
            try:
                await self._listen()
            except _LISTEN_ERRORS as exc:
                attempt += 1
                # Not at every attempt: the database may be down for a while, and the loss
                # was logged already.
                logger.debug("cannot listen for new jobs yet (%s); retrying", exc)
                continue
            logger.info("listening for new jobs again")
            self._relisten_task = None
            return

    # -- users and keys ----------------------------------------------------------------
    async def ensure_admin(self, username: str, key_hash: str) -> User:
        now = self._now()
        async with self._transaction() as conn:
            await conn.execute(
                _ENSURE_ADMIN_USER,
                new_id(),
                username,
                new_webhook_secret(),
                new_webhook_token(),
                now,
            )
            row = await conn.fetchrow(_MAKE_ADMIN, username)
            assert row is not None  # inserted or already there, inside this transaction
            await conn.execute(_ADD_BOOTSTRAP_KEY, new_id(), key_hash, row["id"], now)
            await conn.execute(_REVOKE_OTHER_BOOTSTRAP_KEYS, key_hash)
        return _decode.user(row)

    async def create_user(self, username: str, *, is_admin: bool = False) -> User:
        try:
            row = await self._connected().fetchrow(
                _CREATE_USER,
                new_id(),
                username,
                is_admin,
                new_webhook_secret(),
                new_webhook_token(),
                self._now(),
            )
        except asyncpg.UniqueViolationError as exc:
            raise AlreadyExists(f"username {username!r} is taken") from exc
        assert row is not None
        return _decode.user(row)

    async def get_user(self, user_id: str) -> User | None:
        row = await self._connected().fetchrow(_GET_USER, user_id)
        return None if row is None else _decode.user(row)

    async def add_api_key(
        self, user_id: str, key_hash: str, org_name: str | None, project_name: str | None
    ) -> ApiKey:
        try:
            row = await self._connected().fetchrow(
                _ADD_API_KEY,
                new_id(),
                key_hash,
                user_id,
                org_name,
                project_name,
                self._now(),
            )
        except asyncpg.ForeignKeyViolationError as exc:
            raise NotFound(f"no user {user_id}") from exc
        except asyncpg.UniqueViolationError as exc:
            raise AlreadyExists("an API key with this hash exists") from exc
        assert row is not None
        return _decode.api_key(row)

    async def list_api_keys(self, user_id: str) -> list[ApiKey]:
        rows = await self._connected().fetch(_LIST_API_KEYS, user_id)
        return [_decode.api_key(row) for row in rows]

    async def revoke_api_key(self, user_id: str, key_id: str) -> bool:
        row = await self._connected().fetchrow(_REVOKE_API_KEY, key_id, user_id)
        return row is not None

    async def principal_for_key(self, key_hash: str) -> Principal | None:
        row = await self._connected().fetchrow(_PRINCIPAL_FOR_KEY, key_hash)
        if row is None:
            return None
        return Principal(
            user=_decode.user(row), org_name=row["org_name"], project_name=row["project_name"]
        )

    async def delete_non_admin_users(self) -> None:
        await self._connected().execute(_DELETE_NON_ADMIN_USERS)

    # -- jobs, user side ---------------------------------------------------------------
    async def create_jobs(self, user_id: str, jobs: Sequence[NewJob]) -> list[Job]:
        ids = [new_id() for _ in jobs]
        try:
            rows = await self._connected().fetch(
                _CREATE_JOBS, user_id, *_job_columns(ids, jobs), self._now()
            )
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise StoreError(f"batch rejected, no job stored: {exc}") from exc
        self._announce_new_jobs(job.container_group_id for job in jobs)
        by_id = {row["id"]: _decode.job(row) for row in rows}
        return [by_id[job_id] for job_id in ids]

    async def create_jobs_once(
        self, user_id: str, jobs: Sequence[NewJob], request: IdempotentRequest
    ) -> Submitted:
        ids = [new_id() for _ in jobs]
        now = self._now()
        try:
            async with self._transaction() as conn:
                taken = await conn.fetchval(
                    _TAKE_IDEMPOTENCY_KEY,
                    user_id,
                    request.key,
                    request.fingerprint,
                    request.status_code,
                    ids,
                    IDEMPOTENCY_KEY_LIFETIME_S,
                    now,
                )
                if not taken:
                    return await self._replay(conn, user_id, request)
                rows = await conn.fetch(_CREATE_JOBS, user_id, *_job_columns(ids, jobs), now)
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise StoreError(f"batch rejected, no job stored: {exc}") from exc
        self._announce_new_jobs(job.container_group_id for job in jobs)
        by_id = {row["id"]: _decode.job(row) for row in rows}
        created = [by_id[job_id] for job_id in ids]
        return Submitted(created, replayed=False, status_code=request.status_code)

    async def _replay(
        self,
        conn: asyncpg.Connection[asyncpg.Record],
        user_id: str,
        request: IdempotentRequest,
    ) -> Submitted:
        """The answer to a request whose idempotency key another request holds (committed:
        the statement that found it waited for that one's transaction)."""
        earlier = await conn.fetchrow(_GET_IDEMPOTENCY_KEY, user_id, request.key)
        if earlier is None or earlier["fingerprint"] != request.fingerprint:
            raise IdempotencyConflict(IDEMPOTENCY_KEY_REUSED)
        rows = await conn.fetch(_JOBS_BY_IDS, earlier["job_ids"])
        found = replayed_jobs(earlier["job_ids"], [_decode.job(row) for row in rows])
        if found is None:
            raise IdempotencyConflict(IDEMPOTENCY_JOBS_GONE)
        return Submitted(found, replayed=True, status_code=earlier["status_code"])

    async def purge_idempotency_keys(self) -> int:
        status: str = await self._connected().execute(
            _PURGE_IDEMPOTENCY_KEYS, IDEMPOTENCY_KEY_LIFETIME_S, self._now()
        )
        return int(status.rsplit(" ", 1)[1])

    def _announce_new_jobs(self, groups: Iterable[str]) -> None:
        """Wakes long polls in every API process (`listen_for_new_jobs`) for these groups.

        Not a NOTIFY inside the submitting transaction: PostgreSQL serializes the commits of
        notifying transactions behind one database-wide lock held through their WAL flush,
        which capped submissions at one fsync each. Instead, after the commit, one
        announcement at a time carries every group submitted meanwhile. Best effort, as
        notifications always are: a long poll also re-checks the queue on a timer."""
        self._unannounced.update(groups)
        if self._announcing is None or self._announcing.done():
            self._announcing = asyncio.get_running_loop().create_task(
                self._send_announcements(), name="kelpie-store-announce"
            )

    async def _send_announcements(self) -> None:
        while self._unannounced and self._pool is not None:
            groups = sorted(self._unannounced)
            self._unannounced.clear()
            try:
                await self._pool.execute(_ANNOUNCE_NEW_JOBS, NEW_JOBS_CHANNEL, groups)
            except (StoreUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("could not announce new jobs in %s: %s", groups, exc)

    async def get_job(self, job_id: str, user_id: str | None) -> Job | None:
        row = await self._connected().fetchrow(_GET_JOB, job_id, user_id)
        return None if row is None else _decode.job(row)

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        args: list[Any] = [query.page_size, page_offset(query.page, query.page_size)]
        # only the filters given, so that the planner picks the index that fits them
        conditions: list[str] = []
        for column, value in (
            ("user_id", query.user_id),
            ("status", query.status),
            ("container_group_id", query.container_group_id),
            ("name", query.name),
        ):
            if value is not None:
                args.append(value)
                conditions.append(f"{column} = ${len(args)}")
        for key, value in query.labels:
            args += [key, value]
            conditions.append(
                f"id IN (SELECT job_id FROM job_labels WHERE key = ${len(args) - 1}"
                f" AND value = ${len(args)})"
            )
        filters = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        listed = _LIST_JOBS_OLDEST_FIRST if query.ascending else _LIST_JOBS_NEWEST_FIRST
        statement = listed.replace("{filters}", filters)
        if not query.labels:
            rows = await self._connected().fetch(statement, *args)
            return [_decode.job(row) for row in rows]
        async with self._transaction() as conn:
            # A plan for these labels: one kept for any label would be the same whether the
            # label marks one job (find it through the label's index) or thousands (walk the
            # jobs newest first and check each), and slow for one of them.
            await conn.execute(_CUSTOM_PLAN)
            rows = await conn.fetch(statement, *args)
        return [_decode.job(row) for row in rows]

    async def cancel_job(self, job_id: str, user_id: str | None) -> CancelOutcome:
        pool = self._connected()
        if await pool.fetchrow(_CANCEL, job_id, user_id, CANCELED_MESSAGE, self._now()) is not None:
            return CancelOutcome.CANCELED
        status = await pool.fetchval(_JOB_STATUS, job_id, user_id)
        if status is None:
            return CancelOutcome.NOT_FOUND
        # _CANCEL takes every pending or running job, so this one has ended for good
        if status == "canceled":
            return CancelOutcome.ALREADY_CANCELED
        return CancelOutcome.ALREADY_ENDED

    async def purge_group(self, user_id: str, container_group_id: str) -> int:
        async with self._transaction() as conn:
            # Lock the group's live jobs first: claims skip them and workers' reports wait,
            # so no job slips from pending to running (or back) between delete and cancel.
            await conn.execute(_LOCK_LIVE_JOBS_OF_GROUP, user_id, container_group_id)
            touched = await conn.fetchval(
                _PURGE_GROUP, user_id, container_group_id, PURGED_MESSAGE, self._now()
            )
        return int(touched)

    async def delete_all_jobs(self) -> None:
        await self._connected().execute(_DELETE_ALL_JOBS)

    async def list_attempts(self, job_id: str, user_id: str | None) -> list[Attempt] | None:
        pool = self._connected()
        visible = await pool.fetchval(_JOB_EXISTS, job_id, user_id)
        if not visible:
            return None
        rows = await pool.fetch(_LIST_ATTEMPTS, job_id)
        warnings: dict[int, list[str]] = {}
        for event in await pool.fetch(_ATTEMPT_WARNINGS, job_id, list(WARNING_EVENT_KINDS)):
            warnings.setdefault(event["attempt_id"], []).append(event["message"])
        return [_decode.attempt(row, warnings.get(row["id"], ())) for row in rows]

    # -- jobs, worker side -------------------------------------------------------------
    async def claim_job(
        self, machine_id: str, container_group_id: str, user_id: str | None
    ) -> Job | None:
        row = await self._connected().fetchrow(
            _CLAIM,
            machine_id,
            container_group_id,
            user_id,
            claimed_message(machine_id),
            lost_message(machine_id),
            self._now(),
        )
        return None if row is None else _decode.job(row)

    async def heartbeat(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> JobStatus | None:
        pool = self._connected()
        if progress is not None:
            if await self._beat_with_progress(job_id, machine_id, user_id, attempt_id, progress):
                return "running"
        elif await pool.fetchval(_HEARTBEAT, job_id, machine_id, user_id, attempt_id, self._now()):
            return "running"
        status = await pool.fetchval(_JOB_STATUS, job_id, user_id)
        if status is None:
            return None
        # still running means another machine holds it now: this one must drop the job
        return "canceled" if status == "running" else as_job_status(status)

    async def _beat_with_progress(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int | None,
        progress: Mapping[str, Any],
    ) -> bool:
        """The holder's beat that brings the job's progress: recorded (with a new stall
        deadline) when it changed, and a `progress` event at a milestone. False when the
        caller does not hold the job."""
        now = self._now()
        async with self._transaction() as conn:
            held = await conn.fetchrow(
                _HEARTBEAT_WITH_PROGRESS, job_id, machine_id, user_id, attempt_id, now
            )
            if held is None:
                return False
            previous = held["progress"]
            if previous == progress:
                return True
            await conn.execute(_RECORD_PROGRESS, job_id, dict(progress), now)
            if progress_milestone(previous, progress):
                await conn.execute(
                    _ADD_PROGRESS_EVENT,
                    job_id,
                    held["attempt_id"],
                    machine_id,
                    progress_message(progress),
                    dict(progress),
                    now,
                )
        return True

    async def complete_if_held(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int | None = None,
    ) -> HeldOutcome:
        row = await self._connected().fetchrow(
            _COMPLETE,
            job_id,
            machine_id,
            user_id,
            attempt_id,
            completed_message(machine_id),
            self._now(),
        )
        if row is not None:
            return HeldOutcome.DONE
        return await self._why_not_held(job_id, user_id)

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
        row = await self._connected().fetchrow(
            _FAIL,
            job_id,
            machine_id,
            user_id,
            exit_code,
            error,
            attempt_id,
            failure_message(machine_id, exit_code, error, ended=True, fail_now=fail_now),
            failure_message(machine_id, exit_code, error, ended=False),
            {"exit_code": exit_code, "error": error},
            fail_now,
            self._now(),
        )
        if row is None:
            return FailureResult(await self._why_not_held(job_id, user_id))
        return FailureResult(
            HeldOutcome.DONE, _decode.job(row), machine_blocked_jobs=row["machine_blocked_jobs"]
        )

    async def interrupt_if_held(
        self,
        job_id: str,
        machine_id: str,
        user_id: str | None,
        attempt_id: int | None = None,
        *,
        exit_code: int | None = None,
    ) -> HeldOutcome:
        row = await self._connected().fetchrow(
            _INTERRUPT,
            job_id,
            machine_id,
            user_id,
            attempt_id,
            interrupted_message(machine_id, exit_code),
            exit_code,
            interruption_event_data(exit_code),
            self._now(),
        )
        if row is not None:
            return HeldOutcome.DONE
        return await self._why_not_held(job_id, user_id)

    async def end_stalled_out_of_interruptions(self) -> list[Job]:
        rows = await self._connected().fetch(
            _END_STALLED_OUT_OF_INTERRUPTIONS, STALLED_MESSAGE, self._now()
        )
        return [_decode.job(row) for row in rows]

    async def end_stalled_jobs(self) -> list[Job]:
        pool = self._connected()
        if not await pool.fetchval(_ANY_STALLED_JOB, self._now()):
            return []
        stopped: list[Job] = []
        now = self._now()
        async with self._transaction() as conn:
            found = await conn.fetch(_LOCK_STALLED_JOBS, now)
            for held in found:
                reason = stalled_reason(held["stall_timeout"])
                row = await conn.fetchrow(_FAIL_STALLED, held["id"], reason, now)
                assert row is not None  # locked since the read
                job = _decode.job(row)
                machine_id = held["machine_id"]
                await conn.execute(_BLOCK_MACHINE, job.id, machine_id, now)
                await conn.execute(_FAIL_RUNNING_ATTEMPT, job.id, now)
                await conn.execute(
                    _ADD_STALLED_EVENT,
                    job.id,
                    job.attempt_id,
                    machine_id,
                    stalled_message(machine_id, reason, ended=job.status == "failed"),
                    {"exit_code": None, "error": reason, "stall_timeout": job.stall_timeout},
                    now,
                )
                if job.status == "failed" and job.webhook is not None:
                    await conn.execute(
                        _QUEUE_WEBHOOK_EVENT,
                        job.user_id,
                        job.webhook,
                        webhook_payload("failed", job.id, machine_id, job.container_group_id),
                        now,
                    )
                stopped.append(job)
        return stopped

    # -- workers -----------------------------------------------------------------------
    async def note_workers_seen(self, sightings: Sequence[WorkerSighting]) -> None:
        if not sightings:
            return
        now = self._now()
        async with self._transaction() as conn:
            await conn.executemany(
                _NOTE_WORKER,
                [
                    (
                        seen.user_id,
                        seen.container_group_id,
                        seen.machine_id,
                        seen.any_user,
                        seen.version,
                        seen.polled,
                        now,
                    )
                    for seen in sightings
                ],
            )

    async def purge_workers(self) -> int:
        status: str = await self._connected().execute(
            _PURGE_WORKERS, WORKER_RETENTION_SECONDS, self._now()
        )
        return int(status.rsplit(" ", 1)[1])

    async def list_workers(
        self, user_id: str | None, container_group_id: str | None, seen_within_seconds: float
    ) -> list[Worker]:
        rows = await self._connected().fetch(
            _LIST_WORKERS, user_id, container_group_id, seen_within_seconds, self._now()
        )
        return [_decode.worker(row) for row in rows]

    async def pending_reason(self, job: Job) -> PendingReason | None:
        if job.status != "pending":
            return None
        row = await self._connected().fetchrow(
            _PENDING_REASON,
            job.id,
            job.user_id,
            job.container_group_id,
            RECENT_WORKER_SECONDS,
            self._now(),
        )
        if row is None or not row["found"]:
            return None  # deleted meanwhile
        return pending_reason_of(row["machines"], row["blocked"], row["busy"], row["ahead"])

    async def _why_not_held(self, job_id: str, user_id: str | None) -> HeldOutcome:
        exists = await self._connected().fetchval(_JOB_EXISTS, job_id, user_id)
        return HeldOutcome.NOT_HOLDER if exists else HeldOutcome.NOT_FOUND

    # -- goodput -----------------------------------------------------------------------
    async def job_goodput(self, job_id: str, user_id: str | None) -> JobLedger | None:
        job = await self.get_job(job_id, user_id)
        if job is None:
            return None
        rows = await self._connected().fetch(_JOB_GOODPUT, job_id, user_id, self._now())
        return JobLedger(job.id, job.status, [attempt_ledger(row) for row in rows])

    async def group_goodput(
        self, user_id: str | None, container_group_id: str, since: datetime, until: datetime
    ) -> GroupLedger:
        now = self._now()
        async with self._transaction() as conn:
            # Planned for this group and window each time: the plan a prepared statement
            # settles on after five runs, made for any group, is several times slower.
            await conn.execute(_CUSTOM_PLAN)
            row = await conn.fetchrow(
                _GROUP_GOODPUT,
                container_group_id,
                user_id,
                since.timestamp(),
                until.timestamp(),
                now,
            )
        assert row is not None  # an aggregate always answers one row
        return group_ledger(container_group_id, since, until, row)

    async def note_api_alive(self) -> float:
        now = self._now()
        async with self._transaction() as conn:
            # The row lock makes processes that come back together credit one outage once.
            last_seen = await conn.fetchval(_LOCK_API_LIVENESS)
            if last_seen is None:
                # First start on this database (or after an upgrade): the last sign of life
                # is the newest heartbeat heard.
                last_seen = await conn.fetchval(_NEWEST_HEARTBEAT, now)
            gap: float = await conn.fetchval(_SECONDS_SINCE, last_seen, now)
            if gap > OUTAGE_GAP_SECONDS:
                # Nobody could hear heartbeats since `last_seen`: a job whose lease was still
                # good then gets a full lease from now, to beat again.
                await conn.execute(
                    _EXTEND_LEASES_AFTER_OUTAGE, last_seen, OUTAGE_GRACE_SECONDS, now
                )
            await conn.execute(_NOTE_API_ALIVE, now)
        return gap if gap > OUTAGE_GAP_SECONDS else 0.0

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
        stored = manifest_to_json(manifest)
        size = sum(entry.size for entry in manifest)
        now = self._now()
        async with self._transaction() as conn:
            # The job's row lock orders commits (and claims) of one job.
            job = await conn.fetchrow(_LOCK_JOB_FOR_COMMIT, job_id, user_id)
            if job is None:
                return CommitResult(CommitOutcome.NOT_FOUND)
            newest = job["checkpoint_generation"]
            same = await conn.fetchrow(_GET_CHECKPOINT, job_id, generation)
            if same is not None:
                if same["attempt_id"] == attempt_id and (
                    same["manifest"] is None or same["manifest"] == stored
                ):
                    return CommitResult(
                        CommitOutcome.REPEATED, _decode.checkpoint(same, with_manifest=False)
                    )
                return CommitResult(CommitOutcome.NOT_NEWER, newest=newest)
            held = (
                job["status"] == "running"
                and job["machine_id"] == machine_id
                and job["attempt_id"] == attempt_id
            )
            if not held:
                return CommitResult(CommitOutcome.NOT_HOLDER)
            if newest is not None and generation <= newest:
                return CommitResult(CommitOutcome.NOT_NEWER, newest=newest)
            created = await conn.fetchval(
                _ADD_CHECKPOINT,
                job_id,
                generation,
                attempt_id,
                machine_id,
                len(manifest),
                size,
                stored,
                upload_seconds,
                now,
            )
            await conn.execute(_SET_CHECKPOINT_GENERATION, job_id, generation)
            await conn.execute(_COUNT_COMMIT, attempt_id, upload_seconds, now)
            kept_rows = await conn.fetch(_KEPT_MANIFESTS, job_id)
            keep = job["checkpoint_keep"]
            dropped = kept_rows[keep:]
            if dropped:
                await conn.execute(_DROP_MANIFESTS, job_id, [row["generation"] for row in dropped])
            expired = expired_objects(
                (manifest_from_json(row["manifest"]) for row in dropped),
                (manifest_from_json(row["manifest"]) for row in kept_rows[:keep]),
            )
            await conn.execute(
                _ADD_CHECKPOINT_EVENT,
                job_id,
                attempt_id,
                machine_id,
                checkpoint_message(generation, len(manifest), size),
                {"generation": generation, "files": len(manifest), "bytes": size},
                now,
            )
        checkpoint = Checkpoint(
            job_id, generation, attempt_id, machine_id, created, len(manifest), size, True
        )
        return CommitResult(CommitOutcome.DONE, checkpoint, newest=generation, expired=expired)

    async def list_checkpoints(self, job_id: str, user_id: str | None) -> list[Checkpoint] | None:
        if await self.get_job(job_id, user_id) is None:
            return None
        rows = await self._connected().fetch(_LIST_CHECKPOINTS, job_id)
        return [_decode.checkpoint(row, with_manifest=False) for row in rows]

    async def get_checkpoint(
        self, job_id: str, user_id: str | None, generation: int
    ) -> Checkpoint | None:
        if await self.get_job(job_id, user_id) is None:
            return None
        row = await self._connected().fetchrow(_GET_CHECKPOINT, job_id, generation)
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
        added = await self._connected().fetchval(
            _ADD_WORKER_EVENT,
            job_id,
            machine_id,
            user_id,
            attempt_id,
            kind,
            message,
            None if data is None else dict(data),
            MAX_WORKER_EVENTS_PER_ATTEMPT,
            upload_seconds_of(data) if kind == "outputs_uploaded" else None,
            self._now(),
        )
        if added:
            return HeldOutcome.DONE
        return await self._why_not_held(job_id, user_id)

    async def list_job_events(
        self, job_id: str, user_id: str | None, after_id: int = 0, limit: int = 1000
    ) -> list[JobEvent] | None:
        if await self.get_job(job_id, user_id) is None:
            return None
        rows = await self._connected().fetch(_LIST_JOB_EVENTS, job_id, after_id, limit)
        return [_decode.event(row) for row in rows]

    async def claim_reallocation(
        self, user_id: str, machine_id: str, threshold: int
    ) -> Blocked | None:
        row = await self._connected().fetchrow(
            _CLAIM_REALLOCATION, user_id, machine_id, threshold, self._now()
        )
        if row is None:
            return None
        return Blocked(
            user_id=user_id,
            machine_id=machine_id,
            container_group_id=row["container_group_id"],
            org_name=row["org_name"],
            project_name=row["project_name"],
            blocked_jobs=row["jobs"],
        )

    # -- webhook outbox ----------------------------------------------------------------
    async def claim_webhook_events(
        self,
        limit: int,
        lease_seconds: float,
        *,
        per_receiver: int | None = None,
        allowances: Mapping[str, int] | None = None,
    ) -> list[WebhookEvent]:
        listed = dict(allowances or {})
        rows = await self._connected().fetch(
            _CLAIM_WEBHOOK_EVENTS,
            limit,
            lease_seconds,
            new_id(),
            list(listed),
            list(listed.values()),
            limit if per_receiver is None else per_receiver,
            self._now(),
        )
        events = [
            WebhookEvent(
                id=row["id"],
                user_id=row["user_id"],
                url=row["url"],
                payload=row["payload"],
                attempts=row["attempts"],
                created=row["created"],
                lease_token=row["lease_token"],
                receiver=row["receiver"],
            )
            for row in rows
        ]
        return sorted(events, key=lambda event: event.id)

    async def webhook_delivered(self, event: WebhookEvent) -> bool:
        return await self._record_webhook_outcome(_WEBHOOK_DELIVERED, event)

    async def webhook_retry_later(
        self, event: WebhookEvent, delay_seconds: float, error: str
    ) -> bool:
        return await self._record_webhook_outcome(_WEBHOOK_RETRY_LATER, event, delay_seconds, error)

    async def webhook_give_up(self, event: WebhookEvent, error: str) -> bool:
        return await self._record_webhook_outcome(_WEBHOOK_GIVE_UP, event, error)

    async def webhook_postpone(self, event: WebhookEvent, delay_seconds: float) -> bool:
        return await self._record_webhook_outcome(_WEBHOOK_POSTPONE, event, delay_seconds)

    async def postpone_receiver_webhooks(self, receiver: str, delay_seconds: float) -> int:
        status: str = await self._connected().execute(
            _POSTPONE_RECEIVER_WEBHOOKS, receiver, delay_seconds, self._now()
        )
        return int(status.rsplit(" ", 1)[1])

    async def _record_webhook_outcome(
        self, statement: str, event: WebhookEvent, *args: object
    ) -> bool:
        """Runs one of the statements that end a claim of the event ($1 id, $2 lease token,
        then `args`, then now): true when the claim still held the lease."""
        status: str = await self._connected().execute(
            statement,
            event.id,
            event.lease_token,
            *args,
            self._now(),
        )
        return status == "UPDATE 1"

    async def purge_finished_webhooks(self, older_than_seconds: float) -> int:
        status: str = await self._connected().execute(
            _PURGE_FINISHED_WEBHOOKS, older_than_seconds, self._now()
        )
        return int(status.rsplit(" ", 1)[1])

    async def pending_webhook_count(self) -> int:
        count = await self._connected().fetchval(_PENDING_WEBHOOK_COUNT)
        return int(count)

    # -- scaling rules -----------------------------------------------------------------
    async def create_scaling_rule(self, rule: ScalingRule) -> ScalingRule:
        try:
            row = await self._connected().fetchrow(
                _CREATE_SCALING_RULE,
                rule.user_id,
                rule.container_group_id,
                rule.min_replicas,
                rule.max_replicas,
                rule.idle_threshold_seconds,
                rule.org_name,
                rule.project_name,
                self._now(),
            )
        except asyncpg.UniqueViolationError as exc:
            raise AlreadyExists(f"a scaling rule for {rule.container_group_id!r} exists") from exc
        assert row is not None
        return _decode.rule(row)

    async def list_scaling_rules(self, user_id: str | None) -> list[ScalingRule]:
        rows = await self._connected().fetch(_LIST_SCALING_RULES, user_id)
        return [_decode.rule(row) for row in rows]

    async def get_scaling_rule(
        self, user_id: str | None, container_group_id: str
    ) -> ScalingRule | None:
        row = await self._connected().fetchrow(_GET_SCALING_RULE, user_id, container_group_id)
        return None if row is None else _decode.rule(row)

    async def update_scaling_rule(
        self, user_id: str | None, container_group_id: str, patch: ScalingRulePatch
    ) -> ScalingRule | None:
        pool = self._connected()
        # The bound is checked in the UPDATE's WHERE clause: a concurrent update of the row
        # makes PostgreSQL evaluate it again on the row that update left.
        rows = await pool.fetch(
            _UPDATE_SCALING_RULE,
            user_id,
            container_group_id,
            patch.min_replicas,
            patch.max_replicas,
            patch.idle_threshold_seconds,
            self._now(),
        )
        if not rows and await pool.fetchval(_SCALING_RULE_EXISTS, user_id, container_group_id):
            raise InvalidChange("min_replicas must not be greater than max_replicas")
        rules = sorted((_decode.rule(row) for row in rows), key=lambda r: (r.created, r.user_id))
        return rules[0] if rules else None

    async def delete_scaling_rule(self, user_id: str | None, container_group_id: str) -> bool:
        rows = await self._connected().fetch(_DELETE_SCALING_RULE, user_id, container_group_id)
        return bool(rows)

    async def delete_all_scaling_rules(self) -> None:
        await self._connected().execute(_DELETE_ALL_SCALING_RULES)

    async def count_active_jobs(
        self, user_id: str, container_group_id: str, idle_threshold_seconds: int
    ) -> int:
        count = await self._connected().fetchval(
            _COUNT_ACTIVE_JOBS,
            user_id,
            container_group_id,
            idle_threshold_seconds,
            self._now(),
        )
        return int(count)

    async def try_lease(self, name: str, holder: str, ttl_seconds: float) -> bool:
        row = await self._connected().fetchrow(
            _TRY_LEASE,
            name,
            holder,
            ttl_seconds,
            self._now(),
        )
        return row is not None

    # -- operator views: the dashboard and /metrics (read-only) -------------------------
    async def metrics_snapshot(self) -> StoreMetrics:
        rows = await self._connected().fetch(_METRICS)
        return store_metrics((tuple(row) for row in rows), _as_datetime)

    async def group_counts(
        self, user_id: str | None, container_group_id: str | None = None
    ) -> list[GroupCounts]:
        # only the filters given, so that the planner picks the index that fits them
        pool = self._connected()
        if user_id is None and container_group_id is None:
            rows = await pool.fetch(_GROUP_COUNTS)
        elif user_id is None:
            rows = await pool.fetch(_GROUP_COUNTS_OF_GROUP, container_group_id)
        elif container_group_id is None:
            rows = await pool.fetch(_GROUP_COUNTS_OF_USER, user_id)
        else:
            rows = await pool.fetch(_GROUP_COUNTS_OF_USER_IN_GROUP, user_id, container_group_id)
        return group_counts(tuple(row) for row in rows)

    async def blocked_machines(
        self, user_id: str | None, container_group_id: str, limit: int = 100
    ) -> list[BlockedMachine]:
        pool = self._connected()
        if user_id is None:
            rows = await pool.fetch(_BLOCKED_MACHINES, container_group_id, limit)
        else:
            rows = await pool.fetch(_BLOCKED_MACHINES_OF_USER, user_id, container_group_id, limit)
        return [BlockedMachine(row[0], int(row[1]), row[2], bool(row[3])) for row in rows]

    async def group_activity(
        self,
        user_id: str | None,
        container_group_id: str,
        since: datetime,
        bucket_seconds: float,
        buckets: int,
    ) -> list[ActivityBucket]:
        window = (since, since + timedelta(seconds=bucket_seconds * buckets), bucket_seconds)
        pool = self._connected()
        if user_id is None:
            rows = await pool.fetch(_GROUP_ACTIVITY, container_group_id, *window)
        else:
            rows = await pool.fetch(_GROUP_ACTIVITY_OF_USER, user_id, container_group_id, *window)
        tallies = activity_tallies((tuple(row) for row in rows), since, bucket_seconds, buckets)
        return activity_series(tallies)


def _as_datetime(value: object) -> datetime:
    assert isinstance(value, datetime)
    return value
