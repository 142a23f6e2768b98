"""Session fixtures shared by every test directory: fresh databases of each backend, one
real `kelpie serve` per backend, and per-test users and container groups."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.api import Api, ApiUser, new_admin_key
from tests.support.postgres import PostgresDatabases, unreachable_reason
from tests.support.processes import start_server

BACKENDS = [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def fresh_postgres_url() -> Iterator[Callable[[], str]]:
    """`fresh_postgres_url()` creates a new empty database and returns its URL; every one
    is dropped at the end of the session."""
    reason = unreachable_reason()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run)")
        pytest.skip(reason)
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def fresh_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], str]:
    """`fresh_database_url(backend)` → URL of a new empty `sqlite` or `postgres` database."""

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path_factory.mktemp('db') / 'kelpie.db'}"
        make_postgres: Callable[[], str] = request.getfixturevalue("fresh_postgres_url")
        return make_postgres()

    return make


@pytest.fixture(scope="session", params=BACKENDS)
def api(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    fresh_database_url: Callable[[str], str],
) -> Iterator[Api]:
    """One real `kelpie serve` per backend for the whole session."""
    backend: str = request.param
    directory = tmp_path_factory.mktemp(f"api-{backend}")
    server = start_server(fresh_database_url(backend), new_admin_key(), directory / "logs")
    api = Api(server, backend)
    try:
        yield api
    finally:
        api.close()
        server.stop()


@pytest.fixture
def user(api: Api) -> ApiUser:
    return api.new_user()


@pytest.fixture
def group() -> str:
    """A container group no other test uses, so tests never see each other's jobs."""
    return f"group-{uuid.uuid4().hex[:12]}"
