"""The worker's checkpoint engine against a real S3 server (SeaweedFS) and real job processes,
with the API played in process by `FakeCheckpointApi` (same commit rules as the API).

Every committed generation is read back through boto3, independently of kelpie.storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest

from kelpie.client import ApiUnavailable
from kelpie.schemas import JobOut, JobStatus, SyncConfig, SyncEntry
from kelpie.storage import ObjectStorage, S3Settings
from kelpie.storage.files import PART_SIZE
from kelpie.storage.local_server import LocalS3Server
from kelpie.worker.checkpoints import CheckpointEngine, ExitKind
from kelpie.worker.plan import CheckpointTarget, Download
from tests.support.checkpoint_api import JOB_ID, USER_ID, FakeCheckpointApi, FakeCommitter
from tests.support.jobs import JOBS
from tests.support.jobs.checkpoint_format import (
    LAYOUTS,
    NAMES,
    content,
    file_size,
    read_log,
    read_set,
    step_of,
    write_whole,
)
from tests.support.s3 import new_bucket
from tests.support.tcp_proxy import TcpProxy

SETTLE_S = 0.2
OTHER_JOB = "33333333-3333-4333-8333-333333333333"
SWEEP_S = 0.3
MiB = 1024 * 1024


@dataclass
class Rig:
    """One test's bucket, checkpoint folder(s), fake API and S3 witness."""

    storage: ObjectStorage
    bucket: str
    s3: Any
    root: Path
    targets: tuple[CheckpointTarget, ...]
    api: FakeCheckpointApi
    compress: bool = False

    @property
    def folder(self) -> Path:
        return self.targets[0].local_dir

    def engine(
        self, attempt_id: int, *, storage: ObjectStorage | None = None, explicit: bool = False
    ) -> tuple[CheckpointEngine, FakeCommitter]:
        committer = self.api.claim(attempt_id)
        engine = CheckpointEngine(
            storage or self.storage,
            committer,
            self.targets,
            job_id=JOB_ID,
            user_id=USER_ID,
            attempt_id=attempt_id,
            compress=self.compress,
            settle_s=SETTLE_S,
            sweep_interval_s=SWEEP_S,
            upload_concurrency=8,
            explicit_only=explicit,
        )
        return engine, committer

    def empty_folders(self) -> None:
        """What the worker does between attempts."""
        for target in self.targets:
            shutil.rmtree(target.local_dir, ignore_errors=True)
            target.local_dir.mkdir(parents=True)

    def objects(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            found.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(found)

    def open_uploads(self) -> list[str]:
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [u["Key"] for u in uploads]

    def generation_files(self, number: int) -> dict[tuple[int, str], bytes]:
        """A committed generation's files as the bucket holds them (read through boto3)."""
        manifest = self.api.manifest(number)
        files: dict[tuple[int, str], bytes] = {}
        for entry in manifest.manifest:
            body = self.s3.get_object(Bucket=entry.bucket, Key=entry.key)["Body"].read()
            data = gzip.decompress(body) if manifest.compressed else body
            assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.size, entry.sha256)
            files[(entry.target, entry.path)] = data
        return files

    def materialize(self, number: int, dest: Path) -> Path:
        for (_target, path), data in self.generation_files(number).items():
            out = dest / path
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        return dest


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


def make_rig(
    seaweed: LocalS3Server, s3: Any, root: Path, *, keep: int = 3, compress: bool = False
) -> Rig:
    bucket = new_bucket(seaweed)
    folder = root / "checkpoint"
    folder.mkdir(parents=True)
    target = CheckpointTarget(
        0, bucket, "run/ck/", folder, None, Download(bucket, "run/ck/", folder, None, False)
    )
    return Rig(
        ObjectStorage(S3Settings.from_env(seaweed.env())),
        bucket,
        s3,
        root,
        (target,),
        FakeCheckpointApi([target], keep=keep, compressed=compress),
        compress,
    )


