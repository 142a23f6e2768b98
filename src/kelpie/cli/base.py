"""The `kelpie` command's root group and the plumbing every API command shares.

Imports stay light here (click only): `kelpie --help` and `kelpie jobs list --help` must not
pay for httpx or pydantic. The client, the schemas and the settings are imported when a
command runs.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from kelpie.client import KelpieClient

DEFAULT_API_URL = "http://127.0.0.1:8787"
# The client's own names for them (kelpie.client.config), kept here so that building the
# options imports nothing heavy; a test checks they agree.
URL_ENV = "KELPIE_API_URL"
KEY_ENV = "KELPIE_API_KEY"
JOB_STATUSES = ("pending", "running", "completed", "canceled", "failed")

EXIT_API_ERROR = 1


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="kelpie")
def main() -> None:
    """kelpie shepherds long-running jobs to completion on interruptible nodes."""


def run() -> None:
    """The `kelpie` program (`python -m kelpie` and the installed script): the command, then
    the process's end.

    A command that moved objects (obstore: `jobs logs`, `checkpoints download`, the worker)
    leaves the tokio threads of obstore's Rust runtime alive, and one of them waking while
    Python finalizes aborts the process: a command that printed everything then died of
    SIGABRT, seen in about one run of seven on a loaded machine (a known race of
    pyo3-async-runtimes, which has no shutdown). So such a process ends once its output is
    flushed and its exit handlers have run, without the interpreter's finalization, whose
    only remaining work is freeing memory the OS takes back anyway. Click's own `main` is
    left as it is, for tests that call it in-process."""
    try:
        main()
    except SystemExit as ended:
        code = _exit_status(ended.code)
    else:
        code = 0
    if "obstore" not in sys.modules:
        raise SystemExit(code)
    for stream in (sys.stdout, sys.stderr):
        # a reader gone (`| head`), or the stream closed: nothing more can be said
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    atexit._run_exitfuncs()  # logging's flush among them
    os._exit(code)


def _exit_status(code: object) -> int:
    """The status SystemExit(code) gives the process (a message goes to stderr: 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


# -- plumbing shared by the API commands ----------------------------------------------------


@dataclass
class Api:
    """What an API command runs with: where the API is, the key, and the output mode."""

    url: str
    key: str | None
    as_json: bool
    _client: KelpieClient | None = field(default=None, repr=False)

    def emit(self, data: Any, human: str | Callable[[], None]) -> None:
        """Print `data` as JSON with --json; otherwise the human text, or call what prints it."""
        if self.as_json:
            emit_json(data)
        elif isinstance(human, str):
            click.echo(human)
        else:
            human()

    @property
    def client(self) -> KelpieClient:
        from kelpie.client import KelpieClient

        if self._client is None:
            if not self.key:
                raise click.UsageError(f"no API key: pass --api-key or set {KEY_ENV}")
            try:
                self._client = KelpieClient(self.url, self.key)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--api-url") from exc
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def fail(message: str, code: int = EXIT_API_ERROR) -> NoReturn:
    """One clean line on stderr and a non-zero exit: never a traceback."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


def with_api(func: Callable[..., None]) -> Callable[..., None]:
    """Add the connection and output options to a command, hand it an `Api`, and turn every
    `KelpieError` into `error: <message>` with exit code 1."""

    @click.option("--verbose", "-v", is_flag=True, help="Log retries and warnings on stderr.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    @click.option(
        "--api-key",
        envvar=KEY_ENV,
        show_envvar=True,
        show_default=False,
        help="API key, sent as X-Kelpie-Key.",
    )
    @click.option(
        "--api-url",
        envvar=URL_ENV,
        show_envvar=True,
        default=DEFAULT_API_URL,
        help="Base URL of the kelpie API (no scheme means https://).",
    )
    @functools.wraps(func)
    def run(api_url: str, api_key: str | None, as_json: bool, verbose: bool, **kwargs: Any) -> None:
        # Without --verbose, stderr carries only the one `error:` line of a failure.
        level = logging.INFO if verbose else logging.CRITICAL
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        from kelpie.client import KelpieError

        api = Api(api_url, api_key, as_json)
        try:
            func(api, **kwargs)
        except KelpieError as exc:
            fail(str(exc))
        finally:
            api.close()

    return run


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def emit_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Left-aligned columns as wide as their widest cell."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    for line in lines:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def emit_fields(pairs: Iterable[tuple[str, object]]) -> None:
    """`name  value` lines, skipping empty values."""
    shown = [(name, value) for name, value in pairs if value not in (None, "", [], {})]
    width = max((len(name) for name, _ in shown), default=0)
    for name, value in shown:
        click.echo(f"{name.ljust(width)}  {value}")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """An option's duration, as `90`, `90s`, `30m`, `12h` or `7d`, in seconds (a callback)."""
    if value is None:
        return None
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:])
    try:
        seconds = int(text[:-1] if unit is not None else text) * (unit or 1)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a duration like 90, 90s, 30m, 12h or 7d"
        ) from None
    if seconds < 1:
        raise click.BadParameter(f"{value!r} is not a positive duration")
    return seconds


def seconds_text(seconds: float | None) -> str:
    """`None` → `-`; otherwise seconds in the largest unit that keeps them readable."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
