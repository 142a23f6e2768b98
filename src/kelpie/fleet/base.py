"""The small interface kelpie's API uses to drive a fleet of container groups.

The autoscaler starts, stops and resizes groups; blocked-machine handling reallocates a
machine that keeps failing jobs. Implementations: `SaladFleetProvider` (SaladCloud public
API) and `LoggingFleetProvider` (no-op default when no SaladCloud key is configured).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# SaladCloud statuses in which a group has been started: `deploying` means started but no
# instance running yet. `pending` is image preparation before a group can start at all.
STARTED_STATUSES = frozenset({"running", "deploying"})


@dataclass(frozen=True)
class FleetTarget:
    """Where a container group lives: the SaladCloud org/project of the user's API key.

    `container_group_id` is the SaladCloud container group *id* (a uuid), which is what
    SaladCloud puts in `SALAD_CONTAINER_GROUP_ID` on every node.
    """

    org_name: str
    project_name: str
    container_group_id: str


@dataclass(frozen=True)
class GroupState:
    """A container group as the provider reports it."""

    id: str
    name: str
    status: str  # pending | running | stopped | succeeded | failed | deploying | ...
    replicas: int

    @property
    def running(self) -> bool:
        """True when the group is started (running, or deploying its first instances)."""
        return self.status in STARTED_STATUSES


class GroupNotFound(Exception):
    """The group no longer exists: the provider's list of the project's groups does not have
    its id. Not raised for a 404 about anything else (the autoscaler deletes the user's rule
    on this one)."""


class FleetError(Exception):
    """A provider call failed for any other reason, after retries where retrying made sense."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class FleetProvider(Protocol):
    """What the API needs from a fleet: read, start, stop and resize groups; replace a node.

    Every method raises `GroupNotFound` when the group no longer exists and `FleetError` for
    any other failure (a 404 about something else included).
    """

    async def get_group(self, target: FleetTarget) -> GroupState: ...

    async def start_group(self, target: FleetTarget) -> None: ...

    async def stop_group(self, target: FleetTarget) -> None: ...

    async def set_replicas(self, target: FleetTarget, replicas: int) -> None: ...

    async def reallocate(self, target: FleetTarget, machine_id: str) -> None: ...

    async def aclose(self) -> None: ...
