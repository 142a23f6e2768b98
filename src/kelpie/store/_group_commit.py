"""Group commit for SQLite: one writer thread, one transaction and one fsync per group.

With `synchronous=FULL` every COMMIT waits for an fsync (hundreds of microseconds), and a
transaction per request made that wait, plus a few thread hops, the limit of every write
endpoint. Here callers queue their writes as plain functions of a `sqlite3.Connection`; a
dedicated thread takes everything queued, runs it in ONE `BEGIN IMMEDIATE` transaction,
each operation inside its own SAVEPOINT, then COMMITs once and answers every caller.

What callers can rely on:

- An answer comes only after the COMMIT: a result means the change is durable.
- An operation that raises rolls back to its savepoint: only its own changes vanish, the
  others of the group commit, and the error is raised to its caller.
- If the transaction itself fails (BEGIN after every retry, COMMIT, or an error SQLite
  answers by rolling the whole transaction back: disk full, I/O error), nothing of the group
  is stored and every caller of the group gets the error.
- Operations run one at a time, in the order they were queued.
- A caller cancelled before its group starts is skipped; once started, an operation runs to
  completion (in its savepoint) and its result is dropped. Cancellation never leaves the
  transaction open or half applied: only the writer thread ever touches the connection.
- `BEGIN IMMEDIATE` takes the database file's write lock, so writers in other processes
  sharing the file are serialized with whole groups. They also take turns: between
  back-to-back groups the writer leaves the lock free for a moment, and a writer waiting
  for the lock tries again more often than that. (SQLite's own busy handler backs off to
  100 ms between tries: a busy process would keep the lock for seconds, starving the other.)
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kelpie.store.protocol import StoreUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]

# More would hold the file lock longer while another process waits for it.
MAX_GROUP_OPERATIONS = 256
# Taking turns with other processes: the lock stays free this long between back-to-back
# groups, and a writer waiting for it tries again this often (the write connection has no
# busy_timeout: this loop is its busy handler) ...
FAIR_GAP_S = 0.0005
LOCK_POLL_S = 0.0002
# ... until it gives up and its callers get "database is locked".
LOCK_WAIT_S = 15.0
LOCK_WAIT_WARNING_S = 1.0


def is_busy(exc: sqlite3.OperationalError) -> bool:
    primary_code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # extended codes: BUSY_SNAPSHOT, ...
    return primary_code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def execute_when_not_busy(conn: sqlite3.Connection, sql: str) -> list[Any]:
    """Runs a statement that takes the file lock, trying again every LOCK_POLL_S while
    another process holds it, for up to LOCK_WAIT_S."""
    started = time.monotonic()
    warned = False
    while True:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:
            waited = time.monotonic() - started
            if not is_busy(exc) or waited > LOCK_WAIT_S:
                raise
            if waited > LOCK_WAIT_WARNING_S and not warned:
                logger.warning("SQLite database is busy (%s); still trying", exc)
                warned = True
            time.sleep(LOCK_POLL_S)


@dataclass(slots=True)
class _Call(Generic[T]):
    operation: Operation[T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop


@dataclass(slots=True)
class _Outcome:
    call: _Call[Any]
    result: Any = None
    error: BaseException | None = None


class _TransactionLost(Exception):
    """SQLite rolled the whole transaction back on an operation's error."""


_STOP = object()


class GroupCommitWriter:
    """Owns the write connection; `run(operation)` executes it in the next group commit."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], name: str) -> None:
        self._connect = connect
        self._queue: queue.SimpleQueue[_Call[Any] | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._ready: asyncio.Future[None] | None = None
        self._accepting = False

    async def start(self) -> None:
        """Starts the thread and opens the connection there; raises if it cannot open."""
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._thread.start()
        await self._ready
        self._accepting = True

    async def stop(self) -> None:
        """Finishes every operation already queued, then closes the connection."""
        if not self._thread.is_alive():
            return
        self._accepting = False
        self._queue.put(_STOP)
        await asyncio.to_thread(self._thread.join)

    async def run(self, operation: Operation[T]) -> T:
        if not self._accepting:
            raise StoreUnavailable("store is not open: call open() first")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Call(operation, future, loop))
        return await future

    # -- the writer thread -------------------------------------------------------------
    def _serve(self) -> None:
        assert self._ready is not None
        ready = self._ready
        try:
            conn = self._connect()
        except BaseException as exc:
            ready.get_loop().call_soon_threadsafe(_settle, ready, None, exc)
            return
        ready.get_loop().call_soon_threadsafe(_settle, ready, None, None)
        try:
            stopping = False
            while not stopping:
                group, stopping = self._next_group()
                if group:
                    self._commit_group(conn, group)
                if not self._queue.empty():
                    time.sleep(FAIR_GAP_S)  # another process may be waiting for the lock
        finally:
            conn.close()

    def _next_group(self) -> tuple[list[_Call[Any]], bool]:
        """Blocks for one queued call, then takes whatever else is queued already."""
        group: list[_Call[Any]] = []
        item = self._queue.get()
        while item is not _STOP:
            assert isinstance(item, _Call)
            # A caller cancelled before its group starts is skipped. Reading the state of a
            # future owned by the event loop is a benign race: a cancellation landing just
            # after this check only means the operation runs and its result is dropped.
            if not item.future.cancelled():
                group.append(item)
            if len(group) >= MAX_GROUP_OPERATIONS:
                return group, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return group, False
        return group, True

    def _commit_group(self, conn: sqlite3.Connection, group: Sequence[_Call[Any]]) -> None:
        try:
            execute_when_not_busy(conn, "BEGIN IMMEDIATE")
        except BaseException as exc:
            _answer([_Outcome(call, error=exc) for call in group])
            return
        try:
            outcomes = [_run_in_savepoint(conn, call) for call in group]
            conn.execute("COMMIT")
        except BaseException as exc:
            _roll_back(conn)
            error = exc.__cause__ if isinstance(exc, _TransactionLost) else exc
            logger.error("SQLite group commit of %d operations failed: %s", len(group), error)
            _answer([_Outcome(call, error=error) for call in group])
            return
        _answer(outcomes)


def _run_in_savepoint(conn: sqlite3.Connection, call: _Call[Any]) -> _Outcome:
    conn.execute("SAVEPOINT operation")
    try:
        result = call.operation(conn)
    except BaseException as exc:
        if not conn.in_transaction:
            raise _TransactionLost from exc
        conn.execute("ROLLBACK TO operation")
        conn.execute("RELEASE operation")
        return _Outcome(call, error=exc)
    conn.execute("RELEASE operation")
    return _Outcome(call, result=result)


def _roll_back(conn: sqlite3.Connection) -> None:
    if not conn.in_transaction:  # SQLite already rolled back
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        logger.error("SQLite ROLLBACK failed: %s", exc)


def _answer(outcomes: Sequence[_Outcome]) -> None:
    """Hands each outcome to its caller's event loop, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome.call.loop, []).append(outcome)
    for loop, answers in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, answers)
        except RuntimeError:
            logger.debug("event loop closed before %d answers arrived", len(answers))


def _settle_all(outcomes: Sequence[_Outcome]) -> None:
    for outcome in outcomes:
        _settle(outcome.call.future, outcome.result, outcome.error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled: the result is dropped
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
