"""Benchmark a job's logs: one command, a table of the figures issue 11 asks of them.

    .venv/bin/python bench/bench_logs.py [--quick] [--json FILE]

Starts a local SeaweedFS, one `kelpie serve` (SQLite) and a real `kelpie worker` (its own
output, the "container's output", goes to a file), then measures:

- a line written by the job → printed by `kelpie jobs logs -f` (a line every 0.5 s; the
  job stamps each line with its wall-clock time, the reader notes when it arrives), p50/p95,
  default settings (a piece every 2 s, the reader looking every 1 s);
- the worker's CPU (utime + stime from /proc) for a job writing 100 MB to stdout, minus its
  CPU for the same job writing nothing: capture, pass-through and upload of the pieces;
- job throughput: the job's own time to write 100 MB to stdout (as 100-byte lines, and as
  1 MiB writes) under kelpie, against the same command run directly with stdout to a file.
  Median of several runs each (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.api import Api, ApiUser  # noqa: E402
from tests.support.processes import KelpieProcess, start_server, start_worker  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402
from tests.support.worker import Bucket, make_bucket, no_imds_url  # noqa: E402

from kelpie.storage.local_server import LocalS3Server  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MB = 1_000_000

TICKS = """
import sys, time
for i in range(int(sys.argv[1])):
    print(f"tick {i} {time.time():.6f}", flush=True)
    time.sleep(0.5)
"""

# Writes SIZE bytes to stdout as MODE "lines" (100-byte lines through sys.stdout) or
# "chunks" (1 MiB os.write calls); its own time for that goes to RESULT.
WRITER = """
import os, sys, time
size, mode, result = int(sys.argv[1]), sys.argv[2], sys.argv[3]
started = time.perf_counter()
if mode == "lines":
    line = "x" * 99 + "\\n"
    write = sys.stdout.write
    for _ in range(size // 100):
        write(line)
    sys.stdout.flush()
else:
    chunk = b"y" * (1 << 20)
    left = size
    while left > 0:
        view = memoryview(chunk)[: min(left, len(chunk))]
        while view:
            view = view[os.write(1, view):]
        left -= min(left, len(chunk))
with open(result, "w") as out:
    out.write(str(time.perf_counter() - started))
"""


@dataclass
class Row:
    figure: str
    value: str
    target: str
    ok: bool


@dataclass
class Bench:
    api: Api
    s3: LocalS3Server
    user: ApiUser
    bucket: Bucket
    tmp: Path
    group: str
    worker: KelpieProcess | None = None

    def start_worker(self) -> KelpieProcess:
        self.worker = start_worker(
            self.api.url,
            self.user.key,
            "logs",
            self.group,
            self.tmp / "logs-worker",
            self.tmp / "worker-logs",
            extra_env={
                **self.s3.env(),
                "KELPIE_WORKER_POLL_WAIT_S": "5",
                "KELPIE_LOG_LEVEL": "info",
                "SALAD_IMDS_URL": no_imds_url(),
            },
        )
        return self.worker

    def run_job(self, code: str, *args: str, timeout: float = 120) -> dict[str, Any]:
        job = self.user.submit(
            command=sys.executable,
            arguments=["-c", code, *args],
            container_group_id=self.group,
            heartbeat_interval=5,
            output_bucket=self.bucket.name,
            output_prefix=f"bench/{uuid.uuid4().hex[:8]}/",
        )
        return job

    def wait_done(self, job_id: str, timeout: float = 180) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            current = self.user.job(job_id)
            return current if current["status"] in ("completed", "failed") else None

        finished = wait_for(done, f"job {job_id}", timeout, interval=0.1)
        assert finished["status"] == "completed", finished
        return finished

    def cli_env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.s3.env(),
            "KELPIE_API_URL": self.api.url,
            "KELPIE_API_KEY": self.user.key,
        }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def follow_latency(bench: Bench, lines: int) -> list[float]:
    """Seconds from each line's write (the job's clock) to `kelpie jobs logs -f` printing it."""
    job = bench.run_job(TICKS, str(lines))
    follow = subprocess.Popen(
        [sys.executable, "-m", "kelpie", "jobs", "logs", job["id"], "-f"],
        env=bench.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    latencies: list[float] = []

    def read() -> None:
        assert follow.stdout is not None
        for raw in follow.stdout:
            arrived = time.time()
            parts = raw.decode().split()
            if len(parts) == 3 and parts[0] == "tick":
                latencies.append(arrived - float(parts[2]))

    reader = threading.Thread(target=read)
    reader.start()
    bench.wait_done(job["id"])
    follow.wait(timeout=60)
    reader.join(timeout=10)
    assert len(latencies) == lines, f"{len(latencies)} of {lines} lines followed"
    return latencies[1:]  # the first waits for the follower's own start-up


def ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def worker_cpu(bench: Bench, size: int) -> float:
    """CPU seconds the worker spent on one job writing `size` bytes to stdout."""
    assert bench.worker is not None
    pid = bench.worker.proc.pid
    result = bench.tmp / f"cpu-{uuid.uuid4().hex[:6]}"
    before = ticks(pid)
    job = bench.run_job(WRITER, str(size), "chunks", str(result))
    bench.wait_done(job["id"])
    return (ticks(pid) - before) / CLOCK_TICKS


def under_kelpie(bench: Bench, size: int, mode: str) -> float:
    result = bench.tmp / f"kelpie-{uuid.uuid4().hex[:6]}"
    job = bench.run_job(WRITER, str(size), mode, str(result))
    bench.wait_done(job["id"])
    return float(result.read_text())


def directly(bench: Bench, size: int, mode: str) -> float:
    result = bench.tmp / f"direct-{uuid.uuid4().hex[:6]}"
    with (bench.tmp / "direct.out").open("wb") as out:
        subprocess.run(
            [sys.executable, "-c", WRITER, str(size), mode, str(result)], stdout=out, check=True
        )
    return float(result.read_text())


def through_a_pipe(bench: Bench, size: int, mode: str) -> float:
    """Run directly with stdout a pipe that `cat` copies to a file, as a container runtime
    reads a container's output."""
    result = bench.tmp / f"piped-{uuid.uuid4().hex[:6]}"
    with (bench.tmp / "piped.out").open("wb") as out:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=out)
        assert cat.stdin is not None
        subprocess.run(
            [sys.executable, "-c", WRITER, str(size), mode, str(result)],
            stdout=cat.stdin,
            check=True,
        )
        cat.stdin.close()
        cat.wait()
    return float(result.read_text())


