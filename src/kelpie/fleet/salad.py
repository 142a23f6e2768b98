"""SaladCloud public API as a fleet provider: a thin async httpx client with retries.

Paths are those of the official SDKs, relative to `https://api.salad.com/api/public`:

    GET   /organizations/{org}/projects/{project}/containers               list (id -> name)
    GET   /organizations/{org}/projects/{project}/containers/{name}        one group
    POST  .../containers/{name}/start | /stop                              202
    PATCH .../containers/{name}   (application/merge-patch+json)           {"replicas": n}
    POST  .../containers/{name}/instances/{machine_id}/reallocate          202

Every path but the list needs the group *name*, while kelpie knows groups by *id* (the uuid
SaladCloud puts in `SALAD_CONTAINER_GROUP_ID`), so the provider caches id -> name per project.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from kelpie.backoff import Backoff
from kelpie.fleet.base import FleetError, FleetTarget, GroupNotFound, GroupState

logger = logging.getLogger("kelpie.fleet")

DEFAULT_SALAD_API_URL = "https://api.salad.com/api/public"
MERGE_PATCH_JSON = "application/merge-patch+json"

# Transient failures worth another attempt; any other 4xx is our mistake and final.
_RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class SaladFleetProvider:
    """Drives SaladCloud container groups through the public API (`Salad-Api-Key` header).

    Connection errors, timeouts, 5xx and 429 are retried up to `max_attempts` times, waiting
    `Retry-After` when the API sends one and otherwise an exponential backoff with full jitter
    (`uniform(0, min(backoff_max, backoff_base * 2**n))`). Any other 4xx (a bad key: 401/403)
    raises `FleetError` with the API's message, at once.

    A 404 on a group's path may mean the group is gone, or renamed, or that the API did not
    find something else (an instance, or a route it does not serve just now): the project's
    list of groups decides. `GroupNotFound` — which makes the autoscaler delete the user's
    rule — is raised only when that list no longer has the group's id; a renamed group is
    called again under its new name; any other 404 is an ordinary `FleetError`.

    Retrying every call is safe because each one states a desired end, not a step: start and
    stop ask for a state (a group already running stays running), the merge-patch sets an
    absolute replica count (never an increment), and reallocate names one machine, which
    leaves the group once reallocated, so a repeat can only answer 404, never move a second
    node: a repeat can only answer 404 ("no such instance"), which is a `FleetError`.
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_SALAD_API_URL,
        *,
        client: httpx.AsyncClient | None = None,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._base_url = base_url.rstrip("/")
        self._headers = {"Salad-Api-Key": api_key, "Accept": "application/json"}
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)
        self._owns_client = client is None
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        # (org, project) -> {container group id: name}
        self._group_names: dict[tuple[str, str], dict[str, str]] = {}

    @property
    def base_url(self) -> str:
        return self._base_url

    async def get_group(self, target: FleetTarget) -> GroupState:
        group = _parse_group(_json_body(await self._on_group(target, "GET")))
        if group.id == target.container_group_id:
            return group
        # The name now belongs to another group: ours was deleted (and the name reused), or
        # renamed. The list of the project's groups says which.
        self._forget(target)
        name = await self._group_name(target)  # GroupNotFound if the id is gone
        group = _parse_group(_json_body(await self._send("GET", self._path(target, name))))
        if group.id != target.container_group_id:
            raise FleetError(
                f"SaladCloud lists group {target.container_group_id} as {name!r}"
                f" but that name reads as group {group.id}"
            )
        return group

    async def start_group(self, target: FleetTarget) -> None:
        await self._on_group(target, "POST", "/start")
        logger.info("salad: started container group %s", _describe(target))

    async def stop_group(self, target: FleetTarget) -> None:
        await self._on_group(target, "POST", "/stop")
        logger.info("salad: stopped container group %s", _describe(target))

    async def set_replicas(self, target: FleetTarget, replicas: int) -> None:
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, not {replicas}")
        await self._on_group(
            target, "PATCH", body={"replicas": replicas}, content_type=MERGE_PATCH_JSON
        )
        logger.info("salad: set replicas of %s to %d", _describe(target), replicas)

    async def reallocate(self, target: FleetTarget, machine_id: str) -> None:
        machine = quote(machine_id, safe="")
        await self._on_group(target, "POST", f"/instances/{machine}/reallocate")
        logger.info("salad: reallocated machine %s of %s", machine_id, _describe(target))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _path(self, target: FleetTarget, name: str) -> str:
        return f"{_project_path(target)}/containers/{quote(name, safe='')}"

    async def _on_group(
        self,
        target: FleetTarget,
        method: str,
        suffix: str = "",
        *,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> httpx.Response:
        """A call on the group's path (+ `suffix`); a 404 is judged by the project's list
        (see the class docstring)."""
        name = await self._group_name(target)
        try:
            return await self._send(
                method, self._path(target, name) + suffix, body=body, content_type=content_type
            )
        except FleetError as exc:
            if exc.status_code != 404:
                raise
            self._forget(target)
            renamed = await self._group_name(target)  # GroupNotFound if the id is gone
            if renamed == name:
                raise  # the group is there: the 404 was about something else
        return await self._send(
            method, self._path(target, renamed) + suffix, body=body, content_type=content_type
        )

    async def _group_name(self, target: FleetTarget) -> str:
        """The group's name, listing the project's groups when the id is not cached yet."""
        key = (target.org_name, target.project_name)
        name = self._group_names.get(key, {}).get(target.container_group_id)
        if name is not None:
            return name
        response = await self._send("GET", f"{_project_path(target)}/containers")
        names = _parse_group_names(_json_body(response))
        self._group_names[key] = names
        if target.container_group_id not in names:
            raise GroupNotFound(
                f"no container group {target.container_group_id} in "
                f"{target.org_name}/{target.project_name}"
            )
        return names[target.container_group_id]

    def _forget(self, target: FleetTarget) -> None:
        key = (target.org_name, target.project_name)
        self._group_names.get(key, {}).pop(target.container_group_id, None)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> httpx.Response:
        """One API call with retries; any 4xx but 408/429 is a `FleetError` at once."""
        headers = dict(self._headers)
        content: bytes | None = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        url = f"{self._base_url}{path}"
        failure = ""
        status_code: int | None = None
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = await self._client.request(method, url, headers=headers, content=content)
            except _TRANSIENT_ERRORS as exc:
                failure, status_code = f"{type(exc).__name__}: {exc}", None
                delay = self._backoff(attempt)
            except httpx.HTTPError as exc:
                raise FleetError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            else:
                status_code = response.status_code
                if response.is_success:
                    return response
                message = f"{status_code} {_error_message(response)}"
                if status_code not in _RETRYABLE_STATUSES:
                    raise FleetError(f"{method} {path}: {message}", status_code=status_code)
                failure = message
                delay = self._delay_after(response, attempt)
            if attempt < self._max_attempts:
                logger.warning(
                    "salad: %s %s failed (%s); attempt %d/%d, retrying in %.2fs",
                    method,
                    path,
                    failure,
                    attempt,
                    self._max_attempts,
                    delay,
                )
                await asyncio.sleep(delay)
        raise FleetError(
            f"{method} {path}: gave up after {self._max_attempts} attempts: {failure}",
            status_code=status_code,
        )

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter, so many callers do not retry in step."""
        return Backoff(self._backoff_base, self._backoff_max).delay(attempt)

    def _delay_after(self, response: httpx.Response, attempt: int) -> float:
        """Honour `Retry-After` (seconds or an HTTP date, capped); else back off."""
        value = response.headers.get("Retry-After")
        if value is None:
            return self._backoff(attempt)
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return self._backoff(attempt)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
        if not math.isfinite(seconds):
            return self._backoff(attempt)
        return min(max(seconds, 0.0), self._backoff_max)


def _describe(target: FleetTarget) -> str:
    return f"{target.org_name}/{target.project_name}/{target.container_group_id}"


def _project_path(target: FleetTarget) -> str:
    org = quote(target.org_name, safe="")
    project = quote(target.project_name, safe="")
    return f"/organizations/{org}/projects/{project}"


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise FleetError(
            f"SaladCloud answered {response.status_code} with a body that is not JSON"
        ) from exc


def _parse_group_names(payload: Any) -> dict[str, str]:
    items = payload.get("items") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        raise FleetError("SaladCloud container group list has no `items` list")
    names: dict[str, str] = {}
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            name = item.get("name")
            if isinstance(name, str):
                names[item["id"]] = name
    return names


def _parse_group(payload: Any) -> GroupState:
    """A `GroupState` from a container group object; only id and name are required."""
    if not isinstance(payload, dict):
        raise FleetError("SaladCloud container group is not a JSON object")
    group_id, name = payload.get("id"), payload.get("name")
    if not isinstance(group_id, str) or not isinstance(name, str):
        raise FleetError("SaladCloud container group lacks an id or a name")
    state = payload.get("current_state")
    status = state.get("status") if isinstance(state, dict) else None
    replicas = payload.get("replicas")
    return GroupState(
        id=group_id,
        name=name,
        status=status if isinstance(status, str) else "unknown",
        replicas=replicas if isinstance(replicas, int) else 0,
    )


def _error_message(response: httpx.Response) -> str:
    """The API's own words: RFC 7807 problem details (`detail`, then `title`), else the text."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        for field in ("detail", "title", "message"):
            value = payload.get(field)
            if isinstance(value, str) and value:
                return value
    return response.text[:200] or response.reason_phrase
