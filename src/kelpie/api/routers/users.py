"""Users and API keys (PROTOCOL §2). Creating and removing users is for admins; a user may
list and revoke its own keys, an admin anyone's."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import JSONResponse

from kelpie.api.deps import AdminPrincipal, CurrentPrincipal, State, StoreDep
from kelpie.api.errors import ApiError, error_responses, not_found
from kelpie.api.security import hash_api_key, new_api_key
from kelpie.schemas import (
    ApiKeyList,
    ApiKeyOut,
    MeOut,
    TokenCreate,
    TokenOut,
    UserCreate,
    UserOut,
)
from kelpie.store.models import ApiKey, Principal, User
from kelpie.store.protocol import AlreadyExists, NotFound

router = APIRouter(prefix="/users", tags=["users"])

_ERRORS = error_responses(400, 401, 403)
UserId = Annotated[uuid.UUID, Path(description="The user's id.")]
TokenId = Annotated[uuid.UUID, Path(description="The key's id, as `POST .../token` answered.")]


def _user_body(user: User) -> dict[str, Any]:
    return UserOut(id=user.id, username=user.username, created=user.created).model_dump(mode="json")


@router.post(
    "",
    status_code=201,
    response_model=UserOut,
    operation_id="create_user",
    responses={**_ERRORS, **error_responses(409)},
    summary="Create a user (admin)",
)
async def create_user(body: UserCreate, admin: AdminPrincipal, store: StoreDep) -> JSONResponse:
    try:
        user = await store.create_user(body.username)
    except AlreadyExists:
        raise ApiError(409, f"username {body.username!r} is taken") from None
    return JSONResponse(_user_body(user), status_code=201)


@router.delete(
    "",
    status_code=204,
    operation_id="delete_users",
    responses=_ERRORS,
    summary="Remove every non-admin user and their keys (admin)",
)
async def delete_users(admin: AdminPrincipal, state: State) -> Response:
    await state.store.delete_non_admin_users()
    state.keys.clear()
    return Response(status_code=204)


@router.post(
    "/{user_id}/token",
    status_code=201,
    response_model=TokenOut,
    operation_id="create_token",
    responses={**_ERRORS, **error_responses(404)},
    summary="Issue an API key for a user (admin); shown only in this response",
)
async def create_token(
    user_id: Annotated[uuid.UUID, Path()],
    admin: AdminPrincipal,
    store: StoreDep,
    body: TokenCreate | None = None,
) -> JSONResponse:
    body = body or TokenCreate()
    key = new_api_key()
    try:
        created = await store.add_api_key(
            str(user_id), hash_api_key(key), body.org_name, body.project_name
        )
    except NotFound:
        raise not_found("User", user_id) from None
    return JSONResponse({"token": key, "id": created.id}, status_code=201)


def _key_body(key: ApiKey) -> dict[str, Any]:
    return ApiKeyOut(
        id=key.id,
        created=key.created,
        org_name=key.org_name,
        project_name=key.project_name,
        revoked=key.revoked,
        bootstrap=key.bootstrap,
    ).model_dump(mode="json")


def _may_manage_keys_of(principal: Principal, user_id: uuid.UUID) -> None:
    """Admins manage every user's keys, a user its own; another user's are not found."""
    if not principal.user.is_admin and principal.user.id != str(user_id):
        raise not_found("User", user_id)


@router.get(
    "/{user_id}/tokens",
    response_model=ApiKeyList,
    operation_id="list_tokens",
    responses={**_ERRORS, **error_responses(404)},
    summary="List a user's API keys, revoked ones included (never the keys themselves)",
)
async def list_tokens(
    user_id: UserId, principal: CurrentPrincipal, store: StoreDep
) -> JSONResponse:
    _may_manage_keys_of(principal, user_id)
    if await store.get_user(str(user_id)) is None:
        raise not_found("User", user_id)
    keys = [_key_body(key) for key in await store.list_api_keys(str(user_id))]
    return JSONResponse({"_count": len(keys), "tokens": keys})


@router.delete(
    "/{user_id}/tokens/{token_id}",
    status_code=204,
    operation_id="revoke_token",
    responses={**_ERRORS, **error_responses(404)},
    summary="Revoke one API key (revoking a revoked key is a no-op, as retries need)",
)
async def revoke_token(
    user_id: UserId, token_id: TokenId, principal: CurrentPrincipal, state: State
) -> Response:
    _may_manage_keys_of(principal, user_id)
    if not await state.store.revoke_api_key(str(user_id), str(token_id)):
        raise not_found("API key", token_id)
    # This process trusts no resolved key any more; the others within KEY_CACHE_SECONDS.
    state.keys.clear()
    return Response(status_code=204)


@router.get(
    "/me",
    response_model=MeOut,
    operation_id="get_me",
    responses=_ERRORS,
    summary="The calling user, with the secret and token that sign its webhooks",
)
async def me(principal: CurrentPrincipal) -> MeOut:
    user = principal.user
    return MeOut(
        id=user.id,
        username=user.username,
        created=user.created,
        is_admin=user.is_admin,
        webhook_secret=user.webhook_secret,
        webhook_token=user.webhook_token,
    )
