"""Every SQL statement of a store, whole and named, one file per dialect.

`<dialect>.sql` holds the statements one after the other, each under a header line giving its
name, then comment lines saying what it does and what its parameters are:

    -- heartbeat --
    -- The holder's beat ($1 job id, $2 machine, $3 attempt id or NULL).
    UPDATE jobs SET heartbeat = now() ...

A store loads its file once at import (`load_queries`) and runs each statement by name, so a
statement can be read, explained and tested exactly as it reaches the database. Names are
lowercase with underscores, unique within a file; a name the code asks for and the file lacks
fails at import, and `tests/unit/test_store_queries.py` fails on a statement no code uses or a
name no statement has.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]

_HEADER = re.compile(r"^-- ([a-z][a-z0-9_]*) --$")


class QueryFileError(ValueError):
    """A queries file that cannot be read as named statements."""


def parse_queries(text: str, source: str = "<queries>") -> Mapping[str, str]:
    """The statements of a queries file by name: the text after each header up to the next
    one, without the comment and blank lines before and after it, nor its final `;`."""
    queries: dict[str, str] = {}
    name: str | None = None
    body: list[str] = []

    def finish() -> None:
        if name is None:
            return
        while body and (not body[0].strip() or body[0].lstrip().startswith("--")):
            body.pop(0)
        # comment lines after the statement (a banner before the next name) are not sent
        while body and (not body[-1].strip() or body[-1].lstrip().startswith("--")):
            body.pop()
        statement = "\n".join(body).strip().removesuffix(";").rstrip()
        if not statement:
            raise QueryFileError(f"{source}: statement {name!r} is empty")
        queries[name] = statement

    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line.rstrip())
        if header is not None:
            finish()
            name = header.group(1)
            if name in queries:
                raise QueryFileError(f"{source}:{number}: statement {name!r} named twice")
            body = []
        elif name is not None:
            body.append(line)
        elif line.strip() and not line.lstrip().startswith("--"):
            raise QueryFileError(f"{source}:{number}: SQL before the first '-- name --' header")
    finish()
    return MappingProxyType(queries)


def load_queries(dialect: Dialect) -> Mapping[str, str]:
    """Every named statement of the dialect's queries file."""
    entry = resources.files(__name__).joinpath(f"{dialect}.sql")
    return parse_queries(entry.read_text("utf-8"), source=f"{dialect}.sql")
