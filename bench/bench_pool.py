"""Benchmark the PostgreSQL store's connection pool against asyncpg's: one command, a table.

    .venv/bin/python bench/bench_pool.py [--rounds 5] [--window 1.0] [--size 10] [--quick]

On a fresh database (created through `KELPIE_TEST_POSTGRES_URL`, dropped at the end), three
pools of `--size` connections, all opened up front and each connection set up as the store
sets up its own (the jsonb codec):

- `kelpie`: the store's own pool (`kelpie.store._connection_pool.ConnectionPool`);
- `asyncpg no-op reset`: `asyncpg.create_pool(min_size=size, max_size=size, reset=<no-op>)`,
  which skips the reset round trip on release (kelpie's connections keep no session state);
- `asyncpg default`: `asyncpg.create_pool(min_size=size, max_size=size)`, whose release runs
  asyncpg's reset statement (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL).

Each pool runs, for 1, 16 and 64 coroutines calling back to back:

- `SELECT 1`: `fetchval("SELECT 1")`;
- `heartbeat UPDATE`: the store's heartbeat statement, `UPDATE … RETURNING true`, on a small
  table made here (64 rows, coroutine i beats row i);
- `store.heartbeat`: the real `PostgresStore.heartbeat` on 64 claimed jobs, once with the
  store's pool and once with each asyncpg pool put in its place.

A/B interleaved: every round measures each (call, coroutines) cell on the three pools one
after the other, in an order rotated each round; each measurement is a warm-up then a window
of `--window` seconds. Per cell, the median over rounds and the spread (min-max) of: calls/s,
this process's CPU per call (`time.process_time`: the pool, asyncpg's protocol and the bench
loop), and the CPU per call of the database's backend processes (`/proc/<pid>/stat`). The
load average (`/proc/loadavg`) is printed before and after: on a shared machine the rates
move with it, CPU per call much less.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import uvloop

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.postgres import create_database, drop_database  # noqa: E402

from kelpie.store._connection_pool import Connection, ConnectionPool  # noqa: E402
from kelpie.store.models import NewJob  # noqa: E402
from kelpie.store.postgres import PostgresStore, _init_connection  # noqa: E402

CONCURRENCY = (1, 16, 64)
ROWS = 64
GROUP = "bench-pool"
VARIANTS = ("kelpie", "asyncpg no-op reset", "asyncpg default")
CALLS = ("SELECT 1", "heartbeat UPDATE", "store.heartbeat")

TABLE = """
CREATE TABLE beats (
    id text PRIMARY KEY,
    machine_id text NOT NULL,
    user_id text NOT NULL,
    status text NOT NULL,
    attempt_id bigint NOT NULL,
    heartbeat timestamptz NOT NULL DEFAULT now(),
    num_heartbeats integer NOT NULL DEFAULT 0,
    heartbeat_interval integer NOT NULL DEFAULT 30,
    lease_expires timestamptz NOT NULL DEFAULT now()
)"""
SEED = """
INSERT INTO beats (id, machine_id, user_id, status, attempt_id)
SELECT 'job-' || i, 'm-' || i, 'u', 'running', i FROM generate_series(0, $1 - 1) AS i"""
# The store's heartbeat statement (src/kelpie/store/postgres.py, _HEARTBEAT) on that table.
HEARTBEAT = """
UPDATE beats SET heartbeat = now(), num_heartbeats = num_heartbeats + 1,
    lease_expires = CASE
        WHEN lease_expires < now() + heartbeat_interval * interval '500 ms'
        THEN now() + heartbeat_interval * interval '2 s'
        ELSE lease_expires END
WHERE id = $1 AND machine_id = $2 AND status = 'running'
    AND ($3::text IS NULL OR user_id = $3) AND ($4::bigint IS NULL OR attempt_id = $4)
