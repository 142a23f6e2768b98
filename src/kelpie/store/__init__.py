"""Persistence: the Store protocol, its SQLite and PostgreSQL implementations, migrations.

The names below are loaded when first used, not when the package is imported: the worker and
the CLI import `kelpie.schemas`, which reuses the words of `kelpie.store.models`, and must not
pay for (or need) the database drivers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kelpie.store.clock import Clock
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

# The module each lazily loaded name lives in.
_MODULE_OF = {
    "AlreadyExists": "kelpie.store.protocol",
    "InvalidChange": "kelpie.store.protocol",
    "NotFound": "kelpie.store.protocol",
    "Store": "kelpie.store.protocol",
    "StoreError": "kelpie.store.protocol",
    "StoreUnavailable": "kelpie.store.protocol",
    "PostgresStore": "kelpie.store.postgres",
    "SqliteStore": "kelpie.store.sqlite",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def open_store(database_url: str, *, clock: Clock | None = None) -> Store:
    """The store for a database URL, not yet connected: `await store.open()` connects and
    migrates, `await store.close()` disconnects.

    `clock`: the time the store reads (kelpie.store.clock); None, production time.

    `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`, `postgresql://…` or
    `postgres://…` (any libpq-style URL asyncpg accepts).
    """
    if database_url.startswith("sqlite:///"):
        path = database_url.removeprefix("sqlite:///")
        if not path or path == ":memory:":
            raise ValueError(f"a SQLite database URL needs a file path: {database_url!r}")
        from kelpie.store.sqlite import SqliteStore

        return SqliteStore(path, clock=clock)
    if database_url.startswith(("postgresql://", "postgres://")):
        from kelpie.store.postgres import PostgresStore

        return PostgresStore(database_url, clock=clock)
    raise ValueError(
        f"unsupported database URL {database_url!r}: use sqlite:///<path> or postgresql://…"
    )
