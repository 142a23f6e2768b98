"""This worker's node as SaladCloud sees it, through the IMDS: deletion cost and reallocation.

The deletion cost tells SaladCloud which instance to remove first on scale-down: 0 while
idle; while a job runs, the seconds of work deleting the node would lose (since the attempt
began, or since its last committed checkpoint if later), so scale-in takes the node that
loses least; and `FINISHING_COST` while final outputs upload. Costs are sent by one
background task that always sends the latest value, so a slow or missing IMDS never delays a
heartbeat or a claim. Off SaladCloud every call is a fast no-op (see `ImdsClient`).
"""

from __future__ import annotations

import asyncio
import logging

from kelpie.worker.imds import ImdsClient
from kelpie.worker.tasks import cancel_and_wait, spawn

logger = logging.getLogger("kelpie.worker")

IDLE_COST = 0
FINISHING_COST = 999_999_999


class Node:
    """Deletion cost and self-reallocation; never raises, never blocks the caller on IMDS."""

    def __init__(self, imds: ImdsClient) -> None:
        self._imds = imds
        self._wanted: int | None = None
        self._sent: int | None = None
        self._changed = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    def set_deletion_cost(self, cost: int) -> None:
        self._wanted = cost
        self._changed.set()
        if self._sender is None or self._sender.done():
            self._sender = spawn(self._send_costs(), "imds-deletion-cost")

    def idle(self) -> None:
        self.set_deletion_cost(IDLE_COST)

    def working(self, seconds_at_risk: float) -> None:
        """A job runs; deleting the node would lose `seconds_at_risk` of its work (at least
        1, which still ranks above an idle node)."""
        self.set_deletion_cost(max(1, int(seconds_at_risk)))

    def finishing(self) -> None:
        self.set_deletion_cost(FINISHING_COST)

    async def reallocate(self, reason: str) -> bool:
        """Ask SaladCloud to move this container to another node; False off SaladCloud."""
        accepted = await self._imds.reallocate(reason)
        if accepted:
            logger.warning("asked SaladCloud to reallocate this node: %s", reason)
        else:
            logger.warning("could not ask for reallocation (no IMDS here?): %s", reason)
        return accepted

    async def aclose(self) -> None:
        await cancel_and_wait([self._sender])
        await self._imds.aclose()

    async def _send_costs(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            cost = self._wanted
            if cost is None or cost == self._sent:
                continue
            if await self._imds.set_deletion_cost(cost):
                self._sent = cost
                logger.debug("imds: deletion cost %d", cost)
