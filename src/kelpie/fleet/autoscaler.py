"""Sizes each container group to its queue (PROTOCOL §7), run inside every `kelpie serve`.

Every `autoscale_interval_s` the process holding the store's `autoscaler` lease evaluates
every user's scaling rules; the others only try to take the lease. For a rule, `n` is the
group's pending and running jobs plus those that ended within `idle_threshold_seconds`, and
the target is `clamp(n, min_replicas, max_replicas)`: 0 stops a running group, more sets the
replica count and starts a stopped group.

The decision (`plan_scaling`) is a pure function of the group's state, the job count and the
rule; the loop only reads, decides and applies. Every action states an end (a state, an
absolute replica count), so applying a plan twice — a retried call, or two processes in the
moment a lease changes hands — does no harm.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import uuid
from dataclasses import dataclass

from kelpie.fleet.base import FleetError, FleetProvider, FleetTarget, GroupNotFound, GroupState
from kelpie.store.models import ScalingRule
from kelpie.store.protocol import Store

log = logging.getLogger("kelpie.autoscaler")

LEASE_NAME = "autoscaler"
# Rules evaluated at once: one slow or throttled group does not hold up the rest.
MAX_CONCURRENT_RULES = 8


@dataclass(frozen=True)
class StartGroup:
    pass


@dataclass(frozen=True)
class StopGroup:
    pass


@dataclass(frozen=True)
class SetReplicas:
    replicas: int


Action = StartGroup | StopGroup | SetReplicas


def target_replicas(active_jobs: int, rule: ScalingRule) -> int:
    """`clamp(active_jobs, min_replicas, max_replicas)`."""
    return max(rule.min_replicas, min(active_jobs, rule.max_replicas))


def plan_scaling(group: GroupState, active_jobs: int, rule: ScalingRule) -> list[Action]:
    """What to do to a group, in order, so that it runs `target_replicas` nodes.

    A stopped group is resized before it starts, so it never boots at a stale size; a group
    that should be at 0 is stopped, its replica count left for the next start to correct.
    """
    target = target_replicas(active_jobs, rule)
    if target == 0:
        return [StopGroup()] if group.running else []
    actions: list[Action] = []
    if group.replicas != target:
        actions.append(SetReplicas(target))
    if not group.running:
        actions.append(StartGroup())
    return actions


async def apply_action(fleet: FleetProvider, target: FleetTarget, action: Action) -> None:
    match action:
        case StartGroup():
            await fleet.start_group(target)
        case StopGroup():
            await fleet.stop_group(target)
        case SetReplicas(replicas):
            await fleet.set_replicas(target, replicas)


class Autoscaler:
    """Evaluates every scaling rule on each `evaluate()`, each rule in its own task so that a
    slow or failing group (a provider retrying 429s and 5xx) delays neither the other rules
    nor the next round; a rule still busy from the last round is skipped this round.

    Remembers which rules it warned about, so a rule that cannot act is reported once."""

    def __init__(self, store: Store, fleet: FleetProvider) -> None:
        self._store = store
        self._fleet = fleet
        self._warned: set[tuple[str, str]] = set()
        self._busy: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_RULES)

    async def evaluate(self) -> None:
        """Start one round: returns once every rule not still busy has been handed a task."""
        for rule in await self._store.list_scaling_rules(None):
            key = (rule.user_id, rule.container_group_id)
            if key in self._busy:
                log.debug("scaling %s: previous round still busy", _describe(rule))
                continue
            task = asyncio.create_task(self._evaluate_rule_logged(rule), name=f"scale-{key[1]}")
            self._busy[key] = task
            task.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: tuple[str, str], _task: asyncio.Task[None]) -> None:
        self._busy.pop(key, None)

    async def aclose(self) -> None:
        """Cancel the rules in progress (the next holder of the lease evaluates them again)."""
        tasks = list(self._busy.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _evaluate_rule_logged(self, rule: ScalingRule) -> None:
        """One rule; whatever goes wrong is logged and never reaches the other rules."""
        try:
            async with self._limit:
                await self.evaluate_rule(rule)
        except FleetError as exc:
            log.warning("scaling %s failed: %s", _describe(rule), exc)
        except Exception:
            log.exception("scaling %s failed", _describe(rule))

    async def evaluate_rule(self, rule: ScalingRule) -> None:
        if rule.org_name is None or rule.project_name is None:
            key = (rule.user_id, rule.container_group_id)
            if key not in self._warned:
                self._warned.add(key)
                log.warning(
                    "scaling rule for group %s of user %s has no SaladCloud organization/"
                    "project (the key that created it had none); it is skipped",
                    rule.container_group_id,
                    rule.user_id,
                )
            return
        target = FleetTarget(rule.org_name, rule.project_name, rule.container_group_id)
        active = await self._store.count_active_jobs(
            rule.user_id, rule.container_group_id, rule.idle_threshold_seconds
        )
        try:
            group = await self._fleet.get_group(target)
            actions = plan_scaling(group, active, rule)
            for action in actions:
                await apply_action(self._fleet, target, action)
        except GroupNotFound as exc:
            await self._store.delete_scaling_rule(rule.user_id, rule.container_group_id)
            log.warning("deleted the scaling rule of %s: %s", _describe(rule), exc)
            return
        if actions:
            log.info(
                "scaled %s: %d active jobs, group was %s with %d replicas, did %s",
                _describe(rule),
                active,
                group.status,
                group.replicas,
                actions,
            )


def _describe(rule: ScalingRule) -> str:
    return f"{rule.org_name}/{rule.project_name}/{rule.container_group_id}"


def lease_holder() -> str:
    """Unique per process, and readable in the store when debugging who scales."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# One holder name for the life of the process, so a loop restarted after a crash keeps the
# lease it held instead of waiting for it to expire.
PROCESS_HOLDER = lease_holder()


async def run_autoscaler(
    store: Store, fleet: FleetProvider, *, interval: float, stop: asyncio.Event
) -> None:
    """Evaluates the rules every `interval` seconds while holding the lease, until `stop`.

    The lease lives twice the interval, so a holder that dies is replaced within two
    intervals, and a holder that evaluates every interval never loses it."""
    autoscaler = Autoscaler(store, fleet)
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            started = loop.time()
            if await store.try_lease(LEASE_NAME, PROCESS_HOLDER, 2 * interval):
                await autoscaler.evaluate()
            remaining = interval - (loop.time() - started)
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), remaining)
    finally:
        await autoscaler.aclose()
