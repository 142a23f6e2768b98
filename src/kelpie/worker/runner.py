"""The job's process: started in its own process group, stopped by escalating signals.

Exit codes follow the shell's convention, so users read them the way they read `docker ps`:
a process killed by signal N reports 128 + N (SIGKILL, the OOM killer's signal, is 137), a
command that is not found 127, one that cannot be executed 126. A signal death is always a
failure, never an interruption; `ExitStatus.describe()` says which signal it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("kelpie.worker")

EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126


class JobStartError(Exception):
    """The command could not be started; carries the exit code a shell would have given."""

    def __init__(self, exit_code: int, reason: str) -> None:
        super().__init__(reason)
        self.exit_code = exit_code
        self.reason = reason


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int
    signal: int | None = None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        if returncode < 0:
            return cls(128 - returncode, -returncode)
        return cls(returncode)

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.signal is None

    def describe(self) -> str:
        if self.signal is not None:
            name = _signal_name(self.signal)
            hint = " (out of memory?)" if self.signal == signal.SIGKILL else ""
            return f"killed by signal {name}{hint}, exit code {self.exit_code}"
        return f"exited with code {self.exit_code}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class JobProcess:
    """A running job command; signals go to its whole process group."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._status: ExitStatus | None = None
        self._exited = asyncio.create_task(self._reap(), name=f"job-process-{process.pid}")

    @classmethod
    async def start(
        cls,
        command: str,
        arguments: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> JobProcess:
        """Start `command arguments…`; stdout and stderr pass through to the worker's."""
        try:
            process = await asyncio.create_subprocess_exec(
                command,
                *arguments,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            where = "" if "/" in command else f" in PATH {env.get('PATH', '')!r}"
            raise JobStartError(
                EXIT_NOT_FOUND, f"command not found: {command!r}{where} ({exc.strerror})"
            ) from exc
        except PermissionError as exc:
            raise JobStartError(
                EXIT_NOT_EXECUTABLE, f"command {command!r} is not executable ({exc.strerror})"
            ) from exc
        except OSError as exc:
            raise JobStartError(
                EXIT_NOT_EXECUTABLE, f"command {command!r} could not be started: {exc}"
            ) from exc
        logger.info("job process %d started: %s", process.pid, command)
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def status(self) -> ExitStatus | None:
        return self._status

    async def wait(self) -> ExitStatus:
        """Wait for the process to exit (cancelling the wait leaves the process alone)."""
        return await asyncio.shield(self._exited)

    async def _reap(self) -> ExitStatus:
        returncode = await self._process.wait()
        status = ExitStatus.from_returncode(returncode)
        self._status = status
        # The job is over: whatever it left running in its group goes with it.
        self._signal_group(signal.SIGKILL)
        return status

    def send_signal(self, signum: int) -> None:
        """Signal the job's process group (its children too), if it is still there."""
        if self._status is None:
            logger.info("job process %d: sending %s", self.pid, _signal_name(signum))
            self._signal_group(signum)

    async def stop(self, signals: Sequence[int], grace: float) -> ExitStatus:
        """Send each of `signals` in turn, then SIGKILL; `grace` seconds from first signal to kill.

        The grace is shared evenly between the signals: SIGINT then SIGTERM with a 10 s grace
        give the job 5 s after each.
        """
        step = grace / max(1, len(signals))
        for signum in signals:
            self.send_signal(signum)
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(self.wait(), step)
        self.send_signal(signal.SIGKILL)
        return await self.wait()

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signum)
