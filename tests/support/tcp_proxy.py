"""A TCP proxy on 127.0.0.1 that a test can cut: real connection failures, no mocks.

with TcpProxy("127.0.0.1", 8333) as proxy:   # point the client at proxy.url
    proxy.block()    # live connections are reset, new ones are reset on accept
    proxy.unblock()
    proxy.hold_after(n)  # forward n more bytes upstream, then stall (connections stay open)
    proxy.held.wait(); proxy.release()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Self


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._blocked = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._upstream_budget: int | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.held = threading.Event()
        """Set once a `hold_after` budget is spent and traffic is stalled."""
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def block(self) -> None:
        """Reset every open connection and every new one until `unblock()`."""
        asyncio.run_coroutine_threadsafe(self._set_blocked(True), self._loop).result(timeout=10)

    def unblock(self) -> None:
        asyncio.run_coroutine_threadsafe(self._set_blocked(False), self._loop).result(timeout=10)

    def hold_after(self, nbytes: int) -> None:
        """Forward `nbytes` more bytes towards the server, then stall every connection (no
        reset: requests simply stop moving) until `release()`; `held` is set then."""
        self._loop.call_soon_threadsafe(self._set_budget, nbytes)

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._release)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_blocked(self, blocked: bool) -> None:
        self._blocked = blocked
        if blocked:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

    def _set_budget(self, nbytes: int) -> None:
        self.held.clear()
        self._upstream_budget = nbytes

    def _release(self) -> None:
        self._upstream_budget = None
        self.held.clear()
        self._flowing.set()

    async def _shutdown(self) -> None:
        self._release()
        await self._set_blocked(True)
        if self._server is not None:
            self._server.close()
        if self._connections:  # let the reset connections wind down before the loop stops
            await asyncio.wait(self._connections, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        if self._blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, upstream=True), self._pipe(up_reader, writer)
        )
        self._writers.difference_update((writer, up_writer))

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool = False
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if upstream:
                    self._spend(len(data))
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()

    def _spend(self, nbytes: int) -> None:
        if self._upstream_budget is None:
            return
        self._upstream_budget -= nbytes
        if self._upstream_budget <= 0:
            self._flowing.clear()
            self.held.set()
