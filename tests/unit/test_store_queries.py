"""The stores' named SQL statements: the file format, and code and files naming the same
statements."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import kelpie.store.postgres
import kelpie.store.sqlite
from kelpie.store.queries import Dialect, QueryFileError, load_queries, parse_queries


def test_statements_are_read_whole_under_their_names() -> None:
    queries = parse_queries(
        "-- what this file is\n\n"
        "-- first --\n-- what it does ($1 id)\nSELECT 1;\n\n"
        "-- second --\n-- one line\nWITH x AS (\n  -- kept: inside the statement\n  SELECT 2\n)\n"
        "SELECT * FROM x;\n\n-- ---- a banner, not sent ----\n\n"
        "-- third --\nSELECT 3\n"
    )
    assert dict(queries) == {
        "first": "SELECT 1",
        "second": "WITH x AS (\n  -- kept: inside the statement\n  SELECT 2\n)\nSELECT * FROM x",
        "third": "SELECT 3",
    }


@pytest.mark.parametrize(
    "text",
    [
        "-- a --\nSELECT 1\n-- a --\nSELECT 2\n",  # named twice
        "-- a --\n-- only a comment\n\n",  # empty
        "SELECT 1\n-- a --\nSELECT 2\n",  # SQL before any name
    ],
)
def test_a_malformed_queries_file_is_refused(text: str) -> None:
    with pytest.raises(QueryFileError):
        parse_queries(text)


@pytest.mark.parametrize(
    ("dialect", "module"),
    [("postgresql", kelpie.store.postgres), ("sqlite", kelpie.store.sqlite)],
)
def test_every_statement_in_a_queries_file_is_used_by_its_store(
    dialect: Dialect, module: object
) -> None:
    source = Path(str(getattr(module, "__file__", ""))).read_text("utf-8")
    used = set(re.findall(r"""_SQL\[["']([a-z0-9_]+)["']\]""", source))
    named = set(load_queries(dialect))
    assert named - used == set(), "statements no code runs"
    assert used - named == set(), "names the code asks for that no statement has"
