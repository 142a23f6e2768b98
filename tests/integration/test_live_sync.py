"""Live upload of outputs against a real S3 server (SeaweedFS): a file that changes while it
uploads is never stored torn, and is uploaded again, whole, without counting a failure."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]

from kelpie.storage import ObjectStorage, S3Settings
from kelpie.storage.files import PART_SIZE
from kelpie.storage.local_server import LocalS3Server
from kelpie.worker.plan import UploadTarget
from kelpie.worker.sync import LiveSync
from tests.support.s3 import new_bucket
from tests.support.tcp_proxy import TcpProxy


def s3_client(seaweed: LocalS3Server) -> Any:
    env = seaweed.env()
    return boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint_url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )


def write(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        out.write(data)


async def test_an_output_rewritten_during_its_upload_ends_up_whole(
    seaweed: LocalS3Server, tmp_path: Path
) -> None:
    bucket, s3 = new_bucket(seaweed), s3_client(seaweed)
    # every version the bucket ever holds stays listable: none may be torn
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    folder = tmp_path / "output"
    folder.mkdir()
    host, port = seaweed.endpoint_url.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as proxy:
        storage = ObjectStorage(
            S3Settings.from_env({**seaweed.env(), "AWS_ENDPOINT_URL": proxy.url})
        )
        sync = LiveSync(
            storage,
            [UploadTarget(bucket, "out/", folder, None)],
            compress=False,
            concurrency=4,
            sweep_interval=0.3,
        )
        await sync.start()
        try:
            proxy.hold_after(2 * PART_SIZE)
            write(folder / "result.bin", b"a" * (16 * PART_SIZE))
            await asyncio.to_thread(proxy.held.wait, 30)
            second = b"b" * (12 * PART_SIZE)
            write(folder / "result.bin", second)  # rewritten while its upload is held
            proxy.release()
            assert await sync.flush(time.monotonic() + 60) == {}
        finally:
            await sync.close()
    assert s3.get_object(Bucket=bucket, Key="out/result.bin")["Body"].read() == second
    versions = s3.list_object_versions(Bucket=bucket)["Versions"]
    bodies = [
        s3.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
        for v in versions
    ]
    assert bodies == [second]
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert sync.stats.failures == {}
