"""Moving a store's time in tests: older timestamps written straight into the database (a
lease that stalled, an outage of the API) instead of waiting for them."""

from __future__ import annotations

import sqlite3

import asyncpg


async def run_sql(database_url: str, sqlite_sql: str, postgres_sql: str) -> None:
    """One statement straight on the database, outside the store (to move time)."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            conn.execute(sqlite_sql)
            conn.commit()
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(database_url)
    try:
        await pg.execute(postgres_sql)
    finally:
        await pg.close()


async def stall(database_url: str, job_id: str, seconds_ago: int = 60) -> None:
    """The job's holder last beat `seconds_ago` seconds ago."""
    await run_sql(
        database_url,
        f"UPDATE jobs SET heartbeat = heartbeat - {seconds_ago},"
        f" lease_expires = heartbeat - {seconds_ago} + 2 * heartbeat_interval"
        f" WHERE id = '{job_id}'",
        f"UPDATE jobs SET heartbeat = heartbeat - interval '{seconds_ago} s',"
        f" lease_expires = heartbeat - interval '{seconds_ago} s'"
        f" + heartbeat_interval * interval '2 s' WHERE id = '{job_id}'",
    )
