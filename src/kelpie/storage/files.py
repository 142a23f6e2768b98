"""One object to one local file and back: a single attempt each, retried by the caller.

Downloads land in a hidden temp file beside the destination and are renamed into place, so a
reader never sees half a file. Small objects take one request and one trip to the thread
pool; large ones come in parallel ranges (pinned to one ETag) or, when gzipped, as one
stream. Large uploads go multipart from a stream read off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import obstore
from obstore.store import S3Store

from kelpie.storage.gzip_stream import Gunzip, Gzip
from kelpie.storage.progress import TransferProgress

if TYPE_CHECKING:
    from typing_extensions import Buffer

MiB = 1024 * 1024
PART_SIZE = 8 * MiB  # larger files go multipart up and in parallel ranges down
MAX_PARTS = 10_000  # S3's limit per multipart upload
PART_CONCURRENCY = 8  # parts or ranges in flight per large file
READ_CHUNK = 4 * MiB  # streamed read size (gzip both ways)


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
        with await asyncio.to_thread(temp.open, "xb") as out:
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


async def send_file(
    store: S3Store, path: Path, size: int, key: str, compress: bool, progress: TransferProgress
) -> int:
    """Upload `path` to `key` (gzipped when `compress`); returns the bytes sent."""
    tally = _Tally(progress)
    try:
        if size <= PART_SIZE:
            body = await asyncio.to_thread(_read_whole, path, compress)
            await obstore.put_async(store, key, body, use_multipart=False)
            tally(size)
            return len(body)
        sent = _Sent()
        chunks = _file_chunks(path, compress, tally, sent)
        try:
            await obstore.put_async(
                store, key, chunks, chunk_size=part_size(size), max_concurrency=PART_CONCURRENCY
            )
        finally:
            await chunks.aclose()
        return sent.total
    except BaseException:
        tally.undo()
        raise


@dataclass
class _Sent:
    total: int = 0


def _read_whole(path: Path, compress: bool) -> bytes:
    data = path.read_bytes()
    if not compress:
        return data
    gzip = Gzip()
    return gzip.feed(data) + gzip.finish()


async def _file_chunks(
    path: Path, compress: bool, count: Callable[[int], None], sent: _Sent
) -> AsyncGenerator[bytes, None]:
    """The file (gzipped when `compress`) in READ_CHUNK pieces, read off the event loop."""
    gzip = Gzip() if compress else None
    with await asyncio.to_thread(path.open, "rb") as source:
        while data := await asyncio.to_thread(source.read, READ_CHUNK):
            count(len(data))
            if gzip is not None:
                data = await asyncio.to_thread(gzip.feed, data)
            sent.total += len(data)
            if data:
                yield data
    if gzip is not None:
        tail = gzip.finish()
        sent.total += len(tail)
        yield tail


def part_size(size: int) -> int:
    """PART_SIZE, or larger when the file would need more than S3's 10,000 parts."""
    return max(PART_SIZE, -(-size // (MAX_PARTS - 1)))
