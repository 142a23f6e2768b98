"""Uploads that never store a torn file, and downloads checked against size and SHA-256,
against a real S3 server (SeaweedFS), witnessed through boto3."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest

from kelpie.storage import (
    FileChangedError,
    FileStamp,
    ObjectDamaged,
    ObjectStorage,
    S3Settings,
    VerifiedDownload,
)
from kelpie.storage.files import PART_SIZE
from kelpie.storage.local_server import LocalS3Server
from tests.support.s3 import new_bucket
from tests.support.tcp_proxy import TcpProxy

MiB = 1024 * 1024


@pytest.fixture
def bucket(seaweed: LocalS3Server) -> str:
    return new_bucket(seaweed)


@pytest.fixture
def storage(seaweed: LocalS3Server) -> ObjectStorage:
    return ObjectStorage(S3Settings.from_env(seaweed.env()))


@pytest.fixture
def s3(seaweed: LocalS3Server) -> Any:
    env = seaweed.env()
    return boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint_url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )


@pytest.fixture
def proxy(seaweed: LocalS3Server) -> Iterator[TcpProxy]:
    host, port = seaweed.endpoint_url.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as running:
        yield running


@pytest.fixture
def proxied(seaweed: LocalS3Server, proxy: TcpProxy) -> ObjectStorage:
    return ObjectStorage(S3Settings.from_env({**seaweed.env(), "AWS_ENDPOINT_URL": proxy.url}))


def keys(s3: Any, bucket: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def open_uploads(s3: Any, bucket: str) -> list[str]:
    """Keys of multipart uploads begun and neither completed nor aborted."""
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def patterned(size: int, seed: int = 0) -> bytes:
    block = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(2048))
    return (block * (size // len(block) + 1))[:size]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("size", [0, 3 * MiB, 3 * PART_SIZE + 12345])
async def test_upload_reports_the_size_and_hash_of_exactly_the_bytes_stored(
    storage: ObjectStorage, bucket: str, s3: Any, tmp_path: Path, size: int, compress: bool
) -> None:
    data = patterned(size)
    path = tmp_path / "model.bin"
    path.write_bytes(data)

    uploaded = await storage.upload_verified(path, bucket, "ck/model.bin", compress=compress)

    body = s3.get_object(Bucket=bucket, Key="ck/model.bin")["Body"].read()
    assert (gzip.decompress(body) if compress else body) == data
    assert (uploaded.size, uploaded.sha256, uploaded.sent) == (size, sha256(data), len(body))
    assert uploaded.stamp == FileStamp.of(path.stat())


async def test_a_file_truncated_during_its_multipart_upload_leaves_nothing_in_the_bucket(
    proxied: ObjectStorage, proxy: TcpProxy, bucket: str, s3: Any, tmp_path: Path
) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(patterned(16 * PART_SIZE))
    proxy.hold_after(2 * PART_SIZE)  # parts stall in flight; reading stops well before the end
    upload = asyncio.create_task(proxied.upload_verified(path, bucket, "ck/model.bin"))
    await asyncio.to_thread(proxy.held.wait, 30)
    assert open_uploads(s3, bucket) == ["ck/model.bin"]

    with path.open("r+b") as f:  # the writer starts over: torch.save opens with O_TRUNC
        f.truncate(0)
        f.write(b"x" * (5 * PART_SIZE))
    proxy.release()

    with pytest.raises(FileChangedError):
        await upload
    assert keys(s3, bucket) == []
    assert open_uploads(s3, bucket) == []


async def test_a_file_rewritten_in_place_during_its_multipart_upload_is_not_stored(
    proxied: ObjectStorage, proxy: TcpProxy, bucket: str, s3: Any, tmp_path: Path
) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(patterned(16 * PART_SIZE))
    stamp = FileStamp.of(path.stat())
    proxy.hold_after(2 * PART_SIZE)
    with path.open("rb") as snapshot:
        upload = asyncio.create_task(
            proxied.upload_verified(snapshot.fileno(), bucket, "ck/model.bin", expect=stamp)
        )
        await asyncio.to_thread(proxy.held.wait, 30)
        with path.open("r+b") as f:  # same size, new bytes at the start
            f.write(b"y" * 4096)
        proxy.release()
        with pytest.raises(FileChangedError):
            await upload
    assert keys(s3, bucket) == []
    assert open_uploads(s3, bucket) == []


async def test_a_small_file_that_differs_from_its_snapshot_is_not_stored(
    storage: ObjectStorage, bucket: str, s3: Any, tmp_path: Path
) -> None:
    path = tmp_path / "step.json"
    path.write_text('{"step": 1}')
    stamp = FileStamp.of(path.stat())
    with path.open("a") as f:
        f.write(" ")

    with pytest.raises(FileChangedError):
        await storage.upload_verified(path, bucket, "ck/step.json", expect=stamp)
    assert keys(s3, bucket) == []


async def test_cancelling_a_multipart_upload_aborts_it(
    proxied: ObjectStorage, proxy: TcpProxy, bucket: str, s3: Any, tmp_path: Path
) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(patterned(16 * PART_SIZE))
    proxy.hold_after(2 * PART_SIZE)
    upload = asyncio.create_task(proxied.upload_verified(path, bucket, "ck/model.bin"))
    await asyncio.to_thread(proxy.held.wait, 30)
    assert open_uploads(s3, bucket) == ["ck/model.bin"]

    upload.cancel()
    proxy.release()
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert open_uploads(s3, bucket) == []
    assert keys(s3, bucket) == []


async def test_live_upload_of_a_file_being_written_raises_file_changed(
    proxied: ObjectStorage, proxy: TcpProxy, bucket: str, s3: Any, tmp_path: Path
) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(patterned(16 * PART_SIZE))
    proxy.hold_after(2 * PART_SIZE)
    upload = asyncio.create_task(proxied.upload_file(path, bucket, "out/out.bin"))
    await asyncio.to_thread(proxy.held.wait, 30)
    with path.open("ab") as f:
        f.write(b"more")
    proxy.release()

    with pytest.raises(FileChangedError):
        await upload
    assert keys(s3, bucket) == []
    assert open_uploads(s3, bucket) == []


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("size", [0, 1000, 5 * MiB, 4 * PART_SIZE + 7])
async def test_verified_download_restores_exactly_what_was_uploaded(
    storage: ObjectStorage, bucket: str, tmp_path: Path, size: int, compress: bool
) -> None:
    data = patterned(size, seed=size)
    source = tmp_path / "src.bin"
    source.write_bytes(data)
    uploaded = await storage.upload_verified(source, bucket, "ck/a.bin", compress=compress)
    dest = tmp_path / "restored" / "sub" / "a.bin"

    stats = await storage.download_verified(
        [VerifiedDownload(bucket, "ck/a.bin", dest, uploaded.size, uploaded.sha256, compress)]
    )

    assert dest.read_bytes() == data
    assert (stats.files, stats.bytes) == (1, size)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.bin"]


def _put(s3: Any, bucket: str, key: str, body: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body)


@pytest.mark.parametrize(
    ("stored", "gunzip", "reason"),
    [
        (b"B" * 1000, False, "SHA-256"),  # same size, other bytes
        (b"A" * 999, False, "999 bytes"),
        (b"A" * 1001, False, "1001 bytes"),
        (b"not gzip at all", True, "gzip"),
        (gzip.compress(b"A" * 500, mtime=0), True, "500 bytes"),
        (gzip.compress(b"A" * 1000, mtime=0)[:-9], True, "gzip"),  # cut before its trailer
        (None, False, "missing"),
    ],
)
async def test_a_damaged_object_is_reported_and_leaves_no_file(
    storage: ObjectStorage,
    bucket: str,
    s3: Any,
    tmp_path: Path,
    stored: bytes | None,
    gunzip: bool,
    reason: str,
) -> None:
    expected = b"A" * 1000
    if stored is not None:
        _put(s3, bucket, "ck/a.bin", stored)
    dest = tmp_path / "restored" / "a.bin"

    with pytest.raises(ObjectDamaged) as raised:
        await storage.download_verified(
            [VerifiedDownload(bucket, "ck/a.bin", dest, len(expected), sha256(expected), gunzip)]
        )

    assert raised.value.key == "ck/a.bin"
    assert reason in raised.value.reason
    assert list(dest.parent.iterdir()) == []


async def test_a_large_object_with_one_flipped_byte_is_damaged(
    storage: ObjectStorage, bucket: str, s3: Any, tmp_path: Path
) -> None:
    data = bytearray(patterned(3 * PART_SIZE))
    digest = sha256(bytes(data))
    data[2 * PART_SIZE + 17] ^= 0xFF
    _put(s3, bucket, "ck/big.bin", bytes(data))
    dest = tmp_path / "restored" / "big.bin"

    with pytest.raises(ObjectDamaged, match="SHA-256"):
        await storage.download_verified(
            [VerifiedDownload(bucket, "ck/big.bin", dest, len(data), digest, False)]
        )
    assert list(dest.parent.iterdir()) == []


async def test_plain_prefix_download_skips_the_checkpoint_area(
    storage: ObjectStorage, bucket: str, s3: Any, tmp_path: Path
) -> None:
    for key in ("run/ck/model.bin", "run/ck/.kelpie/a1/g1/model.bin", "run/notes.txt"):
        _put(s3, bucket, key, key.encode())

    await storage.download_prefix(bucket, "run", tmp_path / "all")
    await storage.download_prefix(bucket, "run/ck", tmp_path / "ck")

    assert files_under(tmp_path) == [
        "all/ck/model.bin",
        "all/notes.txt",
        "ck/model.bin",
    ]


async def test_delete_objects_removes_exactly_the_keys_named(
    storage: ObjectStorage, bucket: str, s3: Any
) -> None:
    # More keys than one DeleteObjects request takes (1,000), put side by side.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _put(s3, bucket, f"p/{i:04d}", b"x"), range(1_205)))

    await storage.delete_objects(bucket, [f"p/{i:04d}" for i in range(1, 1_205)] + ["p/gone"])

    assert keys(s3, bucket) == ["p/0000"]
    await storage.delete_objects(bucket, [])


def test_file_stamp_tells_a_renamed_over_file_apart(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"same")
    before = FileStamp.of(path.stat())
    aside = tmp_path / "f.tmp"
    aside.write_bytes(b"same")
    os.utime(aside, ns=(before.mtime_ns, before.mtime_ns))
    os.replace(aside, path)
    assert FileStamp.of(path.stat()) != before


async def test_list_folders_names_the_folders_one_level_down_only(
    storage: ObjectStorage, bucket: str, s3: Any
) -> None:
    # What a new job reads to find the jobs that checkpointed under its prefix before it.
    for key in (
        "run/ck/.kelpie/job-1/a1/g1/model.bin",
        "run/ck/.kelpie/job-1/a2/g2/model.bin",
        "run/ck/.kelpie/job-2/a3/g1/state/step.json",
        "run/ck/.kelpie/notes.txt",  # an object, not a folder
        "run/ck/.kelpie-aside/job-3/x",  # a sibling folder sharing the name's start
        "run/ck/model.bin",
    ):
        _put(s3, bucket, key, b"x")

    assert await storage.list_folders(bucket, "run/ck/.kelpie/") == ["job-1", "job-2"]
    assert await storage.list_folders(bucket, "run/ck/.kelpie/job-1/") == ["a1", "a2"]
    assert await storage.list_folders(bucket, "run/ck/") == [".kelpie", ".kelpie-aside"]
    assert await storage.list_folders(bucket, "") == ["run"]
    assert await storage.list_folders(bucket, "nothing/here/") == []
