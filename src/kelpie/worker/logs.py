"""A job's stdout and stderr in its bucket: one folder per attempt, numbered pieces, an end.

Where (the layout `kelpie jobs logs` reads):

    <base>/<job id>/attempt-<attempt id>/00000001.stdout
                                         00000002.stderr
                                         …
                                         end.json

`<base>` is the job's `logs_prefix` when it has one; otherwise it sits next to the first
place the job writes to: its output prefix, else `sync.after[0]`, else its checkpoint
prefix, else `sync.during[0]`, with `.kelpie-logs/` after it (`out/` → `out.kelpie-logs/`),
in the same bucket. A job with none of those keeps its logs nowhere (the stderr tail still
goes into `last_error`).

A piece is plain bytes of one stream, as the job wrote them. Piece numbers count up across
both streams of the attempt in the order the pieces were cut (every `log_piece_s`, or when
a stream has 8 MiB waiting), so reading every piece in number order gives each stream in
order and the two interleaved to within a piece. The worker uploads them one at a time in
that order, so a listing never shows a number before the ones under it (a piece that could
not be uploaded is skipped, and a note in the stream's next piece says so). `end.json` is
written last, when the attempt's output is all in: `{"pieces": N, "bytes": {...},
"lost_bytes": {...}}`. An attempt whose machine vanished has no `end.json`; its pieces stop
where the machine did.

Output waiting for the bucket is held in memory up to 32 MiB per stream (64 MiB while a
burst outruns the disk), then on local disk up to 256 MiB per stream; beyond that it is
dropped (and the gap noted in the stream) until the bucket catches up. kelpie itself
stores no log content.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kelpie.schemas import JobOut
from kelpie.storage import RemoteObject
from kelpie.worker.capture import STREAMS

logger = logging.getLogger("kelpie.worker")

LOGS_SUFFIX = ".kelpie-logs/"
END_MARKER = "end.json"
PIECE_BYTES = 8 << 20
"""A stream with this much waiting is cut into a piece at once."""
MEMORY_BYTES = 32 << 20
"""Per stream: output waiting for the bucket beyond this is moved to disk (see LogSpool)."""
SPOOL_CAP_BYTES = 256 << 20
"""Per stream: output waiting for the bucket beyond this is dropped (with a note)."""
TAIL_BYTES = 2048
"""How much of the end of stderr goes into a failed attempt's `last_error`."""
_PIECE = re.compile(r"(\d{8,})\.(stdout|stderr)")


@dataclass(frozen=True)
class LogLocation:
    """Where one job's logs go: `prefix` is `<base>/<job id>/`."""

    bucket: str
    prefix: str

    def attempt_prefix(self, attempt_id: int) -> str:
        return f"{self.prefix}attempt-{attempt_id}/"

    def url(self, attempt_id: int | None = None) -> str:
        prefix = self.prefix if attempt_id is None else self.attempt_prefix(attempt_id)
        return f"s3://{self.bucket}/{prefix}"


def logs_location(job: JobOut) -> LogLocation | None:
    """Where `job`'s logs go, or None when it names no bucket to write to."""
    explicit = job.logs_prefix
    if explicit:
        bucket, _, prefix = explicit.removeprefix("s3://").partition("/")
        if bucket:
            prefix = prefix.strip("/")
            return LogLocation(bucket, f"{prefix}/{job.id}/" if prefix else f"{job.id}/")
    place = _first_written_place(job)
    if place is None:
        return None
    bucket, prefix = place
    base = prefix.strip("/") + LOGS_SUFFIX if prefix.strip("/") else LOGS_SUFFIX
    return LogLocation(bucket, f"{base}{job.id}/")


def _first_written_place(job: JobOut) -> tuple[str, str] | None:
    if job.sync is not None:
        for entries in (job.sync.after, job.sync.during):
            if entries:
                return entries[0].bucket, entries[0].prefix
        return None
    if job.output_bucket is not None and job.output_prefix is not None:
        return job.output_bucket, job.output_prefix
    if job.checkpoint_bucket is not None and job.checkpoint_prefix is not None:
        return job.checkpoint_bucket, job.checkpoint_prefix
    return None


