"""Progress lines: done/total, rate, ETA; only for transfers that last."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kelpie.storage.progress import TransferProgress


def test_line_shows_bytes_rate_and_eta() -> None:
    progress = TransferProgress("upload", "s3://b/ck", 100_000_000, 4, started=0.0)
    progress.advance(25_000_000)
    progress.file_done()
    assert progress.line(now=2.0) == (
        "upload s3://b/ck: 25.0/100.0 MB (25%), 1/4 files, 12.5 MB/s, ETA 6 s"
    )


def test_line_before_any_byte_has_no_eta() -> None:
    progress = TransferProgress("download", "s3://b/in", 10, 1, started=0.0)
    assert progress.line(now=1.0).endswith("0.0 MB/s, ETA unknown")


def test_a_failed_attempt_hands_its_bytes_back() -> None:
    progress = TransferProgress("upload", "s3://b/k", 10, 1)
    progress.advance(6)
    progress.advance(-6)
    assert progress.bytes_done == 0


async def reports(count: int) -> None:
    """Return once `count` more progress lines have been logged."""
    seen = asyncio.Event()

    class Counter(logging.Handler):
        logged = 0

        def emit(self, record: logging.LogRecord) -> None:
            self.logged += 1
            if self.logged >= count:
                seen.set()

    handler = Counter()
    logging.getLogger("kelpie.storage").addHandler(handler)
    try:
        await seen.wait()
    finally:
        logging.getLogger("kelpie.storage").removeHandler(handler)


async def test_reports_while_running_and_once_done(caplog: pytest.LogCaptureFixture) -> None:
    progress = TransferProgress("upload", "s3://b/k", 10, 1)
    with caplog.at_level(logging.INFO, logger="kelpie.storage"):
        async with progress.reporting(interval=0.01):
            progress.advance(5)
            await asyncio.wait_for(reports(2), timeout=10)  # two while the transfer runs
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 3
    assert lines[0].startswith("upload s3://b/k: 0.0/0.0 MB (50%)")
    assert lines[-1].endswith("(done)")


async def test_short_transfers_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    progress = TransferProgress("upload", "s3://b/k", 10, 1)
    with caplog.at_level(logging.INFO, logger="kelpie.storage"):
        async with progress.reporting(interval=5):
            progress.advance(10)
    assert caplog.records == []
