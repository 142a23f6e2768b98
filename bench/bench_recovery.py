"""What an interruption costs in time: how long a job waits between holders.

    .venv/bin/python bench/bench_recovery.py [--quick] [--json FILE]

Starts one `kelpie serve` (SQLite) and real `kelpie worker` processes (no bucket: the figures
are the coordination's own), then measures, for a job held by one worker with another worker
idle and long-polling the same group:

- SIGTERM to the holder (the node is being preempted) → the job `running` on the idle worker;
- SIGKILL of the holder's whole process tree (the node vanished) → the job `running` on the
  idle worker, against 2 x heartbeat_interval + 1 s;
- the API stopped for 60 s (`--quick`: 10 s) while 3 jobs run and 2 workers idle → how many
  jobs changed hands in the 3 intervals after it came back (target 0).

Times are taken by polling the API every 5 ms for the job's holder.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.api import Api, ApiUser  # noqa: E402
from tests.support.processes import (  # noqa: E402
    KelpieProcess,
    ServerProcess,
    start_server,
    start_worker,
)
from tests.support.waiting import wait_for  # noqa: E402
from tests.support.worker import FAST_WORKER_ENV, job_script, no_imds_url  # noqa: E402

INTERVAL = 2  # heartbeat_interval of the jobs


@dataclass
class Row:
    figure: str
    value: str
    target: str
    ok: bool


@dataclass
class Lab:
    server: ServerProcess
    user: ApiUser
    tmp: Path
    group: str
    workers: dict[str, KelpieProcess]

    def worker(self, name: str) -> KelpieProcess:
        worker = start_worker(
            self.server.url,
            self.user.key,
            name,
            self.group,
            self.tmp / name,
            self.tmp / "logs",
            extra_env={
                **FAST_WORKER_ENV,
                "KELPIE_LOG_LEVEL": "info",
                "SALAD_IMDS_URL": no_imds_url(),
            },
        )
        self.workers[name] = worker
        return worker

    def submit(self) -> str:
        job: dict[str, Any] = self.user.submit(
            command=sys.executable,
            arguments=[job_script("count.py")],
            container_group_id=self.group,
            heartbeat_interval=INTERVAL,
            environment={"COUNT_TO": "10000000", "STEP_S": "0.2"},
        )
        return str(job["id"])

    def polling(self, machines: set[str]) -> bool | None:
        """Whether every one of `machines` has polled for work (`GET /workers`)."""
        answer = self.user.http.get("/workers", params={"container_group_id": self.group})
        answer.raise_for_status()
        seen = {w["machine_id"] for w in answer.json()["workers"] if w["last_poll"]}
        return machines <= seen or None

    def holder(self, job_id: str) -> str | None:
        job = self.user.job(job_id)
        return str(job["machine_id"]) if job["status"] == "running" else None

    def stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.kill_with_descendants()


def time_to_new_holder(
    lab: Lab, job_id: str, old: str, started: float, timeout: float = 60
) -> float:
    """Seconds since `started` (monotonic) until another worker than `old` holds the job."""
    while time.monotonic() - started < timeout:
        holder = lab.holder(job_id)
        if holder is not None and holder != old:
            return time.monotonic() - started
        time.sleep(0.005)
    raise TimeoutError(f"job {job_id} never moved from {old}")


def handovers(lab: Lab, rounds: int, *, kill: bool) -> list[float]:
    """Seconds from the holder's end (SIGTERM or SIGKILL of its tree) to the job running on
    the idle worker; the two workers take turns."""
    job_id = lab.submit()
    names = ["a", "b"]
    for name in names:
        lab.worker(name)
    seconds: list[float] = []
    for round_ in range(rounds):
        holder = wait_for(lambda: lab.holder(job_id), "the job running", 30)
        # the idle worker (a fresh process after the first round) is long-polling
        wait_for(functools.partial(lab.polling, set(lab.workers) - {holder}), "an idle poll", 30)
        time.sleep(0.5)  # a few steps into the run
        worker = lab.workers[holder]
        started = time.monotonic()
        if kill:
            worker.kill_with_descendants()
        else:
            worker.signal(signal.SIGTERM)
        seconds.append(time_to_new_holder(lab, job_id, holder, started))
        worker.proc.wait(timeout=30)
        del lab.workers[holder]
        lab.worker(f"{names[round_ % 2]}{round_}")  # a new node takes the old one's place
    lab.user.http.delete(f"/jobs/{job_id}")
    lab.stop_all()
    lab.workers.clear()
    return seconds


def jobs_moved_by_outage(lab: Lab, outage_s: float, tmp: Path) -> int:
    jobs = [lab.submit() for _ in range(3)]
    for name in ("h1", "h2", "h3"):
        lab.worker(name)
    wait_for(lambda: all(lab.holder(j) for j in jobs) or None, "3 jobs running", 30)
    for name in ("idle1", "idle2"):
        lab.worker(name)
    before = [lab.holder(j) for j in jobs]
    port = int(lab.server.url.rsplit(":", 1)[1])
    lab.server.stop()
    time.sleep(outage_s)  # the outage itself
    lab.server = start_server(
        lab.server.database_url, lab.server.admin_key, tmp / "logs", port=port
    )
    watch_until = time.monotonic() + 3 * INTERVAL + 5
    moved: set[int] = set()
    while time.monotonic() < watch_until:
        for index, job_id in enumerate(jobs):
            if lab.holder(job_id) not in (None, before[index]):
                moved.add(index)
        time.sleep(0.1)
    lab.stop_all()
    return len(moved)


def run(quick: bool) -> list[Row]:
    rounds = 3 if quick else 10
    with tempfile.TemporaryDirectory(prefix="kelpie-bench-recovery-") as raw:
        tmp = Path(raw)
        server = start_server(
            f"sqlite:///{tmp / 'kelpie.db'}", f"admin-{uuid.uuid4().hex}", tmp / "logs"
        )
        lab = Lab(
            server, Api(server, "sqlite").new_user(), tmp, f"bench-{uuid.uuid4().hex[:8]}", {}
        )
        try:
            sigterm = handovers(lab, rounds, kill=False)
            sigkill = handovers(lab, rounds, kill=True)
            moved = jobs_moved_by_outage(lab, 10 if quick else 60, tmp)
        finally:
            lab.stop_all()
            lab.server.stop()
    t50, tmax = statistics.median(sigterm), max(sigterm)
    k50, kmax = statistics.median(sigkill), max(sigkill)
    kill_target = 2 * INTERVAL + 1
    outage = "10 s" if quick else "60 s"
    return [
        Row(
            "SIGTERM → running on the idle worker, p50",
            f"{t50 * 1000:.0f} ms",
            "≤ 500 ms",
            t50 <= 0.5,
        ),
        Row("SIGTERM → running on the idle worker, max", f"{tmax * 1000:.0f} ms", "—", True),
        Row(
            f"SIGKILL → running elsewhere, p50 (interval {INTERVAL} s)",
            f"{k50:.2f} s",
            f"≤ {kill_target} s",
            k50 <= kill_target,
        ),
        Row(
            "SIGKILL → running elsewhere, max",
            f"{kmax:.2f} s",
            f"≤ {kill_target} s",
            kmax <= kill_target,
        ),
        Row(f"API outage of {outage}: jobs moved (of 3)", str(moved), "0", moved == 0),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, a 10 s outage")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = run(args.quick)
    width = max(len(row.figure) for row in rows)
    sys.stdout.write(f"{'figure':<{width}}  {'value':>10}  {'target':>10}  ok\n")
    for row in rows:
        mark = "yes" if row.ok else "NO"
        sys.stdout.write(f"{row.figure:<{width}}  {row.value:>10}  {row.target:>10}  {mark}\n")
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
