"""Dependencies every router uses: the store, the caller, admin checks."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import APIKeyHeader

from kelpie.api.errors import ApiError
from kelpie.api.security import hash_api_key
from kelpie.api.state import AppState
from kelpie.store.models import Principal
from kelpie.store.protocol import Store, StoreUnavailable

JobId = Annotated[uuid.UUID, Path(description="The job's id (a UUID).")]

API_KEY_HEADER = "X-Kelpie-Key"
# How a caller sends its key, as the OpenAPI spec declares it (kelpie.api.docs puts it on every
# operation that resolves `get_principal`). Not a FastAPI `Security` dependency: resolving one
# costs every request about 10 µs of CPU, some 5% of a heartbeat.
API_KEY_SCHEME = APIKeyHeader(name=API_KEY_HEADER, auto_error=False)


def app_state(request: Request) -> AppState:
    """What this API process holds. The workers' calls and submissions read it this way
    rather than through the `State` dependency: each dependency costs FastAPI about 10 µs
    of CPU per request, a few percent of a heartbeat."""
    state: AppState = request.app.state.kelpie
    return state


async def get_state(request: Request) -> AppState:
    return app_state(request)


State = Annotated[AppState, Depends(get_state)]


async def get_store(state: State) -> Store:
    return state.store


StoreDep = Annotated[Store, Depends(get_store)]


async def get_principal(request: Request) -> Principal:
    # The state straight from the request, not through the `State` dependency: every
    # request resolves this one, and each dependency costs FastAPI a few microseconds.
    state = app_state(request)
    if not state.availability.ready:
        # Until start-up has set the store up (and retired a previous admin key), no key
        # is trusted.
        raise StoreUnavailable("the store is not set up yet")
    key = request.headers.get(API_KEY_HEADER)
    if not key:
        raise ApiError(401, "missing X-Kelpie-Key header")
    key_hash = hash_api_key(key)
    principal = state.keys.get(key_hash)
    if principal is None:
        principal = await state.store.principal_for_key(key_hash)
        if principal is None:
            raise ApiError(403, "unknown or revoked API key")
        state.keys.put(key_hash, principal)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_admin(principal: CurrentPrincipal) -> Principal:
    if not principal.user.is_admin:
        raise ApiError(403, "this endpoint is for admin users")
    return principal


AdminPrincipal = Annotated[Principal, Depends(get_admin)]


def scope(principal: Principal) -> str | None:
    """The user whose records a caller may touch; None (all users) for admins."""
    return None if principal.user.is_admin else principal.user.id
