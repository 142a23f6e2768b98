"""Benchmark the worker: one command, a table of the figures issue 3 asks of it.

    .venv/bin/python bench/bench_worker.py [--quick] [--json FILE]

Starts a local SeaweedFS, one `kelpie serve` (SQLite) and real `kelpie worker` processes,
then measures:

- checkpoint latency: a job closes a 1 MiB file in CHECKPOINT_DIR every second; the time
  from its close to its generation committed (the API's `checkpoint_committed` event, whose
  time has millisecond resolution), p50/p95, with the default settle time (0.5 s);
- hand-back latency: SIGTERM to the worker → the job `pending` again (API polled every 5 ms);
- the idle worker's RSS and CPU (% of one core) over 10 s of long-polling with no work.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.api import Api, ApiUser  # noqa: E402
from tests.support.processes import KelpieProcess, start_server, start_worker  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402
from tests.support.worker import (  # noqa: E402
    FAST_WORKER_ENV,
    Bucket,
    job_script,
    make_bucket,
    no_imds_url,
)

from kelpie.storage.local_server import LocalS3Server  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


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
    workers: list[KelpieProcess]
    rss_after_job_mb: float = 0.0

    def worker(self, name: str, group: str, **env: str) -> KelpieProcess:
        worker = start_worker(
            self.api.url,
            self.user.key,
            name,
            group,
            self.tmp / name,
            self.tmp / "logs",
            extra_env={
                **self.s3.env(),
                **FAST_WORKER_ENV,
                "KELPIE_LOG_LEVEL": "info",
                "SALAD_IMDS_URL": no_imds_url(),
                **env,
            },
        )
        self.workers.append(worker)
        return worker

    def submit(self, group: str, script: str, **fields: Any) -> dict[str, Any]:
        return self.user.submit(
            command=sys.executable,
            arguments=[job_script(script)],
            container_group_id=group,
            heartbeat_interval=5,
            **fields,
        )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def checkpoint_latency(bench: Bench, count: int) -> list[float]:
    """Seconds from a 1 MiB checkpoint's close to its generation committed (the API's
    `checkpoint_committed` event), through a real worker and API, default settle time."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    close_log = bench.tmp / "closes.log"
    job = bench.submit(
        group,
        "write_checkpoints.py",
        checkpoint_bucket=bench.bucket.name,
        checkpoint_prefix="ck/",
        # one file a second: each settles (0.5 s) and is committed before the next
        environment={"CLOSE_LOG": str(close_log), "COUNT": str(count), "INTERVAL_S": "1.0"},
    )
    worker = bench.worker("latency", group, KELPIE_WORKER_CHECKPOINT_SETTLE_S="0.5")
    wait_for(lambda: bench.user.job(job["id"])["status"] == "completed", "the latency job", 120)
    events = bench.user.http.get(f"/jobs/{job['id']}/events").json()
    commits = sorted(
        datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
        for e in events
        if e["kind"] == "checkpoint_committed"
    )
    latencies: list[float] = []
    for i in range(count):
        closed = _close_time(close_log, i)
        assert closed is not None
        after = [at for at in commits if at >= closed - 0.001]
        if after:
            latencies.append(after[0] - closed)
    time.sleep(1)  # back to polling
    bench.rss_after_job_mb = proc_rss_and_ticks(worker.proc.pid)[0] / 1e6
    worker.stop()
    return latencies


def _close_time(close_log: Path, i: int) -> float | None:
    closes = dict(line.split() for line in close_log.read_text().splitlines() if " " in line)
    return float(closes[str(i)]) if str(i) in closes else None


