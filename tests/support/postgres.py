"""Throwaway PostgreSQL databases for tests and benchmarks.

PostgreSQL is part of the test environment: when `CI=true` an unreachable server fails the
run; elsewhere the PostgreSQL half of the suite is skipped with the reason.
Server: `KELPIE_TEST_POSTGRES_URL`, default postgresql://postgres@127.0.0.1:5432/test;
databases are created beside that one, named `kelpie_test_<random>`."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)
T = TypeVar("T")

ADMIN_URL = os.environ.get("KELPIE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a private thread and loop, so sync code and code already inside
    a running loop (async tests and fixtures) can both call it."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="postgres-test-admin")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def create_database() -> str:
    """Create an empty database and return its URL."""
    name = f"kelpie_test_{secrets.token_hex(6)}"
    await _admin(f'CREATE DATABASE "{name}"')
    return _with_database(ADMIN_URL, name)


async def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def empty_every_table(url: str) -> None:
    """Delete every row of every table but the migrations' record, and restart identities:
    a migrated database as a first start leaves it."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        tables = [
            row["tablename"]
            for row in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'schema_migrations'"
            )
        ]
        if tables:
            names = ", ".join(f'"{name}"' for name in tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


def unreachable_reason() -> str | None:
    """Why the PostgreSQL server cannot be used, or None when it can."""
    try:
        run_sync(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL at {ADMIN_URL} is unreachable: {exc!r}"
    return None


class PostgresDatabases:
    """Calling it creates a new empty database and returns its URL; `drop_all` at the end."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def __call__(self) -> str:
        url = run_sync(create_database())
        self.created.append(url)
        return url

    def drop_all(self) -> None:
        """Drop every database made here, all at once: one after the other, each drop waits
        for the server's file clean-up (~1.7 s apiece on a 2-core machine), which made a
        session's teardown take tens of seconds."""

        async def drop_every_one() -> None:
            results = await asyncio.gather(
                *(drop_database(url) for url in self.created), return_exceptions=True
            )
            for url, result in zip(self.created, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("could not drop test database %s: %s", url, result)

        run_sync(drop_every_one())
        self.created.clear()
