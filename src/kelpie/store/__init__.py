"""Persistence: the Store protocol, its SQLite and PostgreSQL implementations, migrations."""

from __future__ import annotations

from kelpie.store.postgres import PostgresStore
from kelpie.store.protocol import (
    AlreadyExists,
    InvalidChange,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
)
from kelpie.store.sqlite import SqliteStore

__all__ = [
    "AlreadyExists",
    "InvalidChange",
    "NotFound",
    "PostgresStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]


def open_store(database_url: str) -> Store:
    """The store for a database URL, not yet connected: `await store.open()` connects and
    migrates, `await store.close()` disconnects.

    `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, `postgresql://…` or
    `postgres://…` (any libpq-style URL asyncpg accepts).
    """
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        if not path or path == ":memory:":
            raise ValueError(f"a SQLite database URL needs a file path: {database_url!r}")
        return SqliteStore(path)
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(database_url)
    raise ValueError(
        f"unsupported database URL {database_url!r}: use sqlite:///<path> or postgresql://…"
    )
