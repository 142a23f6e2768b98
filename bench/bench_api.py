"""Benchmark the coordination API: one command, a table of the figures issue 2 asks for.

    .venv/bin/python bench/bench_api.py [--quick] [--backend sqlite|postgres|both] [--json F]
                                        [--sqlite-processes 1|2]

Starts its own servers (SQLite: one `kelpie serve` process on a temporary file, or two with
--sqlite-processes 2; PostgreSQL: two `kelpie serve` processes on one fresh database, load
split evenly between them), then
measures claims, heartbeats, submits, 1,000-job batches, paging through 100,000 jobs, pickup
latency with `wait` and the servers' memory. The load generator (bench/loadgen.py) runs in
this process, on the same cores as the servers, as the issue's figures require.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.bulk_jobs import JobsShape, load_jobs  # noqa: E402
from tests.support.claim_plan import claim_plans  # noqa: E402
from tests.support.postgres import ADMIN_URL, create_database, drop_database  # noqa: E402
from tests.support.processes import (  # noqa: E402
    KelpieProcess,
    ServerProcess,
    free_port,
    start_server,
)

from bench.loadgen import (  # noqa: E402
    Address,
    Connection,
    LoadResult,
    Response,
    Verdict,
    encode_request,
    percentile,
    run_async,
    run_load,
    send_all,
)
from bench.noop_server import NOOP_PATH  # noqa: E402
from kelpie.api.security import hash_api_key  # noqa: E402
from kelpie.store import open_store  # noqa: E402

BATCH_SIZE = 1000
PAGE_JOBS = 100_000
PAGE_SIZE = 100
PAGES_CYCLED = 20  # "the first pages": k = 1..20
RARE_RUNNING_JOBS = 100  # running jobs among the 100,000, for a selective status filter
PICKUP_WAIT_SECONDS = 20
PICKUP_PARK_SECONDS = 0.05  # time for the long poll to reach the server and park
PICKUP_TIMEOUT_SECONDS = PICKUP_WAIT_SECONDS + 5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Each rate as a share of what the same uvicorn/FastAPI setup answers for a no-op endpoint
# (bench/noop_server.py) on the same machine in the same run.
CLAIM_SHARE_TARGET = 0.35
HEARTBEAT_SHARE_TARGET = 0.50
SUBMIT_SHARE_TARGET = 0.35
CEILING_METRIC = "no-op FastAPI endpoint (ceiling)"
CLAIM_PRIORITIES = 11  # -5..5, for the claims with priorities in use


@dataclass(frozen=True)
class Options:
    clients: int
    duration: float
    warmup: float
    claim_jobs: int
    batches: int
    pickup_samples: int
    only: tuple[str, ...] = ()  # phases to run (the ceiling always runs); empty: all
    plans_dir: str = ""  # scale mode: where the claim plans are written


FULL = Options(
    clients=32, duration=5.0, warmup=1.0, claim_jobs=30_000, batches=10, pickup_samples=50
)
QUICK = Options(
    clients=32, duration=2.0, warmup=0.5, claim_jobs=10_000, batches=10, pickup_samples=20
)


# --- figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One row of the table: a measured value against the issue's target and the reference."""

    metric: str
    backend: str
    value: float
    unit: str
    target: float
    higher_is_better: bool
    detail: str = ""
    cpu: str = ""
    reference: str = ""
    reference_best: float | None = None  # the reference service's best figure, same unit
    failure: str = ""  # a correctness failure (a job handed out twice): the figure is void
    # A rate as a share of the no-op ceiling measured in the same run, and its target.
    share: float | None = None
    share_target: float | None = None
    p50_ms: float | None = None  # latency of one request under this load, when it is a rate
    # CPU per request of the servers (and their PostgreSQL backends), and that of the
    # ceiling's servers as a share of it: what the code costs, whatever else the machine did.
    cpu_us: float | None = None
    cpu_share: float | None = None

    @property
    def meets_target(self) -> bool:
        if self.failure:
            return False
        if self.share_target is not None and (self.share or 0.0) < self.share_target:
            return False
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    @property
    def times_reference(self) -> float | None:
        """How many times better than the reference at its best (its upper bound for rates,
        its lower bound for latency), so the claim 'N times ahead' is never flattered."""
        if not self.reference_best or self.value <= 0:
            return None
        if self.higher_is_better:
            return self.value / self.reference_best
        return self.reference_best / self.value


def _fmt(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:.0f} {unit}"


def _share_cell(fig: Figure) -> str:
    if fig.share is None:
        return "-"
    if fig.share_target is None:
        return f"{fig.share:.0%}"
    return f"{fig.share:.0%} (≥ {fig.share_target:.0%})"


def _cpu_cell(fig: Figure) -> str:
    if fig.cpu_us is None:
        return "-"
    if fig.cpu_share is None:
        return f"{fig.cpu_us:.0f} µs"
    return f"{fig.cpu_us:.0f} µs ({fig.cpu_share:.0%})"


