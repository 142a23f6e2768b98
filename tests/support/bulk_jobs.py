"""Many jobs written straight into a store's database, the way a long-lived one looks: each
started job with its attempt and its events. For the claim-plan tests and bench_api.py's scale
mode, where submitting a million jobs through the API would take longer than what it measures.

Statuses follow the job's position modulo 100 (`running` for the first `running` of every
hundred, then `pending`, `failed`, `canceled`, the rest `completed`), so every status is spread
evenly over the groups and over time. Running jobs hold long leases (an hour-long heartbeat
interval, beaten just now): nothing claims them while a benchmark runs. `created` rises with
the position over the last 30 days, so the jobs are older than anything submitted later.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

import asyncpg

SPREAD_SECONDS = 30 * 24 * 3600.0
RUNNING_INTERVAL_S = 3600  # heartbeat_interval of the running jobs
SPEC = '{"command": "python", "arguments": ["-c", "pass"]}'


@dataclass(frozen=True)
class JobsShape:
    """`count` jobs of `user_id`, spread over `groups` groups named `{prefix}-{k}`; of every
    hundred, `running` running, `pending` pending, `failed` failed, `canceled` canceled and
    the rest completed."""

    user_id: str
    count: int
    prefix: str = "bulk"
    groups: int = 1
    running: int = 1
    pending: int = 1
    failed: int = 1
    canceled: int = 1
    priorities: int = 1  # pending jobs get priority position % priorities

    def status_sql(self, position: str) -> str:
        bounds = [("running", self.running), ("pending", self.pending)]
        bounds += [("failed", self.failed), ("canceled", self.canceled)]
        cases, upto = [], 0
        for status, share in bounds:
            upto += share
            cases.append(f"WHEN {position} % 100 < {upto} THEN '{status}'")
        return f"CASE {' '.join(cases)} ELSE 'completed' END"

    def group_sql(self, position: str) -> str:
        return f"'{self.prefix}-' || (({position} / 100) % {self.groups})"


# Written after the jobs: an attempt for every job that ever started (its id is the job's seq,
# so the first load into an empty store keeps attempt ids unique) and its events.
_ATTEMPT_OUTCOME = (
    "CASE status WHEN 'running' THEN 'running' WHEN 'completed' THEN 'completed'"
    " WHEN 'failed' THEN 'failed' ELSE 'canceled' END"
)
_ENDED = "coalesce(completed, failed, canceled)"


def _sqlite_statements(
    shape: JobsShape, first: int, now: float
) -> list[tuple[str, dict[str, object]]]:
    step = SPREAD_SECONDS / max(shape.count, 1)
    status = shape.status_sql("i")
    jobs = f"""
WITH RECURSIVE n(i) AS (SELECT :first UNION ALL SELECT i + 1 FROM n WHERE i < :last)
INSERT INTO jobs (id, user_id, status, container_group_id, created, max_failures,
                  heartbeat_interval, spec, priority)
SELECT lower(printf('%s-%s-4%s-8%s-%s', hex(randomblob(4)), hex(randomblob(2)),
                    substr(hex(randomblob(2)), 2), substr(hex(randomblob(2)), 2),
                    hex(randomblob(6)))),
       :user_id, {status}, {shape.group_sql("i")}, :start + (i - :first) * :step, 3,
       CASE WHEN {status} = 'running' THEN {RUNNING_INTERVAL_S} ELSE 30 END, :spec,
       CASE WHEN {status} = 'pending' THEN i % {shape.priorities} ELSE 0 END
FROM n"""
    started = """
UPDATE jobs SET started = created + 5, machine_id = 'bulk-' || seq, attempt_id = seq,
    num_heartbeats = 3,
    heartbeat = CASE status WHEN 'running' THEN :now ELSE created + 60 END,
    lease_expires = CASE status WHEN 'running' THEN :now + 2 * heartbeat_interval END,
    completed = CASE status WHEN 'completed' THEN created + 3600 END,
    failed = CASE status WHEN 'failed' THEN created + 600 END,
    canceled = CASE status WHEN 'canceled' THEN created + 300 END,
    num_failures = CASE status WHEN 'failed' THEN 3 ELSE 0 END
WHERE seq >= :first_seq AND status <> 'pending'"""
    attempts = f"""
INSERT INTO attempts (id, job_id, machine_id, started, ended, outcome)
SELECT attempt_id, id, machine_id, started, {_ENDED}, {_ATTEMPT_OUTCOME}
FROM jobs WHERE seq >= :first_seq AND attempt_id IS NOT NULL"""
    events = f"""
INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, created)
SELECT id, attempt_id, machine_id, kind, message, at FROM (
    SELECT seq, id, attempt_id, machine_id, 1 AS position, 'claimed' AS kind,
           'claimed by ' || machine_id AS message, started AS at
    FROM jobs WHERE seq >= :first_seq AND attempt_id IS NOT NULL
    UNION ALL
    SELECT seq, id, attempt_id, machine_id, 2, status, status || ' on ' || machine_id, {_ENDED}
    FROM jobs WHERE seq >= :first_seq AND attempt_id IS NOT NULL AND status <> 'running'
) ORDER BY seq, position"""
    params: dict[str, object] = {
        "first": first,
        "last": first + shape.count - 1,
        "user_id": shape.user_id,
        "start": now - SPREAD_SECONDS,
        "step": step,
        "spec": SPEC,
        "now": now,
    }
    return [(sql, params) for sql in (jobs, started, attempts, events)]


def load_sqlite(path: str, shape: JobsShape) -> None:
    """Adds the jobs to a migrated SQLite file, in one transaction."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    try:
        conn.execute("PRAGMA cache_size = -512000")  # 500 MB: the id index takes random inserts
        conn.execute("BEGIN IMMEDIATE")
        first_seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM jobs").fetchone()[0]
        taken = conn.execute("SELECT coalesce(max(id), 0) FROM attempts").fetchone()[0]
        if taken >= first_seq:
            raise RuntimeError("attempt ids would collide: load into a store without attempts")
        for sql, params in _sqlite_statements(shape, first_seq, time.time()):
            conn.execute(sql, {**params, "first_seq": first_seq})
        conn.execute("COMMIT")
    finally:
        conn.close()


async def load_postgres(url: str, shape: JobsShape) -> None:
    """Adds the jobs to a migrated PostgreSQL database, in one transaction, then lets the
    planner know the table as autovacuum eventually would (VACUUM ANALYZE)."""
    status = shape.status_sql("i")
    jobs = f"""
INSERT INTO jobs (id, user_id, status, container_group_id, created, max_failures,
                  heartbeat_interval, spec, priority)
SELECT gen_random_uuid()::text, $1, {status}, {shape.group_sql("i")},
       now() - make_interval(secs => $4) + make_interval(secs => (i - $2) * $4 / $3), 3,
       CASE WHEN {status} = 'running' THEN {RUNNING_INTERVAL_S} ELSE 30 END, $5::jsonb,
       CASE WHEN {status} = 'pending' THEN i % $6 ELSE 0 END
FROM generate_series($2::bigint, $2::bigint + $3 - 1) AS i"""
    started = """
UPDATE jobs SET started = created + interval '5 s', machine_id = 'bulk-' || seq,
    attempt_id = seq, num_heartbeats = 3,
    heartbeat = CASE status WHEN 'running' THEN now() ELSE created + interval '1 min' END,
    lease_expires = CASE status WHEN 'running'
                    THEN now() + heartbeat_interval * interval '2 s' END,
    completed = CASE status WHEN 'completed' THEN created + interval '1 hour' END,
    failed = CASE status WHEN 'failed' THEN created + interval '10 min' END,
    canceled = CASE status WHEN 'canceled' THEN created + interval '5 min' END,
    num_failures = CASE status WHEN 'failed' THEN 3 ELSE 0 END
WHERE seq >= $1 AND status <> 'pending'"""
    attempts = f"""
INSERT INTO attempts (id, job_id, machine_id, started, ended, outcome) OVERRIDING SYSTEM VALUE
SELECT attempt_id, id, machine_id, started, {_ENDED}, {_ATTEMPT_OUTCOME}
FROM jobs WHERE seq >= $1 AND attempt_id IS NOT NULL"""
    events = f"""
INSERT INTO job_events (job_id, attempt_id, machine_id, kind, message, created)
SELECT id, attempt_id, machine_id, kind, message, at FROM (
    SELECT seq, id, attempt_id, machine_id, 1 AS position, 'claimed' AS kind,
           'claimed by ' || machine_id AS message, started AS at
    FROM jobs WHERE seq >= $1 AND attempt_id IS NOT NULL
    UNION ALL
    SELECT seq, id, attempt_id, machine_id, 2, status, status || ' on ' || machine_id, {_ENDED}
    FROM jobs WHERE seq >= $1 AND attempt_id IS NOT NULL AND status <> 'running'
) AS happened ORDER BY seq, position"""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            first_seq = await conn.fetchval("SELECT coalesce(max(seq), 0) + 1 FROM jobs")
            taken = await conn.fetchval("SELECT coalesce(max(id), 0) FROM attempts")
            if taken >= first_seq:
                raise RuntimeError("attempt ids would collide: load into a store without attempts")
            await conn.execute(
                jobs,
                shape.user_id,
                first_seq,
                shape.count,
                SPREAD_SECONDS,
                SPEC,
                shape.priorities,
            )
            for sql in (started, attempts, events):
                await conn.execute(sql, first_seq)
            await conn.execute(
                "SELECT setval(pg_get_serial_sequence('attempts', 'id'),"
                " (SELECT max(id) FROM attempts))"
            )
        for table in ("jobs", "attempts", "job_events"):
            await conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        await conn.close()


async def load_jobs(database_url: str, shape: JobsShape) -> None:
    if database_url.startswith("sqlite:///"):
        load_sqlite(database_url.removeprefix("sqlite:///"), shape)
    else:
        await load_postgres(database_url, shape)
