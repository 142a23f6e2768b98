"""Benchmark kelpie.storage against `aws s3 cp --recursive` on the same local S3 server.

    .venv/bin/python bench/bench_storage.py [--quick] [--repeat N]

Starts its own SeaweedFS (`LocalS3Server`) in a temporary directory, then for each data set
(1 x 512 MiB and 2,000 x 64 KiB; `--quick`: 1 x 64 MiB and 200 x 64 KiB) times an upload and
a download with `ObjectStorage` (upload_dir / download_prefix) and with the AWS CLI
(`aws s3 cp --recursive`, default settings, process start included: that is what a user of the
CLI waits for). Every download is checked byte for byte. With `--repeat N` each figure is the
best of N runs. Prints one table; nothing is left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from kelpie.storage import ObjectStorage, S3Settings
from kelpie.storage.local_server import LocalS3Server

logger = logging.getLogger("bench.storage")

MiB = 1024 * 1024
MB = 1_000_000
BUCKET = "bench-storage"
AWS = Path(sys.executable).with_name("aws")


@dataclass(frozen=True)
class DataSet:
    name: str
    slug: str  # names its directories and prefixes
    files: int
    file_size: int

    @property
    def total_bytes(self) -> int:
        return self.files * self.file_size


@dataclass(frozen=True)
class Timing:
    seconds: float
    files: int
    nbytes: int

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / MB / self.seconds

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds


@dataclass(frozen=True)
class Row:
    label: str
    kelpie: Timing
    aws: Timing


def make_data(root: Path, data: DataSet) -> Path:
    """`data.files` files of random bytes under root/<name>/ (nested 100 per directory)."""
    source = root / data.slug
    for i in range(data.files):
        path = source / f"d{i // 100:03d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            left = data.file_size
            while left:
                block = min(left, 8 * MiB)
                out.write(os.urandom(block))
                left -= block
    return source


def tree_digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha.update(path.relative_to(root).as_posix().encode())
        with path.open("rb") as f:
            while block := f.read(MiB):
                sha.update(block)
    return sha.hexdigest()


def best_of(repeat: int, run: Callable[[int], float]) -> float:
    return min(run(attempt) for attempt in range(repeat))


class Bench:
    def __init__(self, server: LocalS3Server, work: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.work = work
        self.loop = loop
        self.storage = ObjectStorage(S3Settings.from_env(server.env()))
        self.aws_env = {
            **os.environ,
            **server.env(),
            "AWS_DEFAULT_REGION": server.env()["AWS_REGION"],
            # no user config or credentials files may change the CLI's behaviour
            "AWS_CONFIG_FILE": str(work / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
        }

    def warm_up(self) -> None:
        """The first write to a bucket makes SeaweedFS allocate volumes: keep that out of the
        figures."""
        seed = self.work / "warm-up" / "seed.bin"
        seed.parent.mkdir(parents=True)
        seed.write_bytes(os.urandom(MiB))
        self.timed(lambda: self.storage.upload_dir(seed.parent, BUCKET, "warm-up"))
        self.aws_cp(str(seed.parent), f"s3://{BUCKET}/warm-up-aws/")

    def timed(self, action: Callable[[], Awaitable[object]]) -> float:
        started = time.perf_counter()
        self.loop.run_until_complete(action())
        return time.perf_counter() - started

    def aws_cp(self, source: str, dest: str) -> float:
        command = [str(AWS), "s3", "cp", "--recursive", "--only-show-errors"]
        command += ["--endpoint-url", self.server.endpoint_url, source, dest]
        started = time.perf_counter()
        subprocess.run(command, env=self.aws_env, check=True)
        return time.perf_counter() - started

    def measure(self, data: DataSet, source: Path, repeat: int) -> list[Row]:
        expected = tree_digest(source)

        def kelpie_up(attempt: int) -> float:
            prefix = f"kelpie/{data.slug}/{attempt}"
            return self.timed(lambda: self.storage.upload_dir(source, BUCKET, prefix))

        def aws_up(attempt: int) -> float:
            return self.aws_cp(str(source), f"s3://{BUCKET}/aws/{data.slug}/{attempt}/")

        def kelpie_down(attempt: int) -> float:
            dest = self.fresh_dir(f"kelpie-{data.slug}-{attempt}")
            seconds = self.timed(
                lambda: self.storage.download_prefix(BUCKET, f"kelpie/{data.slug}/0", dest)
            )
            self.check(dest, expected, "kelpie")
            return seconds

        def aws_down(attempt: int) -> float:
            dest = self.fresh_dir(f"aws-{data.slug}-{attempt}")
            seconds = self.aws_cp(f"s3://{BUCKET}/aws/{data.slug}/0/", str(dest))
            self.check(dest, expected, "aws")
            return seconds

        rows = []
        for verb, ours, theirs in (
            ("upload", kelpie_up, aws_up),
            ("download", kelpie_down, aws_down),
        ):
            logger.info("%s %s ...", verb, data.name)
            kelpie_s = best_of(repeat, ours)
            aws_s = best_of(repeat, theirs)
            rows.append(
                Row(
                    f"{verb} {data.name}",
                    Timing(kelpie_s, data.files, data.total_bytes),
                    Timing(aws_s, data.files, data.total_bytes),
                )
            )
        return rows

    def fresh_dir(self, name: str) -> Path:
        path = self.work / "downloads" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def check(self, dest: Path, expected: str, tool: str) -> None:
        if tree_digest(dest) != expected:
            raise SystemExit(f"{tool} download of {dest.name} differs from the source")
        shutil.rmtree(dest)


def render(rows: list[Row]) -> str:
    header = (
        f"{'transfer':<26} {'kelpie MB/s':>11} {'files/s':>9} "
        f"{'aws cli MB/s':>12} {'files/s':>9} {'kelpie/aws':>10}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.label:<26} {row.kelpie.mb_per_s:>11.1f} {row.kelpie.files_per_s:>9.1f} "
            f"{row.aws.mb_per_s:>12.1f} {row.aws.files_per_s:>9.1f} "
            f"{row.aws.seconds / row.kelpie.seconds:>9.2f}x"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller data sets (about 10 s)")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs per figure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not AWS.exists():
        raise SystemExit(f"the AWS CLI is not installed at {AWS} (pip install awscli)")

    if args.quick:
        big, small = (
            DataSet("1 x 64 MiB", "big", 1, 64 * MiB),
            DataSet("200 x 64 KiB", "small", 200, 64 * 1024),
        )
    else:
        big, small = (
            DataSet("1 x 512 MiB", "big", 1, 512 * MiB),
            DataSet("2,000 x 64 KiB", "small", 2000, 64 * 1024),
        )
    with tempfile.TemporaryDirectory(prefix="kelpie-bench-storage-") as tmp:
        work = Path(tmp)
        loop = asyncio.new_event_loop()
        try:
            with LocalS3Server(work / "s3") as server:
                server.create_bucket(BUCKET)
                bench = Bench(server, work, loop)
                bench.warm_up()
                rows: list[Row] = []
                for data in (big, small):
                    logger.info("writing %s of random data", data.name)
                    source = make_data(work / "source", data)
                    rows += bench.measure(data, source, args.repeat)
        finally:
            loop.close()
    sys.stdout.write(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
