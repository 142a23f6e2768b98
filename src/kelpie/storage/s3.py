"""S3 transfers for the worker: list, download a prefix, upload files and trees, delete.

Built on obstore (Rust object_store), one S3Store per bucket. obstore retries each request
on connection errors and 5xx; `_retrying` adds whole-operation retries for what it leaves
out (429, timed-out writes, a download cut mid-body) and turns every failure into a
StorageError that names the bucket and key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import S3Store

from kelpie.backoff import Backoff
from kelpie.schemas import CHECKPOINT_AREA
from kelpie.storage.errors import StorageError, is_transient, is_transient_cause, summarize
from kelpie.storage.files import (
    PART_SIZE,
    Download,
    FileStamp,
    Uploaded,
    VerifiedDownload,
    fetch_to_file,
    fetch_verified,
    send_file,
)
from kelpie.storage.progress import TransferProgress
from kelpie.storage.settings import S3Settings

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config

logger = logging.getLogger("kelpie.storage")

T = TypeVar("T")

LARGE_TRANSFERS = 2  # large files moving at once: bounds buffers to ~2 x 8 x 8 MiB
GZ_SUFFIX = ".gz"
KELPIE_AREA = CHECKPOINT_AREA.rstrip("/")  # kelpie's own folder under a checkpoint prefix

# How long a failing request is retried before the storage counts as unreachable: obstore's
# own per-request retries (100 ms doubling to 5 s, with jitter) for up to this long, and the
# whole-operation retries below for as long again. A worker hands its job back after that.
RETRY_WINDOW_S = 60.0


def request_retries(window_s: float) -> RetryConfig:
    """obstore's retry settings for requests retried for up to `window_s` seconds."""
    return {
        "max_retries": 40,
        "retry_timeout": timedelta(seconds=window_s),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=5),
            "base": 2,
        },
    }


# Whole-operation retries on top, for the failures obstore does not retry: full-jitter
# backoff from 0.5 s doubling to 8 s, for as long as failures have gone on under the
# window. A time window rather than a count, so an outage of a few seconds is ridden out.
OPERATION_BACKOFF = Backoff(base=1.0, cap=8.0)
# What a transfer can raise besides our own StorageError: obstore (FileNotFoundError and
# ValueError included), the local filesystem, and gzip data that does not decode.
_ERRORS = (ObstoreError, OSError, EOFError, ValueError, zlib.error)


@dataclass(frozen=True)
class RemoteObject:
    """An object under a listed prefix."""

    key: str
    size: int


@dataclass(frozen=True)
class TransferStats:
    """What one download or upload call moved (bytes as sent over the wire)."""

    files: int
    bytes: int
    seconds: float


