"""Benchmark checkpoint generations: commit latency, CPU per GB, reuse, restore speed.

    .venv/bin/python bench/bench_checkpoints.py [--quick] [--repeat N] [--samples N]

Starts its own SeaweedFS (`LocalS3Server`) in a temporary directory and runs the worker's
`CheckpointEngine` in this process against it, with an in-process committer that takes
every commit at once (the API's own latency is not part of these figures). Measures:

- **1 MiB closed → committed**: a 1 MiB checkpoint written in place and closed, then the
  time until its generation is committed; `--samples` times (default 30), p50 and p95,
  with the default settle time (0.5 s).
- **CPU per GB uploaded**: this process's CPU time (user + system) from a 1 GiB file and a
  1 MiB one appearing in the checkpoint folder to their generation committed (events,
  settle, scan, /proc check, hashing, upload, commit), beside the CPU time of `aws s3 cp`
  uploading the same 1 GiB file to the same server (process start included).
- **Reuse**: bytes uploaded for the next generation when only the 1 MiB file changed.
- **Restore**: a fresh attempt restoring that generation (every file verified while it
  downloads) against a plain parallel download (`ObjectStorage.download_prefix`) of the
  same bytes, alternating; best of `--repeat` runs each, with this process's CPU time.

`--quick` uses 256 MiB instead of 1 GiB and 10 samples. Prints one table; nothing is left
behind.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kelpie.client import NotFoundError
from kelpie.schemas import (
    CheckpointCommitted,
    CheckpointFile,
    CheckpointFileOut,
    CheckpointManifestOut,
    CheckpointOut,
    JobOut,
)
from kelpie.storage import ObjectStorage, S3Settings
from kelpie.storage.local_server import LocalS3Server
from kelpie.worker.checkpoints import CheckpointEngine
from kelpie.worker.plan import CheckpointTarget

logger = logging.getLogger("bench.checkpoints")

MiB = 1024 * 1024
MB = 1_000_000
GB = 1_000_000_000
BUCKET = "bench-checkpoints"
BENCH_JOB = "00000000-0000-4000-8000-00000000be4c"
BENCH_USER = "00000000-0000-4000-8000-0000000000b5"
AWS = Path(sys.executable).with_name("aws")
SETTLE_S = 0.5  # the worker's default
SWEEP_S = 5.0  # the worker's default


@dataclass
class Committer:
    """Takes every commit at once and remembers when each was answered."""

    target: CheckpointTarget
    committed: dict[int, tuple[float, list[CheckpointFile]]] = field(default_factory=dict)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def lease_ok(self) -> bool:
        return True

    async def commit(
        self, generation: int, files: list[CheckpointFile], upload_seconds: float | None = None
    ) -> CheckpointCommitted:
        self.committed[generation] = (time.monotonic(), files)
        self.event.set()
        return CheckpointCommitted(checkpoint=self._out(generation))

    async def generations(self) -> list[CheckpointOut]:
        return [self._out(n) for n in sorted(self.committed)]

    async def manifest(self, generation: int) -> CheckpointManifestOut:
        _, files = self.committed[generation]
        return CheckpointManifestOut(
            **self._out(generation).model_dump(),
            manifest=[
                CheckpointFileOut(bucket=self.target.bucket, **f.model_dump()) for f in files
            ],
        )

    async def other_job(self, job_id: str) -> JobOut:
        raise NotFoundError(404, "Not Found", f"Job {job_id} not found")

    async def other_generations(self, job_id: str) -> list[CheckpointOut]:
        raise NotFoundError(404, "Not Found", f"Job {job_id} not found")

    async def other_manifest(self, job_id: str, generation: int) -> CheckpointManifestOut:
        raise NotFoundError(404, "Not Found", f"Job {job_id} not found")

    async def wait_for(self, generation: int) -> float:
        while generation not in self.committed:
            self.event.clear()
            await self.event.wait()
        return self.committed[generation][0]

    def _out(self, generation: int) -> CheckpointOut:
        _, files = self.committed[generation]
        return CheckpointOut(
            generation=generation,
            attempt_id=1,
            machine_id="bench",
            created=datetime.now(UTC),
            files=len(files),
            bytes=sum(f.size for f in files),
            kept=True,
        )


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        left = size
        while left:
            block = min(left, 8 * MiB)
            out.write(os.urandom(block))
            left -= block


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(8 * MiB):
            sha.update(block)
    return sha.hexdigest()


@dataclass
class Figures:
    latencies_ms: list[float] = field(default_factory=list)
    engine_cpu_per_gb: float = 0.0
    engine_seconds: float = 0.0
    aws_cpu_per_gb: float = 0.0
    aws_seconds: float = 0.0
    reuse_uploaded: int = 0
    restore_mb_s: float = 0.0
    restore_cpu_per_gb: float = 0.0
    plain_mb_s: float = 0.0
    plain_cpu_per_gb: float = 0.0


class Bench:
    def __init__(self, server: LocalS3Server, work: Path, big: int) -> None:
        self.server = server
        self.work = work
        self.big = big
        self.storage = ObjectStorage(S3Settings.from_env(server.env()))
        self.figures = Figures()
        self.aws_env = {
            **os.environ,
            **server.env(),
            "AWS_DEFAULT_REGION": server.env()["AWS_REGION"],
            "AWS_CONFIG_FILE": str(work / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
        }

    def target(self, name: str) -> CheckpointTarget:
        folder = self.work / name
        folder.mkdir(parents=True, exist_ok=True)
        return CheckpointTarget(0, BUCKET, f"{name}/", folder, None, None)

    def engine(
        self, target: CheckpointTarget, committer: Committer, attempt_id: int = 1
    ) -> CheckpointEngine:
        return CheckpointEngine(
            self.storage,
            committer,
            [target],
            job_id=BENCH_JOB,
            user_id=BENCH_USER,
            attempt_id=attempt_id,
            compress=False,
            settle_s=SETTLE_S,
            sweep_interval_s=SWEEP_S,
            upload_concurrency=8,
        )

    async def warm_up(self) -> None:
        """The first writes make SeaweedFS allocate and grow volumes: keep that out of the
        figures by writing as much once first."""
        seed = self.work / "warm-up.bin"
        write_random(seed, self.big)
        await self.storage.upload_file(seed, BUCKET, "warm-up/seed.bin")
        seed.unlink()

    async def latency(self, samples: int) -> None:
        target = self.target("latency")
        committer = Committer(target)
        engine = self.engine(target, committer)
        await engine.restore()
        await engine.start()
        try:
            for number in range(1, samples + 1):
                data = os.urandom(MiB)
                await asyncio.to_thread(_write_in_place, target.local_dir / "model.bin", data)
                closed = time.monotonic()
                committed = await committer.wait_for(number)
                self.figures.latencies_ms.append((committed - closed) * 1000)
        finally:
            await engine.close()

    async def upload_reuse_restore(self, repeat: int) -> None:
        target = self.target("generation")
        source = self.work / "source"
        write_random(source / "big.bin", self.big)
        write_random(source / "small.bin", MiB)
        committer = Committer(target)
        engine = self.engine(target, committer)
        await engine.restore()
        await engine.start()
        try:
            # the files appear in the folder at once (hard links): what follows is the
            # worker's own work, from the settle time to the commit
            started, cpu = time.monotonic(), cpu_seconds()
            for name in ("big.bin", "small.bin"):
                os.link(source / name, target.local_dir / name)
            await committer.wait_for(1)
            self.figures.engine_cpu_per_gb = (cpu_seconds() - cpu) / (self.big / GB)
            self.figures.engine_seconds = time.monotonic() - started
            before = engine.stats.uploaded_bytes
            (target.local_dir / "small.bin").unlink()
            write_random(target.local_dir / "small.bin", MiB)
            await committer.wait_for(2)
            self.figures.reuse_uploaded = engine.stats.uploaded_bytes - before
        finally:
            await engine.close()

        aws_seconds, aws_cpu = self.aws_upload(target.local_dir / "big.bin")
        self.figures.aws_seconds = aws_seconds
        self.figures.aws_cpu_per_gb = aws_cpu / (self.big / GB)

        expected = {name: digest(target.local_dir / name) for name in ("big.bin", "small.bin")}
        await self.storage.upload_dir(target.local_dir, BUCKET, "plain")
        total = sum((target.local_dir / name).stat().st_size for name in expected)
        restores: list[tuple[float, float]] = []
        plains: list[tuple[float, float]] = []
        for attempt in range(repeat):  # alternating, so both see the same load on the machine
            restores.append(await self.restore_once(target, committer, attempt, expected))
            plains.append(await self.plain_once(attempt, expected))
        (restore_s, restore_cpu), (plain_s, plain_cpu) = min(restores), min(plains)
        self.figures.restore_mb_s = total / MB / restore_s
        self.figures.restore_cpu_per_gb = restore_cpu / (total / GB)
        self.figures.plain_mb_s = total / MB / plain_s
        self.figures.plain_cpu_per_gb = plain_cpu / (total / GB)

    async def restore_once(
        self,
        target: CheckpointTarget,
        committer: Committer,
        attempt: int,
        expected: dict[str, str],
    ) -> tuple[float, float]:
        fresh = self.target(f"restore-{attempt}")
        restored = CheckpointTarget(0, BUCKET, target.prefix, fresh.local_dir, None, None)
        engine = self.engine(restored, committer, attempt_id=2 + attempt)
        started, cpu = time.perf_counter(), cpu_seconds()
        report = await engine.restore()
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        await engine.close()
        if report.generation != 2 or report.fallbacks:
            raise SystemExit(f"restore did not bring generation 2 back: {report}")
        self.check(fresh.local_dir, expected)
        return seconds, cpu

    async def plain_once(self, attempt: int, expected: dict[str, str]) -> tuple[float, float]:
        dest = self.work / f"plain-{attempt}"
        started, cpu = time.perf_counter(), cpu_seconds()
        await self.storage.download_prefix(BUCKET, "plain", dest)
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        self.check(dest, expected)
        return seconds, cpu

    def check(self, folder: Path, expected: dict[str, str]) -> None:
        for name, sha in expected.items():
            if digest(folder / name) != sha:
                raise SystemExit(f"{folder / name} differs from what was uploaded")
        shutil.rmtree(folder)

    def aws_upload(self, path: Path) -> tuple[float, float]:
        command = [str(AWS), "s3", "cp", "--only-show-errors"]
        command += ["--endpoint-url", self.server.endpoint_url, str(path), f"s3://{BUCKET}/aws/"]
        cpu, started = cpu_seconds(resource.RUSAGE_CHILDREN), time.monotonic()
        subprocess.run(command, env=self.aws_env, check=True)
        return time.monotonic() - started, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu


def _write_in_place(path: Path, data: bytes) -> None:
    with path.open("wb") as out:
        out.write(data)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {os.cpu_count()} cores"


def render(figures: Figures, big: int, samples: int) -> str:
    size = f"{big // MiB} MiB" if big < 1024 * MiB else f"{big // (1024 * MiB)} GiB"
    p50 = statistics.median(figures.latencies_ms)
    p95 = statistics.quantiles(figures.latencies_ms, n=20)[-1]
    target_ms = SETTLE_S * 1000 + 50
    restore_ratio = figures.restore_mb_s / figures.plain_mb_s
    rows = [
        (
            f"1 MiB closed -> committed (n={samples})",
            f"p50 {p50:.0f} ms, p95 {p95:.0f} ms",
            f"settle {SETTLE_S * 1000:.0f} ms",
            f"p50 <= {target_ms:.0f} ms",
            p50 <= target_ms,
        ),
        (
            f"CPU per GB uploaded ({size} file)",
            f"{figures.engine_cpu_per_gb:.2f} s ({figures.engine_seconds:.1f} s wall)",
            f"aws s3 cp {figures.aws_cpu_per_gb:.2f} s ({figures.aws_seconds:.1f} s wall)",
            "<= aws s3 cp",
            figures.engine_cpu_per_gb <= figures.aws_cpu_per_gb,
        ),
        (
            f"uploaded when 1 MiB changed next to {size}",
            f"{figures.reuse_uploaded / MiB:.2f} MiB",
            "",
            "<= 2 MiB",
            figures.reuse_uploaded <= 2 * MiB,
        ),
        (
            f"restore of a {size} + 1 MiB generation",
            f"{figures.restore_mb_s:.0f} MB/s, CPU {figures.restore_cpu_per_gb:.2f} s/GB",
            f"plain parallel {figures.plain_mb_s:.0f} MB/s, CPU "
            f"{figures.plain_cpu_per_gb:.2f} s/GB",
            f">= 90% ({restore_ratio:.0%})",
            restore_ratio >= 0.9,
        ),
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    header = ("figure", "kelpie", "reference", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    lines = [f"machine: {machine()}"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  met")
    lines.append("-" * len(lines[-1]))
    for *cells, met in rows:
        text = "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))
        lines.append(f"{text}  {'yes' if met else 'NO'}")
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace, work: Path) -> Figures:
    big = 256 * MiB if args.quick else 1024 * MiB
    with LocalS3Server(work / "s3") as server:
        server.create_bucket(BUCKET)
        bench = Bench(server, work, big)
        await bench.warm_up()
        logger.info("commit latency, %d samples ...", args.samples)
        await bench.latency(args.samples)
        logger.info("a %d MiB generation: CPU, reuse, restore ...", big // MiB)
        await bench.upload_reuse_restore(args.repeat)
        return bench.figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB")
    parser.add_argument("--repeat", type=int, default=3, help="best of N restores each way")
    parser.add_argument("--samples", type=int, default=None, help="commit latency samples")
    args = parser.parse_args(argv)
    args.samples = args.samples or (10 if args.quick else 30)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kelpie").setLevel(logging.WARNING)
    if not AWS.exists():
        raise SystemExit(f"the AWS CLI is not installed at {AWS} (pip install awscli)")
    with tempfile.TemporaryDirectory(prefix="kelpie-bench-checkpoints-") as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    big = 256 * MiB if args.quick else 1024 * MiB
    sys.stdout.write(render(figures, big, args.samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
