"""ObjectStorage against a real S3 server (SeaweedFS): no mocks.

Objects written through kelpie.storage are checked with boto3, an independent S3 client.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest

from kelpie.storage import ObjectStorage, RemoteObject, S3Settings, StorageError
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
    """boto3 client on the same server: the independent witness."""
    env = seaweed.env()
    return boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint_url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Relative posix path -> content of every file under root."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MiB):
            sha.update(block)
    return sha.hexdigest()


def patterned_bytes(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that gzip barely shrinks (SHA-256 of a counter), quick to make."""
    block = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(2048))
    return (block * (size // len(block) + 1))[:size]


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    found: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend(item["Key"] for item in page.get("Contents", []))
    return sorted(found)


async def test_tree_round_trips_with_nested_dirs_empty_file_and_unicode_name(
    storage: ObjectStorage, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    write(source / "top.txt", b"top level\n")
    write(source / "a" / "b" / "c" / "deep.bin", os.urandom(70_000))
    write(source / "empty.dat", b"")
    write(source / "données" / "résumé 2024 ✓.txt", "unicode ✓\n".encode())

    sent = await storage.upload_dir(source, bucket, "jobs/1/inputs/")
    assert sent.files == 4
    assert sent.bytes == sum(len(v) for v in tree(source).values())

    listed = await storage.list_objects(bucket, "jobs/1/inputs")
    assert sorted(listed, key=lambda o: o.key) == [
        RemoteObject("jobs/1/inputs/a/b/c/deep.bin", 70_000),
        RemoteObject("jobs/1/inputs/données/résumé 2024 ✓.txt", len("unicode ✓\n".encode())),
        RemoteObject("jobs/1/inputs/empty.dat", 0),
        RemoteObject("jobs/1/inputs/top.txt", 10),
    ]

    target = tmp_path / "target"
    got = await storage.download_prefix(bucket, "jobs/1/inputs", target)
    assert (got.files, got.bytes) == (4, sent.bytes)
    assert tree(target) == tree(source)
    assert not [p for p in target.rglob(".kelpie-*")]  # no temp files left behind


async def test_listing_paginates_past_one_thousand_keys(
    storage: ObjectStorage, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "many"
    source.mkdir()
    for i in range(1_100):
        (source / f"f{i:04d}.txt").write_bytes(str(i).encode())

    sent = await storage.upload_dir(source, bucket, "many")
    assert sent.files == 1_100

    listed = await storage.list_objects(bucket, "many/")
    assert len(listed) == 1_100
    assert {o.key for o in listed} == {f"many/f{i:04d}.txt" for i in range(1_100)}

    got = await storage.download_prefix(bucket, "many", tmp_path / "back")
    assert got.files == 1_100
    assert tree(tmp_path / "back") == tree(source)


async def test_pattern_selects_files_on_upload_and_download(
    storage: ObjectStorage, bucket: str, s3: Any, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    for name in ("model.ckpt", "logs/run.log", "logs/run.ckpt", "notes.txt"):
        write(source / name, name.encode())

    sent = await storage.upload_dir(source, bucket, "ck", pattern=re.compile(r"\.ckpt$"))
    assert sent.files == 2
    assert keys(s3, bucket) == ["ck/logs/run.ckpt", "ck/model.ckpt"]

    await storage.upload_dir(source, bucket, "all")
    got = await storage.download_prefix(
        bucket, "all", tmp_path / "logs-only", pattern=re.compile(r"^logs/")
    )
    assert got.files == 2
    assert sorted(tree(tmp_path / "logs-only")) == ["logs/run.ckpt", "logs/run.log"]


async def test_gzip_upload_round_trips_to_identical_file(
    storage: ObjectStorage, bucket: str, s3: Any, tmp_path: Path
) -> None:
    small = write(tmp_path / "out" / "metrics.json", b'{"loss": 0.25}\n' * 1000)
    # Larger than one part, so the streamed, multipart gzip path runs too.
    large = write(tmp_path / "out" / "weights.bin", patterned_bytes(PART_SIZE) + bytes(4 * MiB))

    sent_small = await storage.upload_file(small, bucket, "ck/metrics.json", compress=True)
    sent_large = await storage.upload_file(large, bucket, "ck/weights.bin", compress=True)

    assert keys(s3, bucket) == ["ck/metrics.json.gz", "ck/weights.bin.gz"]
    stored = s3.get_object(Bucket=bucket, Key="ck/metrics.json.gz")["Body"].read()
    assert len(stored) == sent_small < small.stat().st_size
    assert gzip.decompress(stored) == small.read_bytes()
    assert s3.head_object(Bucket=bucket, Key="ck/weights.bin.gz")["ContentLength"] == sent_large

    back = tmp_path / "back"
    got = await storage.download_prefix(bucket, "ck", back)
    assert got.files == 2
    assert sorted(tree(back)) == ["metrics.json", "weights.bin"]
    assert (back / "metrics.json").read_bytes() == small.read_bytes()
    assert digest(back / "weights.bin") == digest(large)

    raw = await storage.download_prefix(bucket, "ck", tmp_path / "raw", decompress=False)
    assert raw.files == 2
    assert (tmp_path / "raw" / "metrics.json.gz").read_bytes() == stored


async def test_large_file_goes_up_in_parts_and_comes_back_identical(
    storage: ObjectStorage, bucket: str, s3: Any, tmp_path: Path
) -> None:
    big = write(tmp_path / "big.bin", os.urandom(20 * MiB))

    sent = await storage.upload_file(big, bucket, "out/big.bin")

    assert sent == 20 * MiB
    head = s3.head_object(Bucket=bucket, Key="out/big.bin")
    assert head["ContentLength"] == 20 * MiB
    assert re.search(r"-\d+\"?$", head["ETag"]), f"not a multipart ETag: {head['ETag']}"
    got = await storage.download_prefix(bucket, "out", tmp_path / "back")
    assert got.bytes == 20 * MiB
    assert digest(tmp_path / "back" / "big.bin") == digest(big)


async def test_delete_removes_plain_and_compressed_objects_and_ignores_missing_ones(
    storage: ObjectStorage, bucket: str, s3: Any, tmp_path: Path
) -> None:
    f = write(tmp_path / "a.txt", b"a")
    await storage.upload_file(f, bucket, "ck/a.txt")
    await storage.upload_file(f, bucket, "ck/b.txt", compress=True)

    await storage.delete_object(bucket, "ck/a.txt")
    await storage.delete_object(bucket, "ck/b.txt", compressed=True)
    await storage.delete_object(bucket, "ck/never-existed.txt")

    assert keys(s3, bucket) == []


async def test_download_of_an_empty_prefix_moves_nothing(
    storage: ObjectStorage, bucket: str, tmp_path: Path
) -> None:
    got = await storage.download_prefix(bucket, "no/such/prefix", tmp_path / "dest")
    assert (got.files, got.bytes) == (0, 0)


async def test_corrupt_gzip_fails_and_leaves_no_partial_file(
    storage: ObjectStorage, bucket: str, tmp_path: Path
) -> None:
    bogus = write(tmp_path / "bogus", b"this is not gzip data at all")
    await storage.upload_file(bogus, bucket, "in/data.csv.gz")

    with pytest.raises(StorageError, match=r"in/data\.csv\.gz"):
        await storage.download_prefix(bucket, "in", tmp_path / "dest")

    assert list((tmp_path / "dest").iterdir()) == []


async def test_wrong_secret_is_refused_by_the_server(
    seaweed: LocalS3Server, bucket: str, tmp_path: Path
) -> None:
    env = {**seaweed.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    impostor = ObjectStorage(S3Settings.from_env(env))
    f = write(tmp_path / "x.txt", b"x")

    started = time.monotonic()
    with pytest.raises(StorageError, match="SignatureDoesNotMatch") as upload_error:
        await impostor.upload_file(f, bucket, "x.txt")
    with pytest.raises(StorageError, match="SignatureDoesNotMatch"):
        await impostor.list_objects(bucket, "")

    assert time.monotonic() - started < 5, "a refused signature must not be retried"
    assert bucket in str(upload_error.value)


async def test_missing_bucket_fails_fast_with_the_bucket_named(
    storage: ObjectStorage, tmp_path: Path
) -> None:
    f = write(tmp_path / "x.txt", b"x")

    started = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-kelpie/.*NoSuchBucket"):
        await storage.download_prefix("no-such-bucket-kelpie", "in", tmp_path / "dest")
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-kelpie/x\.txt.*NoSuchBucket"):
        await storage.upload_file(f, "no-such-bucket-kelpie", "x.txt")

    assert time.monotonic() - started < 5
    assert await storage.bucket_exists("no-such-bucket-kelpie") is False


async def test_bucket_exists_for_a_created_bucket(storage: ObjectStorage, bucket: str) -> None:
    assert await storage.bucket_exists(bucket) is True


@pytest.fixture
def proxy(seaweed: LocalS3Server) -> Iterator[TcpProxy]:
    host, port = seaweed.endpoint_url.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as running:
        yield running


async def test_upload_survives_a_five_second_s3_outage(
    seaweed: LocalS3Server, bucket: str, s3: Any, proxy: TcpProxy, tmp_path: Path
) -> None:
    storage = ObjectStorage(S3Settings.from_env({**seaweed.env(), "AWS_ENDPOINT_URL": proxy.url}))
    big = write(tmp_path / "big.bin", os.urandom(64 * MiB))

    upload = asyncio.create_task(storage.upload_file(big, bucket, "ck/big.bin"))
    # Parts are on their way once the multipart upload exists.
    await wait_until(
        lambda: s3.list_multipart_uploads(Bucket=bucket, Prefix="ck/big.bin").get("Uploads")
    )
    await asyncio.to_thread(proxy.block)  # live connections reset, new ones refused
    cut_at = time.monotonic()
    assert not upload.done(), "the upload finished before the outage began"
    await asyncio.sleep(5)
    await asyncio.to_thread(proxy.unblock)

    assert await upload == 64 * MiB
    assert time.monotonic() - cut_at >= 5
    got = await storage.download_prefix(bucket, "ck", tmp_path / "back")
    assert got.files == 1
    assert digest(tmp_path / "back" / "big.bin") == digest(big)


async def test_download_survives_an_s3_outage_mid_body(
    seaweed: LocalS3Server, storage: ObjectStorage, bucket: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    big = write(tmp_path / "big.bin", os.urandom(64 * MiB))
    await storage.upload_file(big, bucket, "in/big.bin")
    through_proxy = ObjectStorage(
        S3Settings.from_env({**seaweed.env(), "AWS_ENDPOINT_URL": proxy.url})
    )
    dest = tmp_path / "dest"

    download = asyncio.create_task(through_proxy.download_prefix(bucket, "in", dest))
    await wait_until(lambda: any(p.stat().st_size for p in dest.glob(".kelpie-*.part")))
    await asyncio.to_thread(proxy.block)
    assert not download.done(), "the download finished before the outage began"
    await asyncio.sleep(3)
    await asyncio.to_thread(proxy.unblock)

    got = await download
    assert got.files == 1
    assert digest(dest / "big.bin") == digest(big)
    assert [p.name for p in dest.iterdir()] == ["big.bin"]


async def wait_until(condition: Callable[[], object]) -> None:
    """Poll `condition` (in a thread: it may block) until it is truthy; fail after 10 s."""
    async with asyncio.timeout(10):
        while True:
            if await asyncio.to_thread(condition):
                return
            await asyncio.sleep(0.005)


def test_local_server_stop_leaves_no_process_or_socket_behind(tmp_path: Path) -> None:
    server = LocalS3Server(tmp_path / "s3")
    with server:
        pid = server.pid
        assert pid is not None
        port = int(server.endpoint_url.rsplit(":", 1)[1])
        server.create_bucket("stop-check")

    assert server.pid is None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # not one member of its process group is left
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{port}.sock"))
