"""One object to one local file and back: a single attempt each, retried by the caller.

Downloads land in a hidden temp file beside the destination and are renamed into place, so a
reader never sees half a file. Small objects take one request and one trip to the thread
pool; large ones come in parallel ranges (pinned to one ETag) or, when gzipped, as one
stream. A verified download also hashes the bytes in the same pass and checks them against
the size and SHA-256 they were stored with.

An upload reads its file once: the same pass hashes it, gzips it when asked and feeds the
request (one PUT, or multipart for large files). After the last byte, and before the object
is completed, the open file must still be what it was when reading began; a file written
meanwhile raises FileChangedError and is never stored torn (a multipart upload is aborted).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import os
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import obstore
from obstore.store import S3Store

from kelpie.storage.errors import FileChangedError, ObjectDamaged
from kelpie.storage.gzip_stream import Gunzip, Gzip
from kelpie.storage.progress import TransferProgress

if TYPE_CHECKING:
    from obstore import GetOptions, GetResult
    from typing_extensions import Buffer

R = TypeVar("R")

MiB = 1024 * 1024
PART_SIZE = 8 * MiB  # larger files go multipart up and in parallel ranges down
MAX_PARTS = 10_000  # S3's limit per multipart upload
PART_CONCURRENCY = 8  # parts or ranges in flight per large file
READ_CHUNK = 4 * MiB  # streamed read size (gzip both ways)
RANGES_AHEAD = 12  # ranges of one file fetched or fetching, not yet hashed (x PART_SIZE)
ABORT_WAIT_S = 10.0  # a cancelled multipart upload's wait for obstore to abort it


@dataclass(frozen=True)
class FileStamp:
    """A file as `stat` saw it. Writing, truncating or touching it changes the times or the
    size; a different file renamed over the path has another inode."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileStamp:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Download:
    """Object `key` (`size` bytes as listed) to the local file `dest`."""

    key: str
    size: int
    dest: Path
    gunzip: bool


class _Tally:
    """Bytes one attempt moved, so a failed attempt can hand them back to the progress."""

    def __init__(self, progress: TransferProgress) -> None:
        self.progress = progress
        self.counted = 0

    def __call__(self, nbytes: int) -> None:
        self.counted += nbytes
        self.progress.advance(nbytes)

    def undo(self) -> None:
        self.progress.advance(-self.counted)
        self.counted = 0


async def fetch_to_file(store: S3Store, item: Download, progress: TransferProgress) -> None:
    """Download `item` whole into place, or leave nothing behind."""
    temp = item.dest.with_name(f".kelpie-{secrets.token_hex(6)}.part")
    tally = _Tally(progress)
    try:
        if item.size <= READ_CHUNK:
            result = await obstore.get_async(store, item.key)
            data = await result.bytes_async()
            tally(len(data))
            await asyncio.to_thread(_write_whole, temp, item.dest, data, item.gunzip)
            return
        await asyncio.to_thread(item.dest.parent.mkdir, parents=True, exist_ok=True)
        with await _create(temp) as out:
            if item.gunzip or item.size <= PART_SIZE:
                await _stream_into(out, store, item, tally)
            else:
                await _ranges_into(out, store, item, tally)
        await asyncio.to_thread(os.replace, temp, item.dest)
    except BaseException:
        tally.undo()
        temp.unlink(missing_ok=True)
        raise


