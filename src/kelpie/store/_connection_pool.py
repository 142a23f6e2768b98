"""A small pool of asyncpg connections for the PostgreSQL store's one-statement calls.

Why not `asyncpg.Pool`: for a call that is one statement in one round trip, it spends about
as much CPU as the statement itself (a task created for every release, an idle timer re-armed
every time, a reset coroutine, a proxy object per acquire), and the API process is CPU-bound.
This pool keeps only what the store needs:

- at most `max_size` connections, opened when needed; callers wait in arrival order;
- a connection is reused only after a call that ended cleanly, or with an error PostgreSQL
  answered (the statement, or the transaction around it, is over). A call that was
  cancelled or lost its connection mid-way closes that connection instead: no caller ever
  inherits another caller's half-finished exchange or open transaction;
- connections never change session state (no SET, no LISTEN, no session advisory locks),
  so nothing needs resetting between callers;
- a call that fails because the server cannot be reached or used (connection refused or
  lost, the server shutting down or starting, no connection slot left) raises
  `StoreUnavailable`, whatever asyncpg raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg

from kelpie.store.protocol import StoreUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
if TYPE_CHECKING:  # asyncpg's classes are generic only in its type stubs
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record]
else:
    Connection = asyncpg.Connection

# How long close() lets calls under way finish before closing their connections.
CLOSE_GRACE_S = 10.0

# What asyncpg raises when the server cannot be reached or used, rather than refusing a
# statement: socket errors and connect timeouts, connection exceptions (SQLSTATE class 08,
# a connection lost mid-call included), the server shutting down or still starting, and
# every connection slot taken.
UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    # The server going away mid-exchange can leave asyncpg's protocol in a state it refuses
    # to leave ("cannot switch to state …"); the connection is dropped like a lost one.
    asyncpg.InternalClientError,
)


def unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"PostgreSQL unreachable: {type(exc).__name__}: {exc}")


class ConnectionPool:
    def __init__(self, connect: Callable[[], Awaitable[Connection]], max_size: int) -> None:
        self._connect = connect
        self._max_size = max_size
        self._idle: list[Connection] = []
        self._in_use: set[Connection] = set()
        self._opening = 0
        # a waiter is handed a connection, or None to try opening one itself
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._all_returned = asyncio.Event()
        self._closed = False

    async def open(self, size: int) -> None:
        """Opens `size` connections up front, so that the first calls do not wait for them."""
        connections = [await self._acquire() for _ in range(min(size, self._max_size))]
        for conn in connections:
            self._release(conn)

    async def close(self) -> None:
        self._closed = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("connection pool is closed"))
        self._waiters.clear()
        idle, self._idle = self._idle, []
        await asyncio.gather(*(conn.close() for conn in idle), return_exceptions=True)
        if self._in_use:
            self._all_returned.clear()
            try:
                await asyncio.wait_for(self._all_returned.wait(), CLOSE_GRACE_S)
            except TimeoutError:
                logger.warning("closing %d connections still in use", len(self._in_use))
                for conn in self._in_use:
                    conn.terminate()

    # -- the calls the store makes -------------------------------------------------------
    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self._call(lambda conn: conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self._call(lambda conn: conn.fetchrow(query, *args))

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._call(lambda conn: conn.fetchval(query, *args))

    async def execute(self, query: str, *args: Any) -> str:
        return await self._call(lambda conn: conn.execute(query, *args))

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """A connection for several statements (a transaction), returned on exit."""
        conn = await self._acquire()
        try:
            yield conn
        except asyncpg.PostgresError as exc:
            self._release(conn)
            if isinstance(exc, UNREACHABLE_ERRORS):
                raise unavailable(exc) from exc
            raise
        except BaseException as exc:
            self._discard(conn)
            if isinstance(exc, UNREACHABLE_ERRORS):
                raise unavailable(exc) from exc
            raise
        self._release(conn)

    async def _call(self, call: Callable[[Connection], Awaitable[T]]) -> T:
        conn = await self._acquire()
        try:
            result = await call(conn)
        except asyncpg.PostgresError as exc:
            # The server answered (the connection is reusable, unless the answer was that it
            # is going away: then it is closed, and _release drops it).
            self._release(conn)
            if isinstance(exc, UNREACHABLE_ERRORS):
                raise unavailable(exc) from exc
            raise
        except BaseException as exc:
            self._discard(conn)  # cancelled mid-call, or the connection failed
            if isinstance(exc, UNREACHABLE_ERRORS):
                raise unavailable(exc) from exc
            raise
        self._release(conn)
        return result

    # -- handing connections out -----------------------------------------------------------
    async def _acquire(self) -> Connection:
        while True:
            if self._closed:
                raise asyncpg.InterfaceError("connection pool is closed")
            conn = self._take_idle()
            if conn is None and self._size < self._max_size:
                conn = await self._open_one()
            if conn is None:
                conn = await self._wait_for_turn()
            if conn is not None:
                self._in_use.add(conn)
                return conn

    def _take_idle(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.is_closed():  # the server may have closed it while idle
                return conn
        return None

    @property
    def _size(self) -> int:
        return len(self._idle) + len(self._in_use) + self._opening

    async def _open_one(self) -> Connection:
        self._opening += 1
        try:
            return await self._connect()
        except BaseException as exc:
            self._pass_turn(None)  # a waiter may try instead
            if isinstance(exc, UNREACHABLE_ERRORS):
                raise unavailable(exc) from exc
            raise
        finally:
            self._opening -= 1

    async def _wait_for_turn(self) -> Connection | None:
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a turn just before
                conn = waiter.result()
                if conn is None:
                    self._pass_turn(None)
                else:
                    self._release(conn)
            raise

    def _release(self, conn: Connection) -> None:
        if self._closed or conn.is_closed() or conn.is_in_transaction():
            self._discard(conn)
            return
        if self._pass_turn(conn):
            return  # still in use, by the caller that waited longest
        self._in_use.discard(conn)
        self._idle.append(conn)
        self._note_returned()

    def _discard(self, conn: Connection) -> None:
        self._in_use.discard(conn)
        conn.terminate()
        self._pass_turn(None)  # there is room for a new connection now
        self._note_returned()

    def _pass_turn(self, conn: Connection | None) -> bool:
        """Hands `conn` (or the right to open one) to the longest waiting caller."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _note_returned(self) -> None:
        if not self._in_use:
            self._all_returned.set()