def piece_name(number: int, stream: str) -> str:
    return f"{number:08d}.{stream}"


def parse_piece(name: str) -> tuple[int, str] | None:
    """(number, stream) of a piece's name (the part after the attempt's prefix)."""
    match = _PIECE.fullmatch(name)
    return (int(match.group(1)), match.group(2)) if match else None


def lost_note(stream: str, lost: int, why: str) -> bytes:
    return f"\n[kelpie: {lost} bytes of {stream} are missing here: {why}]\n".encode()


def stderr_tail(data: bytes, limit: int = TAIL_BYTES) -> str:
    """The end of stderr for a report: the last `limit` bytes, from a line start when that
    leaves something, decoded leniently."""
    tail = data[-limit:]
    if len(data) > limit:
        newline = tail.find(b"\n")
        if 0 <= newline < len(tail) - 1:
            tail = tail[newline + 1 :]
    return tail.decode("utf-8", errors="replace").rstrip()


# -- the worker's side: spool and shipper -----------------------------------------------------


@dataclass
class Piece:
    number: int
    stream: str
    size: int
    chunks: list[bytes] = field(default_factory=list)
    """The piece's bytes when held in memory…"""
    path: Path | None = None
    """…or the spool file holding them."""

    def read(self) -> bytes:
        return self.path.read_bytes() if self.path is not None else b"".join(self.chunks)

    def discard(self) -> None:
        self.chunks = []
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()


@dataclass
class _Stream:
    name: str
    tail: bytearray = field(default_factory=bytearray)
    chunks: list[bytes] = field(default_factory=list)
    """The open segment, in memory (the chunks as read: kept, not copied)…"""
    fd: int | None = None
    path: Path | None = None
    """…or in a spool file, once the output waiting went past what memory holds."""
    size: int = 0
    waiting: int = 0
    """Bytes held (memory or disk) and not yet uploaded or given up on."""
    in_memory: int = 0
    """Of those, the bytes held in memory."""
    total: int = 0
    lost: int = 0
    unnoted: int = 0
    """Bytes lost since the last note in the stream."""
    why_lost: str = ""


