"""Which S3 keys become which local files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kelpie.storage import RemoteObject
from kelpie.storage.files import MAX_PARTS, PART_SIZE, part_size
from kelpie.storage.s3 import plan_downloads, relative_key


@pytest.mark.parametrize(
    ("key", "prefix", "relative"),
    [
        ("jobs/1/in/a.txt", "jobs/1/in", "a.txt"),
        ("jobs/1/in/sub/b.txt", "jobs/1/in", "sub/b.txt"),
        ("a.txt", "", "a.txt"),
        ("jobs/1/in/", "jobs/1/in", None),  # directory marker
        ("jobs/1/in/sub/", "jobs/1/in", None),
        ("jobs/1/in/../../etc/passwd", "jobs/1/in", None),
        ("jobs/1/in/.//a.txt", "jobs/1/in", "a.txt"),
    ],
)
def test_relative_key(key: str, prefix: str, relative: str | None) -> None:
    assert relative_key(key, prefix) == relative


def test_gz_keys_are_saved_without_the_suffix_and_matched_on_the_local_name() -> None:
    objects = [
        RemoteObject("p/a.csv.gz", 10),
        RemoteObject("p/b.txt", 5),
        RemoteObject("p/c.csv", 1),
    ]
    plan = plan_downloads(objects, "p", Path("/dst"), re.compile(r"\.csv$"), decompress=True)
    assert [(d.key, d.dest, d.gunzip) for d in plan] == [
        ("p/a.csv.gz", Path("/dst/a.csv"), True),
        ("p/c.csv", Path("/dst/c.csv"), False),
    ]


def test_without_decompress_gz_keys_keep_their_name() -> None:
    plan = plan_downloads([RemoteObject("p/a.gz", 3)], "p", Path("/d"), None, decompress=False)
    assert [(d.dest, d.gunzip) for d in plan] == [(Path("/d/a.gz"), False)]


def test_two_keys_for_one_file_keep_the_plain_one() -> None:
    objects = [RemoteObject("p/a.txt.gz", 3), RemoteObject("p/a.txt", 4)]
    plan = plan_downloads(objects, "p", Path("/d"), None, decompress=True)
    assert [d.key for d in plan] == ["p/a.txt"]


def test_part_size_grows_only_past_the_ten_thousand_part_limit() -> None:
    assert part_size(PART_SIZE * 3) == PART_SIZE
    huge = PART_SIZE * MAX_PARTS * 2
    assert part_size(huge) * (MAX_PARTS - 1) >= huge