RETURNING true"""


class Pool(Protocol):
    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def close(self) -> None: ...


@dataclass
class Sample:
    rate: float  # calls/s
    cpu_us: float  # this process, µs per call
    backend_us: float  # the database's backends, µs per call


@dataclass
class Results:
    samples: dict[tuple[str, int, str], list[Sample]] = field(default_factory=dict)

    def add(self, key: tuple[str, int, str], sample: Sample) -> None:
        self.samples.setdefault(key, []).append(sample)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime


class Backends:
    """CPU time of every backend process connected to the bench's database."""

    def __init__(self, admin: Connection, database: str) -> None:
        self._admin = admin
        self._database = database

    async def cpu_s(self) -> dict[int, float]:
        rows = await self._admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self._database,
        )
        return {row["pid"]: process_cpu_s(row["pid"]) for row in rows}


async def measure(
    call: Callable[[int], Awaitable[Any]],
    coroutines: int,
    backends: Backends,
    warmup_s: float,
    window_s: float,
) -> Sample:
    done = 0
    stop = False

    async def loop(i: int) -> None:
        nonlocal done
        while not stop:
            await call(i)
            done += 1

    tasks = [asyncio.create_task(loop(i)) for i in range(coroutines)]
    try:
        await asyncio.sleep(warmup_s)
        before_backends = await backends.cpu_s()
        calls_0, cpu_0, t_0 = done, time.process_time(), time.perf_counter()
        await asyncio.sleep(window_s)
        calls_1, cpu_1, t_1 = done, time.process_time(), time.perf_counter()
        after_backends = await backends.cpu_s()
    finally:
        stop = True
        await asyncio.gather(*tasks)
    calls = max(calls_1 - calls_0, 1)
    backend_s = sum(
        cpu - before_backends.get(pid, cpu) for pid, cpu in after_backends.items()
    )  # a backend that appeared during the window (asyncpg recycles connections after
    # max_queries) counts from its first reading
    return Sample(
        rate=calls / (t_1 - t_0),
        cpu_us=(cpu_1 - cpu_0) / calls * 1e6,
        backend_us=backend_s / calls * 1e6,
    )


async def noop_reset(conn: Connection) -> None:
    return None


async def open_pools(url: str, size: int) -> dict[str, Pool]:
    async def connect() -> Connection:
        conn: Connection = await asyncpg.connect(url)
        await _init_connection(conn)
        return conn

    ours = ConnectionPool(connect, size)
    await ours.open(size)
    theirs_noop = await asyncpg.create_pool(
        url, min_size=size, max_size=size, init=_init_connection, reset=noop_reset
    )
    theirs_default = await asyncpg.create_pool(
        url, min_size=size, max_size=size, init=_init_connection
    )
    return {"kelpie": ours, "asyncpg no-op reset": theirs_noop, "asyncpg default": theirs_default}


async def open_stores(url: str, pools: dict[str, Pool]) -> tuple[dict[str, PostgresStore], str]:
    """One store per pool (the asyncpg pools put in place of the store's own), on 64 jobs
    claimed by machines m-0 … m-63; returns the stores and the jobs' owner."""
    stores: dict[str, PostgresStore] = {}
    for name, pool in pools.items():
        store = PostgresStore(url, min_connections=1, max_connections=1)
        await store.open()
        if name != "kelpie":
            await store._connected().close()
        store._pool = pool  # type: ignore[assignment]  # the store calls only fetchval here
        stores[name] = store
    setup = stores["kelpie"]
    user = await setup.create_user("bench-pool")
    spec = {"command": "x", "arguments": [], "environment": {}}
    job = NewJob(GROUP, max_failures=3, heartbeat_interval=3600, webhook=None, spec=spec)
    await setup.create_jobs(user.id, [job] * ROWS)
    for i in range(ROWS):
        assert await setup.claim_job(f"m-{i}", GROUP, user.id) is not None
    return stores, user.id