class LogSpool:
    """What the job wrote, in segments per stream until each is uploaded as a piece.

    What the capture threads hand over is kept in memory (the chunks as read, no copy).
    Past `memory_bytes` of a stream in memory, a spill thread moves its newest pieces that
    wait for the bucket to spool files under `directory`, so a burst never waits for the
    disk; past twice that (the spill fell behind) the capture thread writes to disk itself,
    and past `cap_bytes` waiting, output is dropped with a note in the stream. `write` is
    called by the capture threads; the rest by the event loop. Without a `directory` only
    the end of each stream is kept (for the failure report).
    """

    def __init__(
        self,
        directory: Path | None,
        *,
        piece_bytes: int = PIECE_BYTES,
        memory_bytes: int = MEMORY_BYTES,
        cap_bytes: int = SPOOL_CAP_BYTES,
        on_piece: Callable[[], None] | None = None,
    ) -> None:
        self._directory = directory
        self._piece_bytes = piece_bytes
        self._memory_bytes = memory_bytes
        self._cap_bytes = cap_bytes
        self._on_piece = on_piece
        self._lock = threading.Lock()
        self._streams = {name: _Stream(name) for name in STREAMS}
        self._ready: list[Piece] = []
        self._numbers = 0
        self._closed = False
        self._spill_wanted = threading.Condition(self._lock)
        if directory is not None:
            threading.Thread(target=self._spill, name="job-logs-spill", daemon=True).start()

    def write(self, stream: str, data: bytes) -> None:
        cut = False
        with self._lock:
            state = self._streams[stream]
            state.total += len(data)
            state.tail += data[-TAIL_BYTES:]
            if len(state.tail) > 2 * TAIL_BYTES:
                del state.tail[: len(state.tail) - TAIL_BYTES]
            if self._directory is None or self._closed:
                return
            if state.waiting + len(data) > self._cap_bytes:
                self._lose(state, len(data), "the bucket did not keep up")
                return
            if state.unnoted:
                note = lost_note(stream, state.unnoted, state.why_lost)
                state.unnoted = 0
                self._append(state, note)
            self._append(state, data)
            if state.size >= self._piece_bytes:
                self._cut(state)
                cut = True
            if state.in_memory > self._memory_bytes:
                self._spill_wanted.notify()
        if cut and self._on_piece is not None:
            self._on_piece()

    def cut(self) -> None:
        """Close every stream's segment that holds something, as the next pieces."""
        with self._lock:
            for state in self._streams.values():
                if state.size:
                    self._cut(state)

    def take_ready(self) -> list[Piece]:
        with self._lock:
            ready, self._ready = self._ready, []
        return ready

    def take_next(self) -> Piece | None:
        """The lowest-numbered piece waiting, now the caller's to upload."""
        with self._lock:
            return self._ready.pop(0) if self._ready else None

    def shipped(self, piece: Piece) -> None:
        self._release(piece)
        piece.discard()

    def give_up(self, piece: Piece, why: str) -> None:
        """`piece` could not be uploaded: count it lost, and say so in the stream."""
        self._release(piece)
        with self._lock:
            self._lose(self._streams[piece.stream], piece.size, why)
        piece.discard()

    @property
    def last_number(self) -> int:
        with self._lock:
            return self._numbers

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "pieces": self._numbers,
                "bytes": {s.name: s.total for s in self._streams.values()},
                "lost_bytes": {s.name: s.lost for s in self._streams.values()},
            }

    def in_memory(self, stream: str) -> int:
        """Bytes of `stream` held in memory."""
        with self._lock:
            return self._streams[stream].in_memory

    def tail(self, stream: str) -> bytes:
        with self._lock:
            return bytes(self._streams[stream].tail)

    def close(self) -> None:
        """Take no more output and drop what is held (the ends of the streams stay)."""
        with self._lock:
            self._closed = True
            for state in self._streams.values():
                if state.fd is not None:
                    os.close(state.fd)
                    state.fd = None
                state.chunks = []
            self._ready = []
            self._spill_wanted.notify_all()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)

    def _append(self, state: _Stream, data: bytes) -> None:
        assert self._directory is not None
        hard = 2 * self._memory_bytes
        if state.fd is None and state.in_memory + len(data) > hard and state.size:
            self._cut(state)  # memory is full: what follows goes to disk, as its own piece
        if state.fd is None and state.in_memory + len(data) <= hard:
            state.chunks.append(data)
            state.in_memory += len(data)
        else:
            if state.fd is None:
                state.path = self._directory / f"{state.name}.{time.monotonic_ns()}"
                state.fd = os.open(state.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(state.fd, view) :]
        state.size += len(data)
        state.waiting += len(data)

    def _cut(self, state: _Stream) -> None:
        self._numbers += 1
        if state.fd is not None:
            os.close(state.fd)
            piece = Piece(self._numbers, state.name, state.size, path=state.path)
        else:
            piece = Piece(self._numbers, state.name, state.size, chunks=state.chunks)
        self._ready.append(piece)
        state.chunks, state.fd, state.path, state.size = [], None, None, 0

    def _spill(self) -> None:
        """Move the newest memory pieces of a stream over `memory_bytes` to spool files."""
        assert self._directory is not None
        with self._lock:
            while not self._closed:
                piece = next(
                    (
                        p
                        for p in reversed(self._ready)
                        if p.path is None and self._streams[p.stream].in_memory > self._memory_bytes
                    ),
                    None,
                )
                if piece is None:
                    self._spill_wanted.wait()
                    continue
                chunks = piece.chunks
                path = self._directory / f"{piece.stream}.{time.monotonic_ns()}"
                self._lock.release()
                try:
                    _write_file(path, chunks)
                except OSError as exc:
                    logger.warning("logs: could not spool output to disk: %s", exc)
                    path.unlink(missing_ok=True)
                    return
                finally:
                    self._lock.acquire()
                if any(p is piece for p in self._ready) and not self._closed:
                    piece.path, piece.chunks = path, []
                    self._streams[piece.stream].in_memory -= piece.size
                else:  # taken for upload meanwhile
                    path.unlink(missing_ok=True)

    def _release(self, piece: Piece) -> None:
        with self._lock:
            state = self._streams[piece.stream]
            state.waiting -= piece.size
            if piece.path is None:
                state.in_memory -= piece.size

    @staticmethod
    def _lose(state: _Stream, size: int, why: str) -> None:
        state.lost += size
        state.unnoted += size
        state.why_lost = why


