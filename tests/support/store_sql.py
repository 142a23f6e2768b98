"""Writing straight into a store's database, outside the store, to move time: a test scripts a
timeline by writing the timestamps it wants instead of waiting for them."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

# Columns holding a moment (unix seconds in SQLite, timestamptz in PostgreSQL).
TIME_COLUMNS = frozenset(
    {
        "created",
        "started",
        "ended",
        "last_heartbeat",
        "command_started",
        "next_started",
        "first_commit",
        "last_commit",
        "heartbeat",
        "lease_expires",
        "stall_deadline",
        "progress_updated_at",
        "first_seen",
        "last_seen",
        "last_poll",
    }
)


async def execute(database_url: str, sql: str, params: Sequence[Any] = ()) -> None:
    """One statement with `?` placeholders (turned into `$n` for PostgreSQL)."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            conn.execute(sql, tuple(params))
            conn.commit()
        finally:
            conn.close()
        return
    numbered = sql
    for position in range(1, len(params) + 1):
        numbered = numbered.replace("?", f"${position}", 1)
    pg = await asyncpg.connect(database_url)
    try:
        await pg.execute(numbered, *params)
    finally:
        await pg.close()


async def set_columns(
    database_url: str, table: str, where: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    """UPDATE `table` SET `values` WHERE `where` (equalities); moments as unix seconds."""
    postgres = not database_url.startswith("sqlite")
    assignments = []
    for column in values:
        placeholder = "?"
        if postgres and column in TIME_COLUMNS:
            placeholder = "to_timestamp(?::float8)"
        elif postgres:
            placeholder = "?::float8" if column.endswith("seconds") else "?"
        assignments.append(f"{column} = {placeholder}")
    conditions = [f"{column} = ?" for column in where]
    await execute(
        database_url,
        f"UPDATE {table} SET {', '.join(assignments)} WHERE {' AND '.join(conditions)}",
        [*values.values(), *where.values()],
    )
