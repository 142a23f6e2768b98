"""The `kelpie` command: server, worker, and the user's tools for jobs.

Every command that talks to the API takes `--api-url` (`KELPIE_API_URL`), `--api-key`
(`KELPIE_API_KEY`) and `--json` (machine-readable output on stdout).

Exit codes:
    0  success
    1  the API refused the call or could not be reached; one line `error: <why>` on stderr
    2  usage error: bad option or argument, unreadable job file, no API key

`kelpie jobs watch` ends when the job does, so its code says how:
    0 completed, 1 failed, 2 usage error, 3 canceled, 4 no such job, 5 any other API error.
"""

from kelpie.cli import admin, checkpoints, goodput, jobs, logs, processes, scaling, workers
from kelpie.cli.base import main, run

__all__ = [
    "admin",
    "checkpoints",
    "goodput",
    "jobs",
    "logs",
    "main",
    "processes",
    "run",
    "scaling",
    "workers",
]