async def run(options: argparse.Namespace) -> None:
    url = await create_database()
    database = url.rsplit("/", 1)[1]
    admin: Connection = await asyncpg.connect(url)
    pools: dict[str, Pool] = {}
    stores: dict[str, PostgresStore] = {}
    try:
        await admin.execute(TABLE)
        await admin.execute(SEED, ROWS)
        pools = await open_pools(url, options.size)
        stores, user_id = await open_stores(url, pools)
        jobs = {
            row["machine_id"]: (row["id"], row["attempt_id"])
            for row in await admin.fetch("SELECT id, machine_id, attempt_id FROM jobs")
        }
        held = [(*jobs[f"m-{i}"], f"m-{i}") for i in range(ROWS)]
        backends = Backends(admin, database)
        load_before = loadavg()

        def calls_for(variant: str) -> dict[str, Callable[[int], Awaitable[Any]]]:
            pool, store = pools[variant], stores[variant]

            async def select_1(i: int) -> None:
                assert await pool.fetchval("SELECT 1") == 1

            async def update(i: int) -> None:
                assert await pool.fetchval(HEARTBEAT, f"job-{i}", f"m-{i}", "u", i) is True

            async def store_heartbeat(i: int) -> None:
                job_id, attempt_id, machine = held[i]
                status = await store.heartbeat(job_id, machine, user_id, attempt_id)
                assert status == "running", status

            return {
                "SELECT 1": select_1,
                "heartbeat UPDATE": update,
                "store.heartbeat": store_heartbeat,
            }

        calls = {variant: calls_for(variant) for variant in VARIANTS}
        results = Results()
        for round_ in range(options.rounds):
            order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
            for name in CALLS:
                for coroutines in CONCURRENCY:
                    for variant in order:
                        sample = await measure(
                            calls[variant][name],
                            coroutines,
                            backends,
                            options.warmup,
                            options.window,
                        )
                        results.add((name, coroutines, variant), sample)
            print(f"round {round_ + 1}/{options.rounds} done", file=sys.stderr, flush=True)
        report(options, results, load_before, loadavg())
    finally:
        for store in stores.values():
            store._pool = None  # the pools are closed below, each once
            await store.close()
        for pool in pools.values():
            await pool.close()
        await admin.close()
        await drop_database(url)


def spread(values: list[float], digits: int = 0) -> str:
    median = statistics.median(values)
    return f"{median:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def report(options: argparse.Namespace, results: Results, before: str, after: str) -> None:
    print(
        f"\npool of {options.size} connections, uvloop, asyncpg {asyncpg.__version__};"
        f" {options.rounds} rounds A/B interleaved, {options.window:g} s windows;"
        f" load average before: {before}, after: {after}; {os.cpu_count()} cores"
    )
    print("median over rounds (min-max); cpu: this process per call; pg: backends per call\n")
    header = (
        f"| {'call':<17} | {'co':>3} | {'pool':<20} | {'calls/s':>24} "
        f"| {'cpu µs/call':>25} | {'pg µs/call':>25} | {'cpu vs kelpie':>13} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    for name in CALLS:
        for coroutines in CONCURRENCY:
            ours = statistics.median(s.cpu_us for s in results.samples[name, coroutines, "kelpie"])
            for variant in VARIANTS:
                samples = results.samples[name, coroutines, variant]
                cpu = statistics.median(s.cpu_us for s in samples)
                print(
                    f"| {name:<17} | {coroutines:>3} | {variant:<20} "
                    f"| {spread([s.rate for s in samples]):>24} "
                    f"| {spread([s.cpu_us for s in samples], 1):>25} "
                    f"| {spread([s.backend_us for s in samples], 1):>25} "
                    f"| {cpu / ours:>12.2f}x |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=1.0, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=0.25, help="seconds before each window")
    parser.add_argument("--size", type=int, default=10, help="connections per pool (the store's)")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 0.4 s windows")
    options = parser.parse_args()
    if options.quick:
        options.rounds, options.window, options.warmup = 2, 0.4, 0.1
    uvloop.run(run(options))


if __name__ == "__main__":
    main()
