"""`kelpie jobs logs`: a job's stdout and stderr, read from its bucket.

kelpie jobs logs JOB_ID [--attempt ID] [-f]

The worker uploads each attempt's output in pieces (layout in `kelpie.worker.logs`); this
command lists them with the caller's own S3 credentials (AWS_* in the environment), and
prints the job's stdout on stdout and its stderr on stderr, attempt after attempt.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

from kelpie.cli.base import Api, fail, when, with_api
from kelpie.cli.jobs import jobs

if TYPE_CHECKING:
    from kelpie.schemas import AttemptOut
    from kelpie.storage import ObjectStorage
    from kelpie.worker.logs import LogLocation

TERMINAL = ("completed", "failed", "canceled")


@dataclass
class _Shown:
    """What has been printed of one attempt."""

    last_piece: int = 0
    headed: bool = False
    complete: bool = False


@dataclass
class _Printer:
    storage: ObjectStorage
    location: LogLocation
    headers: bool
    shown: dict[int, _Shown] = field(default_factory=dict)

    async def show(self, attempt: AttemptOut) -> None:
        """Print the attempt's pieces not printed yet, in order."""
        from kelpie.worker.logs import attempt_listing

        assert attempt.id is not None
        state = self.shown.setdefault(attempt.id, _Shown())
        if state.complete:
            return
        prefix = self.location.attempt_prefix(attempt.id)
        listing = attempt_listing(
            await self.storage.list_objects(self.location.bucket, prefix), prefix
        )
        for number, stream, key in listing.pieces:
            if number <= state.last_piece:
                continue
            data = await self.storage.read_object(self.location.bucket, key)
            if self.headers and not state.headed:
                _header(attempt)
                state.headed = True
            out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
            out.write(data)
            out.flush()
            state.last_piece = number
        state.complete = listing.end


def _header(attempt: AttemptOut) -> None:
    sys.stdout.flush()
    click.echo(
        f"==> attempt {attempt.id} on {attempt.machine_id}, started {when(attempt.started)} <==",
        err=True,
    )


@jobs.command("logs")
@click.argument("job_id")
@click.option(
    "--attempt",
    "attempt_id",
    type=click.IntRange(min=1),
    help="Only this attempt (its id, as `kelpie jobs events` shows it) [every attempt].",
)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing new output, across attempts as the job moves, until the job ends.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="With --follow: seconds between looks at the bucket.",
)
@with_api
def job_logs(api: Api, job_id: str, attempt_id: int | None, follow: bool, interval: float) -> None:
    """Print a job's output: its stdout on stdout, its stderr on stderr, oldest attempt
    first (a `==> attempt … <==` line on stderr starts each when there are several, or with
    --follow). Read from the job's bucket with the S3 credentials of AWS_* in the environment;
    kelpie itself keeps no log content."""
    from kelpie.storage import ObjectStorage, S3Settings, StorageError
    from kelpie.worker.logs import logs_location

    job = api.client.get_job(job_id)
    location = logs_location(job)
    if location is None:
        fail(
            f"job {job_id} keeps no logs: it has no logs_prefix and writes to no bucket "
            "(no output or checkpoint prefix)"
        )
    try:
        storage = ObjectStorage(S3Settings.from_env(os.environ), retry_window_s=10.0)
    except (StorageError, ValueError) as exc:
        fail(f"cannot read {location.url()}: {exc}")

    def attempts() -> list[AttemptOut]:
        found = [a for a in api.client.list_attempts(job_id) if a.id is not None]
        if attempt_id is not None:
            found = [a for a in found if a.id == attempt_id]
        return sorted(found, key=lambda a: (a.started, a.id or 0))

    async def run() -> None:
        printer: _Printer | None = None
        while True:
            # The status first: a job seen ended has every piece of its output in already.
            ended = api.client.get_job(job_id).status in TERMINAL
            current = await asyncio.to_thread(attempts)
            if attempt_id is not None and not current and not follow:
                fail(f"job {job_id} has no attempt {attempt_id}")
            if printer is None:
                printer = _Printer(storage, location, headers=follow or len(current) > 1)
            for attempt in current:
                await printer.show(attempt)
            if not follow or ended:
                return
            await asyncio.sleep(interval)

    try:
        asyncio.run(run())
    except StorageError as exc:
        fail(f"reading {location.url()} failed: {exc}")
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None
