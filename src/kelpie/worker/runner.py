"""The job's process and every process it starts, stopped by escalating signals.

The job runs in its own session; each signal goes to its whole tree, whatever session or
process group its processes moved to, and when the main process exits, whatever it left
running is killed (see `proctree`): after `wait()` or `stop()` returns, nothing of the job
is alive.

Exit codes follow the shell's convention, so users read them the way they read `docker ps`:
a process killed by signal N reports 128 + N (SIGKILL, the OOM killer's signal, is 137), a
command that is not found 127, one that cannot be executed 126. A signal death is always a
failure, never an interruption; `ExitStatus.describe()` says which signal it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kelpie.worker import proctree

logger = logging.getLogger("kelpie.worker")

EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
ORPHAN_SWEEP_S = 1.0
"""While the job runs, how often the worker reaps the orphans it adopted that have exited."""


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
    """A running job command; signals go to every process of the job."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        tree: proctree.JobTree,
        containment: proctree.Containment,
    ) -> None:
        self._process = process
        self._tree = tree
        self._containment = containment
        self._status: ExitStatus | None = None
        self._exited = asyncio.create_task(self._watch(), name=f"job-process-{process.pid}")

    @classmethod
    async def start(
        cls,
        command: str,
        arguments: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None = None,
        output: tuple[int, int] | None = None,
    ) -> JobProcess:
        """Start `command arguments…`; stdout and stderr go to the descriptors of `output`
        (see `capture`), or are the worker's own."""
        containment = proctree.installed()
        tree = containment.new_tree()
        try:
            process = await _spawn(command, arguments, env, cwd, tree.preexec, output)
        except subprocess.SubprocessError as exc:
            # The child could not join its cgroup (it ran nothing): track it from /proc.
            tree.close()
            containment.give_up_cgroups(f"the job could not join its cgroup: {exc}")
            tree = containment.new_tree()
            process = await _spawn(command, arguments, env, cwd, tree.preexec, output)
        except BaseException:
            tree.close()
            raise
        containment.started(process.pid)
        tree.attach(process.pid)
        logger.info("job process %d started (%s): %s", process.pid, tree.kind, command)
        return cls(process, tree, containment)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def status(self) -> ExitStatus | None:
        """The main process's exit status, once it and every other process of the job are gone."""
        return self._status

    async def wait(self) -> ExitStatus:
        """Wait for the job to exit (cancelling the wait leaves the process alone)."""
        return await asyncio.shield(self._exited)

    async def _watch(self) -> ExitStatus:
        main = asyncio.ensure_future(self._process.wait())
        while not main.done():
            await asyncio.wait({main}, timeout=ORPHAN_SWEEP_S)
            self._containment.reap_orphans()
        status = ExitStatus.from_returncode(main.result())
        self._containment.finished(self._process.pid)
        # The job is over: whatever it left running goes with it, in whatever session.
        survivors = await asyncio.to_thread(self._tree.kill)
        if survivors:
            logger.error("job process %d: could not kill %s", self.pid, [p.pid for p in survivors])
        self._containment.reap_orphans()
        self._tree.close()
        self._status = status
        return status

    def send_signal(self, signum: int) -> None:
        """Signal every process of the job, if it is still there."""
        if self._status is None:
            sent = proctree.signal_members(self._tree, signum)
            logger.info(
                "job process %d: sent %s to %d process(es)", self.pid, _signal_name(signum), sent
            )

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


async def _spawn(
    command: str,
    arguments: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None,
    preexec: Callable[[], None] | None,
    output: tuple[int, int] | None,
) -> asyncio.subprocess.Process:
    stdout, stderr = output if output is not None else (None, None)
    try:
        return await asyncio.create_subprocess_exec(
            command,
            *arguments,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=preexec,
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
