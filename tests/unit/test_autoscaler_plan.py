"""The autoscaler's decision: what to do to a group given its state, its active jobs and
its rule (PROTOCOL §7), table-driven."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kelpie.fleet.autoscaler import (
    Action,
    SetReplicas,
    StartGroup,
    StopGroup,
    plan_scaling,
    target_replicas,
)
from kelpie.fleet.base import GroupState
from kelpie.store.models import ScalingRule

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def rule(min_replicas: int, max_replicas: int) -> ScalingRule:
    return ScalingRule(
        user_id="u",
        container_group_id="g",
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        idle_threshold_seconds=0,
        created=NOW,
        updated=NOW,
        org_name="acme",
        project_name="prod",
    )


def group(status: str, replicas: int) -> GroupState:
    return GroupState(id="g", name="render", status=status, replicas=replicas)


@pytest.mark.parametrize(
    ("active", "low", "high", "target"),
    [
        (0, 0, 10, 0),
        (0, 2, 10, 2),
        (3, 0, 10, 3),
        (10, 0, 10, 10),
        (11, 0, 10, 10),
        (500, 1, 500, 500),
        (5, 5, 5, 5),
        (4, 0, 0, 0),
    ],
)
def test_target_is_active_jobs_clamped_to_the_rule(
    active: int, low: int, high: int, target: int
) -> None:
    assert target_replicas(active, rule(low, high)) == target


@pytest.mark.parametrize(
    ("state", "active", "low", "high", "plan"),
    [
        # queue empty, min 0: a running group is stopped, a stopped one left alone
        (group("running", 3), 0, 0, 10, [StopGroup()]),
        (group("deploying", 3), 0, 0, 10, [StopGroup()]),
        (group("stopped", 3), 0, 0, 10, []),
        (group("stopped", 0), 0, 0, 10, []),
        # jobs arrive at a stopped group: sized first, then started
        (group("stopped", 0), 4, 0, 10, [SetReplicas(4), StartGroup()]),
        (group("stopped", 4), 4, 0, 10, [StartGroup()]),
        (group("failed", 1), 2, 0, 10, [SetReplicas(2), StartGroup()]),
        # a running group follows the queue, within the bounds
        (group("running", 2), 5, 0, 10, [SetReplicas(5)]),
        (group("running", 5), 2, 0, 10, [SetReplicas(2)]),
        (group("running", 10), 50, 0, 10, []),
        (group("running", 3), 50, 0, 10, [SetReplicas(10)]),
        (group("running", 3), 3, 0, 10, []),
        (group("deploying", 1), 1, 0, 10, []),
        # min replicas keep an idle group up
        (group("running", 1), 0, 1, 10, []),
        (group("stopped", 0), 0, 2, 10, [SetReplicas(2), StartGroup()]),
        (group("running", 5), 0, 2, 10, [SetReplicas(2)]),
        # max 0 means off whatever the queue
        (group("running", 2), 9, 0, 0, [StopGroup()]),
    ],
)
def test_plan_brings_group_to_target(
    state: GroupState, active: int, low: int, high: int, plan: list[Action]
) -> None:
    assert plan_scaling(state, active, rule(low, high)) == plan