@pytest.fixture
def rig(seaweed: LocalS3Server, s3: Any, tmp_path: Path) -> Rig:
    """Keeping every generation, so that each one can be read back."""
    return make_rig(seaweed, s3, tmp_path, keep=1000)


@contextlib.contextmanager
def job(
    script: str, rig: Rig, engine: CheckpointEngine, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a job script from tests/support/jobs against the rig's checkpoint folder."""
    process = subprocess.Popen(
        [sys.executable, str(JOBS / script)],
        env={
            **os.environ,
            **engine.environment(),
            "CHECKPOINT_DIR": str(rig.folder),
            "CHECKPOINT_LOG": str(rig.root / "job-log.jsonl"),
            **env,
        },
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def wait_until(condition: Any, what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(engine: CheckpointEngine) -> AsyncIterator[CheckpointEngine]:
    """A restored, started engine, closed at the end."""
    await engine.restore()
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


def log_events(rig: Rig, event: str) -> list[dict[str, Any]]:
    return [e for e in read_log(rig.root / "job-log.jsonl") if e["event"] == event]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- torn files never committed ------------------------------------------------------------


def whole_step(data: bytes) -> int | None:
    return step_of("model.bin", data)


async def test_an_in_place_writer_never_yields_a_torn_generation(rig: Rig) -> None:
    engine, _ = rig.engine(1)
    async with running(engine):
        # closed between writes for well over the settle time, even on a busy machine
        with job("in_place_writer.py", rig, engine, STEP_S="0.6", PAUSE_S="0.6"):
            await wait_until(lambda: len(rig.api.generations) >= 4, "four generations", 60)
    for generation in rig.api.generations:
        [data] = rig.generation_files(generation.number).values()
        assert whole_step(data) is not None, f"generation {generation.number} is torn"


async def test_an_mmap_writer_is_not_snapshotted_until_its_mapping_is_gone(rig: Rig) -> None:
    engine, _ = rig.engine(1)
    async with running(engine):
        with job("mmap_writer.py", rig, engine, STEP_S="0.6", PAUSE_S="1.0"):
            await wait_until(lambda: len(rig.api.generations) >= 3, "three generations", 60)
    for generation in rig.api.generations:
        [data] = rig.generation_files(generation.number).values()
        assert whole_step(data) is not None, f"generation {generation.number} is torn"


async def test_a_file_changing_during_its_upload_is_never_committed_torn(
    rig: Rig, seaweed: LocalS3Server
) -> None:
    host, port = seaweed.endpoint_url.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as proxy:
        proxied = ObjectStorage(
            S3Settings.from_env({**seaweed.env(), "AWS_ENDPOINT_URL": proxy.url})
        )
        engine, _ = rig.engine(1, storage=proxied)
        size = 16 * PART_SIZE
        async with running(engine):
            proxy.hold_after(2 * PART_SIZE)
            write_whole(rig.folder / "notes.json", b'{"step": 1}')
            write_whole(rig.folder / "model.bin", content("model.bin", 1, size))
            await asyncio.to_thread(proxy.held.wait, 30)
            assert len(rig.open_uploads()) == 1  # the model's parts are in flight
            await wait_until(
                lambda: f"run/ck/.kelpie/{JOB_ID}/a1/g1/notes.json" in rig.objects(),
                "the notes' upload",
            )
            # the job moves on: the model rewritten in place, the notes dropped
            second = content("model.bin", 2, size)
            write_whole(rig.folder / "model.bin", second)
            (rig.folder / "notes.json").unlink()
            proxy.release()
            await wait_until(lambda: rig.api.generations, "a committed generation", 60)
            assert engine.stats.abandoned == 1
            # nothing of the abandoned attempt stays: no open upload, no unreferenced object
            await wait_until(lambda: not rig.open_uploads(), "no multipart upload open")
            await wait_until(
                lambda: rig.objects() == sorted(key for _, key in rig.api.kept_objects()),
                "only the committed objects in the bucket",
            )
    assert rig.generation_files(1) == {(0, "model.bin"): second}
    assert rig.objects() == [f"run/ck/.kelpie/{JOB_ID}/a1/g1/model.bin"]


# -- whole sets, from one step ---------------------------------------------------------------

SET_FILE_SIZE = 256 * 1024


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_checkpoint_set_always_restores_whole_from_one_step(rig: Rig, layout: str) -> None:
    """Each round resumes from what the round before committed, then the job is killed at
    a random moment (the worker finishing what it had, or dying along with it)."""
    chance = random.Random(f"{layout}-kills")
    newest_complete_long_before_kill = 0
    for attempt in range(1, 5):
        engine, _ = rig.engine(attempt)
        report = await engine.restore()
        state = read_set(rig.folder, layout, SET_FILE_SIZE)
        assert state.intact, state.detail
        assert (state.step or 0) >= newest_complete_long_before_kill, state.detail
        assert report.generation == rig.api.newest
        await engine.start()
        resumed = state.step or 0
        # quiet between sets for well over the settle time, even on a busy machine
        env = {"LAYOUT": layout, "STEP_S": "0.6", "FILE_SIZE": str(SET_FILE_SIZE)}
        with job("checkpoint_sets.py", rig, engine, **env) as process:
            steps = chance.randint(3, 6)
            await wait_until(
                lambda goal=resumed + steps: any(
                    e["step"] >= goal for e in log_events(rig, "complete")
                ),
                f"step {resumed + steps}",
                60,
            )
            await asyncio.sleep(chance.uniform(0, 0.3))  # a random moment within a step
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait)
        killed_at = time.time()
        newest_complete_long_before_kill = max(
            [e["step"] for e in log_events(rig, "complete") if e["time"] <= killed_at - 3.0],
            default=0,
        )
        if attempt % 2:
            await engine.finish(ExitKind.KILLED, time.monotonic() + 30)
        await engine.close()  # on even rounds: the worker goes down with its job
        rig.empty_folders()
    assert all(e["intact"] for e in log_events(rig, "start"))
    for generation in rig.api.kept():
        restored = rig.materialize(generation.number, rig.root / f"g{generation.number}")
        state = read_set(restored, layout, SET_FILE_SIZE)
        assert state.intact, f"generation {generation.number}: {state.detail}"
    kept_keys = sorted(k for _, k in rig.api.kept_objects())
    with contextlib.suppress(AssertionError):
        await wait_until(
            lambda: rig.objects("run/ck/.kelpie/") == kept_keys,
            "only the kept generations' objects in the bucket",
        )
    assert rig.objects("run/ck/.kelpie/") == kept_keys
    assert not [key for key in rig.objects() if ".tmp" in key or "/.kelpie-" in key]


MARKING_JOB = {
    "LAYOUT": "overwrite",
    "STEP_S": "0.1",
    "STEPS": "4",
    "FILE_SIZE": str(SET_FILE_SIZE),
    "USE_COMMIT_FILE": "1",
    # longer than the settle time and a sweep: an automatic generation would take half a set
    "PAUSE_BETWEEN_FILES_S": "0.8",
}


async def test_an_explicit_job_gets_exactly_the_sets_it_marked(rig: Rig) -> None:
    engine, _ = rig.engine(1, explicit=True)
    async with running(engine):
        with job("checkpoint_sets.py", rig, engine, **MARKING_JOB) as process:
            assert await asyncio.to_thread(process.wait, 60) == 0
    assert [g.number for g in rig.api.generations] == [1, 2, 3, 4]
    for generation in rig.api.generations:
        restored = rig.materialize(generation.number, rig.root / f"g{generation.number}")
        state = read_set(restored, "overwrite", SET_FILE_SIZE)
        assert (state.step, state.intact) == (generation.number, True), state.detail
    assert not engine.commit_file.exists()


async def test_once_a_job_used_the_commit_file_only_its_marks_make_generations(
    rig: Rig,
) -> None:
    engine, _ = rig.engine(1)
    async with running(engine):
        with job("checkpoint_sets.py", rig, engine, **MARKING_JOB) as process:
            assert await asyncio.to_thread(process.wait, 60) == 0
    # before its first mark the job's pause lets an automatic generation take half a set;
    # every generation from the first mark on is a whole set
    steps = []
    for generation in rig.api.generations:
        restored = rig.materialize(generation.number, rig.root / f"g{generation.number}")
        state = read_set(restored, "overwrite", SET_FILE_SIZE)
        if state.intact:
            steps.append(state.step)
        else:
            assert not steps, f"generation {generation.number} after a mark: {state.detail}"
    assert steps == [1, 2, 3, 4]


# -- restore ---------------------------------------------------------------------------------


def write_set(folder: Path, step: int, size: int = SET_FILE_SIZE) -> None:
    for name in NAMES:
        write_whole(folder / name, content(name, step, file_size(name, size)))


async def commit_sets(rig: Rig, attempt: int, steps: list[int]) -> CheckpointEngine:
    """Commit one generation per step with a fresh engine of `attempt`; returns it closed."""
    engine, _ = rig.engine(attempt)
    async with running(engine):
        for step in steps:
            write_set(rig.folder, step)
            await wait_until(
                lambda s=step: rig.api.generations and _step_of_newest(rig) == s,
                f"step {step} committed",
            )
    return engine


def _step_of_newest(rig: Rig) -> int | None:
    newest = rig.api.generations[-1]
    data = {p: d for (_t, p), d in rig.generation_files(newest.number).items()}
    return step_of("step.json", data["step.json"]) if "step.json" in data else None


@pytest.mark.parametrize("damage", ["corrupt", "missing", "truncated"])
async def test_a_damaged_object_restores_the_generation_before_and_says_so(
    rig: Rig, damage: str
) -> None:
    await commit_sets(rig, 1, [1, 2])
    manifest = rig.api.manifest(2)
    model = next(f for f in manifest.manifest if f.path == "model.bin")
    if damage == "missing":
        rig.s3.delete_object(Bucket=rig.bucket, Key=model.key)
    else:
        body = b"x" * model.size if damage == "corrupt" else b"x" * (model.size // 2)
        rig.s3.put_object(Bucket=rig.bucket, Key=model.key, Body=body)
    rig.empty_folders()

    engine, _ = rig.engine(2)
    report = await engine.restore()
    await engine.close()

    assert report.generation == 1 and report.newest == 2
    [fallback] = report.fallbacks
    assert (fallback.generation, fallback.target, fallback.path) == (2, 0, "model.bin")
    assert {"corrupt": "SHA-256", "missing": "missing", "truncated": "bytes"}[damage] in (
        fallback.reason
    )
    assert len(report.warnings) == 2
    assert read_set(rig.folder, "overwrite", SET_FILE_SIZE).step == 1
    assert sorted(p.name for p in rig.folder.rglob("*")) == sorted(NAMES)


async def test_no_restorable_generation_starts_empty_and_says_so(rig: Rig) -> None:
    await commit_sets(rig, 1, [1])
    for key in rig.objects("run/ck/.kelpie/"):
        rig.s3.delete_object(Bucket=rig.bucket, Key=key)
    rig.empty_folders()
    engine, _ = rig.engine(2)
    report = await engine.restore()
    await engine.close()
    assert (report.generation, report.newest) == (None, 1)
    assert "starts without checkpoints" in report.warnings[-1]
    assert list(rig.folder.iterdir()) == []


async def test_a_plain_prefix_restores_and_is_never_touched(rig: Rig) -> None:
    plain = {"run/ck/model.bin": b"model", "run/ck/logs/a.txt": b"log", "run/other.txt": b"o"}
    for key, body in plain.items():
        rig.s3.put_object(Bucket=rig.bucket, Key=key, Body=body)
    rig.s3.put_object(Bucket=rig.bucket, Key=f"run/ck/.kelpie/{JOB_ID}/a1/g1/stale.bin", Body=b"s")

    engine, _ = rig.engine(2)
    async with running(engine):
        assert engine.committed_generation is None
        assert sorted(p.relative_to(rig.folder).as_posix() for p in files(rig.folder)) == [
            "logs/a.txt",
            "model.bin",
        ]
        # the first generation takes the restored files as they are
        await wait_until(lambda: rig.api.generations, "generation 1")
    assert {p for (_t, p) in rig.generation_files(1)} == {"logs/a.txt", "model.bin"}
    await wait_until(
        lambda: f"run/ck/.kelpie/{JOB_ID}/a1/g1/stale.bin" not in rig.objects(),
        "the stale object deleted",
    )
    assert {k for k in rig.objects() if "/.kelpie/" not in k} == set(plain)


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


async def test_two_checkpoint_folders_restore_together(
    seaweed: LocalS3Server, s3: Any, tmp_path: Path
) -> None:
    rig = make_rig(seaweed, s3, tmp_path, keep=5)
    second_folder = tmp_path / "second"
    second_folder.mkdir()
    second = CheckpointTarget(1, rig.bucket, "run/other/", second_folder, None, None)
    rig.targets = (*rig.targets, second)
    rig.api = FakeCheckpointApi(rig.targets, keep=5)
    engine, _ = rig.engine(1)
    async with running(engine):
        write_whole(rig.folder / "a.bin", b"first folder")
        (second_folder / "nested").mkdir()
        write_whole(second_folder / "nested" / "b.bin", b"second folder")
        await wait_until(lambda: rig.api.newest == 1, "generation 1")
    assert set(rig.generation_files(1)) == {(0, "a.bin"), (1, "nested/b.bin")}
    assert all(
        k.startswith((f"run/ck/.kelpie/{JOB_ID}/a1/g1/", f"run/other/.kelpie/{JOB_ID}/a1/g1/"))
        for k in rig.objects()
    )
    rig.empty_folders()
    engine, _ = rig.engine(2)
    await engine.restore()
    await engine.close()
    assert (rig.folder / "a.bin").read_bytes() == b"first folder"
    assert (second_folder / "nested" / "b.bin").read_bytes() == b"second folder"


EARLIER_JOB = "44444444-4444-4444-8444-444444444444"


def job_record(
    job_id: str, user_id: str, status: JobStatus, bucket: str, prefixes: list[str]
) -> JobOut:
    """A job as the API shows it, checkpointing to `prefixes` of `bucket`."""
    return JobOut(
        id=job_id,
        user_id=user_id,
        status=status,
        created=datetime.now(UTC),
        command="python",
        container_group_id="group",
        sync=SyncConfig(
            during=[
                SyncEntry(bucket=bucket, prefix=p, local_path=f"/ck/{i}", direction="upload")
                for i, p in enumerate(prefixes)
            ]
        ),
    )


@pytest.mark.parametrize(
    ("case", "user", "status", "extra_prefix"),
    [
        ("inherits", USER_ID, "failed", False),
        ("still running", USER_ID, "running", False),
        ("another user", "55555555-5555-4555-8555-555555555555", "canceled", False),
        ("a prefix the job lacks", USER_ID, "completed", True),
    ],
)
async def test_a_job_without_generations_starts_from_an_earlier_jobs_newest(
    seaweed: LocalS3Server,
    s3: Any,
    tmp_path: Path,
    case: str,
    user: str,
    status: JobStatus,
    extra_prefix: bool,
) -> None:
    # The earlier job checkpointed the same two prefixes, numbered the other way round.
    rig = make_rig(seaweed, s3, tmp_path / "new", keep=5)
    second_folder = tmp_path / "new" / "second"
    second_folder.mkdir()
    rig.targets = (
        *rig.targets,
        CheckpointTarget(1, rig.bucket, "run/other/", second_folder, None, None),
    )
    earlier_dirs = (tmp_path / "earlier-0", tmp_path / "earlier-1")
    earlier_targets = (
        CheckpointTarget(0, rig.bucket, "run/other/", earlier_dirs[0], None, None),
        CheckpointTarget(1, rig.bucket, "run/ck/", earlier_dirs[1], None, None),
    )
    earlier_api = FakeCheckpointApi(earlier_targets, keep=5, job_id=EARLIER_JOB)
    earlier = CheckpointEngine(
        rig.storage,
        earlier_api.claim(1),
        earlier_targets,
        job_id=EARLIER_JOB,
        user_id=user,
        attempt_id=1,
        compress=False,
        settle_s=SETTLE_S,
        sweep_interval_s=SWEEP_S,
        upload_concurrency=8,
    )
    async with running(earlier):
        write_whole(earlier_dirs[1] / "model.bin", b"model of the earlier job")
        (earlier_dirs[0] / "nested").mkdir()
        write_whole(earlier_dirs[0] / "nested" / "state.bin", b"state of the earlier job")
        await wait_until(lambda: earlier_api.newest == 1, "the earlier job's generation")
    earlier_objects = rig.objects(f"run/ck/.kelpie/{EARLIER_JOB}/") + rig.objects(
        f"run/other/.kelpie/{EARLIER_JOB}/"
    )
    assert len(earlier_objects) == 2
    prefixes = ["run/other/", "run/ck/", *(["run/elsewhere/"] if extra_prefix else [])]
    rig.api = FakeCheckpointApi(rig.targets, keep=5)
    rig.api.show_job(job_record(EARLIER_JOB, user, status, rig.bucket, prefixes), earlier_api)
    rig.s3.put_object(Bucket=rig.bucket, Key="run/ck/plain.bin", Body=b"plain")

    engine, committer = rig.engine(7)
    report = await engine.restore()
    await engine.start()
    try:
        assert committer.looked_up[:1] == [EARLIER_JOB]
        if case == "inherits":
            assert (report.source_job, report.generation, report.plain) == (EARLIER_JOB, 1, False)
            assert engine.committed_generation is None  # the job's own numbers start at 1
            assert (rig.folder / "model.bin").read_bytes() == b"model of the earlier job"
            state = second_folder / "nested" / "state.bin"
            assert state.read_bytes() == b"state of the earlier job"
            assert sorted(p.name for p in rig.folder.iterdir()) == ["model.bin"]
        else:
            assert (report.source_job, report.generation, report.plain) == (None, None, True)
            assert sorted(p.name for p in rig.folder.iterdir()) == ["plain.bin"]
            assert list(second_folder.iterdir()) == []
        # The first generation uploads every file into the job's own area.
        await wait_until(lambda: rig.api.newest == 1, "the job's own generation 1")
    finally:
        await engine.close()
    own = [f.key for f in rig.api.manifest(1).manifest]
    assert own and all(
        k.startswith((f"run/ck/.kelpie/{JOB_ID}/a7/g1/", f"run/other/.kelpie/{JOB_ID}/a7/g1/"))
        for k in own
    )
    assert engine.stats.uploads == len(own)
    # The earlier job's objects are all still there.
    assert set(earlier_objects) <= set(rig.objects())


# -- what is uploaded, what is kept ----------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
async def test_unchanged_files_are_not_uploaded_again(
    seaweed: LocalS3Server, s3: Any, tmp_path: Path, compress: bool
) -> None:
    rig = make_rig(seaweed, s3, tmp_path, keep=10, compress=compress)
    big = os.urandom(3 * PART_SIZE)
    engine, _ = rig.engine(1)
    async with running(engine):
        write_whole(rig.folder / "big.bin", big)
        write_whole(rig.folder / "small.json", b'{"step": 1}')
        await wait_until(lambda: rig.api.newest == 1, "generation 1")
        write_whole(rig.folder / "small.json", b'{"step": 2}')
        await wait_until(lambda: rig.api.newest == 2, "generation 2")
        assert (engine.stats.uploads, engine.stats.reused) == (3, 1)
        assert engine.stats.uploaded_bytes == len(big) + 2 * len(b'{"step": 1}')
    first, second = rig.api.manifest(1).manifest, rig.api.manifest(2).manifest
    assert [f.key for f in first if f.path == "big.bin"] == [
        f.key for f in second if f.path == "big.bin"
    ]

    # a later attempt restores, changes the small file only: the big one keeps its object
    rig.empty_folders()
    engine, _ = rig.engine(2)
    async with running(engine):
        write_whole(rig.folder / "small.json", b'{"step": 3}')
        await wait_until(lambda: rig.api.newest == 3, "generation 3")
        assert (engine.stats.uploads, engine.stats.uploaded_bytes) == (1, len(b'{"step": 3}'))
    third = rig.api.manifest(3).manifest
    assert {f.path: f.key for f in third}["big.bin"] == {f.path: f.key for f in first}["big.bin"]
    assert rig.generation_files(3)[(0, "big.bin")] == big
    suffix = ".gz" if compress else ""
    assert {f.key for f in third} == {
        f"run/ck/.kelpie/{JOB_ID}/a1/g1/big.bin{suffix}",
        f"run/ck/.kelpie/{JOB_ID}/a2/g3/small.json{suffix}",
    }


async def test_retention_keeps_the_newest_generations_objects_only(
    seaweed: LocalS3Server, s3: Any, tmp_path: Path
) -> None:
    rig = make_rig(seaweed, s3, tmp_path, keep=2)
    engine, _ = rig.engine(1)
    async with running(engine):
        write_whole(rig.folder / "shared.bin", b"never changes")
        for step in range(1, 6):
            write_whole(rig.folder / "model.bin", f"model {step}".encode())
            await wait_until(lambda s=step: rig.api.newest == s, f"generation {step}")
            await wait_until(
                lambda: rig.objects() == sorted(k for _, k in rig.api.kept_objects()),
                "expired objects deleted",
            )
    assert [g.number for g in rig.api.kept()] == [4, 5]
    assert rig.objects() == [
        f"run/ck/.kelpie/{JOB_ID}/a1/g1/shared.bin",
        f"run/ck/.kelpie/{JOB_ID}/a1/g4/model.bin",
        f"run/ck/.kelpie/{JOB_ID}/a1/g5/model.bin",
    ]


async def test_a_stale_attempts_objects_are_cleaned_at_the_start(rig: Rig) -> None:
    await commit_sets(rig, 2, [1])
    kept = sorted(k for _, k in rig.api.kept_objects())
    leftovers = [
        f"run/ck/.kelpie/{JOB_ID}/a1/g3/model.bin",
        f"run/ck/.kelpie/{JOB_ID}/a2/g2/optimizer.bin",
    ]
    newer = (
        f"run/ck/.kelpie/{JOB_ID}/a9/g2/model.bin"  # a newer holder's upload: never ours to delete
    )
    # Another job's objects under the same prefix (older attempt numbers, in no generation
    # of this job) and objects of the layout before job areas: never this job's to delete.
    others = [
        f"run/ck/.kelpie/{OTHER_JOB}/a1/g1/model.bin",
        f"run/ck/.kelpie/{OTHER_JOB}/a2/g7/optimizer.bin",
        "run/ck/.kelpie/a1/g1/model.bin",
    ]
    for key in [*leftovers, newer, *others, "run/ck/plain.bin"]:
        rig.s3.put_object(Bucket=rig.bucket, Key=key, Body=b"x")
    rig.empty_folders()

    engine, _ = rig.engine(3)
    async with running(engine):
        await wait_until(
            lambda: not set(leftovers) & set(rig.objects()), "the leftovers deleted", 30
        )
    assert rig.objects() == sorted([*kept, newer, *others, "run/ck/plain.bin"])


# -- the lease -------------------------------------------------------------------------------


async def test_nothing_is_committed_while_the_lease_is_unconfirmed(rig: Rig) -> None:
    engine, committer = rig.engine(1)
    async with running(engine):
        committer.lease = False
        write_whole(rig.folder / "model.bin", b"step 1")
        await wait_until(lambda: rig.objects(f"run/ck/.kelpie/{JOB_ID}/a1/g1/"), "the upload")
        assert committer.commits_sent == 0
        committer.lease = True
        await wait_until(lambda: rig.api.newest == 1, "generation 1")


async def test_a_refused_commit_stops_the_attempt_and_removes_its_uploads(rig: Rig) -> None:
    engine, _ = rig.engine(1)
    async with running(engine):
        write_whole(rig.folder / "model.bin", b"step 1")
        await wait_until(lambda: rig.api.newest == 1, "generation 1")
        rig.api.claim(2)  # another attempt holds the job now
        write_whole(rig.folder / "model.bin", b"step 2")
        await wait_until(engine.lost.is_set, "the refusal")
        assert rig.objects(f"run/ck/.kelpie/{JOB_ID}/a1/g2/") == [
            f"run/ck/.kelpie/{JOB_ID}/a1/g2/model.bin"
        ]
    assert rig.api.newest == 1
    assert rig.objects() == [f"run/ck/.kelpie/{JOB_ID}/a1/g1/model.bin"]


async def test_an_unanswered_commit_that_went_through_keeps_its_objects(rig: Rig) -> None:
    engine, committer = rig.engine(1)
    async with running(engine):
        original = rig.api.commit

        def commit_then_lose_the_answer(attempt: int, number: int, files: Any) -> Any:
            original(attempt, number, files)
            committer.reachable = False  # the answer never arrives; the API is gone
            raise ApiUnavailable(None, "unavailable", "connection reset")

        rig.api.commit = commit_then_lose_the_answer  # type: ignore[method-assign,assignment]
        write_whole(rig.folder / "model.bin", b"step 1")
        await wait_until(lambda: rig.api.newest == 1, "generation 1 committed")
    # closed without an answer and unable to ask: the objects stay
    assert rig.objects() == [f"run/ck/.kelpie/{JOB_ID}/a1/g1/model.bin"]


# -- the end of the job ----------------------------------------------------------------------


async def test_a_clean_exit_commits_the_folders_as_they_are(rig: Rig) -> None:
    engine, _ = rig.engine(1)
    async with running(engine):
        write_set(rig.folder, 7)
        assert await engine.finish(ExitKind.SUCCEEDED, time.monotonic() + 30) is None
        assert rig.api.newest == 1
    restored = rig.materialize(1, rig.root / "g1")
    assert read_set(restored, "overwrite", SET_FILE_SIZE).step == 7


async def test_a_killed_job_leaves_its_half_written_file_out(rig: Rig) -> None:
    engine, _ = rig.engine(1)
    async with running(engine):
        write_set(rig.folder, 1)
        await wait_until(lambda: rig.api.newest == 1, "generation 1")
        data = content("model.bin", 2, SET_FILE_SIZE)
        with (rig.folder / "model.bin").open("wb") as torn:  # cut off mid-write
            torn.write(data[: len(data) // 3])
        assert await engine.finish(ExitKind.KILLED, time.monotonic() + 30) is None
    assert rig.api.newest == 1
    assert rig.objects() == sorted(k for _, k in rig.api.kept_objects())


async def test_a_killed_job_still_gets_the_quiet_snapshot_that_was_uploading(
    rig: Rig, seaweed: LocalS3Server
) -> None:
    host, port = seaweed.endpoint_url.removeprefix("http://").split(":")
    with TcpProxy(host, int(port)) as proxy:
        proxied = ObjectStorage(
            S3Settings.from_env({**seaweed.env(), "AWS_ENDPOINT_URL": proxy.url})
        )
        engine, _ = rig.engine(1, storage=proxied)
        async with running(engine):
            proxy.hold_after(PART_SIZE)
            write_whole(rig.folder / "model.bin", content("model.bin", 1, 4 * PART_SIZE))
            await asyncio.to_thread(proxy.held.wait, 30)
            finishing = asyncio.create_task(engine.finish(ExitKind.KILLED, time.monotonic() + 60))
            proxy.release()
            assert await finishing is None
    assert rig.api.newest == 1
    [data] = rig.generation_files(1).values()
    assert whole_step(data) == 1