def handback_latency(bench: Bench, rounds: int) -> list[float]:
    """Seconds from SIGTERM to the worker until its job is `pending` again."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    job = bench.submit(
        group,
        "count.py",
        checkpoint_bucket=bench.bucket.name,
        checkpoint_prefix="handback/",
        environment={"COUNT_TO": "1000000", "STEP_S": "0.3"},
    )
    latencies: list[float] = []
    for round_ in range(rounds):
        worker = bench.worker(f"handback-{round_}", group)
        before: int = bench.user.job(job["id"])["checkpoint_generation"] or 0

        def committed_again(before: int = before) -> bool:
            current = bench.user.job(job["id"])
            return (
                current["status"] == "running" and (current["checkpoint_generation"] or 0) > before
            )

        wait_for(committed_again, "the job to run and commit a checkpoint", timeout=30)
        time.sleep(0.3)  # a few steps into the run
        sent = time.monotonic()
        worker.signal(signal.SIGTERM)
        while bench.user.job(job["id"])["status"] != "pending":
            time.sleep(0.005)
        latencies.append(time.monotonic() - sent)
        worker.proc.wait(timeout=30)
    bench.user.http.delete(f"/jobs/{job['id']}")
    return latencies


def proc_rss_and_ticks(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/statm") as statm:
        rss = int(statm.read().split()[1]) * PAGE_SIZE
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return rss, int(fields[11]) + int(fields[12])  # utime + stime


def idle_footprint(bench: Bench, seconds: float) -> tuple[float, float]:
    """(RSS in MB, CPU % of one core) of a worker with no work, measured over `seconds`."""
    worker = bench.worker("idle", f"bench-idle-{uuid.uuid4().hex[:8]}")
    wait_for(lambda: "worker: machine" in worker.log(), "the idle worker to start polling")
    time.sleep(2)  # past start-up work (imports, first poll)
    _, ticks_before = proc_rss_and_ticks(worker.proc.pid)
    started = time.monotonic()
    time.sleep(seconds)
    rss, ticks_after = proc_rss_and_ticks(worker.proc.pid)
    elapsed = time.monotonic() - started
    worker.stop()
    cpu = (ticks_after - ticks_before) / CLOCK_TICKS / elapsed * 100
    return rss / 1e6, cpu


def run(quick: bool) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="kelpie-bench-worker-") as raw_tmp:
        tmp = Path(raw_tmp)
        with LocalS3Server(tmp / "s3") as s3:
            server = start_server(
                f"sqlite:///{tmp / 'kelpie.db'}", f"admin-{uuid.uuid4().hex}", tmp / "logs"
            )
            api = Api(server, "sqlite")
            bench = Bench(api, s3, api.new_user(), make_bucket(s3), tmp, [])
            try:
                checkpoints = checkpoint_latency(bench, 10 if quick else 30)
                handbacks = handback_latency(bench, 3 if quick else 5)
                rss_mb, cpu = idle_footprint(bench, 5 if quick else 10)
            finally:
                for worker in bench.workers:
                    worker.stop()
                server.stop()
    p50, p95 = percentile(checkpoints, 50) * 1000, percentile(checkpoints, 95) * 1000
    h50, hmax = statistics.median(handbacks) * 1000, max(handbacks) * 1000
    return [
        Row(
            "checkpoint 1 MiB closed → committed p50 (settle 0.5 s)",
            f"{p50:.1f} ms",
            "≤ 550 ms",
            p50 <= 550,
        ),
        Row("checkpoint 1 MiB closed → committed p95", f"{p95:.1f} ms", "—", True),
        Row("SIGTERM → job pending, median", f"{h50:.0f} ms", "≤ 1000 ms", h50 <= 1000),
        Row("SIGTERM → job pending, max", f"{hmax:.0f} ms", "≤ 1000 ms", hmax <= 1000),
        Row("idle worker RSS", f"{rss_mb:.1f} MB", "≤ 60 MB", rss_mb <= 60),
        Row(
            "idle worker RSS after a 30-checkpoint job",
            f"{bench.rss_after_job_mb:.1f} MB",
            "—",
            True,
        ),
        Row("idle worker CPU", f"{cpu:.2f} % of a core", "< 1 %", cpu < 1),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter idle")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = run(args.quick)
    width = max(len(row.figure) for row in rows)
    sys.stdout.write(f"{'figure':<{width}}  {'value':>18}  {'target':>10}  ok\n")
    for row in rows:
        mark = "yes" if row.ok else "NO"
        sys.stdout.write(f"{row.figure:<{width}}  {row.value:>18}  {row.target:>10}  {mark}\n")
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
