"""Fixtures for tests against real databases (`fresh_postgres_url`, `fresh_database_url`,
`api` and friends come from tests/support/api_fixtures.py, shared by every directory).

- `sqlite_url`: URL of a new SQLite file in the test's tmp_path.
- `database_url`: a fresh database URL, parametrized over `sqlite` and `postgres`.
- `store`: a migrated, open store on `database_url`, closed after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kelpie.store import Store, open_store
from tests.support.api_fixtures import BACKENDS


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kelpie.db'}"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database of each backend."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    make_url: Callable[[], str] = request.getfixturevalue("fresh_postgres_url")
    return make_url()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = open_store(database_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
