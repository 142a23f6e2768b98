"""`/scaling-rules` (PROTOCOL §7): how kelpie sizes a container group to its queue."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.responses import JSONResponse

from kelpie.api.deps import AdminPrincipal, CurrentPrincipal, State, StoreDep, scope
from kelpie.api.errors import ApiError, error_responses, not_found
from kelpie.fleet.base import FleetError, FleetTarget, GroupNotFound
from kelpie.fleet.logging_provider import LoggingFleetProvider
from kelpie.schemas import (
    NO_NUL,
    ScalingRuleCreate,
    ScalingRuleList,
    ScalingRuleOut,
    ScalingRuleUpdate,
)
from kelpie.store.models import Principal, ScalingRule, ScalingRulePatch
from kelpie.store.protocol import AlreadyExists, InvalidChange

log = logging.getLogger("kelpie.api.scaling")
router = APIRouter(prefix="/scaling-rules", tags=["scaling-rules"])

GroupPath = Annotated[str, Path(min_length=1, max_length=255, pattern=NO_NUL)]
_ERRORS = error_responses(400, 401, 403, 404)


def _out(rule: ScalingRule) -> ScalingRuleOut:
    return ScalingRuleOut(
        container_group_id=rule.container_group_id,
        user_id=rule.user_id,
        min_replicas=rule.min_replicas,
        max_replicas=rule.max_replicas,
        idle_threshold_seconds=rule.idle_threshold_seconds,
        created=rule.created,
        updated=rule.updated,
    )


async def _require_known_group(state: State, principal: Principal, group: str) -> None:
    """A rule for a group the fleet provider does not know could never act: refuse it."""
    if not isinstance(state.fleet, LoggingFleetProvider) and not (
        principal.org_name and principal.project_name
    ):
        raise ApiError(
            400,
            "this API key names no SaladCloud organization and project; ask an admin for a "
            "key created with org_name and project_name to use scaling rules",
        )
    target = FleetTarget(principal.org_name or "", principal.project_name or "", group)
    try:
        await state.fleet.get_group(target)
    except GroupNotFound:
        raise ApiError(
            400, f"container_group_id: no container group {group!r} in this key's project"
        ) from None
    except FleetError as exc:
        log.warning("could not check container group %s: %s", group, exc)
        raise ApiError(503, f"the fleet provider could not be reached: {exc}") from None


@router.post(
    "",
    status_code=201,
    response_model=ScalingRuleOut,
    operation_id="create_scaling_rule",
    responses={**_ERRORS, **error_responses(409)},
    summary="Create a scaling rule for a container group",
)
async def create_rule(
    body: ScalingRuleCreate, principal: CurrentPrincipal, state: State
) -> ScalingRuleOut:
    await _require_known_group(state, principal, body.container_group_id)
    now = datetime.now(UTC)
    try:
        rule = await state.store.create_scaling_rule(
            ScalingRule(
                user_id=principal.user.id,
                container_group_id=body.container_group_id,
                min_replicas=body.min_replicas,
                max_replicas=body.max_replicas,
                idle_threshold_seconds=body.idle_threshold_seconds,
                created=now,
                updated=now,
                org_name=principal.org_name,
                project_name=principal.project_name,
            )
        )
    except AlreadyExists:
        raise ApiError(
            409, f"a scaling rule for {body.container_group_id!r} exists already"
        ) from None
    return _out(rule)


@router.get(
    "",
    response_model=ScalingRuleList,
    operation_id="list_scaling_rules",
    responses=_ERRORS,
    summary="List scaling rules",
)
async def list_rules(principal: CurrentPrincipal, store: StoreDep) -> JSONResponse:
    rules = [
        _out(rule).model_dump(mode="json")
        for rule in await store.list_scaling_rules(scope(principal))
    ]
    return JSONResponse({"_count": len(rules), "rules": rules})


@router.delete(
    "",
    status_code=204,
    operation_id="delete_all_scaling_rules",
    responses=_ERRORS,
    summary="Remove every scaling rule (admin)",
)
async def delete_all_rules(admin: AdminPrincipal, store: StoreDep) -> Response:
    await store.delete_all_scaling_rules()
    return Response(status_code=204)


@router.get(
    "/{container_group_id}",
    response_model=ScalingRuleOut,
    operation_id="get_scaling_rule",
    responses=_ERRORS,
    summary="Get a scaling rule",
)
async def get_rule(
    container_group_id: GroupPath, principal: CurrentPrincipal, store: StoreDep
) -> ScalingRuleOut:
    rule = await store.get_scaling_rule(scope(principal), container_group_id)
    if rule is None:
        raise not_found("Scaling rule of container group", container_group_id)
    return _out(rule)


@router.patch(
    "/{container_group_id}",
    response_model=ScalingRuleOut,
    operation_id="update_scaling_rule",
    responses=_ERRORS,
    summary="Change a scaling rule",
)
async def update_rule(
    container_group_id: GroupPath,
    body: ScalingRuleUpdate,
    principal: CurrentPrincipal,
    store: StoreDep,
) -> ScalingRuleOut:
    try:
        # The store checks min <= max in the update itself: a check here, before it, would
        # let two concurrent patches each pass and together break the rule.
        rule = await store.update_scaling_rule(
            scope(principal),
            container_group_id,
            ScalingRulePatch(body.min_replicas, body.max_replicas, body.idle_threshold_seconds),
        )
    except InvalidChange:
        raise ApiError(400, "min_replicas must not be greater than max_replicas") from None
    if rule is None:
        raise not_found("Scaling rule of container group", container_group_id)
    return _out(rule)


@router.delete(
    "/{container_group_id}",
    status_code=204,
    operation_id="delete_scaling_rule",
    responses=_ERRORS,
    summary="Delete a scaling rule (deleting one that does not exist is a no-op, as retries need)",
)
async def delete_rule(
    container_group_id: GroupPath, principal: CurrentPrincipal, store: StoreDep
) -> Response:
    await store.delete_scaling_rule(scope(principal), container_group_id)
    return Response(status_code=204)