def render_table(figures: Sequence[Figure]) -> str:
    header = (
        "metric",
        "backend",
        "result",
        "target",
        "of ceiling",
        "cpu/req",
        "ok",
        "reference",
        "x ref",
        "cpu",
        "detail",
    )
    rows = [header]
    for fig in figures:
        ratio = fig.times_reference
        rows.append(
            (
                fig.metric,
                fig.backend,
                _fmt(fig.value, fig.unit),
                ("≥ " if fig.higher_is_better else "≤ ") + _fmt(fig.target, fig.unit)
                if fig.target
                else "-",
                _share_cell(fig),
                _cpu_cell(fig),
                "FAIL" if fig.failure else "yes" if fig.meets_target else "NO",
                fig.reference or "-",
                f"{ratio:,.0f}x" if ratio is not None else "-",
                fig.cpu,
                fig.detail,
            )
        )
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    lines = [
        " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


# --- the machine and its processes ---------------------------------------------------------


def machine_info() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    meminfo = Path("/proc/meminfo").read_text().split()
    mem_kb = int(meminfo[meminfo.index("MemTotal:") + 1])
    return {
        "cpus": f"{len(os.sched_getaffinity(0))} usable (os.cpu_count={os.cpu_count()})",
        "cpu model": model,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants (uvicorn's worker processes, if any)."""
    found = [pid]
    for position in range(10_000):
        if position >= len(found):
            break
        task_dir = Path(f"/proc/{found[position]}/task")
        try:
            for task in task_dir.iterdir():
                found.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def _status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _machine_busy_and_total() -> tuple[float, float]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def postgres_backends(database: str) -> list[int]:
    """PostgreSQL's processes serving one database (their title names it)."""
    marker = f" {database} ".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"postgres: ") and marker in title:
            found.append(int(entry.name))
    return found


@dataclass
class CpuMeter:
    """CPU used by the servers, by their PostgreSQL backends, by this load generator and by
    the whole machine over a phase: tells whether a figure was limited by the API, the
    database, the load generator or a machine busy with something else."""

    server_pids: list[int]
    database: str | None = None  # PostgreSQL database name, None for SQLite
    _wall: float = 0.0
    _servers: float = 0.0
    _backends: dict[int, float] = field(default_factory=dict)
    _self: float = 0.0
    _busy: float = 0.0
    _total: float = 0.0
    cores_used: float = 0.0  # servers and their backends, in cores, over the last phase

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._servers = self._server_seconds()
        self._backends = self._backend_seconds()
        times = os.times()
        self._self = times.user + times.system
        self._busy, self._total = _machine_busy_and_total()

    def summary(self) -> str:
        wall = time.perf_counter() - self._wall
        times = os.times()
        busy, total = _machine_busy_and_total()
        servers = (self._server_seconds() - self._servers) / wall * 100
        own = (times.user + times.system - self._self) / wall * 100
        machine = (busy - self._busy) / max(total - self._total, 1.0) * 100
        text = f"srv {servers:.0f}%"
        self.cores_used = servers / 100
        if self.database is not None:
            now = self._backend_seconds()
            used = sum(seconds - self._backends.get(pid, 0.0) for pid, seconds in now.items())
            text += f" pg {used / wall * 100:.0f}%"
            self.cores_used += used / wall
        return f"{text} gen {own:.0f}% all {machine:.0f}%"

    def _server_seconds(self) -> float:
        return sum(_cpu_seconds(pid) for root in self.server_pids for pid in process_tree(root))

    def _backend_seconds(self) -> dict[int, float]:
        if self.database is None:
            return {}
        return {pid: _cpu_seconds(pid) for pid in postgres_backends(self.database)}


# --- deployment ----------------------------------------------------------------------------


@dataclass
class Deployment:
    """The servers of one backend, as many no-op ceiling servers, and the keys of the
    benchmark's users."""

    backend: str
    servers: list[ServerProcess]
    admin_key: str
    user_key: str = ""
    user_id: str = ""
    pages_key: str = ""
    pages_user_id: str = ""
    store_jobs: int = 0  # scale mode: jobs loaded into the store before the servers started
    label: str = ""  # the backend, and in scale mode the store's size
    addresses: list[Address] = field(default_factory=list)
    ceiling: list[KelpieProcess] = field(default_factory=list)
    ceiling_addresses: list[Address] = field(default_factory=list)

    def address(self, client: int) -> Address:
        """Clients are spread evenly over the servers."""
        return self.addresses[client % len(self.addresses)]

    def ceiling_address(self, client: int) -> Address:
        """The no-op servers take their clients exactly as kelpie's servers do."""
        return self.ceiling_addresses[client % len(self.ceiling_addresses)]


def start_noop_server(log_dir: Path) -> tuple[KelpieProcess, Address]:
    """One bench/noop_server.py process (uvicorn as `kelpie serve` runs it), once it answers."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"noop-{port}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.noop_server", "--port", str(port)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = KelpieProcess(proc, log_path)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the no-op server exited with {proc.returncode}: {server.log()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{NOOP_PATH}", timeout=1.0).status_code == 200:
                return server, Address(port)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise TimeoutError("the no-op server did not answer within 30 s")
        time.sleep(0.05)


def start_deployment(
    backend: str, database_url: str, log_dir: Path, sqlite_processes: int = 1
) -> Deployment:
    admin_key = secrets.token_urlsafe(24)
    count = sqlite_processes if backend == "sqlite" else 2
    deployment = Deployment(backend, [], admin_key, label=backend)
    try:
        for _ in range(count):
            server = start_server(database_url, admin_key, log_dir, workers=1)
            deployment.servers.append(server)
            deployment.addresses.append(Address(int(server.url.rsplit(":", 1)[1])))
            noop, address = start_noop_server(log_dir)
            deployment.ceiling.append(noop)
            deployment.ceiling_addresses.append(address)
    except BaseException:
        stop_deployment(deployment)
        raise
    return deployment


def stop_deployment(deployment: Deployment) -> None:
    for server in [*deployment.servers, *deployment.ceiling]:
        server.stop()


async def _call(address: Address, method: str, path: str, key: str, body: Any = None) -> Any:
    conn = await Connection.open(address)
    try:
        response = await conn.request(encode_request(address, method, path, key, body))
    finally:
        await conn.close()
    if not 200 <= response.status < 300:
        raise RuntimeError(f"{method} {path} answered {response.status}: {response.body[:300]!r}")
    return response.json()


async def create_user_key(deployment: Deployment, username: str) -> tuple[str, str]:
    """A new user: its id and an API key."""
    address = deployment.address(0)
    user = await _call(address, "POST", "/users", deployment.admin_key, {"username": username})
    token = await _call(address, "POST", f"/users/{user['id']}/token", deployment.admin_key, {})
    return str(user["id"]), str(token["token"])


# --- the measurements ----------------------------------------------------------------------


def _job(group: str) -> dict[str, Any]:
    return {"command": "python", "arguments": ["-c", "pass"], "container_group_id": group}


def _new_group(purpose: str) -> str:
    return f"bench-{purpose}-{uuid.uuid4().hex[:8]}"


def _priority(position: int, levels: int) -> int:
    """Priorities spread over `levels` values around 0, mixed along the queue."""
    return (position * 7) % levels - levels // 2


async def submit_jobs(
    deployment: Deployment, key: str, group: str, count: int, priorities: int = 1
) -> None:
    """Queue `count` jobs in batches of 1,000, two connections per server; with
    `priorities` > 1, of as many priorities, mixed."""
    address = deployment.address(0)  # only names the Host header; any server takes any request
    requests = []
    for start in range(0, count, BATCH_SIZE):
        size = min(BATCH_SIZE, count - start)
        if priorities > 1:
            batch = [
                {**_job(group), "priority": _priority(start + i, priorities)} for i in range(size)
            ]
        else:
            batch = [_job(group)] * size
        requests.append(encode_request(address, "POST", "/jobs/batch", key, batch))
    await send_all(deployment.address, requests, concurrency=2 * len(deployment.addresses))


def _work_path(machine_id: str, group: str, wait: int = 0) -> str:
    path = f"/work?machine_id={machine_id}&container_group_id={group}"
    return f"{path}&wait={wait}" if wait else path


async def list_all(deployment: Deployment, key: str, query: str) -> list[dict[str, Any]]:
    """Every job matching `query`, a page of 1,000 at a time."""
    jobs: list[dict[str, Any]] = []
    for page in range(1, 1_000):
        body = await _call(
            deployment.address(0), "GET", f"/jobs?{query}&page_size=1000&page={page}&asc=true", key
        )
        jobs.extend(body["jobs"])
        if body["_count"] < 1000:
            break
    return jobs


async def measure_claims(deployment: Deployment, options: Options, cpu: CpuMeter) -> list[Figure]:
    return await _measure_claims(deployment, options, cpu, priorities=1)


async def measure_priority_claims(
    deployment: Deployment, options: Options, cpu: CpuMeter
) -> list[Figure]:
    return await _measure_claims(deployment, options, cpu, priorities=CLAIM_PRIORITIES)


async def _measure_claims(
    deployment: Deployment, options: Options, cpu: CpuMeter, priorities: int
) -> list[Figure]:
    group = _new_group("claims")
    await submit_jobs(deployment, deployment.user_key, group, options.claim_jobs, priorities)
    if options.plans_dir:
        await record_claim_plans(deployment, Path(options.plans_dir), group)
    claimed: list[str] = []

    def judge(client: int, response: Response) -> Verdict:
        if response.status != 200:
            return Verdict.ERROR
        if response.body == b"[]":
            return Verdict.STOP
        claimed.extend(job["id"] for job in response.json())
        return Verdict.OK

    targets = [
        (
            deployment.address(i),
            [
                encode_request(
                    deployment.address(i), "GET", _work_path(f"m{i}", group), deployment.user_key
                )
            ],
        )
        for i in range(options.clients)
    ]
    cpu.start()
    result = await run_load(targets, duration=options.duration, warmup=options.warmup, judge=judge)
    usage = cpu.summary()
    cpu_us = _cpu_per_request(cpu, result)
    duplicates = len(claimed) - len(set(claimed))
    running = await list_all(
        deployment, deployment.user_key, f"status=running&container_group_id={group}"
    )
    agrees = {job["id"] for job in running} == set(claimed) and len(running) == len(claimed)
    detail = (
        f"{result.completed:,} in {result.window:.1f} s ({len(claimed):,} with warm-up), "
        f"duplicates {duplicates}, store {'agrees' if agrees else 'DISAGREES'}"
    )
    if result.stopped_early:
        detail += ", queue drained before the deadline"
    failure = ""
    if duplicates or not agrees:
        failure = "a job was handed out twice, or the store's running jobs differ from the claims"
    mixed = f", {priorities} priorities mixed" if priorities > 1 else ""
    figure = Figure(
        f"unique claims{mixed}, {options.clients} pollers",
        deployment.label,
        result.rate,
        "/s",
        1500,
        True,
        detail=_with_errors(detail, result),
        cpu=usage,
        reference="4-6/s",
        reference_best=6,
        failure=failure,
        share_target=CLAIM_SHARE_TARGET,
        p50_ms=percentile(result.latencies, 0.5) * 1000,
        cpu_us=cpu_us,
    )
    return [figure]


async def measure_heartbeats(
    deployment: Deployment, options: Options, cpu: CpuMeter
) -> list[Figure]:
    group = _new_group("heartbeats")
    await submit_jobs(deployment, deployment.user_key, group, options.clients)
    targets: list[tuple[Address, list[bytes]]] = []
    for i in range(options.clients):
        address = deployment.address(i)
        machine = f"hb{i}"
        (job,) = await _call(address, "GET", _work_path(machine, group), deployment.user_key)
        body = {"machine_id": machine, "container_group_id": group}
        path = f"/jobs/{job['id']}/heartbeat"
        targets.append(
            (address, [encode_request(address, "POST", path, deployment.user_key, body)])
        )

    def judge(client: int, response: Response) -> Verdict:
        still_held = response.status == 200 and response.json().get("status") == "running"
        return Verdict.OK if still_held else Verdict.ERROR

    cpu.start()
    result = await run_load(targets, duration=options.duration, warmup=options.warmup, judge=judge)
    return _rate_figure(
        f"heartbeats, {options.clients} workers",
        deployment,
        result,
        cpu,
        3000,
        "101-186/s",
        186,
        HEARTBEAT_SHARE_TARGET,
    )


async def measure_ceiling(deployment: Deployment, options: Options, cpu: CpuMeter) -> list[Figure]:
    """`GET /noop` on as many no-op servers as kelpie runs, the clients spread the same way."""
    request = {
        address: encode_request(address, "GET", NOOP_PATH)
        for address in deployment.ceiling_addresses
    }
    targets = [
        (deployment.ceiling_address(i), [request[deployment.ceiling_address(i)]])
        for i in range(options.clients)
    ]
    ceiling_cpu = CpuMeter([server.proc.pid for server in deployment.ceiling])
    ceiling_cpu.start()
    result = await run_load(targets, duration=options.duration, warmup=options.warmup)
    processes = len(deployment.ceiling_addresses)
    return _rate_figure(
        f"{CEILING_METRIC}, {options.clients} clients, {processes} process"
        + ("es" if processes > 1 else ""),
        deployment,
        result,
        ceiling_cpu,
        0,
        "",
        0,
    )


def _is_ceiling(fig: Figure) -> bool:
    return fig.metric.startswith(CEILING_METRIC)


def with_shares(figures: Sequence[Figure]) -> list[Figure]:
    """Every rate as a share of the ceiling measured right before and right after it (their
    mean), on the same backend: the machine's other load drifts less between neighbours."""
    shared: list[Figure] = []
    for position, fig in enumerate(figures):
        if fig.unit != "/s" or _is_ceiling(fig):
            shared.append(fig)
            continue
        neighbours = [
            next(
                (c for c in side if c.backend == fig.backend and _is_ceiling(c)),
                None,
            )
            for side in (reversed(figures[:position]), figures[position + 1 :])
        ]
        ceilings = [c for c in neighbours if c is not None]
        if not ceilings:
            shared.append(fig)
            continue
        ceiling = sum(c.value for c in ceilings) / len(ceilings)
        ceiling_cpu = [c.cpu_us for c in ceilings if c.cpu_us]
        cpu_share = None
        if fig.cpu_us and ceiling_cpu:
            cpu_share = sum(ceiling_cpu) / len(ceiling_cpu) / fig.cpu_us
        shared.append(replace(fig, share=fig.value / ceiling, cpu_share=cpu_share))
    return shared


async def measure_submits(deployment: Deployment, options: Options, cpu: CpuMeter) -> list[Figure]:
    group = _new_group("submits")
    targets = [
        (
            deployment.address(i),
            [
                encode_request(
                    deployment.address(i), "POST", "/jobs", deployment.user_key, _job(group)
                )
            ],
        )
        for i in range(options.clients)
    ]
    cpu.start()
    result = await run_load(
        targets,
        duration=options.duration,
        warmup=options.warmup,
        judge=lambda client, response: Verdict.OK if response.status == 202 else Verdict.ERROR,
    )
    return _rate_figure(
        f"single submits, {options.clients} clients",
        deployment,
        result,
        cpu,
        2000,
        "90-208/s",
        208,
        SUBMIT_SHARE_TARGET,
    )


def _rate_figure(
    metric: str,
    deployment: Deployment,
    result: LoadResult,
    cpu: CpuMeter,
    target: float,
    reference: str,
    reference_best: float,
    share_target: float | None = None,
) -> list[Figure]:
    detail = (
        f"{result.completed:,} in {result.window:.1f} s, "
        f"p50 {percentile(result.latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(result.latencies, 0.99) * 1000:.1f} ms"
    )
    figure = Figure(
        metric,
        deployment.label,
        result.rate,
        "/s",
        target,
        True,
        detail=_with_errors(detail, result),
        cpu=cpu.summary(),
        reference=reference,
        reference_best=reference_best,
        share_target=share_target,
        p50_ms=percentile(result.latencies, 0.5) * 1000,
        cpu_us=_cpu_per_request(cpu, result),
    )
    return [figure]


def _cpu_per_request(cpu: CpuMeter, result: LoadResult) -> float | None:
    return cpu.cores_used / result.rate * 1e6 if result.rate > 0 else None


def _with_errors(detail: str, result: LoadResult) -> str:
    if not result.errors:
        return detail
    return f"{detail}, {result.errors} ERRORS e.g. {result.error_samples[0]}"


async def measure_batches(deployment: Deployment, options: Options, cpu: CpuMeter) -> list[Figure]:
    group = _new_group("batches")
    address = deployment.address(0)
    request = encode_request(
        address, "POST", "/jobs/batch", deployment.user_key, [_job(group)] * BATCH_SIZE
    )
    conn = await Connection.open(address)
    latencies: list[float] = []
    try:
        await conn.request(request)  # warm-up
        cpu.start()
        for _ in range(options.batches):
            started = time.perf_counter()
            response = await conn.request(request)
            latencies.append(time.perf_counter() - started)
            if response.status != 202 or len(response.json()) != BATCH_SIZE:
                raise RuntimeError(f"batch answered {response.status}: {response.body[:300]!r}")
        usage = cpu.summary()
    finally:
        await conn.close()
    detail = f"{len(latencies)} batches of {BATCH_SIZE:,}, one client"
    return [
        Figure(
            f"batch of 1,000 jobs, {name}",
            deployment.label,
            percentile(latencies, fraction) * 1000,
            "ms",
            100,
            False,
            detail=detail,
            cpu=usage,
            reference="2-4 s",
            reference_best=2000,
        )
        for name, fraction in (("p50", 0.5), ("p95", 0.95))
    ]


async def seed_pages(deployment: Deployment) -> None:
    """100,000 jobs for one user, a hundred of them running (a selective status filter)."""
    group = _new_group("pages")
    await submit_jobs(deployment, deployment.pages_key, group, PAGE_JOBS)
    requests = [
        encode_request(
            deployment.address(0), "GET", _work_path(f"p{i}", group), deployment.pages_key
        )
        for i in range(RARE_RUNNING_JOBS)
    ]
    await send_all(lambda i: deployment.address(0), requests, concurrency=1)


async def measure_pages(deployment: Deployment, options: Options, cpu: CpuMeter) -> list[Figure]:
    started = time.perf_counter()
    await seed_pages(deployment)
    seeded = time.perf_counter() - started
    first_pages = range(1, PAGES_CYCLED + 1)
    queries = [
        (f"newest first, k=1..{PAGES_CYCLED}", "", first_pages),
        (f"status=pending, k=1..{PAGES_CYCLED}", "&status=pending", first_pages),
        (f"status=running ({RARE_RUNNING_JOBS} match), k=1", "&status=running", range(1, 2)),
    ]
    return await measure_page_queries(
        deployment, options, cpu, queries, "100 / 100,000", f"seeding took {seeded:.0f} s"
    )


PageQuery = tuple[str, str, range]  # name, query string, page numbers


async def measure_page_queries(
    deployment: Deployment,
    options: Options,
    cpu: CpuMeter,
    queries: Sequence[PageQuery],
    of: str,
    note: str,
) -> list[Figure]:
    """p50 of pages of 100 of the pages user's jobs, one client cycling through the pages."""
    address = deployment.address(0)
    figures = []
    for name, query, page_numbers in queries:
        pages = [
            encode_request(
                address, "GET", f"/jobs?page_size={PAGE_SIZE}&page={k}{query}", deployment.pages_key
            )
            for k in page_numbers
        ]

        def judge(client: int, response: Response) -> Verdict:
            full_page = response.status == 200 and response.json()["_count"] == PAGE_SIZE
            return Verdict.OK if full_page else Verdict.ERROR

        cpu.start()
        result = await run_load(
            [(address, pages)], duration=options.duration / 2, warmup=0.2, judge=judge
        )
        detail = (
            f"{result.completed:,} pages, one client, "
            f"p95 {percentile(result.latencies, 0.95) * 1000:.1f} ms; {note}"
        )
        figures.append(
            Figure(
                f"page of {of} p50, {name}",
                deployment.label,
                percentile(result.latencies, 0.5) * 1000,
                "ms",
                25,
                False,
                detail=_with_errors(detail, result),
                cpu=cpu.summary(),
            )
        )
    return figures


async def _pickup_once(
    poller: Connection, poll: bytes, submitter: Connection, submit: bytes
) -> float:
    """Seconds from sending a submission to the long-polling worker holding that job."""
    received = 0.0

    async def long_poll() -> Response:
        nonlocal received
        response = await poller.request(poll)
        received = time.perf_counter()
        return response

    polling = asyncio.create_task(long_poll())
    await asyncio.sleep(PICKUP_PARK_SECONDS)
    if polling.done():
        raise RuntimeError(f"the long poll returned before any submission: {polling.result()}")
    sent = time.perf_counter()
    submitted = await submitter.request(submit)
    handed = await asyncio.wait_for(polling, PICKUP_TIMEOUT_SECONDS)
    if submitted.status != 202 or handed.status != 200 or handed.body == b"[]":
        raise RuntimeError(
            f"pickup failed: submit {submitted.status}, poll {handed.status} {handed.body[:200]!r}"
        )
    if handed.json()[0]["id"] != submitted.json()["id"]:
        raise RuntimeError("the poller was handed another job than the one just submitted")
    return received - sent


async def measure_pickup(deployment: Deployment, options: Options, cpu: CpuMeter) -> list[Figure]:
    """A worker long-polls server 0; the job is submitted to server 0, then (with two servers)
    to server 1, which must reach the poller through the store's cross-process channel."""
    figures = []
    poll_address = deployment.address(0)
    for submit_server, address in enumerate(deployment.addresses):
        group = _new_group("pickup")
        poll = encode_request(
            poll_address,
            "GET",
            _work_path("pickup", group, PICKUP_WAIT_SECONDS),
            deployment.user_key,
        )
        submit = encode_request(address, "POST", "/jobs", deployment.user_key, _job(group))
        poller = await Connection.open(poll_address)
        submitter = await Connection.open(address)
        latencies = []
        try:
            cpu.start()
            for _ in range(options.pickup_samples):
                latencies.append(await _pickup_once(poller, poll, submitter, submit))
            usage = cpu.summary()
        finally:
            await poller.close()
            await submitter.close()
        where = "same process" if submit_server == 0 else "submit to other process"
        metric = "pickup with wait p50" + (f", {where}" if len(deployment.addresses) > 1 else "")
        figures.append(
            Figure(
                metric,
                deployment.label,
                percentile(latencies, 0.5) * 1000,
                "ms",
                20,
                False,
                detail=f"{len(latencies)} samples, p95 {percentile(latencies, 0.95) * 1000:.1f} ms",
                cpu=usage,
            )
        )
    return figures


def measure_memory(deployment: Deployment) -> Figure:
    processes = [
        (pid, _status_kb(pid, "VmRSS"), _status_kb(pid, "VmHWM"))
        for server in deployment.servers
        for pid in process_tree(server.proc.pid)
    ]
    largest = max(rss for _, rss, _ in processes)
    detail = ", ".join(
        f"pid {pid}: {rss / 1024:.0f} MB (peak {hwm / 1024:.0f})" for pid, rss, hwm in processes
    )
    return Figure(
        "RSS per server process, after the run",
        deployment.label,
        largest / 1024,
        "MB",
        150,
        False,
        detail=detail,
    )


Phase = Callable[[Deployment, Options, CpuMeter], Awaitable[list[Figure]]]

# Each rate between two measurements of the ceiling.
PHASES: list[tuple[str, Phase]] = [
    ("ceiling", measure_ceiling),
    ("claims", measure_claims),
    ("ceiling", measure_ceiling),
    ("priority-claims", measure_priority_claims),
    ("ceiling", measure_ceiling),
    ("heartbeats", measure_heartbeats),
    ("ceiling", measure_ceiling),
    ("submits", measure_submits),
    ("ceiling", measure_ceiling),
    ("batches", measure_batches),
    ("pages", measure_pages),
    ("pickup", measure_pickup),
]


async def measure_backend(deployment: Deployment, options: Options) -> list[Figure]:
    (figures,) = await measure_side_by_side([deployment], options, PHASES)
    return figures


async def measure_side_by_side(
    deployments: Sequence[Deployment], options: Options, phases: Sequence[tuple[str, Phase]]
) -> list[list[Figure]]:
    """Each phase on every deployment in turn, so that deployments compared with each other
    are measured minutes apart at most, under the same load of the machine."""
    meters = []
    for deployment in deployments:
        deployment.user_id, deployment.user_key = await create_user_key(
            deployment, f"bench-{uuid.uuid4().hex[:6]}"
        )
        if not deployment.pages_key:
            _, deployment.pages_key = await create_user_key(
                deployment, f"bench-pages-{uuid.uuid4().hex[:6]}"
            )
        database = None
        if deployment.backend == "postgres":
            database = deployment.servers[0].database_url.rpartition("/")[2]
        meters.append(CpuMeter([server.proc.pid for server in deployment.servers], database))
    figures: list[list[Figure]] = [[] for _ in deployments]
    last = ""
    for name, phase in phases:
        if options.only and name not in options.only and name != "ceiling":
            continue
        if name == last == "ceiling":
            continue
        last = name
        for deployment, cpu, mine in zip(deployments, meters, figures, strict=True):
            print(f"  {deployment.label}: {name} ...", flush=True)
            mine.extend(await phase(deployment, options, cpu))
    for deployment, mine in zip(deployments, figures, strict=True):
        mine.append(measure_memory(deployment))
    return figures


def bench_backend(
    backend: str, options: Options, work_dir: Path, sqlite_processes: int = 1
) -> list[Figure]:
    database_url = f"sqlite:///{work_dir / 'kelpie.db'}"
    if backend == "postgres":
        database_url = run_async(create_database())
    print(f"{backend}: starting servers on {database_url}", flush=True)
    try:
        deployment = start_deployment(backend, database_url, work_dir / "logs", sqlite_processes)
        try:
            return run_async(measure_backend(deployment, options))
        except BaseException:
            for server in deployment.servers:
                print(f"--- log of {server.url} (last 3000 chars) ---\n{server.log()[-3000:]}")
            raise
        finally:
            stop_deployment(deployment)
    finally:
        if backend == "postgres":
            run_async(drop_database(database_url))


# --- scale mode ----------------------------------------------------------------------------

SCALE_BASE_JOBS = 10_000
SCALE_JOBS = 1_000_000
SCALE_GROUPS = 100
SCALE_TOLERANCE = 2.0  # each p50 with the big store within this factor of the small store's
# (what, how its figure's metric starts, whose p50)
SCALE_COMPARED = (
    ("claim", "unique claims", "p50 under load"),
    ("heartbeat", "heartbeats", "p50 under load"),
    ("submit", "single submits", "p50 under load"),
    ("GET /jobs page, newest first", "page of 100 / ", "p50, one client"),
)


async def prepare_store(database_url: str, size: int) -> tuple[str, str, float]:
    """Migrates the store, adds the owner of the jobs with an API key, and writes `size` jobs
    straight into the database (tests/support/bulk_jobs.py: 1% running, 1% pending, 1% failed,
    1% canceled, the rest completed, over 100 groups, with their attempts and events).
    Returns the owner's id, its key and the seconds the jobs took to load."""
    store = open_store(database_url)
    await store.open()
    try:
        owner = await store.create_user(f"bench-owner-{uuid.uuid4().hex[:6]}")
        key = secrets.token_urlsafe(32)
        await store.add_api_key(owner.id, hash_api_key(key), None, None)
    finally:
        await store.close()
    started = time.perf_counter()
    shape = JobsShape(owner.id, size, prefix="bench-bg", groups=SCALE_GROUPS)
    await load_jobs(database_url, shape)
    return owner.id, key, time.perf_counter() - started


async def measure_scale_pages(
    deployment: Deployment, options: Options, cpu: CpuMeter
) -> list[Figure]:
    pages = range(1, PAGES_CYCLED + 1)
    queries = [
        (f"newest first, k=1..{PAGES_CYCLED}", "", pages),
        (f"status=completed, k=1..{PAGES_CYCLED}", "&status=completed", pages),
        ("status=running (1%), k=1", "&status=running", range(1, 2)),
    ]
    of = f"100 / {deployment.store_jobs:,}"
    return await measure_page_queries(deployment, options, cpu, queries, of, "loaded by SQL")


SCALE_PHASES: list[tuple[str, Phase]] = [
    *[(name, phase) for name, phase in PHASES if name != "priority-claims"][:7],
    ("pages", measure_scale_pages),
]


async def record_claim_plans(deployment: Deployment, plans_dir: Path, claim_group: str) -> None:
    """Prints and saves the databases' plans for a claim in the group just queued and in a
    group of the loaded jobs (mostly finished), and says whether they stay on the claim's
    indexes (tests/support/claim_plan.py)."""
    database_url = deployment.servers[0].database_url
    slug = deployment.label.replace(", ", "-").replace(",", "").replace(" ", "-")
    sections = []
    for group, user_id, what in (
        (claim_group, deployment.user_id, "the group just queued"),
        ("bench-bg-0", deployment.pages_user_id, "a group of the loaded jobs"),
    ):
        for plan in await claim_plans(database_url, group, user_id):
            verdict = "stays on the claim's indexes" if not plan.problems else plan.problems
            sections.append(f"== {deployment.label}: {plan.name} plan, {what} ({group}): {verdict}")
            sections.append(plan.text)
    text = "\n".join(sections) + "\n"
    path = _save(plans_dir / f"claim-plan-{slug}.txt", text)
    print(text + f"(saved to {path})", flush=True)


def _save(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def bench_scale(
    backend: str, options: Options, work_dir: Path, sizes: Sequence[int]
) -> list[Figure]:
    """The usual rates and pages on a fresh store per size, loaded by SQL; the stores are
    served side by side and measured phase by phase, in turn."""
    urls: list[str] = []
    owners: list[tuple[str, str]] = []  # (id, key) of the loaded jobs' owner, per store
    deployments: list[Deployment] = []
    try:
        for size in sizes:
            database_url = f"sqlite:///{work_dir / f'kelpie-{size}.db'}"
            if backend == "postgres":
                database_url = run_async(create_database())
            urls.append(database_url)
            owner_id, key, seconds = run_async(prepare_store(database_url, size))
            owners.append((owner_id, key))
            print(f"{backend}: {size:,} jobs loaded in {seconds:.1f} s", flush=True)
        for size, database_url in zip(sizes, urls, strict=True):
            deployment = start_deployment(backend, database_url, work_dir / "logs")
            deployments.append(deployment)
            deployment.label = f"{backend}, {size:,} jobs"
            deployment.store_jobs = size
        for deployment, owner in zip(deployments, owners, strict=True):
            deployment.pages_user_id, deployment.pages_key = owner
        by_size = run_async(measure_side_by_side(deployments, options, SCALE_PHASES))
        return [figure for figures in by_size for figure in figures]
    finally:
        for deployment in deployments:
            stop_deployment(deployment)
        if backend == "postgres":
            for database_url in urls:
                run_async(drop_database(database_url))


def _scale_p50(figures: Sequence[Figure], label: str, metric: str) -> Figure | None:
    return next(
        (
            fig
            for fig in figures
            if fig.backend == label
            and fig.metric.startswith(metric)
            and ("page" not in metric or "newest first" in fig.metric)
        ),
        None,
    )


def scale_figures(
    figures: Sequence[Figure], backends: Sequence[str], sizes: Sequence[int]
) -> list[Figure]:
    """Each p50 with the biggest store against the smallest store's: within SCALE_TOLERANCE."""
    compared: list[Figure] = []
    small, big = min(sizes), max(sizes)
    for backend in backends:
        for what, metric, how in SCALE_COMPARED:
            before = _scale_p50(figures, f"{backend}, {small:,} jobs", metric)
            after = _scale_p50(figures, f"{backend}, {big:,} jobs", metric)
            if before is None or after is None:
                continue
            before_ms = before.p50_ms if before.p50_ms is not None else before.value
            after_ms = after.p50_ms if after.p50_ms is not None else after.value
            cpu = ""
            if before.cpu_us and after.cpu_us:
                cpu = f"; cpu/req {before.cpu_us:.0f} → {after.cpu_us:.0f} µs"
            compared.append(
                Figure(
                    f"{what} p50, {big:,} jobs vs {small:,}",
                    backend,
                    after_ms / before_ms if before_ms > 0 else float("inf"),
                    "x",
                    SCALE_TOLERANCE,
                    False,
                    detail=f"{how}: {before_ms:.1f} ms → {after_ms:.1f} ms{cpu}",
                )
            )
    return compared


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (2 s instead of 5 s)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--clients", type=int, help="concurrent clients (default 32, as in the issue)"
    )
    parser.add_argument("--json", type=Path, help="also write the machine and the figures here")
    parser.add_argument(
        "--sqlite-processes",
        type=int,
        choices=[1, 2],
        default=1,
        help="kelpie serve processes on the SQLite file (default 1, as in the issue)",
    )
    parser.add_argument(
        "--only",
        type=lambda text: tuple(text.split(",")),
        default=(),
        metavar="PHASE,...",
        help="run only these phases (the no-op ceiling always runs): "
        + ", ".join(name for name, _ in PHASES if name != "ceiling"),
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help=f"scale mode: the rates, latencies and claim plans with {SCALE_BASE_JOBS:,} and with"
        f" --scale-jobs jobs in the store (loaded by SQL), compared",
    )
    parser.add_argument("--scale-jobs", type=int, default=SCALE_JOBS, metavar="N")
    parser.add_argument(
        "--plans",
        type=Path,
        default=Path("bench-plans"),
        metavar="DIR",
        help="scale mode: where the claim plans are saved (default ./bench-plans)",
    )
    args = parser.parse_args(argv)
    options = QUICK if args.quick else FULL
    if args.clients:
        options = replace(options, clients=args.clients)
    options = replace(options, only=args.only)
    sizes = (SCALE_BASE_JOBS, args.scale_jobs)
    if args.scale:
        options = replace(options, plans_dir=str(args.plans))
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends:
        print(f"PostgreSQL: databases are created through {ADMIN_URL}")

    machine = machine_info()
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="kelpie-bench-") as tmp:
        for backend in backends:
            work_dir = Path(tmp) / backend
            work_dir.mkdir()
            if args.scale:
                figures.extend(bench_scale(backend, options, work_dir, sizes))
            else:
                figures.extend(bench_backend(backend, options, work_dir, args.sqlite_processes))

    print()
    for name, value in machine.items():
        print(f"{name + ':':24} {value}")
    print(
        f"{'run:':24} {'quick' if args.quick else 'full'}, {options.duration:.0f} s per rate after "
        f"{options.warmup} s warm-up; load generator in-process (bench/loadgen.py)"
    )
    figures = with_shares(figures)
    if args.scale:
        figures += scale_figures(figures, backends, sizes)
    print()
    print(render_table(figures))
    print()
    print("cpu: % of one core used by the API servers (srv), their PostgreSQL backends (pg) and")
    print("this load generator (gen); % of the whole machine busy (all), during the measurement.")
    print("x ref: times better than the reference service at its best.")
    if args.json:
        report = {
            "machine": machine,
            "options": asdict(options),
            "figures": [
                {
                    **asdict(fig),
                    "meets_target": fig.meets_target,
                    "times_reference": fig.times_reference,
                }
                for fig in figures
            ],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    missed = [f"{fig.metric} ({fig.backend})" for fig in figures if not fig.meets_target]
    print("missed targets: " + ("; ".join(missed) if missed else "none"))
    failures = [f"{fig.metric} ({fig.backend}): {fig.failure}" for fig in figures if fig.failure]
    for failure in failures:
        print(f"FAILURE {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
