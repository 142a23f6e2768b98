"""Fleet providers (SaladCloud REST, a logging no-op) behind one small interface."""

from __future__ import annotations

from collections.abc import Mapping

from kelpie.fleet.base import FleetError, FleetProvider, FleetTarget, GroupNotFound, GroupState
from kelpie.fleet.logging_provider import LoggingFleetProvider
from kelpie.fleet.salad import DEFAULT_SALAD_API_URL, SaladFleetProvider

__all__ = [
    "FleetError",
    "FleetProvider",
    "FleetTarget",
    "GroupNotFound",
    "GroupState",
    "LoggingFleetProvider",
    "SaladFleetProvider",
    "fleet_provider_from_env",
]


def fleet_provider_from_env(env: Mapping[str, str]) -> FleetProvider:
    """SaladCloud when `SALAD_API_KEY` is set (`KELPIE_SALAD_API_URL` overrides the API
    address), else the logging no-op."""
    api_key = env.get("SALAD_API_KEY", "").strip()
    if not api_key:
        return LoggingFleetProvider()
    base_url = env.get("KELPIE_SALAD_API_URL", "").strip() or DEFAULT_SALAD_API_URL
    return SaladFleetProvider(api_key, base_url)
