"""`kelpie scaling-rules …`: size a SaladCloud container group with its queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kelpie.cli.base import Api, emit_fields, emit_json, emit_table, main, when, with_api

if TYPE_CHECKING:
    from kelpie.schemas import ScalingRuleOut


@main.group("scaling-rules")
def scaling_rules() -> None:
    """Scale a container group with the size of its queue."""


def show_rule(rule: ScalingRuleOut) -> None:
    emit_fields(
        [
            ("group", rule.container_group_id),
            ("min replicas", rule.min_replicas),
            ("max replicas", rule.max_replicas),
            ("idle threshold", f"{rule.idle_threshold_seconds} s"),
            ("created", when(rule.created)),
            ("updated", when(rule.updated)),
        ]
    )


def emit_rule(api: Api, rule: ScalingRuleOut) -> None:
    api.emit(rule.model_dump(mode="json"), lambda: show_rule(rule))


@scaling_rules.command("create")
@click.argument("group")
@click.option("--min-replicas", type=int, required=True)
@click.option("--max-replicas", type=int, required=True)
@click.option(
    "--idle-threshold-seconds", type=int, required=True, help="How long ended jobs still count."
)
@with_api
def create_rule(
    api: Api, group: str, min_replicas: int, max_replicas: int, idle_threshold_seconds: int
) -> None:
    """Create the scaling rule of a container group."""
    emit_rule(
        api,
        api.client.create_scaling_rule(
            group,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            idle_threshold_seconds=idle_threshold_seconds,
        ),
    )


@scaling_rules.command("list")
@with_api
def list_rules(api: Api) -> None:
    """List your scaling rules."""
    rules = api.client.list_scaling_rules()
    if api.as_json:
        emit_json([rule.model_dump(mode="json") for rule in rules])
        return
    emit_table(
        ("GROUP", "MIN", "MAX", "IDLE S", "UPDATED"),
        (
            (
                r.container_group_id,
                str(r.min_replicas),
                str(r.max_replicas),
                str(r.idle_threshold_seconds),
                when(r.updated),
            )
            for r in rules
        ),
    )


@scaling_rules.command("get")
@click.argument("group")
@with_api
def get_rule(api: Api, group: str) -> None:
    """Show the scaling rule of a container group."""
    emit_rule(api, api.client.get_scaling_rule(group))


@scaling_rules.command("update")
@click.argument("group")
@click.option("--min-replicas", type=int)
@click.option("--max-replicas", type=int)
@click.option("--idle-threshold-seconds", type=int)
@with_api
def update_rule(
    api: Api,
    group: str,
    min_replicas: int | None,
    max_replicas: int | None,
    idle_threshold_seconds: int | None,
) -> None:
    """Change some fields of a scaling rule."""
    if min_replicas is None and max_replicas is None and idle_threshold_seconds is None:
        raise click.UsageError(
            "nothing to change: give --min-replicas, --max-replicas or --idle-threshold-seconds"
        )
    emit_rule(
        api,
        api.client.update_scaling_rule(
            group,
            min_replicas=min_replicas,
            max_replicas=max_replicas,
            idle_threshold_seconds=idle_threshold_seconds,
        ),
    )


@scaling_rules.command("delete")
@click.argument("group")
@with_api
def delete_rule(api: Api, group: str) -> None:
    """Delete the scaling rule of a container group."""
    api.client.delete_scaling_rule(group)
    message = f"deleted the scaling rule of {group}"
    api.emit({"message": message}, message)
