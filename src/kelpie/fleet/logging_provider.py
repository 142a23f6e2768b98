"""A fleet provider that only logs: the default when no SaladCloud API key is configured."""

from __future__ import annotations

import logging

from kelpie.fleet.base import FleetTarget, GroupState

logger = logging.getLogger("kelpie.fleet")


class LoggingFleetProvider:
    """Logs every call and changes nothing; every group reads as running with 0 replicas.

    Lets kelpie run (and the autoscaler loop exercise its rules) without a fleet to drive.
    """

    async def get_group(self, target: FleetTarget) -> GroupState:
        logger.info("fleet: get_group %s (no fleet provider configured)", _describe(target))
        return GroupState(
            id=target.container_group_id,
            name=target.container_group_id,
            status="running",
            replicas=0,
        )

    async def start_group(self, target: FleetTarget) -> None:
        logger.info("fleet: would start %s", _describe(target))

    async def stop_group(self, target: FleetTarget) -> None:
        logger.info("fleet: would stop %s", _describe(target))

    async def set_replicas(self, target: FleetTarget, replicas: int) -> None:
        logger.info("fleet: would set replicas of %s to %d", _describe(target), replicas)

    async def reallocate(self, target: FleetTarget, machine_id: str) -> None:
        logger.info("fleet: would reallocate machine %s of %s", machine_id, _describe(target))

    async def aclose(self) -> None:
        return None


def _describe(target: FleetTarget) -> str:
    return f"{target.org_name}/{target.project_name}/{target.container_group_id}"