def _write_whole(temp: Path, dest: Path, data: Buffer, gunzip: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with temp.open("xb") as out:
        if gunzip:
            _write_gunzipped(out, data, Gunzip(), last=True)
        else:
            out.write(data)
    os.replace(temp, dest)


def _write_gunzipped(out: IO[bytes], data: Buffer, gunzip: Gunzip, *, last: bool) -> None:
    for piece in gunzip.feed(bytes(data)):
        out.write(piece)
    if last:
        out.write(gunzip.finish())


async def _stream_into(out: IO[bytes], store: S3Store, item: Download, tally: _Tally) -> None:
    result = await obstore.get_async(store, item.key)
    gunzip = Gunzip() if item.gunzip else None
    async for chunk in result.stream(min_chunk_size=READ_CHUNK):
        tally(len(chunk))
        if gunzip is None:
            await asyncio.to_thread(out.write, chunk)
        else:
            await asyncio.to_thread(_write_gunzipped, out, chunk, gunzip, last=False)
    if gunzip is not None:
        await asyncio.to_thread(out.write, gunzip.finish())


async def _ranges_into(out: IO[bytes], store: S3Store, item: Download, tally: _Tally) -> None:
    """Fetch PART_SIZE ranges, PART_CONCURRENCY at a time, each written at its offset.

    The first range tells the object's ETag and true size; the rest must match that ETag, so
    an object replaced meanwhile fails the attempt instead of mixing two versions.
    """
    first = await obstore.get_async(store, item.key, options={"range": (0, PART_SIZE)})
    size, etag = first.meta["size"], first.meta["e_tag"]
    head = await first.bytes_async()
    tally(len(head))
    fd = out.fileno()
    await asyncio.to_thread(os.pwrite, fd, head, 0)
    slots = asyncio.Semaphore(PART_CONCURRENCY)

    async def fetch_range(start: int) -> None:
        end = min(start + PART_SIZE, size)
        async with slots:
            result = await obstore.get_async(
                store, item.key, options={"range": (start, end), "if_match": etag}
            )
            data = await result.bytes_async()
            await asyncio.to_thread(os.pwrite, fd, data, start)
            tally(end - start)

    tasks = [asyncio.create_task(fetch_range(s)) for s in range(PART_SIZE, size, PART_SIZE)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class VerifiedDownload:
    """Object `key` of `bucket` to `dest`, which must read back as `size` bytes with SHA-256
    `sha256` (of the plain bytes: after gunzip when `gunzip`)."""

    bucket: str
    key: str
    dest: Path
    size: int
    sha256: str
    gunzip: bool


async def fetch_verified(
    store: S3Store, item: VerifiedDownload, progress: TransferProgress
) -> None:
    """Download `item` into place, hashing while it streams; ObjectDamaged when it is missing
    or reads back differently. Leaves nothing behind on failure."""
    temp = item.dest.with_name(f".kelpie-{secrets.token_hex(6)}.part")
    tally = _Tally(progress)
    try:
        await asyncio.to_thread(item.dest.parent.mkdir, parents=True, exist_ok=True)
        if not item.gunzip and item.size > PART_SIZE:
            with await _create(temp) as out:
                sink = _VerifyingSink(out, item)
                await _windowed_ranges_into(sink, store, item, tally)
                await asyncio.to_thread(sink.finish)
        else:
            result = await _get(store, item)
            if not item.gunzip and result.meta["size"] != item.size:
                raise _damaged(item, f"{result.meta['size']} bytes instead of {item.size}")
            with await _create(temp) as out:
                sink = _VerifyingSink(out, item)
                if result.meta["size"] <= READ_CHUNK:
                    data = await result.bytes_async()
                    tally(await asyncio.to_thread(sink.write_last, data))
                else:
                    async for chunk in result.stream(min_chunk_size=READ_CHUNK):
                        tally(await asyncio.to_thread(sink.write, chunk))
                    await asyncio.to_thread(sink.finish)
        await asyncio.to_thread(os.replace, temp, item.dest)
    except BaseException:
        tally.undo()
        temp.unlink(missing_ok=True)
        raise


async def _get(
    store: S3Store, item: VerifiedDownload, options: GetOptions | None = None
) -> GetResult:
    try:
        return await obstore.get_async(store, item.key, options=options)
    except FileNotFoundError as exc:  # obstore's "no such key"
        raise _damaged(item, "the object is missing") from exc


def _damaged(item: VerifiedDownload, reason: str) -> ObjectDamaged:
    return ObjectDamaged(item.bucket, item.key, reason)


class _VerifyingSink:
    """Writes an object's bytes in order (gunzipping when asked), hashing the plain bytes, and
    checks size and SHA-256 at the end; or only hashes them (`absorb`) when the caller writes
    them itself. Runs in a thread, one piece at a time."""

    def __init__(self, out: IO[bytes], item: VerifiedDownload) -> None:
        self._out = out
        self._item = item
        self._gunzip = Gunzip() if item.gunzip else None
        self._hash = hashlib.sha256()
        self._written = 0

    def write(self, data: Buffer) -> int:
        """Take the next piece of the object; returns the plain bytes it made."""
        if self._gunzip is None:
            return self._plain(data)
        try:
            return sum(self._plain(piece) for piece in self._gunzip.feed(bytes(data)))
        except zlib.error as exc:
            raise _damaged(self._item, f"not a valid gzip stream ({exc})") from exc

    def write_last(self, data: Buffer) -> int:
        written = self.write(data)
        return written + self.finish()

    def finish(self) -> int:
        """Check the whole; returns the plain bytes the end of a gzip stream made."""
        tail = 0
        if self._gunzip is not None:
            try:
                tail = self._plain(self._gunzip.finish())
            except (zlib.error, EOFError) as exc:
                raise _damaged(self._item, f"not a valid gzip stream ({exc})") from exc
        if self._written != self._item.size:
            raise _damaged(self._item, f"{self._written} bytes instead of {self._item.size}")
        if self._hash.hexdigest() != self._item.sha256:
            raise _damaged(self._item, "its SHA-256 does not match the checkpoint's record")
        return tail

    def absorb(self, data: Buffer) -> int:
        """Count and hash the next plain bytes, written to the file by the caller."""
        view = memoryview(data)
        self._written += view.nbytes
        if self._written > self._item.size:
            raise _damaged(self._item, f"more than the {self._item.size} bytes recorded")
        self._hash.update(view)
        return view.nbytes

    def fileno(self) -> int:
        return self._out.fileno()

    def _plain(self, data: Buffer) -> int:
        written = self.absorb(data)
        self._out.write(data)
        return written


async def _windowed_ranges_into(
    sink: _VerifyingSink, store: S3Store, item: VerifiedDownload, tally: _Tally
) -> None:
    """Fetch PART_SIZE ranges, PART_CONCURRENCY at a time, all pinned to the first range's
    ETag. Each range is written at its offset as soon as it arrives, as a plain download
    does, and hashed in file order as soon as its turn comes: the file is checked in the
    same pass that downloads it. Up to RANGES_AHEAD ranges may wait, fetched, for their turn
    to be hashed (bounding memory)."""
    first = await _get(store, item, {"range": (0, PART_SIZE)})
    size, etag = first.meta["size"], first.meta["e_tag"]
    if size != item.size:
        raise _damaged(item, f"{size} bytes instead of {item.size}")
    fd = sink.fileno()
    ahead = asyncio.Semaphore(RANGES_AHEAD)  # released once the range is hashed
    slots = asyncio.Semaphore(PART_CONCURRENCY)

    async def fetch_range(start: int) -> Buffer:
        await ahead.acquire()  # waiters are served in order: ranges start in file order
        async with slots:
            end = min(start + PART_SIZE, size)
            result = await _get(store, item, {"range": (start, end), "if_match": etag})
            data = await result.bytes_async()
        await asyncio.to_thread(os.pwrite, fd, data, start)
        return data

    ranges = [asyncio.create_task(fetch_range(s)) for s in range(PART_SIZE, size, PART_SIZE)]
    loop = asyncio.get_running_loop()
    # one thread of its own for the hashing: never queued behind the writes
    hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kelpie-sha256")
    try:
        head = await first.bytes_async()
        await asyncio.to_thread(os.pwrite, fd, head, 0)
        tally(await loop.run_in_executor(hasher, sink.absorb, head))
        for fetched in ranges:
            tally(await loop.run_in_executor(hasher, sink.absorb, await fetched))
            ahead.release()
    finally:
        for task in ranges:
            task.cancel()
        await asyncio.gather(*ranges, return_exceptions=True)
        hasher.shutdown(wait=False)


async def send_file(
    store: S3Store,
    source: Path | int,
    key: str,
    *,
    compress: bool,
    expect: FileStamp | None,
    progress: TransferProgress,
    name: str,
) -> Uploaded:
    """Upload the file `source` (a path, or a descriptor open for reading) to `key`.

    One pass over the bytes hashes, gzips (when `compress`) and sends them. Before the object
    is completed the file must still be as it was when reading began (and as `expect`, when
    given), with exactly that many bytes read; otherwise FileChangedError, and nothing is
    stored.
    """
    tally = _Tally(progress)
    fd = (
        source
        if isinstance(source, int)
        else await _acquire(functools.partial(_open_for_reading, source), os.close)
    )
    try:
        stamp = FileStamp.of(await asyncio.to_thread(os.fstat, fd))
        if expect is not None and stamp != expect:
            raise FileChangedError(f"{name} changed before its upload began")
        reader = _FileReader(fd, stamp, compress, name)
        if stamp.size <= PART_SIZE:
            body = await asyncio.to_thread(reader.read_all)
            tally(reader.read)
            await obstore.put_async(store, key, body, use_multipart=False)
        else:
            await _put_multipart(store, key, _Chunks(reader, tally), part_size(stamp.size))
        return Uploaded(reader.read, reader.sha256(), reader.sent, stamp)
    except BaseException:
        tally.undo()
        raise
    finally:
        if not isinstance(source, int):
            os.close(fd)


@dataclass(frozen=True)
class Uploaded:
    """What an upload stored: the file's size and SHA-256 (of its plain bytes), the bytes sent
    (gzipped size when compressing), and the file as it was read."""

    size: int
    sha256: str
    sent: int
    stamp: FileStamp


def _open_for_reading(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


class _FileReader:
    """Reads an open file once, from offset 0, off the event loop (a thread per piece).

    Hashes the plain bytes and gzips them when asked. At the end of the file it checks that
    the file is still `stamp` and that exactly `stamp.size` bytes were read: a file written,
    truncated or grown while it was read raises FileChangedError.
    """

    def __init__(self, fd: int, stamp: FileStamp, compress: bool, name: str) -> None:
        self._fd = fd
        self._stamp = stamp
        self._name = name
        self._gzip = Gzip() if compress else None
        self._hash = hashlib.sha256()
        self._finished = False
        self.read = 0
        self.sent = 0

    def next_piece(self) -> bytes | None:
        """The next bytes to send (may be empty while gzip buffers); None after the last."""
        if self._finished:
            return None
        data = os.pread(self._fd, READ_CHUNK, self.read)
        if data:
            self.read += len(data)
            if self.read > self._stamp.size:
                raise FileChangedError(f"{self._name} grew while it was read for upload")
            self._hash.update(data)
            piece = self._gzip.feed(data) if self._gzip is not None else data
        else:
            self._check_unchanged()
            self._finished = True
            piece = self._gzip.finish() if self._gzip is not None else b""
        self.sent += len(piece)
        return piece

    def read_all(self) -> bytes:
        pieces: list[bytes] = []
        while (piece := self.next_piece()) is not None:
            pieces.append(piece)
        return b"".join(pieces)

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def _check_unchanged(self) -> None:
        now = FileStamp.of(os.fstat(self._fd))
        if now != self._stamp or self.read != self._stamp.size:
            raise FileChangedError(
                f"{self._name} changed while it was read for upload "
                f"({self.read} of {now.size} bytes read)"
            )


class _UploadStopped(Exception):
    """Raised into obstore's read of the next part, so that it aborts the multipart upload."""


class _Chunks:
    """The reader's pieces as the async iterator obstore's multipart upload pulls from.

    `stop()` makes the next pull raise, which makes obstore abort the upload.
    """

    def __init__(self, reader: _FileReader, count: Callable[[int], None]) -> None:
        self._reader = reader
        self._count = count
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._stopped:
                raise _UploadStopped()
            before = self._reader.read
            piece = await asyncio.to_thread(self._reader.next_piece)
            self._count(self._reader.read - before)
            if piece is None:
                raise StopAsyncIteration
            if piece:
                return piece


async def _put_multipart(store: S3Store, key: str, chunks: _Chunks, chunk_size: int) -> None:
    """Run the multipart upload to its end, even when the caller is cancelled meanwhile.

    obstore aborts a multipart upload when reading the next part raises, but simply drops it
    (leaving its parts in the bucket) when the awaiting task is cancelled. So a cancellation
    stops the reading instead, and waits up to ABORT_WAIT_S for obstore to abort.
    """
    upload = asyncio.ensure_future(
        obstore.put_async(
            store, key, chunks, chunk_size=chunk_size, max_concurrency=PART_CONCURRENCY
        )
    )
    upload.add_done_callback(_retrieve)
    try:
        await asyncio.shield(upload)
    except asyncio.CancelledError:
        chunks.stop()
        done, _ = await asyncio.wait({upload}, timeout=ABORT_WAIT_S)
        if not done:
            upload.cancel()
        raise


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a shielded upload's outcome as seen: its caller has moved on or re-raised it."""
    if not task.cancelled():
        task.exception()


async def _create(temp: Path) -> IO[bytes]:
    """A new temp file, opened off the event loop; removed again if the caller is cancelled."""

    def discard(out: IO[bytes]) -> None:
        out.close()
        temp.unlink(missing_ok=True)

    def create() -> IO[bytes]:
        return temp.open("xb")

    return await _acquire(create, discard)


async def _acquire(open_: Callable[[], R], release: Callable[[R], None]) -> R:
    """Run `open_` in a thread and return what it opened. A caller cancelled while the thread
    runs never sees the result, so `release` gets it instead: nothing leaks."""
    opening = asyncio.ensure_future(asyncio.to_thread(open_))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(lambda done: _release_opened(done, release))
        raise


def _release_opened(done: asyncio.Future[R], release: Callable[[R], None]) -> None:
    if not done.cancelled() and done.exception() is None:
        release(done.result())


def part_size(size: int) -> int:
    """PART_SIZE, or larger when the file would need more than S3's 10,000 parts."""
    return max(PART_SIZE, -(-size // (MAX_PARTS - 1)))
