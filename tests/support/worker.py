"""Running real `kelpie worker` processes against a real `kelpie serve` and SeaweedFS.

`WorkerLab` is one test's bench: its user, its container group, its bucket, and the workers
it started (stopped at the end). Waiting is always on an observable condition with a
deadline (`wait_for`), never a bare sleep.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3  # type: ignore[import-untyped]
import pytest

from kelpie.storage.local_server import LocalS3Server
from tests.support.api import Api, ApiUser
from tests.support.jobs import JOBS
from tests.support.processes import KelpieProcess, free_port, start_server, start_worker
from tests.support.waiting import wait_for

T = TypeVar("T")

PYTHON = sys.executable
# Quick worker knobs: jobs in these tests beat every second.
FAST_WORKER_ENV = {
    "KELPIE_WORKER_POLL_WAIT_S": "5",
    "KELPIE_WORKER_STOP_GRACE_S": "3",
    "KELPIE_WORKER_UPLOAD_GRACE_S": "10",
    "KELPIE_WORKER_UPLOAD_RETRY_S": "60",
    "KELPIE_WORKER_SWEEP_INTERVAL_S": "0.5",
    # checkpoint folders quiet this long make a generation (jobs here step every 0.25 s)
    "KELPIE_WORKER_CHECKPOINT_SETTLE_S": "0.1",
    "KELPIE_LOG_LEVEL": "debug",
}


def job_script(name: str) -> str:
    return str(JOBS / name)


def no_imds_url() -> str:
    """An IMDS address that refuses at once (a closed port), as off SaladCloud."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class Bucket:
    """A bucket on the test's S3 server, read through boto3 (independent of kelpie.storage)."""

    name: str
    s3: Any

    def put(self, key: str, body: bytes | str) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.s3.put_object(Bucket=self.name, Key=key, Body=data)

    def get(self, key: str) -> bytes | None:
        try:
            body: bytes = self.s3.get_object(Bucket=self.name, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return body

    def keys(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)


def make_bucket(server: LocalS3Server) -> Bucket:
    """A new bucket, with a boto3 client to check it (independent of kelpie.storage)."""
    env = server.env()
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    name = f"b-{uuid.uuid4().hex[:12]}"
    server.create_bucket(name)
    return Bucket(name, client)


@dataclass
class WorkerLab:
    api_url: str
    user: ApiUser
    group: str
    bucket: Bucket
    s3_env: dict[str, str]
    tmp: Path
    imds_url: str = field(default_factory=no_imds_url)
    workers: list[KelpieProcess] = field(default_factory=list)

    def start_worker(
        self, name: str, cwd: Path | None = None, key: str | None = None, **extra_env: str
    ) -> KelpieProcess:
        """A worker with its own dirs under tmp/<name> (the machine id is `name`), run in
        `cwd` (default: the test's working directory), with API key `key` (default: the
        lab user's)."""
        work_dir = self.tmp / name
        env = {
            **self.s3_env,
            **FAST_WORKER_ENV,
            "SALAD_IMDS_URL": self.imds_url,
            **extra_env,
        }
        worker = start_worker(
            self.api_url,
            key or self.user.key,
            name,
            self.group,
            work_dir,
            self.tmp / "logs",
            extra_env=env,
            cwd=cwd,
        )
        self.workers.append(worker)
        return worker

    def dirs(self, name: str) -> tuple[Path, Path, Path]:
        work_dir = self.tmp / name
        return (work_dir / "input", work_dir / "checkpoint", work_dir / "output")

    def submit(self, script: str, *args: str, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "command": PYTHON,
            "arguments": [job_script(script), *args],
            "heartbeat_interval": 1,
            **fields,
        }
        return self.user.submit(container_group_id=self.group, **body)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.user.job(job_id)

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        try:
            return wait_for(reached, f"job {job_id} to be {'/'.join(statuses)}", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; job: {self.job(job_id)}\n{self.logs()}") from None

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """The job's committed checkpoint generations, oldest first."""
        response = self.user.http.get(f"/jobs/{job_id}/checkpoints")
        assert response.status_code == 200, response.text
        generations: list[dict[str, Any]] = response.json()
        return generations

    def committed(self, job_id: str, target: int = 0) -> dict[str, bytes]:
        """The files of `target` in the job's newest committed generation, read back from the
        bucket and checked against the manifest: what a resume would restore."""
        kept = [g["generation"] for g in self.checkpoints(job_id) if g["kept"]]
        if not kept:
            return {}
        response = self.user.http.get(f"/jobs/{job_id}/checkpoints/{max(kept)}")
        assert response.status_code == 200, response.text
        generation = response.json()
        files: dict[str, bytes] = {}
        for entry in generation["manifest"]:
            if entry["target"] != target:
                continue
            body = self.bucket.s3.get_object(Bucket=entry["bucket"], Key=entry["key"])
            data: bytes = body["Body"].read()
            if generation["compressed"]:
                data = gzip.decompress(data)
            assert len(data) == entry["size"], entry
            assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry
            files[entry["path"]] = data
        return files

    def wait_committed(
        self,
        job_id: str,
        check: Callable[[dict[str, bytes]], bool],
        what: str,
        timeout: float = 30.0,
    ) -> dict[str, bytes]:
        """Wait until the newest committed generation passes `check`; returns its files."""

        def passing() -> dict[str, bytes] | None:
            files = self.committed(job_id)
            return files if files and check(files) else None

        return wait_for(passing, what, timeout)

    def wait_key(self, key: str, timeout: float = 30.0) -> bytes:
        return wait_for(lambda: self.bucket.get(key), f"s3://{self.bucket.name}/{key}", timeout)

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.log()[-6000:]}" for w in self.workers)

    def stop_all(self) -> None:
        """Every worker and whatever its jobs left running die, as when the node goes."""
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.kill_with_descendants()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone as far as the job is concerned.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="session")
def worker_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One `kelpie serve` (SQLite) for the worker tests; each test has its own user and group."""
    directory = tmp_path_factory.mktemp("worker-api")
    server = start_server(
        f"sqlite:///{directory / 'kelpie.db'}", f"admin-{uuid.uuid4().hex}", directory / "logs"
    )
    try:
        yield Api(server, "sqlite")
    finally:
        server.stop()


def new_user(api: Api) -> ApiUser:
    """A user with its own key (the caller closes `user.http`)."""
    with api.http(api.server.admin_key) as admin:
        created = admin.post("/users", json={"username": f"worker-{uuid.uuid4().hex[:12]}"})
        assert created.status_code == 201, created.text
        token = admin.post(f"/users/{created.json()['id']}/token", json={})
        assert token.status_code == 201, token.text
    key = token.json()["token"]
    return ApiUser(created.json()["id"], key, api.http(key))


@pytest.fixture
def lab(worker_api: Api, seaweed: LocalS3Server, tmp_path: Path) -> Iterator[WorkerLab]:
    """A fresh user, group and bucket on the shared API and S3 server; workers die at the end."""
    s3_env = seaweed.env()
    bucket = make_bucket(seaweed)
    bench = WorkerLab(
        worker_api.url,
        new_user(worker_api),
        f"group-{uuid.uuid4().hex[:12]}",
        bucket,
        s3_env,
        tmp_path,
    )
    try:
        yield bench
    finally:
        bench.stop_all()
        bench.user.http.close()
        bucket.s3.close()
