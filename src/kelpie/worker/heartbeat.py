"""The lease of a running job: a heartbeat every `heartbeat_interval` seconds.

A lost API never kills a running job: while the API cannot be reached the job keeps going and
the heartbeat tries again every 1-2 s, so the first beat after the API comes back is sent at
once. Only an answer saying the job is no longer this attempt's (409, 404, a status other
than `running`) ends the lease: `lost_reason` is set and the job must be dropped.

The lease may have lapsed once no beat succeeded for two intervals (the API's stall
threshold): `lease_ok()` is then False, and nothing may be committed in the job's name until
a beat succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from kelpie.client import ApiUnavailable, AsyncKelpieClient, Conflict, KelpieError, NotFoundError

logger = logging.getLogger("kelpie.worker")

# While the API is unreachable: a beat every 1-2 s, each given this long to answer.
UNREACHABLE_RETRY_S = (1.0, 2.0)
UNREACHABLE_TIMEOUT_S = 3.0
# A beat while all is well may take up to an interval (within these bounds) to answer.
BEAT_TIMEOUT_MIN_S = 2.0
BEAT_TIMEOUT_MAX_S = 10.0


class Heartbeat:
    """Keeps one attempt's lease; `run()` returns only when the lease is lost."""

    def __init__(
        self,
        client: AsyncKelpieClient,
        job_id: str,
        machine_id: str,
        container_group_id: str,
        attempt_id: int | None,
        interval: float,
        on_beat: Callable[[int], None],
        progress: Callable[[], Mapping[str, Any] | None] | None = None,
    ) -> None:
        # One try per beat: this loop decides when to try again.
        self._client = client.with_retries(1)
        self._job_id = job_id
        self._machine_id = machine_id
        self._group_id = container_group_id
        self._attempt_id = attempt_id
        self._interval = interval
        self._on_beat = on_beat
        self._progress = progress
        # The progress the API last accepted: a beat sends the job's progress when it differs.
        self._progress_sent: Mapping[str, Any] | None = None
        self.beats = 0
        self.lost_reason: str | None = None
        # The claim itself was the last word from the API.
        self._last_ok = time.monotonic()

    def lease_ok(self) -> bool:
        """False once no beat has succeeded for two intervals: another machine may hold the
        job by now."""
        return time.monotonic() - self._last_ok < 2 * self._interval

    async def run(self) -> None:
        next_beat = time.monotonic() + self._interval
        unreachable_since: float | None = None
        while True:
            await asyncio.sleep(max(0.0, next_beat - time.monotonic()))
            timeout = (
                UNREACHABLE_TIMEOUT_S
                if unreachable_since is not None
                else min(BEAT_TIMEOUT_MAX_S, max(BEAT_TIMEOUT_MIN_S, self._interval))
            )
            progress = self._progress() if self._progress is not None else None
            if progress == self._progress_sent:
                progress = None
            try:
                async with asyncio.timeout(timeout):
                    status = await self._client.heartbeat(
                        self._job_id, self._machine_id, self._group_id, self._attempt_id, progress
                    )
            except (ApiUnavailable, TimeoutError) as exc:
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                    logger.warning("heartbeat: API unreachable, the job keeps running: %s", exc)
                next_beat = time.monotonic() + random.uniform(*UNREACHABLE_RETRY_S)
                continue
            except (Conflict, NotFoundError) as exc:
                self.lost_reason = f"heartbeat refused ({exc.status_code}): {exc}"
                return
            except KelpieError as exc:
                logger.error("heartbeat: the API refused it (%s); the job keeps running", exc)
                next_beat = time.monotonic() + random.uniform(*UNREACHABLE_RETRY_S)
                continue
            self._last_ok = time.monotonic()
            if progress is not None:
                self._progress_sent = progress
            next_beat = self._last_ok + self._interval
            if unreachable_since is not None:
                logger.warning(
                    "heartbeat: API reachable again after %.0f s",
                    time.monotonic() - unreachable_since,
                )
                unreachable_since = None
            if status != "running":
                self.lost_reason = f"job is {status}"
                return
            self.beats += 1
            self._on_beat(self.beats)
