"""Benchmark the goodput reports and the name and label filters: one command, a table.

    .venv/bin/python bench/bench_scheduling.py [--backend sqlite|postgres|both] [--attempts N]

For each backend, on a fresh database, it writes a week of history straight into the store's
tables: N attempts (default 100,000) of one container group's jobs, five attempts per job
(lost, interrupted, failed, interrupted, completed, each with what the store keeps on an
attempt: the holder's last heartbeat, the command's start, the final upload time, the next
attempt's start, its commits), three committed checkpoint generations per attempt with
their upload time, and as many attempts again in another group. Then it starts
`kelpie serve` on that database and times, after 2 warm-ups, 10 of each:

- the group report: `GET /container-groups/{id}/goodput?window=<30 days>` over HTTP, and
  `Store.group_goodput` called in-process (the store's share);
- one job's ledger: `GET /jobs/{id}/goodput` (five attempts);
- a page of 100 of the user's 100,000 jobs (N more jobs are written, all labelled `team=t0`
  to `t4` in turn and `run=r<i>`, and named `run-<i>`): `GET /jobs?label=team=t3` (one job
  in five), `?label=run=r<i>` (one job), `?name=run-<i>`, and `?label=team=t3&label=run=r<i>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.postgres import create_database, drop_database  # noqa: E402
from tests.support.processes import start_server  # noqa: E402

from kelpie.store import open_store  # noqa: E402

GROUP, OTHER_GROUP = "bench-goodput", "bench-other"
OUTCOMES = ("lost", "interrupted", "failed", "interrupted", "completed")
COMMITS_PER_ATTEMPT = 3
RUNS, WARMUP = 10, 2
TARGET_MS = 500.0
WEEK_S = 7 * 24 * 3600
SPEC = '{"command": "x"}'
ATTEMPT_COLUMNS = (
    "id, job_id, machine_id, started, ended, outcome, last_heartbeat, command_started,"
    " upload_seconds, next_started, commits, first_commit, last_commit, commit_seconds,"
    " timed_commits"
)


FILTERS: dict[str, dict[str, Any]] = {
    "label=team=t3 (1 in 5)": {"label": "team=t3"},
    "label=run=r<i> (1 job)": {"label": "run=r77777"},
    "name=run-<i> (1 job)": {"name": "run-77777"},
    "both labels": {"label": ["team=t2", "run=r77777"]},
}


@dataclass
class Figures:
    backend: str
    attempts: int
    jobs: int
    http_p50_ms: float
    http_p95_ms: float
    store_p50_ms: float
    job_p50_ms: float
    filters_p50_ms: dict[str, float]


@dataclass
class History:
    jobs: list[tuple[Any, ...]]
    attempts: list[tuple[Any, ...]]
    checkpoints: list[tuple[Any, ...]]
    labels: list[tuple[str, str, str]]


def history(user_id: str, attempts: int, now: float) -> History:
    """Rows of jobs, attempts and checkpoints, times in unix seconds: `attempts` attempts in
    GROUP and as many in OTHER_GROUP, all within the last week."""
    jobs: list[tuple[Any, ...]] = []
    rows: list[tuple[Any, ...]] = []
    checkpoints: list[tuple[Any, ...]] = []
    per_job = len(OUTCOMES)
    attempt_id = 0
    for group in (GROUP, OTHER_GROUP):
        for j in range(attempts // per_job):
            job_id = str(uuid.uuid4())
            at = now - WEEK_S + (j * 97) % (WEEK_S - 40_000)
            jobs.append((job_id, user_id, "completed", group, at))
            generation = 0
            for outcome in OUTCOMES:
                attempt_id += 1
                command = at + 60
                ended = at + 3660
                last_heartbeat = ended - 50 if outcome == "lost" else None
                upload = 30.0 if outcome == "completed" else None
                commits = [command + 900 * (k + 1) for k in range(COMMITS_PER_ATTEMPT)]
                costs = [12.5 + k for k in range(COMMITS_PER_ATTEMPT)]
                next_started = None if outcome == "completed" else ended + 120
                rows.append(
                    (attempt_id, job_id, f"m{attempt_id % 500}", at, ended, outcome,
                     last_heartbeat, command, upload, next_started, len(commits), commits[0],
                     commits[-1], sum(costs), len(costs))
                )  # fmt: skip
                for created, cost in zip(commits, costs, strict=True):
                    generation += 1
                    checkpoints.append(
                        (job_id, generation, attempt_id, f"m{attempt_id % 500}", created, cost)
                    )
                at = ended + 120
    for i in range(attempts):  # labelled jobs that never ran, to page through by filter
        jobs.append((str(uuid.uuid4()), user_id, "pending", "bench-filters", now - i, f"run-{i}"))
    labels = [
        (job[0], key, value)
        for i, job in enumerate(jobs)
        for key, value in (("team", f"t{i % 5}"), ("run", f"r{i}"))
    ]
    jobs = [job if len(job) == 6 else (*job, None) for job in jobs]
    return History(jobs, rows, checkpoints, labels)


def seed_sqlite(path: str, data: History) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executemany(
            "INSERT INTO jobs (id, user_id, status, container_group_id, created, name,"
            " max_failures, heartbeat_interval, spec)"
            f" VALUES (?, ?, ?, ?, ?, ?, 3, 30, '{SPEC}')",
            data.jobs,
        )
        conn.executemany(
            "INSERT INTO job_labels (job_id, key, value) VALUES (?, ?, ?)", data.labels
        )
        conn.executemany(
            f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES ({', '.join('?' * 15)})",
            data.attempts,
        )
        conn.executemany(
            "INSERT INTO checkpoints (job_id, generation, attempt_id, machine_id, created,"
            " files, bytes, upload_seconds) VALUES (?, ?, ?, ?, ?, 1, 1000000, ?)",
            data.checkpoints,
        )
        conn.commit()
        # as in a store that has been running: statistics gathered, the WAL checkpointed
        # (reads of a database whose WAL holds a million fresh rows are slower)
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _columns(rows: list[tuple[Any, ...]], times: set[int]) -> list[list[Any]]:
    """Rows as columns, the moments at `times` as datetimes (asyncpg's timestamptz)."""

    def convert(index: int) -> Callable[[Any], Any]:
        if index in times:
            return lambda v: None if v is None else datetime.fromtimestamp(v, UTC)
        return lambda v: v

    return [[convert(i)(row[i]) for row in rows] for i in range(len(rows[0]))]


def _chunks(rows: list[tuple[Any, ...]], size: int = 20_000) -> Iterator[list[tuple[Any, ...]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


async def seed_postgres(url: str, data: History) -> None:
    conn = await asyncpg.connect(url)
    try:
        for chunk in _chunks(data.jobs):
            await conn.execute(
                "INSERT INTO jobs (id, user_id, status, container_group_id, created, name,"
                f" max_failures, heartbeat_interval, spec) SELECT *, 3, 30, '{SPEC}'::jsonb"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
                " $5::timestamptz[], $6::text[])",
                *_columns(chunk, {4}),
            )
        for chunk in _chunks(data.labels):
            await conn.execute(
                "INSERT INTO job_labels (job_id, key, value)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
                *_columns(chunk, set()),
            )
        for chunk in _chunks(data.attempts):
            await conn.execute(
                f"INSERT INTO attempts ({ATTEMPT_COLUMNS}) OVERRIDING SYSTEM VALUE"
                " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[],"
                " $4::timestamptz[], $5::timestamptz[], $6::text[], $7::timestamptz[],"
                " $8::timestamptz[], $9::float8[], $10::timestamptz[], $11::int[],"
                " $12::timestamptz[], $13::timestamptz[], $14::float8[], $15::int[])",
                *_columns(chunk, {3, 4, 6, 7, 9, 11, 12}),
            )
        for chunk in _chunks(data.checkpoints):
            await conn.execute(
                "INSERT INTO checkpoints (job_id, generation, attempt_id, machine_id, created,"
                " files, bytes, upload_seconds)"
                " SELECT j, g, a, m, c, 1, 1000000, u FROM unnest($1::text[], $2::bigint[],"
                " $3::bigint[], $4::text[], $5::timestamptz[], $6::float8[])"
                " AS t(j, g, a, m, c, u)",
                *_columns(chunk, {4}),
            )
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('attempts', 'id'),"
            " (SELECT max(id) FROM attempts))"
        )
        # as in a database autovacuum has been through: statistics, visibility map, hint bits
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def prepare(database: str, attempts: int) -> tuple[str, str, int]:
    """Migrates the database and writes the history; returns (user id, a job id, jobs)."""
    store = open_store(database)
    await store.open()
    try:
        user = await store.create_user(f"bench-{secrets.token_hex(4)}")
    finally:
        await store.close()
    data = history(user.id, attempts, time.time())
    if database.startswith("sqlite"):
        seed_sqlite(database.removeprefix("sqlite:///"), data)
    else:
        await seed_postgres(database.split("?", 1)[0], data)
    return user.id, data.jobs[len(data.jobs) // 8][0], len(data.jobs)


def timed(call: Callable[[], Any]) -> list[float]:
    took = []
    for i in range(WARMUP + RUNS):
        started = time.perf_counter()
        call()
        if i >= WARMUP:
            took.append((time.perf_counter() - started) * 1000)
    return took


async def time_store(database: str, user_id: str) -> list[float]:
    store = open_store(database)
    await store.open()
    try:
        until = datetime.now(UTC)
        since = until - timedelta(days=30)
        took = []
        for i in range(WARMUP + RUNS):
            started = time.perf_counter()
            await store.group_goodput(user_id, GROUP, since, until)
            if i >= WARMUP:
                took.append((time.perf_counter() - started) * 1000)
        return took
    finally:
        await store.close()


def time_filters(url: str, key: str) -> dict[str, float]:
    """p50 of a page of 100 of the user's jobs, newest first, by each filter."""
    figures = {}
    with httpx.Client(base_url=url, headers={"X-Kelpie-Key": key}, timeout=60) as user:
        for label, params in FILTERS.items():

            def page(params: dict[str, Any] = params) -> None:
                answer = user.get("/jobs", params={**params, "page_size": 100})
                answer.raise_for_status()
                assert answer.json()["_count"] >= 1, answer.text

            figures[label] = statistics.median(timed(page))
    return figures


def run_backend(backend: str, attempts: int) -> Figures:
    with tempfile.TemporaryDirectory(prefix="kelpie-bench-goodput-") as tmp:
        database = (
            f"sqlite:///{tmp}/kelpie.db"
            if backend == "sqlite"
            else asyncio.run(create_database()) + "?sslmode=disable"
        )
        try:
            print(f"[{backend}] writing {attempts:,} attempts ...", file=sys.stderr, flush=True)
            user_id, job_id, jobs = asyncio.run(prepare(database, attempts))
            admin_key = f"admin-{secrets.token_hex(16)}"
            server = start_server(database, admin_key, Path(tmp) / "logs")
            try:
                print(f"[{backend}] measuring ...", file=sys.stderr, flush=True)
                with httpx.Client(
                    base_url=server.url, headers={"X-Kelpie-Key": admin_key}, timeout=60
                ) as client:

                    def report() -> None:
                        answer = client.get(
                            f"/container-groups/{GROUP}/goodput", params={"window": 30 * 86400}
                        )
                        answer.raise_for_status()
                        assert answer.json()["attempts"] == attempts, answer.text

                    def ledger() -> None:
                        client.get(f"/jobs/{job_id}/goodput").raise_for_status()

                    http = timed(report)
                    job = timed(ledger)
                    key = client.post(f"/users/{user_id}/token", json={}).json()["token"]
                    filters = time_filters(server.url, key)
                store = asyncio.run(time_store(database, user_id))
            finally:
                server.stop()
        finally:
            if backend == "postgres":
                asyncio.run(drop_database(database.split("?", 1)[0]))
    return Figures(
        backend=backend,
        attempts=attempts,
        jobs=jobs,
        http_p50_ms=statistics.median(http),
        http_p95_ms=statistics.quantiles(http, n=20)[-1],
        store_p50_ms=statistics.median(store),
        job_p50_ms=statistics.median(job),
        filters_p50_ms=filters,
    )


def render(results: list[Figures]) -> str:
    names = [r.backend for r in results]
    rows = [
        (
            f"group report, {results[0].attempts:,} attempts, HTTP: p50 / p95",
            f"≤ {TARGET_MS:.0f} ms",
            [f"{r.http_p50_ms:.0f} / {r.http_p95_ms:.0f} ms" for r in results],
        ),
        (
            "group report, the store's share: p50",
            "",
            [f"{r.store_p50_ms:.0f} ms" for r in results],
        ),
        (
            "one job's ledger (5 attempts), HTTP: p50",
            "",
            [f"{r.job_p50_ms:.1f} ms" for r in results],
        ),
        *(
            (
                f"page of 100 of {results[0].jobs:,} jobs, {label}: p50",
                "",
                [f"{r.filters_p50_ms[label]:.1f} ms" for r in results],
            )
            for label in FILTERS
        ),
    ]
    lines = [
        "| figure | " + " | ".join(names) + " | target |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    lines += [
        f"| {label} | " + " | ".join(cells) + f" | {target} |" for label, target, cells in rows
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--attempts", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    backends = ["sqlite", "postgres"] if options.backend == "both" else [options.backend]
    results = [run_backend(backend, options.attempts) for backend in backends]
    print("load average: " + " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    print(render(results))
    missed = [r.backend for r in results if r.http_p50_ms > TARGET_MS]
    if missed:
        print("\nmissed target: " + ", ".join(missed))
    if options.json:
        options.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
