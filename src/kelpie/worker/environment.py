"""The environment a job process starts with.

The container's environment, less what is kelpie's own: its interpreter (a job that runs
`python` must get the image's Python, not the worker's virtualenv) and its API key (the job
never needs it). Then the three dirs, the job's `environment` (wins), and KELPIE_JOB_ID,
which the worker owns and the job cannot override.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from kelpie.worker.plan import JobDirs

# Variables of the worker's Python that would make the job's `python` behave like the worker's.
INTERPRETER_VARIABLES = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "__PYVENV_LAUNCHER__")
SECRET_VARIABLES = ("KELPIE_API_KEY",)


def worker_bin_dirs(env: Mapping[str, str]) -> set[str]:
    """`bin` folders of the virtualenv the worker runs from, when it runs from one."""
    dirs: set[str] = set()
    if sys.prefix != sys.base_prefix:
        dirs.add(str(Path(sys.prefix) / "bin"))
    if env.get("VIRTUAL_ENV"):
        dirs.add(str(Path(env["VIRTUAL_ENV"]) / "bin"))
    return dirs


def strip_path(path: str, remove: Iterable[str]) -> str:
    removed = {os.path.normpath(p) for p in remove}
    kept = [
        part for part in path.split(os.pathsep) if part and os.path.normpath(part) not in removed
    ]
    return os.pathsep.join(kept)


def job_environment(
    container_env: Mapping[str, str],
    *,
    dirs: JobDirs,
    job_id: str,
    job_env: Mapping[str, str],
) -> dict[str, str]:
    """Environment of the job's process (see the module docstring for the order)."""
    env = {
        name: value
        for name, value in container_env.items()
        if name not in INTERPRETER_VARIABLES and name not in SECRET_VARIABLES
    }
    if "PATH" in env:
        env["PATH"] = strip_path(env["PATH"], worker_bin_dirs(container_env))
    env.update(job_env)
    env.update(dirs.as_env())  # already job env > container env > default, normalized
    env["KELPIE_JOB_ID"] = job_id
    return env
