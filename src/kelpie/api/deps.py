"""Dependencies every router uses: the store, the caller, admin checks."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader

from kelpie.api.errors import ApiError
from kelpie.api.security import hash_api_key
from kelpie.api.state import AppState
from kelpie.store.models import Principal
from kelpie.store.protocol import Store, StoreUnavailable

JobId = Annotated[uuid.UUID, Path(description="The job's id (a UUID).")]

_api_key_header = APIKeyHeader(name="X-Kelpie-Key", auto_error=False)


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.kelpie
    return state


State = Annotated[AppState, Depends(get_state)]


async def get_store(state: State) -> Store:
    return state.store


StoreDep = Annotated[Store, Depends(get_store)]


async def get_principal(
    request: Request, key: Annotated[str | None, Security(_api_key_header)]
) -> Principal:
    # The state straight from the request, not through the `State` dependency: every
    # request resolves this one, and each dependency costs FastAPI a few microseconds.
    state: AppState = request.app.state.kelpie
    if not state.availability.ready:
        # Until start-up has set the store up (and retired a previous admin key), no key
        # is trusted.
        raise StoreUnavailable("the store is not set up yet")
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
