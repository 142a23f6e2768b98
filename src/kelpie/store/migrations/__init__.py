"""Versioned schema migrations, one folder of SQL files per dialect.

`<dialect>/NNNN_name.sql` files are applied in version order at `open()` and recorded in
`schema_migrations`; a released file is never edited, a change is a new file.
`<dialect>/schema.sql` is a snapshot of the schema after the newest migration, for readers
and for the test that proves the migrations build exactly that schema.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]

_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: Dialect) -> list[Migration]:
    """Every migration of the dialect, oldest first."""
    folder = resources.files(__name__).joinpath(dialect)
    migrations = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            migrations.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {dialect}: {versions}")
    return migrations


def schema_snapshot(dialect: Dialect) -> str:
    """The SQL of `<dialect>/schema.sql`: the whole schema after the newest migration."""
    return resources.files(__name__).joinpath(dialect, "schema.sql").read_text("utf-8")
