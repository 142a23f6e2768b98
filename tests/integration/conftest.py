"""Fixtures for tests against real databases (`fresh_postgres_url`, `fresh_database_url`,
`api` and friends come from tests/support/api_fixtures.py, shared by every directory).

- `sqlite_url`: URL of a new SQLite file in the test's tmp_path.
- `database_url`: a migrated database holding no rows, parametrized over `sqlite` and
  `postgres`. PostgreSQL's is one database per test process, migrated once and emptied
  (TRUNCATE) before each test: creating, migrating and dropping a database per test cost
  most of the store suite's time.
- `empty_database_url`: a database with no schema at all, for the migration tests.
- `clock`: the time the `store` reads (tests/support/clock.py), standing still until the test
  moves it: `clock.advance(60)` instead of waiting a minute or rewriting rows.
- `store`: a migrated, open store on `database_url` with `clock`, closed after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kelpie.store import Store, open_store
from tests.support.api_fixtures import BACKENDS
from tests.support.clock import ManualClock
from tests.support.postgres import empty_every_table, run_sync


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kelpie.db'}"


@pytest.fixture(scope="session")
def reusable_postgres_url(fresh_postgres_url: Callable[[], str]) -> str:
    """One migrated PostgreSQL database for this test process's store tests."""
    url = fresh_postgres_url()
    run_sync(migrate(url))
    return url


async def migrate(url: str) -> None:
    store = open_store(url)
    await store.open()
    await store.close()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of each backend, holding no rows."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    url: str = request.getfixturevalue("reusable_postgres_url")
    run_sync(empty_every_table(url))
    return url


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest) -> str:
    """A database of each backend with no schema at all (what a first start finds)."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    make_url: Callable[[], str] = request.getfixturevalue("fresh_postgres_url")
    return make_url()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def store(database_url: str, clock: ManualClock) -> AsyncIterator[Store]:
    opened = open_store(database_url, clock=clock)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
