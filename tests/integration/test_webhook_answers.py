"""A receiver's answer is read only a few KB deep: one that answers a gigabyte does not grow
the API, whose delivery still counts (the status is all that matters)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api import Api, new_admin_key
from tests.support.processes import free_port, start_server
from tests.support.waiting import wait_for
from tests.support.webhook_receiver import ReceiverProcess, start_receiver

GIB = 1 << 30
MIB = 1 << 20


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM) so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def delivered_urls(database: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT url FROM webhook_outbox WHERE delivered_at IS NOT NULL")
        return [url for (url,) in rows]


@pytest.fixture
def receivers() -> Iterator[list[ReceiverProcess]]:
    started: list[ReceiverProcess] = []
    yield started
    for receiver in started:
        receiver.stop()


@pytest.mark.slow
def test_a_receiver_answering_a_gigabyte_does_not_grow_the_api(
    tmp_path: Path, receivers: list[ReceiverProcess]
) -> None:
    database = tmp_path / "kelpie.db"
    server = start_server(f"sqlite:///{database}", new_admin_key(), tmp_path / "logs")
    api = Api(server, "sqlite")
    try:
        user = api.new_user()
        secret = user.http.get("/users/me").json()["webhook_secret"]
        normal = start_receiver(free_port(), secret, tmp_path / "normal.jsonl")
        huge = start_receiver(free_port(), secret, tmp_path / "huge.jsonl", huge_body=GIB)
        receivers += [normal, huge]
        # One ordinary delivery first, so that what every delivery needs is already in memory.
        user.submit(container_group_id="warm-up", webhook=normal.url)
        assert user.claim("m-1", "warm-up") is not None
        wait_for(normal.accepted, "the warm-up delivery")
        before = peak_rss_bytes(server.proc.pid)

        user.submit(container_group_id="huge", webhook=huge.url)
        assert user.claim("m-2", "huge") is not None
        [answer] = wait_for(huge.answers, "the receiver to stop sending its answer", timeout=60)
        wait_for(lambda: huge.url in delivered_urls(database), "the delivery recorded")

        assert not answer["complete"] and answer["body_bytes_sent"] < 64 * MIB
        assert peak_rss_bytes(server.proc.pid) - before < 20 * MIB
    finally:
        api.close()
        server.stop()
