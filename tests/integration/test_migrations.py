"""Migrations build exactly the snapshot schema, once, however many processes start at once."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import kelpie.store.postgres
import kelpie.store.sqlite
from kelpie.store import PostgresStore, SqliteStore, StoreError, open_store
from kelpie.store.migrations import Dialect, Migration, load_migrations, schema_snapshot
from kelpie.store.models import HeldOutcome

Catalog = dict[str, Any]


def _normalized_sql(sql: str) -> str:
    sql = re.sub(r"--[^\n]*", " ", sql).lower()
    sql = re.sub(r"\s+", " ", sql)
    sql = re.sub(r"\s*([(),])\s*", r"\1", sql)
    return sql.replace(" if not exists", "").strip()


def sqlite_catalog(path: Path) -> Catalog:
    """Every table, column, key, index and constraint of a SQLite database."""
    conn = sqlite3.connect(path)
    try:
        catalog: Catalog = {}
        objects = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
            " WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        for kind, name, table, sql in objects:
            entry: dict[str, Any] = {"table": table, "sql": _normalized_sql(sql or "")}
            if kind == "table":
                entry["columns"] = conn.execute(f"PRAGMA table_xinfo('{name}')").fetchall()
                entry["foreign_keys"] = conn.execute(
                    f"PRAGMA foreign_key_list('{name}')"
                ).fetchall()
                entry["options"] = conn.execute(
                    "SELECT wr, strict FROM pragma_table_list WHERE name = ?", (name,)
                ).fetchall()
            else:
                entry["columns"] = conn.execute(f"PRAGMA index_xinfo('{name}')").fetchall()
            catalog[f"{kind} {name}"] = entry
        return catalog
    finally:
        conn.close()


async def postgres_catalog(url: str) -> Catalog:
    """Every table, column, constraint, index, trigger and function of the public schema of a
    database."""
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            "SELECT table_name, ordinal_position, column_name, data_type, is_nullable,"
            " column_default, is_identity, identity_generation"
            " FROM information_schema.columns WHERE table_schema = 'public'"
            " ORDER BY table_name, ordinal_position"
        )
        constraints = await conn.fetch(
            "SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)"
            " FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.conrelid"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
            " ORDER BY c.relname, k.conname"
        )
        indexes = await conn.fetch(
            "SELECT tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public' ORDER BY tablename, indexname"
        )
        tables = await conn.fetch(
            "SELECT c.relname, c.relkind, c.reloptions FROM pg_class AS c"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' ORDER BY c.relname"
        )
        triggers = await conn.fetch(
            "SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger AS t"
            " JOIN pg_class AS c ON c.oid = t.tgrelid"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND NOT t.tgisinternal ORDER BY c.relname, t.tgname"
        )
        functions = await conn.fetch(
            "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc AS p"
            " JOIN pg_namespace AS n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public' ORDER BY p.proname"
        )
        return {
            "triggers": [tuple(row) for row in triggers],
            "functions": [tuple(row) for row in functions],
            "columns": [tuple(row) for row in columns],
            "constraints": [tuple(row) for row in constraints],
            "indexes": [tuple(row) for row in indexes],
            "relations": [tuple(row) for row in tables],
        }
    finally:
        await conn.close()


def test_migration_versions_are_contiguous_and_the_same_for_both_dialects() -> None:
    sqlite_versions = [m.version for m in load_migrations("sqlite")]
    postgres_versions = [m.version for m in load_migrations("postgresql")]
    assert sqlite_versions == postgres_versions == list(range(1, len(sqlite_versions) + 1))


async def test_sqlite_migrations_build_the_snapshot_schema(tmp_path: Path) -> None:
    migrated = SqliteStore(tmp_path / "migrated.db")
    await migrated.open()
    await migrated.close()
    snapshot = tmp_path / "snapshot.db"
    conn = sqlite3.connect(snapshot)
    conn.executescript(schema_snapshot("sqlite"))
    conn.close()

    assert sqlite_catalog(tmp_path / "migrated.db") == sqlite_catalog(snapshot)


@pytest.mark.postgres
async def test_postgres_migrations_build_the_snapshot_schema(
    fresh_postgres_url: Callable[[], str],
) -> None:
    migrated_url, snapshot_url = fresh_postgres_url(), fresh_postgres_url()
    migrated = PostgresStore(migrated_url)
    await migrated.open()
    await migrated.close()
    conn = await asyncpg.connect(snapshot_url)
    try:
        await conn.execute(schema_snapshot("postgresql"))
    finally:
        await conn.close()

    assert await postgres_catalog(migrated_url) == await postgres_catalog(snapshot_url)


async def applied_versions(empty_database_url: str) -> list[int]:
    if empty_database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(empty_database_url.removeprefix("sqlite:///"))
        try:
            return [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
        finally:
            conn.close()
    pg = await asyncpg.connect(empty_database_url)
    try:
        return [row[0] for row in await pg.fetch("SELECT version FROM schema_migrations")]
    finally:
        await pg.close()


async def test_concurrent_opens_of_a_fresh_database_migrate_once(empty_database_url: str) -> None:
    stores = [open_store(empty_database_url) for _ in range(4)]

    await asyncio.gather(*(store.open() for store in stores))

    try:
        user = await stores[0].create_user("after-migration")
        assert await stores[3].get_user(user.id) == user
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    expected = [m.version for m in load_migrations("sqlite")]
    assert sorted(await applied_versions(empty_database_url)) == expected


async def test_reopening_keeps_the_data_and_applies_nothing(empty_database_url: str) -> None:
    store = open_store(empty_database_url)
    await store.open()
    user = await store.create_user("survivor")
    await store.close()

    reopened = open_store(empty_database_url)
    await reopened.open()
    try:
        assert await reopened.get_user(user.id) == user
    finally:
        await reopened.close()
    assert len(await applied_versions(empty_database_url)) == len(load_migrations("sqlite"))


async def test_a_database_from_a_newer_kelpie_is_refused(empty_database_url: str) -> None:
    store = open_store(empty_database_url)
    await store.open()
    await store.close()
    if empty_database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(empty_database_url.removeprefix("sqlite:///"))
        with conn:
            conn.execute("INSERT INTO schema_migrations VALUES (9999, 0)")
        conn.close()
    else:
        pg = await asyncpg.connect(empty_database_url)
        await pg.execute("INSERT INTO schema_migrations VALUES (9999, now())")
        await pg.close()

    with pytest.raises(StoreError, match="newer"):
        await open_store(empty_database_url).open()


# A kelpie that had only the first migration left a user, a running job with its attempt, and
# a queued webhook event: written here in that schema's own SQL, as that kelpie wrote them.
_OLD_ROWS = {
    "sqlite": [
        "INSERT INTO users (id, username, created, is_admin, webhook_secret, webhook_token)"
        " VALUES ('u1', 'from-before', 1700000000, 0, 'whsec_x', 'kwh_x')",
        "INSERT INTO jobs (seq, id, user_id, status, container_group_id, created, started,"
        " heartbeat, lease_expires, machine_id, max_failures, heartbeat_interval, webhook, spec)"
        " VALUES (1, 'j1', 'u1', 'running', 'g', 1700000000, 1700000001, 1700000001,"
        " 1700000061, 'm1', 3, 30, 'https://example.com/hook',"
        ' \'{"command": "x", "arguments": []}\')',
        "INSERT INTO attempts (job_id, machine_id, started, outcome)"
        " VALUES ('j1', 'm1', 1700000001, 'running')",
        "INSERT INTO webhook_outbox (user_id, url, payload, next_attempt_at, created)"
        " VALUES ('u1', 'https://example.com/hook', '{\"job_id\": \"j1\"}', 0, 0)",
    ],
    "postgresql": [
        "INSERT INTO users (id, username, created, is_admin, webhook_secret, webhook_token)"
        " VALUES ('u1', 'from-before', now(), false, 'whsec_x', 'kwh_x')",
        "INSERT INTO jobs (id, user_id, status, container_group_id, created, started,"
        " heartbeat, lease_expires, machine_id, max_failures, heartbeat_interval, webhook, spec)"
        " VALUES ('j1', 'u1', 'running', 'g', now(), now(), now(), now(), 'm1', 3, 30,"
        ' \'https://example.com/hook\', \'{"command": "x", "arguments": []}\')',
        "INSERT INTO attempts (job_id, machine_id, started, outcome)"
        " VALUES ('j1', 'm1', now(), 'running')",
        "INSERT INTO webhook_outbox (user_id, url, payload, next_attempt_at, created)"
        " VALUES ('u1', 'https://example.com/hook', '{\"job_id\": \"j1\"}', now(), now())",
    ],
}


async def _write_first_schema_with_rows(empty_database_url: str) -> None:
    if empty_database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(empty_database_url.removeprefix("sqlite:///"))
        try:
            conn.executescript(load_migrations("sqlite")[0].sql)
            conn.execute(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                " applied_at REAL NOT NULL)"
            )
            conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
            for statement in _OLD_ROWS["sqlite"]:
                conn.execute(statement)
            conn.commit()
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(empty_database_url)
    try:
        await pg.execute(load_migrations("postgresql")[0].sql)
        await pg.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL)"
        )
        await pg.execute("INSERT INTO schema_migrations VALUES (1, now())")
        for statement in _OLD_ROWS["postgresql"]:
            await pg.execute(statement)
    finally:
        await pg.close()


async def test_an_older_database_is_upgraded_with_its_data_intact(empty_database_url: str) -> None:
    await _write_first_schema_with_rows(empty_database_url)
    assert await applied_versions(empty_database_url) == [1]

    store = open_store(empty_database_url)
    await store.open()
    try:
        user = await store.get_user("u1")
        assert user is not None and user.username == "from-before"
        running = await store.get_job("j1", None)
        assert running is not None and running.status == "running"
        assert (running.checkpoint_keep, running.checkpoint_generation) == (3, None)
        [event] = await store.claim_webhook_events(10, 30)
        assert event.payload["job_id"] == "j1" and event.lease_token
        assert event.receiver == "https://example.com"  # derived for events from before
        assert await store.webhook_delivered(event)
        # The holder from before the upgrade (no attempt token) keeps its job.
        assert await store.heartbeat("j1", "m1", None) == "running"
        assert await store.complete_if_held("j1", "m1", None) is HeldOutcome.DONE
    finally:
        await store.close()
    assert sorted(await applied_versions(empty_database_url)) == [
        m.version for m in load_migrations("sqlite")
    ]


async def test_keys_and_reallocations_get_ids_and_tenants_on_upgrade(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database from before key ids: an admin key from KELPIE_ADMIN_KEY, a key the admin
    # minted for a SaladCloud project, a user's key, and a machine reallocated once.
    def before_key_ids(dialect: Dialect) -> list[Migration]:
        return [m for m in load_migrations(dialect) if m.version < 5]

    monkeypatch.setattr(kelpie.store.sqlite, "load_migrations", before_key_ids)
    monkeypatch.setattr(kelpie.store.postgres, "load_migrations", before_key_ids)
    old = open_store(empty_database_url)
    await old.open()
    admin = await old.create_user("admin", is_admin=True)
    user = await old.create_user("someone")
    await old.close()
    now = "0" if empty_database_url.startswith("sqlite") else "now()"
    key = "INSERT INTO api_keys (key_hash, user_id, org_name, project_name, created) VALUES"
    # A job that failed on m1, written in that schema's terms (today's store writes columns
    # added since).
    failed = str(uuid.uuid4())
    statements = [
        "INSERT INTO jobs (id, user_id, status, container_group_id, created, max_failures,"
        f" heartbeat_interval, spec) VALUES ('{failed}', '{user.id}', 'pending', 'g', {now},"
        " 3, 30, '{}')",
        f"INSERT INTO job_blocks (job_id, machine_id, blocked_at) VALUES ('{failed}', 'm1', {now})",
        f"{key} ('admin-hash', '{admin.id}', NULL, NULL, {now})",  # from KELPIE_ADMIN_KEY
        f"{key} ('minted-hash', '{admin.id}', 'acme', 'render', {now})",
        f"{key} ('user-hash', '{user.id}', NULL, NULL, {now})",
        f"INSERT INTO machine_reallocations (machine_id, at) VALUES ('m1', {now})",
    ]
    await _execute(empty_database_url, statements)
    monkeypatch.undo()

    store = open_store(empty_database_url)
    await store.open()
    try:
        for key_hash in ("admin-hash", "minted-hash", "user-hash"):
            assert await store.principal_for_key(key_hash) is not None, key_hash
        admin_keys = {key.org_name: key for key in await store.list_api_keys(admin.id)}
        assert admin_keys[None].bootstrap and not admin_keys["acme"].bootstrap
        [user_key] = await store.list_api_keys(user.id)
        assert uuid.UUID(user_key.id) and not user_key.bootstrap
        assert await store.claim_reallocation(user.id, "m1", 1) is None  # done already
        await store.ensure_admin("admin", "next-admin-hash")
        assert await store.principal_for_key("admin-hash") is None
        assert await store.principal_for_key("minted-hash") is not None
    finally:
        await store.close()


async def test_attempts_from_before_the_goodput_ledger_are_read_into_it(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database from before the ledger: a job interrupted once, lost once and running, with
    # its worker's `started` events and one checkpoint commit, written in that schema's shape.
    def before_the_ledger(dialect: Dialect) -> list[Migration]:
        return [m for m in load_migrations(dialect) if m.version < 8]

    monkeypatch.setattr(kelpie.store.sqlite, "load_migrations", before_the_ledger)
    monkeypatch.setattr(kelpie.store.postgres, "load_migrations", before_the_ledger)
    old = open_store(empty_database_url)
    await old.open()
    user = await old.create_user("from-before")
    await old.close()
    monkeypatch.undo()
    sqlite = empty_database_url.startswith("sqlite")

    def at(seconds: int) -> str:
        return (
            str(1_700_000_000 + seconds) if sqlite else f"to_timestamp({1_700_000_000 + seconds})"
        )

    attempt = "INSERT INTO attempts (id, job_id, machine_id, started, ended, outcome)" + (
        " VALUES" if sqlite else " OVERRIDING SYSTEM VALUE VALUES"
    )
    event = "INSERT INTO job_events (job_id, attempt_id, kind, message, created) VALUES"
    await _execute(
        empty_database_url,
        [
            "INSERT INTO jobs (id, user_id, status, container_group_id, created, max_failures,"
            f" heartbeat_interval, spec) VALUES ('j1', '{user.id}', 'running', 'g', {at(0)},"
            " 3, 30, '{}')",
            f"{attempt} (1, 'j1', 'm1', {at(0)}, {at(1000)}, 'interrupted')",
            f"{attempt} (2, 'j1', 'm2', {at(1060)}, {at(2000)}, 'lost')",
            f"{attempt} (3, 'j1', 'm3', {at(2000)}, NULL, 'running')",
            f"{event} ('j1', 1, 'started', 's', {at(100)})",
            f"{event} ('j1', 2, 'started', 's', {at(1090)})",
            "INSERT INTO checkpoints (job_id, generation, attempt_id, machine_id, created, files,"
            f" bytes) VALUES ('j1', 1, 1, 'm1', {at(700)}, 1, 1)",
        ],
    )

    store = open_store(empty_database_url)
    await store.open()
    try:
        job = await store.get_job("j1", None)
        ledger = await store.job_goodput("j1", None)
    finally:
        await store.close()
    assert job is not None and job.num_interruptions == 2
    assert ledger is not None
    first, lost, running = ledger.attempts
    assert (first.downloading_s, first.checkpoints) == (100, 1)
    assert (first.work_lost_s, first.detection_delay_s) == (300, 60)
    assert lost.downloading_s == 30 and lost.detection_delay_s == 0
    assert running.outcome == "running"


async def _execute(empty_database_url: str, statements: list[str]) -> None:
    if empty_database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(empty_database_url.removeprefix("sqlite:///"))
        with conn:
            for statement in statements:
                conn.execute(statement)
        conn.close()
        return
    pg = await asyncpg.connect(empty_database_url)
    try:
        for statement in statements:
            await pg.execute(statement)
    finally:
        await pg.close()
