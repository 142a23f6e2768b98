"""A minimal HTTP/1.1 keep-alive load generator for benchmarking `kelpie serve` on 127.0.0.1.

Why not httpx: on this 2-core machine the load generator shares the CPU with the server it
measures, and httpx spends more CPU per request than the API does to answer it, so an httpx
benchmark measures httpx. This client does the least HTTP/1.1 that the API needs: requests are
encoded once into bytes, every virtual client owns one keep-alive connection, and a response is
its status line, its headers and exactly Content-Length bytes of body (the API always sends
Content-Length; a chunked response fails loudly rather than being misread).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
LOOPBACK = "127.0.0.1"
# No loop below runs forever: each virtual client stops after this many requests at most.
MAX_REQUESTS_PER_CLIENT = 10_000_000
# A run that has not ended this long after its deadline is stuck: fail rather than hang.
STUCK_AFTER_SECONDS = 60.0


class ProtocolError(Exception):
    """The server sent something this client does not understand."""


@dataclass(frozen=True)
class Address:
    """Where one `kelpie serve` listens; only the loopback interface is ever targeted."""

    port: int
    host: str = LOOPBACK

    def __post_init__(self) -> None:
        if self.host != LOOPBACK:
            raise ValueError(f"the load generator only targets {LOOPBACK}, not {self.host}")


def encode_request(
    address: Address, method: str, path: str, api_key: str | None = None, body: Any = None
) -> bytes:
    """The whole request as bytes, built once and sent many times."""
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {address.host}:{address.port}"]
    if api_key is not None:
        lines.append(f"X-Kelpie-Key: {api_key}")
    if body is not None:
        lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, address: Address) -> Connection:
        reader, writer = await asyncio.open_connection(address.host, address.port)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> Response:
        self._writer.write(raw)
        await self._writer.drain()
        head = await self._reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 "):
            raise ProtocolError(f"not an HTTP/1.1 status line: {head[:40]!r}")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise ProtocolError(f"unsupported Transfer-Encoding: {value.strip()!r}")
        body = await self._reader.readexactly(length) if length else b""
        return Response(int(head[9:12]), body)

    async def close(self) -> None:
        self._writer.close()
        # The server may have gone already; closing our end is all that matters.
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class Verdict(enum.Enum):
    """What a response means to the measurement."""

    OK = "ok"  # counted, its latency recorded
    ERROR = "error"  # counted as an error
    STOP = "stop"  # the work ran out (an empty queue): the measured window ends here


Judge = Callable[[int, Response], Verdict]


def ok_if_2xx(client: int, response: Response) -> Verdict:
    return Verdict.OK if 200 <= response.status < 300 else Verdict.ERROR


@dataclass
class LoadResult:
    """Completions and latencies inside the measured window (after the warm-up)."""

    clients: int
    window: float
    completed: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def rate(self) -> float:
        return self.completed / self.window if self.window > 0 else 0.0

    def note_error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(message)


@dataclass
class _Window:
    start: float
    end: float
    stopped_early: bool = False


async def run_load(
    targets: Sequence[tuple[Address, Sequence[bytes]]],
    *,
    duration: float,
    warmup: float,
    judge: Judge = ok_if_2xx,
    max_requests_per_client: int = MAX_REQUESTS_PER_CLIENT,
) -> LoadResult:
    """Run one virtual client per target, each cycling through its requests back to back.

    Every client warms up for `warmup` seconds, then responses completing within the next
    `duration` seconds are judged and counted. A judge answering STOP ends the window for all
    clients at that moment (rates stay honest when the queue drains before the deadline)."""
    connections = [await Connection.open(address) for address, _ in targets]
    now = time.perf_counter()
    window = _Window(start=now + warmup, end=now + warmup + duration)
    result = LoadResult(clients=len(targets), window=duration)
    clients = [
        _client_loop(index, conn, requests, window, judge, result, max_requests_per_client)
        for index, (conn, (_, requests)) in enumerate(zip(connections, targets, strict=True))
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*clients), warmup + duration + STUCK_AFTER_SECONDS)
    finally:
        for conn in connections:
            await conn.close()
    result.window = max(window.end - window.start, 0.0)
    result.stopped_early = window.stopped_early
    return result


async def _client_loop(
    index: int,
    conn: Connection,
    requests: Sequence[bytes],
    window: _Window,
    judge: Judge,
    result: LoadResult,
    max_requests: int,
) -> None:
    for sent in range(max_requests):
        started = time.perf_counter()
        if started >= window.end:
            return
        response = await conn.request(requests[sent % len(requests)])
        done = time.perf_counter()
        verdict = judge(index, response)
        if verdict is Verdict.STOP:
            if done < window.end:
                window.end = done
                window.stopped_early = True
            return
        if not window.start <= done <= window.end:
            continue
        if verdict is Verdict.OK:
            result.completed += 1
            result.latencies.append(done - started)
        else:
            result.note_error(f"{response.status} {response.body[:200]!r}")


async def send_all(
    address_of: Callable[[int], Address], requests: Sequence[bytes], concurrency: int
) -> list[Response]:
    """Send every request exactly once over `concurrency` connections; all must answer 2xx.

    Connection i goes to `address_of(i)`, so seeding can be spread across servers."""
    responses: list[Response | None] = [None] * len(requests)
    queue = list(range(len(requests)))
    queue.reverse()

    async def drain_queue(conn: Connection) -> None:
        while queue:
            position = queue.pop()
            response = await conn.request(requests[position])
            if not 200 <= response.status < 300:
                raise ProtocolError(f"HTTP {response.status}: {response.body[:300]!r}")
            responses[position] = response

    connections = [await Connection.open(address_of(i)) for i in range(concurrency)]
    try:
        await asyncio.gather(*(drain_queue(conn) for conn in connections))
    finally:
        for conn in connections:
            await conn.close()
    return [response for response in responses if response is not None]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; `fraction` in [0, 1]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (it is, with uvicorn[standard])."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
