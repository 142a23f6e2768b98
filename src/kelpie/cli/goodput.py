"""`kelpie jobs goodput` and `kelpie report`: where the time went, and what interruptions
cost."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kelpie.cli.base import (
    Api,
    emit_fields,
    emit_table,
    main,
    parse_duration,
    seconds_text,
    when,
    with_api,
)
from kelpie.cli.jobs import jobs

if TYPE_CHECKING:
    from kelpie.schemas import GroupGoodputOut, JobGoodputOut


def show_job_goodput(ledger: JobGoodputOut) -> None:
    emit_table(
        (
            "MACHINE",
            "STARTED",
            "OUTCOME",
            "DOWNLOADING",
            "RUNNING",
            "UPLOADING",
            "CKPTS",
            "WORK LOST",
            "DETECTION",
        ),
        (
            (
                a.machine_id,
                when(a.started),
                a.outcome,
                seconds_text(a.downloading_s),
                seconds_text(a.running_s),
                seconds_text(a.uploading_s),
                str(a.checkpoints),
                seconds_text(a.work_lost_s),
                seconds_text(a.detection_delay_s),
            )
            for a in ledger.attempts
        ),
    )
    totals = ledger.totals
    click.echo()
    emit_fields(
        [
            ("attempts", totals.attempts),
            ("interruptions", totals.interruptions),
            ("failures", totals.failures),
            ("downloading", seconds_text(totals.downloading_s)),
            ("running", seconds_text(totals.running_s)),
            ("uploading", seconds_text(totals.uploading_s)),
            ("work lost", seconds_text(totals.work_lost_s)),
            ("detection delays", seconds_text(totals.detection_delay_s)),
            ("useful running", seconds_text(totals.useful_running_s)),
            ("goodput", "-" if totals.goodput is None else f"{totals.goodput:.1%}"),
        ]
    )


@jobs.command("goodput")
@click.argument("job_id")
@with_api
def job_goodput(api: Api, job_id: str) -> None:
    """Where each attempt's time went (downloading, running, uploading) and what each
    interruption cost: the work lost since the last committed checkpoint, and the delay
    until the job ran again."""
    ledger = api.client.job_goodput(job_id)
    api.emit(ledger.model_dump(mode="json"), lambda: show_job_goodput(ledger))


def show_group_report(report: GroupGoodputOut) -> None:
    rate = report.interruptions_per_hour
    emit_fields(
        [
            ("group", report.container_group_id),
            ("window", f"{when(report.since)} to {when(report.until)}"),
            ("attempts", report.attempts),
            ("interruptions", report.interruptions),
            ("failures", report.failures),
            ("running", seconds_text(report.running_s)),
            ("downloading", seconds_text(report.downloading_s)),
            ("uploading", seconds_text(report.uploading_s)),
            ("interruptions per hour", "-" if rate is None else f"{rate:.3f}"),
            (
                "mean time between interruptions",
                seconds_text(report.mean_time_between_interruptions_s),
            ),
            ("checkpoints", report.checkpoints),
            ("mean checkpoint interval", seconds_text(report.mean_checkpoint_interval_s)),
            ("mean checkpoint cost", seconds_text(report.mean_checkpoint_cost_s)),
            ("GPU time lost", seconds_text(report.gpu_time_lost_s)),
            ("mean detection delay", seconds_text(report.mean_detection_delay_s)),
        ]
    )
    young_daly = report.young_daly
    click.echo()
    if young_daly is None:
        click.echo(
            "Young/Daly interval: not known yet (needs at least one interruption and a"
            " checkpoint cost reported by the workers)"
        )
        return
    click.echo(
        f"Young/Daly interval τ* ≈ √(2·C·M) = {seconds_text(young_daly.interval_s)},"
        f" with C = {seconds_text(young_daly.checkpoint_cost_s)} (mean checkpoint cost) and"
        f" M = {seconds_text(young_daly.mean_time_between_interruptions_s)}"
        " (mean running time between interruptions)"
    )


@main.command("report")
@click.option("--group", "container_group_id", required=True, help="The container group.")
@click.option(
    "--window",
    metavar="DURATION",
    callback=parse_duration,
    default="7d",
    help="Attempts that started within this long before now (up to 30d).",
)
@with_api
def group_report(api: Api, container_group_id: str, window: int) -> None:
    """What interruptions cost a container group's jobs over a window: attempts,
    interruptions per hour of running, mean time between them, checkpoint interval and
    cost, GPU time lost, and the checkpoint interval that would lose least (Young/Daly)."""
    report = api.client.group_goodput(container_group_id, window)
    api.emit(report.model_dump(mode="json"), lambda: show_group_report(report))