class ObjectStorage:
    """Moves files between local directories and S3 prefixes, many at a time.

    `concurrency` bounds how many objects are in flight across every call on this instance.
    """

    def __init__(
        self,
        settings: S3Settings,
        *,
        concurrency: int = 16,
        retry_window_s: float = RETRY_WINDOW_S,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if retry_window_s <= 0:
            raise ValueError("retry_window_s must be positive")
        self.settings = settings
        self.concurrency = concurrency
        self.retry_window_s = retry_window_s
        self._stores: dict[str, S3Store] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._large_slots = asyncio.Semaphore(min(LARGE_TRANSFERS, concurrency))

    async def list_objects(self, bucket: str, prefix: str) -> list[RemoteObject]:
        """Every object under `prefix` (a directory-like prefix: `a/b` matches `a/b/...`)."""
        store = self._store(bucket)
        prefix = prefix.strip("/")

        async def list_all() -> list[RemoteObject]:
            found: list[RemoteObject] = []
            async for page in obstore.list(store, prefix or None, chunk_size=1000):
                found.extend(RemoteObject(meta["path"], meta["size"]) for meta in page)
            return found

        return await self._retrying("list", bucket, f"{prefix}/" if prefix else "", list_all)

    async def list_folders(self, bucket: str, prefix: str) -> list[str]:
        """The names of the folders right under `prefix` (one level, as a delimiter listing
        gives them), without their objects."""
        store = self._store(bucket)
        prefix = prefix.strip("/")

        async def one_level() -> list[str]:
            found = await obstore.list_with_delimiter_async(store, prefix or None)
            start = len(prefix) + 1 if prefix else 0
            return sorted(p[start:].rstrip("/") for p in found["common_prefixes"])

        return await self._retrying("list", bucket, f"{prefix}/" if prefix else "", one_level)

    async def read_object(self, bucket: str, key: str) -> bytes:
        """The whole body of one (small) object, in memory."""
        store = self._store(bucket)

        async def get() -> bytes:
            result = await obstore.get_async(store, key)
            return bytes(await result.bytes_async())

        return await self._retrying("download", bucket, key, get)

    async def bucket_exists(self, bucket: str) -> bool:
        """True if the bucket exists and these credentials may list it."""
        store = self._store(bucket)

        async def first_page() -> bool:
            async for _ in obstore.list(store, None, chunk_size=1):
                break
            return True

        try:
            return await self._retrying("check", bucket, "", first_page)
        except StorageError as exc:
            if "NoSuchBucket" in str(exc):
                return False
            raise

    async def download_prefix(
        self,
        bucket: str,
        prefix: str,
        local_dir: Path,
        *,
        pattern: re.Pattern[str] | None = None,
        decompress: bool = True,
    ) -> TransferStats:
        """Download every object under `prefix` to `local_dir/<key minus prefix>`.

        Keys ending `.gz` are gunzipped on the fly and saved without the suffix when
        `decompress`; `pattern` is searched in that local relative path. Each file appears
        whole or not at all (written aside, then renamed). An empty prefix downloads nothing
        (the caller decides whether that is an error); `local_dir` is created either way.
        """
        started = time.monotonic()
        prefix = prefix.strip("/")
        objects = await self.list_objects(bucket, prefix)
        await asyncio.to_thread(local_dir.mkdir, parents=True, exist_ok=True)
        plan = plan_downloads(objects, prefix, local_dir, pattern, decompress)
        progress = TransferProgress(
            "download", _url(bucket, prefix), sum(d.size for d in plan), len(plan)
        )
        async with progress.reporting():
            await _all_or_nothing(self._download(bucket, item, progress) for item in plan)
        seconds = time.monotonic() - started
        logger.debug("downloaded %s", progress.line())
        return TransferStats(len(plan), progress.bytes_done, seconds)

    async def upload_file(
        self, local_path: Path, bucket: str, key: str, *, compress: bool = False
    ) -> int:
        """Upload one file; returns the bytes sent. `compress` gzips it on the fly to `key.gz`.

        Files over PART_SIZE go up as a multipart upload; the object appears only when all
        parts are in. A file that changes while it is read raises FileChangedError and
        nothing is stored (no torn object, no multipart upload left open).
        """
        size = await asyncio.to_thread(_file_size, local_path)
        target = key + GZ_SUFFIX if compress else key
        progress = TransferProgress("upload", _url(bucket, target), size, 1)
        async with progress.reporting():
            uploaded = await self._upload(local_path, size, bucket, target, compress, progress)
        return uploaded.sent

    async def put_object(self, bucket: str, key: str, data: bytes) -> None:
        """Store `data` (up to a few MiB: one request) as `key`, as it is: no gzip, no hash."""
        store = self._store(bucket)
        async with self._slots:
            await self._retrying(
                "upload",
                bucket,
                key,
                lambda: obstore.put_async(store, key, data, use_multipart=False),
            )

    async def upload_verified(
        self,
        source: Path | int,
        bucket: str,
        key: str,
        *,
        compress: bool = False,
        expect: FileStamp | None = None,
    ) -> Uploaded:
        """Upload `source` (a path, or a descriptor open for reading that stays the caller's)
        to exactly `key`, and say what was stored: size and SHA-256 of the plain bytes, read
        in the same pass that sent them.

        With `expect`, the file must be that stamp from the first byte read to the last;
        otherwise (and whenever it changes while read) FileChangedError, nothing stored.
        """
        size = expect.size if expect is not None else await asyncio.to_thread(_source_size, source)
        progress = TransferProgress("upload", _url(bucket, key), size, 1)
        async with progress.reporting():
            return await self._upload(source, size, bucket, key, compress, progress, expect)

    async def download_verified(self, items: Sequence[VerifiedDownload]) -> TransferStats:
        """Download `items` in parallel, each checked against its size and SHA-256 while it
        streams, and renamed into place only when it matches.

        The first failure cancels the rest and is raised: ObjectDamaged for an object that is
        missing or reads back wrong, StorageError for the rest. Files already in place stay.
        """
        started = time.monotonic()
        progress = TransferProgress(
            "download", f"{len(items)} checkpoint files", sum(i.size for i in items), len(items)
        )
        async with progress.reporting():
            await _all_or_nothing(self._download_verified(item, progress) for item in items)
        return TransferStats(len(items), progress.bytes_done, time.monotonic() - started)

    async def delete_objects(self, bucket: str, keys: Sequence[str]) -> None:
        """Delete `keys` (in batches of up to 1,000 per request); keys already gone are fine."""
        if not keys:
            return
        store = self._store(bucket)
        batch = list(keys)
        await self._retrying(
            "delete", bucket, f"{len(batch)} objects", lambda: obstore.delete_async(store, batch)
        )

    async def upload_dir(
        self,
        local_dir: Path,
        bucket: str,
        prefix: str,
        *,
        pattern: re.Pattern[str] | None = None,
        compress: bool = False,
    ) -> TransferStats:
        """Upload every file under `local_dir` to `prefix/<relative path>` (plus `.gz` when
        `compress`); `pattern` is searched in the relative path."""
        started = time.monotonic()
        prefix = prefix.strip("/")
        files = await asyncio.to_thread(_local_files, local_dir, pattern)
        progress = TransferProgress(
            "upload", _url(bucket, prefix), sum(size for _, _, size in files), len(files)
        )
        uploads = (
            self._upload(path, size, bucket, _join_key(prefix, rel, compress), compress, progress)
            for path, rel, size in files
        )
        async with progress.reporting():
            done = await _all_or_nothing(uploads)
        return TransferStats(len(files), sum(u.sent for u in done), time.monotonic() - started)

    async def delete_object(self, bucket: str, key: str, *, compressed: bool = False) -> None:
        """Delete `key` (`key.gz` when `compressed`); a key that is already gone is fine."""
        store = self._store(bucket)
        target = key + GZ_SUFFIX if compressed else key
        await self._retrying("delete", bucket, target, lambda: obstore.delete_async(store, target))

    def _store(self, bucket: str) -> S3Store:
        store = self._stores.get(bucket)
        if store is None:
            store = self._stores[bucket] = _make_store(
                self.settings, bucket, request_retries(self.retry_window_s)
            )
        return store

    async def _download(self, bucket: str, item: Download, progress: TransferProgress) -> None:
        store = self._store(bucket)
        large = item.size > PART_SIZE
        async with self._slots, self._large_slots if large else contextlib.nullcontext():
            await self._retrying(
                "download", bucket, item.key, lambda: fetch_to_file(store, item, progress)
            )
        progress.file_done()

    async def _download_verified(self, item: VerifiedDownload, progress: TransferProgress) -> None:
        store = self._store(item.bucket)
        large = item.size > PART_SIZE
        async with self._slots, self._large_slots if large else contextlib.nullcontext():
            await self._retrying(
                "download", item.bucket, item.key, lambda: fetch_verified(store, item, progress)
            )
        progress.file_done()

    async def _upload(
        self,
        source: Path | int,
        size: int,
        bucket: str,
        key: str,
        compress: bool,
        progress: TransferProgress,
        expect: FileStamp | None = None,
    ) -> Uploaded:
        store = self._store(bucket)
        large = size > PART_SIZE
        name = str(source) if isinstance(source, Path) else key
        async with self._slots, self._large_slots if large else contextlib.nullcontext():
            uploaded = await self._retrying(
                "upload",
                bucket,
                key,
                lambda: send_file(
                    store,
                    source,
                    key,
                    compress=compress,
                    expect=expect,
                    progress=progress,
                    name=name,
                ),
            )
        progress.file_done()
        logger.debug("uploaded %s to s3://%s/%s (%d bytes sent)", name, bucket, key, uploaded.sent)
        return uploaded

    async def _retrying(
        self, action: str, bucket: str, key: str, attempt: Callable[[], Awaitable[T]]
    ) -> T:
        """Run `attempt`, retrying transient failures with exponential backoff and jitter.

        Gives up on the first permanent failure, or on a transient one once failures have
        gone on for the retry window.
        """
        first_failure: float | None = None
        number = 0
        while True:
            number += 1
            try:
                return await attempt()
            except _ERRORS as exc:
                now = time.monotonic()
                first_failure = now if first_failure is None else first_failure
                failing_for = now - first_failure
                transient = is_transient(exc)
                if not transient or failing_for >= self.retry_window_s:
                    raise StorageError(
                        f"{action} {_url(bucket, key)} failed: {summarize(exc)}",
                        transient=transient or _retries_spent_on_outage(exc),
                    ) from exc
                delay = OPERATION_BACKOFF.delay(number)
                logger.warning(
                    "%s %s failed (%s); retrying in %.1f s (attempt %d, failing for %.0f s)",
                    action,
                    _url(bucket, key),
                    summarize(exc),
                    delay,
                    number + 1,
                    failing_for,
                )
                await asyncio.sleep(delay)


def _retries_spent_on_outage(exc: BaseException) -> bool:
    """obstore gave up retrying a request that failed with a connection error or 5xx: the
    storage was unreachable for its whole retry budget."""
    return (
        isinstance(exc, ObstoreError)
        and not isinstance(exc, FileNotFoundError)
        and (is_transient_cause(str(exc)))
    )


def _make_store(settings: S3Settings, bucket: str, retries: RetryConfig) -> S3Store:
    # Path-style (<endpoint>/<bucket>/<key>) for custom endpoints, which all understand it;
    # virtual-hosted for AWS itself, which is deprecating path-style.
    virtual_hosted = settings.endpoint_url is None
    config: S3Config = {"region": settings.region, "virtual_hosted_style_request": virtual_hosted}
    if settings.access_key_id is not None and settings.secret_access_key is not None:
        config["access_key_id"] = settings.access_key_id
        config["secret_access_key"] = settings.secret_access_key
    if settings.session_token is not None:
        config["session_token"] = settings.session_token
    if settings.endpoint_url is not None:
        # Both keys: obstore lets AWS_ENDPOINT_URL_S3 from the process env beat `endpoint`.
        config["endpoint"] = settings.endpoint_url
        config["aws_endpoint_url_s3"] = settings.endpoint_url
    client: ClientConfig = {
        "allow_http": (settings.endpoint_url or "").startswith("http://"),
        "connect_timeout": timedelta(seconds=5),
        # A large object streams for as long as it takes; a stalled read is what fails.
        "timeout": timedelta(hours=6),
        "read_timeout": timedelta(seconds=60),
    }
    return S3Store(bucket, config=config, client_options=client, retry_config=retries)


def plan_downloads(
    objects: Iterable[RemoteObject],
    prefix: str,
    local_dir: Path,
    pattern: re.Pattern[str] | None,
    decompress: bool,
) -> list[Download]:
    """Which objects land where: `.gz` stripped when `decompress`, `pattern` searched in the
    local relative path, unsafe keys skipped, the first key kept when two map to one file.

    Objects inside a `.kelpie/` folder are checkpoint generations, restored only through
    their manifests: never as plain files."""
    plan: dict[Path, Download] = {}
    for obj in sorted(objects, key=lambda o: o.key):
        relative = relative_key(obj.key, prefix)
        if relative is None or KELPIE_AREA in relative.split("/"):
            continue
        gunzip = decompress and relative.endswith(GZ_SUFFIX)
        if gunzip:
            relative = relative.removesuffix(GZ_SUFFIX)
        if pattern is not None and not pattern.search(relative):
            continue
        dest = local_dir.joinpath(*PurePosixPath(relative).parts)
        if dest in plan:
            logger.warning(
                "s3 keys %s and %s both map to %s; keeping the first", plan[dest].key, obj.key, dest
            )
            continue
        plan[dest] = Download(obj.key, obj.size, dest, gunzip)
    return list(plan.values())


def relative_key(key: str, prefix: str) -> str | None:
    """`key` relative to the directory-like `prefix`, normalized (`a//./b` is `a/b`); None for
    keys that must not become local files: directory markers and `..` components."""
    relative = key[len(prefix) :] if prefix else key
    if not relative.strip("/") or relative.endswith("/"):
        return None
    parts = PurePosixPath(relative.lstrip("/")).parts
    if ".." in parts:
        logger.warning("skipping s3 key %r: it would land outside the download directory", key)
        return None
    return "/".join(parts)


def _local_files(local_dir: Path, pattern: re.Pattern[str] | None) -> list[tuple[Path, str, int]]:
    """(path, relative posix path, size) of every regular file under `local_dir`, sorted."""
    if not local_dir.is_dir():
        raise StorageError(f"upload source {local_dir} is not a directory")
    found: list[tuple[Path, str, int]] = []
    for root, _dirs, names in os.walk(local_dir):
        for name in names:
            path = Path(root, name)
            relative = path.relative_to(local_dir).as_posix()
            if pattern is not None and not pattern.search(relative):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # removed while we walked
            if stat.S_ISREG(st.st_mode):
                found.append((path, relative, st.st_size))
    return sorted(found, key=lambda item: item[1])


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _source_size(source: Path | int) -> int:
    return os.fstat(source).st_size if isinstance(source, int) else _file_size(source)


def _join_key(prefix: str, relative: str, compress: bool) -> str:
    key = f"{prefix}/{relative}" if prefix else relative
    return key + GZ_SUFFIX if compress else key


def _url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


async def _all_or_nothing(jobs: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run `jobs` concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.create_task(job) for job in jobs]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
