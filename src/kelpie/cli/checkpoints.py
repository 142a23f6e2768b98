"""`kelpie jobs checkpoints` and `kelpie jobs events`: what a job committed, and what happened.

kelpie jobs checkpoints JOB_ID                        # the committed generations
kelpie jobs checkpoints download JOB_ID [--generation N] DIR
kelpie jobs events JOB_ID
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import click

from kelpie.cli.base import Api, emit_json, emit_table, fail, when, with_api
from kelpie.cli.jobs import jobs


class _ListUnlessSubcommand(click.Group):
    """`checkpoints JOB_ID` lists; `checkpoints download …` downloads."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@jobs.group("checkpoints", cls=_ListUnlessSubcommand, invoke_without_command=False)
def checkpoints() -> None:
    """A job's committed checkpoint generations: `checkpoints JOB_ID` lists them,
    `checkpoints download JOB_ID DIR` fetches one (the newest by default)."""


@checkpoints.command("list")
@click.argument("job_id")
@with_api
def list_checkpoints(api: Api, job_id: str) -> None:
    """List the job's committed checkpoint generations, oldest first."""
    generations = api.client.list_checkpoints(job_id)
    if api.as_json:
        emit_json([g.model_dump(mode="json") for g in generations])
        return
    emit_table(
        ("GENERATION", "ATTEMPT", "MACHINE", "COMMITTED", "FILES", "BYTES", "KEPT"),
        (
            (
                str(g.generation),
                str(g.attempt_id),
                g.machine_id,
                when(g.created),
                str(g.files),
                str(g.bytes),
                "yes" if g.kept else "no",
            )
            for g in generations
        ),
    )


@checkpoints.command("download")
@click.argument("job_id")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--generation", type=click.IntRange(min=1), help="A kept generation [the newest].")
@with_api
def download_checkpoint(api: Api, job_id: str, directory: Path, generation: int | None) -> None:
    """Download a committed generation's files into DIRECTORY, each checked against its
    size and SHA-256 (with the S3 credentials of AWS_* in the environment). A job with
    several checkpoint folders gets one sub-folder per target (0, 1, …)."""
    from kelpie.storage import ObjectStorage, S3Settings, StorageError
    from kelpie.worker.checkpoints import fetch_generation

    if generation is None:
        kept = [g.generation for g in api.client.list_checkpoints(job_id) if g.kept]
        if not kept:
            fail(f"job {job_id} has no committed checkpoint generation")
        generation = max(kept)
    manifest = api.client.get_checkpoint(job_id, generation)
    try:
        storage = ObjectStorage(S3Settings.from_env(os.environ))
        stats = asyncio.run(fetch_generation(storage, manifest, directory))
    except (StorageError, ValueError) as exc:
        fail(f"download of generation {generation} failed: {exc}")
    result: dict[str, Any] = {
        "generation": generation,
        "directory": str(directory),
        "files": stats.files,
        "bytes": stats.bytes,
    }
    api.emit(
        result,
        f"generation {generation}: {stats.files} files ({stats.bytes} bytes) in {directory}",
    )


@jobs.command("events")
@click.argument("job_id")
@with_api
def job_events(api: Api, job_id: str) -> None:
    """What happened to the job, oldest first: claims, restores, checkpoints, failures…"""
    events = api.client.list_job_events(job_id)
    if api.as_json:
        emit_json([e.model_dump(mode="json") for e in events])
        return
    emit_table(
        ("TIME", "EVENT", "MACHINE", "ATTEMPT", "DETAIL"),
        (
            (
                when(e.time),
                e.kind,
                e.machine_id or "-",
                "-" if e.attempt_id is None else str(e.attempt_id),
                e.message,
            )
            for e in events
        ),
    )
