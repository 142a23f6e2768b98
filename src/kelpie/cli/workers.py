"""`kelpie workers`: the machines seen asking for work or holding a job."""

from __future__ import annotations

import click

from kelpie.cli.base import Api, emit_json, emit_table, main, when, with_api


@main.command("workers")
@click.option("--group", "container_group_id", help="Only machines of this container group.")
@with_api
def list_workers(api: Api, container_group_id: str | None) -> None:
    """Machines seen in the last 24 hours: when each last polled for work, the job it holds,
    how many of your jobs it is blocked from (it failed them), and its kelpie version."""
    workers = api.client.list_workers(container_group_id)
    if api.as_json:
        emit_json([worker.model_dump(mode="json") for worker in workers])
        return
    if not workers:
        click.echo("no machine seen in the last 24 hours", err=True)
        return
    emit_table(
        ("MACHINE", "GROUP", "LAST POLL", "LAST SEEN", "CURRENT JOB", "BLOCKED", "VERSION"),
        (
            (
                w.machine_id,
                w.container_group_id,
                when(w.last_poll),
                when(w.last_seen),
                w.current_job_id or "-",
                str(w.blocked_jobs),
                w.version or "-",
            )
            for w in workers
        ),
    )
