"""Progress lines for long transfers: bytes done/total, rate and ETA every couple of seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

logger = logging.getLogger("kelpie.storage")

PROGRESS_INTERVAL_S = 2.0
MB = 1_000_000


@dataclass
class TransferProgress:
    """Counts bytes and files of one transfer; `reporting()` logs while it runs.

    Transfers shorter than the interval log nothing.
    """

    verb: str
    target: str
    total_bytes: int
    total_files: int
    bytes_done: int = 0
    files_done: int = 0
    started: float = field(default_factory=time.monotonic)

    def advance(self, nbytes: int) -> None:
        """Record bytes moved; a failed attempt hands its bytes back with a negative count."""
        self.bytes_done += nbytes

    def file_done(self) -> None:
        self.files_done += 1

    def line(self, now: float | None = None) -> str:
        elapsed = max((now if now is not None else time.monotonic()) - self.started, 1e-9)
        rate = self.bytes_done / elapsed
        percent = 100.0 * self.bytes_done / self.total_bytes if self.total_bytes else 100.0
        remaining = max(self.total_bytes - self.bytes_done, 0)
        eta = f"{remaining / rate:.0f} s" if rate > 0 else "unknown"
        return (
            f"{self.verb} {self.target}: {self.bytes_done / MB:.1f}/{self.total_bytes / MB:.1f} MB"
            f" ({percent:.0f}%), {self.files_done}/{self.total_files} files,"
            f" {rate / MB:.1f} MB/s, ETA {eta}"
        )

    @contextlib.asynccontextmanager
    async def reporting(self, interval: float = PROGRESS_INTERVAL_S) -> AsyncIterator[None]:
        """Log a progress line every `interval` seconds until the block ends."""
        reporter = asyncio.create_task(self._report_every(interval), name=f"progress {self.target}")
        succeeded = False
        try:
            yield
            succeeded = True
        finally:
            reporter.cancel()  # never awaited: it only sleeps and logs
            if succeeded and time.monotonic() - self.started >= interval:
                logger.info("%s (done)", self.line())

    async def _report_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            logger.info("%s", self.line())