def _write_file(path: Path, chunks: Sequence[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class PieceStorage(Protocol):
    async def put_object(self, bucket: str, key: str, data: bytes) -> None: ...


class JobLogs:
    """One attempt's logs: the spool, and (with a place to put them) the task that uploads
    its pieces every `piece_s` seconds."""

    def __init__(
        self,
        storage: PieceStorage | None,
        location: LogLocation | None,
        attempt_id: int | None,
        *,
        piece_s: float,
    ) -> None:
        self._storage = storage
        self._prefix = None
        self._bucket = ""
        if storage is not None and location is not None and attempt_id is not None:
            self._bucket = location.bucket
            self._prefix = location.attempt_prefix(attempt_id)
        directory = Path(tempfile.mkdtemp(prefix="kelpie-logs-")) if self._prefix else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self.spool = LogSpool(directory, on_piece=self._piece_waiting)
        self._piece_s = piece_s
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._finished = False
        self.warning: str | None = None

    @property
    def where(self) -> str | None:
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else None

    def write(self, stream: str, data: bytes) -> None:
        self.spool.write(stream, data)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._prefix is not None:
            self._task = asyncio.create_task(self._ship_every_piece(), name="job-logs")

    async def finish(self, within: float) -> None:
        """Upload what is left and the end marker, for up to `within` seconds; idempotent."""
        if self._finished:
            return
        self._finished = True
        try:
            if self._task is not None:
                self._closing = True
                self._wake.set()
                try:
                    async with asyncio.timeout(within):
                        await asyncio.shield(self._task)
                except TimeoutError:
                    self._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._task
                    self.warning = (
                        f"logs: the last pieces did not reach {self.where} within {within:g} s"
                    )
                    logger.warning("%s", self.warning)
                except Exception as exc:  # a bug of ours: the job and its report go on
                    logger.error("logs: shipping them failed: %r", exc)
                    self.warning = f"logs: not all of them reached {self.where}: {exc!r}"
        finally:
            self.spool.close()

    def _piece_waiting(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._wake.set)

    async def _ship_every_piece(self) -> None:
        while True:
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._piece_s):
                        await self._wake.wait()
            self._wake.clear()
            closing = self._closing
            self.spool.cut()
            await self._ship_ready()
            if closing:
                await self._put_end()
                return

    async def _ship_ready(self) -> None:
        assert self._storage is not None and self._prefix is not None
        while (piece := self.spool.take_next()) is not None:
            key = self._prefix + piece_name(piece.number, piece.stream)
            try:
                data = piece.read() if piece.path is None else await asyncio.to_thread(piece.read)
                await self._storage.put_object(self._bucket, key, data)
            except Exception as exc:  # never the job's problem: the piece is noted as lost
                logger.warning("logs: piece %s not uploaded: %s", key, exc)
                self.spool.give_up(piece, f"upload failed ({exc})"[:300])
            else:
                self.spool.shipped(piece)

    async def _put_end(self) -> None:
        assert self._storage is not None and self._prefix is not None
        summary = json.dumps(self.spool.summary()).encode()
        try:
            await self._storage.put_object(self._bucket, self._prefix + END_MARKER, summary)
        except Exception as exc:
            logger.warning("logs: end marker not uploaded: %s", exc)


# -- the reader's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptListing:
    pieces: tuple[tuple[int, str, str], ...]
    """(number, stream, key), in number order."""
    end: bool


def attempt_listing(objects: Sequence[RemoteObject], prefix: str) -> AttemptListing:
    """The pieces and end marker among `objects` listed under an attempt's `prefix`."""
    pieces = []
    end = False
    for item in objects:
        name = item.key[len(prefix) :] if item.key.startswith(prefix) else None
        if name is None:
            continue
        if name == END_MARKER:
            end = True
        elif (parsed := parse_piece(name)) is not None:
            pieces.append((parsed[0], parsed[1], item.key))
    pieces.sort()
    return AttemptListing(tuple(pieces), end)
