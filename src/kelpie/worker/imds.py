"""Worker-side client of the SaladCloud Instance Metadata Service (IMDS).

On a SaladCloud node the IMDS answers at `http://169.254.169.254` (header `Metadata: true`):

    GET  /v1/status          {"ready": bool, "started": bool}
    PUT  /v1/deletion-cost   {"deletion_cost": int}   higher = scale-down removes this last
    POST /v1/reallocate      {"reason": str}          move this container to another node

Off the SaladCloud network there is no IMDS and the worker must run fine without it: every
method answers False instead of raising, never waits longer than `timeout`, and after one
unreachable attempt the client stops trying for `retry_unavailable_after` seconds, so a node
without IMDS does not pay a timeout per heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import httpx

logger = logging.getLogger("kelpie.fleet")

DEFAULT_IMDS_URL = "http://169.254.169.254"


class ImdsClient:
    """Best-effort calls to the SaladCloud IMDS: each returns True when IMDS accepted it."""

    def __init__(
        self,
        base_url: str = DEFAULT_IMDS_URL,
        *,
        timeout: float = 2.0,
        retry_unavailable_after: float = 300.0,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._retry_unavailable_after = retry_unavailable_after
        self._client = httpx.AsyncClient(timeout=timeout, headers={"Metadata": "true"})
        self._unavailable_until = 0.0
        self._unavailable_logged = False
        self._refusals_logged: set[tuple[str, str]] = set()

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, timeout: float = 2.0) -> ImdsClient:
        """A client for `SALAD_IMDS_URL` when set, else the link-local SaladCloud address."""
        return cls(env.get("SALAD_IMDS_URL", "").strip() or DEFAULT_IMDS_URL, timeout=timeout)

    @property
    def base_url(self) -> str:
        return self._base_url

    async def available(self) -> bool:
        """Whether IMDS answers here (a quick `GET /v1/status`)."""
        return await self._call("GET", "/v1/status")

    async def set_deletion_cost(self, cost: int) -> bool:
        """Ask SaladCloud to remove this instance last (high cost) or first (low) on scale-down."""
        return await self._call("PUT", "/v1/deletion-cost", {"deletion_cost": cost})

    async def reallocate(self, reason: str) -> bool:
        """Ask SaladCloud to move this container to another node; `reason` goes to support."""
        return await self._call("POST", "/v1/reallocate", {"reason": reason})

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> bool:
        if time.monotonic() < self._unavailable_until:
            return False
        try:
            # httpx's timeout applies per phase; this bounds the whole call.
            async with asyncio.timeout(self._timeout):
                response = await self._client.request(method, f"{self._base_url}{path}", json=body)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            self._mark_unavailable(exc)
            return False
        self._unavailable_until = 0.0
        self._unavailable_logged = False
        if response.is_success:
            self._refusals_logged.discard((method, path))
            return True
        # Off SaladCloud another metadata service may answer every call (each heartbeat sets
        # the deletion cost): said once, until the call succeeds again.
        log = logger.debug if (method, path) in self._refusals_logged else logger.warning
        self._refusals_logged.add((method, path))
        log("imds: %s %s answered %d: %s", method, path, response.status_code, response.text[:200])
        return False

    def _mark_unavailable(self, exc: BaseException) -> None:
        self._unavailable_until = time.monotonic() + self._retry_unavailable_after
        if not self._unavailable_logged:
            self._unavailable_logged = True
            logger.debug(
                "imds: unreachable at %s (%s: %s); not on SaladCloud? retrying in %.0fs",
                self._base_url,
                type(exc).__name__,
                exc,
                self._retry_unavailable_after,
            )
