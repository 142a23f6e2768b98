"""The lease of a running job: a heartbeat every `heartbeat_interval` seconds.

A lost API never kills a running job: while the API cannot be reached the job keeps going
and the heartbeat keeps trying. Only an answer saying the job is no longer ours (status not
`running`, 409, 404) ends the lease, and then `lost` is set and the job must be dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from kelpie.client import ApiUnavailable, AsyncKelpieClient, Conflict, KelpieError, NotFoundError

logger = logging.getLogger("kelpie.worker")


class Heartbeat:
    """Keeps one job's lease; `run()` returns only when the lease is lost."""

    def __init__(
        self,
        client: AsyncKelpieClient,
        job_id: str,
        machine_id: str,
        container_group_id: str,
        interval: float,
        on_beat: Callable[[int], None],
    ) -> None:
        self._client = client
        self._job_id = job_id
        self._machine_id = machine_id
        self._group_id = container_group_id
        self._interval = interval
        self._on_beat = on_beat
        self.beats = 0
        self.lost_reason: str | None = None

    async def run(self) -> None:
        next_beat = time.monotonic() + self._interval
        unreachable_since: float | None = None
        while True:
            await asyncio.sleep(max(0.0, next_beat - time.monotonic()))
            next_beat = max(next_beat + self._interval, time.monotonic())
            try:
                status = await self._client.heartbeat(
                    self._job_id, self._machine_id, self._group_id
                )
            except ApiUnavailable as exc:
                if unreachable_since is None:
                    unreachable_since = time.monotonic()
                    logger.warning("heartbeat: API unreachable, the job keeps running: %s", exc)
                continue
            except (Conflict, NotFoundError) as exc:
                self.lost_reason = f"heartbeat refused ({exc.status_code}): {exc}"
                return
            except KelpieError as exc:
                logger.error("heartbeat: the API refused it (%s); the job keeps running", exc)
                continue
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