def run(quick: bool) -> list[Row]:
    rounds = 3 if quick else 5
    with tempfile.TemporaryDirectory(prefix="kelpie-bench-logs-") as raw_tmp:
        tmp = Path(raw_tmp)
        with LocalS3Server(tmp / "s3") as s3:
            server = start_server(
                f"sqlite:///{tmp / 'kelpie.db'}", f"admin-{uuid.uuid4().hex}", tmp / "logs"
            )
            api = Api(server, "sqlite")
            bench = Bench(api, s3, api.new_user(), make_bucket(s3), tmp, f"b-{uuid.uuid4().hex}")
            worker = bench.start_worker()
            try:
                latencies = follow_latency(bench, 12 if quick else 30)
                idle_cpu = statistics.median(worker_cpu(bench, 0) for _ in range(rounds))
                busy_cpu = statistics.median(worker_cpu(bench, 100 * MB) for _ in range(rounds))
                speeds: dict[str, tuple[float, float, float]] = {}
                for mode in ("lines", "chunks"):
                    through, alone, piped = [], [], []
                    for _ in range(rounds):  # interleaved, so load changes hit all three
                        through.append(under_kelpie(bench, 100 * MB, mode))
                        alone.append(directly(bench, 100 * MB, mode))
                        piped.append(through_a_pipe(bench, 100 * MB, mode))
                    speeds[mode] = (
                        statistics.median(through),
                        statistics.median(alone),
                        statistics.median(piped),
                    )
            finally:
                worker.stop()
                server.stop()
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    capture_cpu = busy_cpu - idle_cpu
    rows = [
        Row("line written → shown by `jobs logs -f`, p50", f"{p50:.2f} s", "≤ 5 s", p50 <= 5),
        Row("line written → shown by `jobs logs -f`, p95", f"{p95:.2f} s", "—", True),
        Row(
            "worker CPU to capture 100 MB of stdout",
            f"{capture_cpu:.2f} s",
            "≤ 0.5 s",
            capture_cpu <= 0.5,
        ),
        Row("worker CPU for the whole 100 MB job", f"{busy_cpu:.2f} s", "—", True),
        Row("worker CPU for the same job writing nothing", f"{idle_cpu:.2f} s", "—", True),
    ]
    for mode, label in (("lines", "100-byte lines"), ("chunks", "1 MiB writes")):
        kelpie, direct, piped_s = speeds[mode]
        slower = (kelpie / direct - 1) * 100
        rows.append(
            Row(
                f"100 MB to stdout as {label}: kelpie vs direct to a file",
                f"{kelpie:.2f} s vs {direct:.2f} s ({slower:+.0f}%)",
                "≤ +10%" if mode == "lines" else "—",
                slower <= 10 or mode != "lines",
            )
        )
        rows.append(
            Row(
                f"100 MB to stdout as {label}: direct into a pipe read by cat",
                f"{piped_s:.2f} s",
                "—",
                True,
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = run(args.quick)
    width = max(len(row.figure) for row in rows)
    value_width = max(len(row.value) for row in rows)
    sys.stdout.write(f"{'figure':<{width}}  {'value':>{value_width}}  {'target':>8}  ok\n")
    for row in rows:
        mark = "yes" if row.ok else "NO"
        sys.stdout.write(
            f"{row.figure:<{width}}  {row.value:>{value_width}}  {row.target:>8}  {mark}\n"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
