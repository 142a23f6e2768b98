"""A real `kelpie dev` for tests: started, its announcement read, its output drained."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kelpie.worker import proctree
from tests.support.waiting import wait_for

READY_LINE = "Workers' output follows"


@dataclass
class DevProcess:
    """`kelpie dev` running, with every line it printed so far."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def read_output(self) -> None:
        """Keep reading its stdout (a full pipe would block its workers' output)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 90.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"kelpie dev exited early:\n{self.output()}")
            return any(READY_LINE in line for line in self.lines)

        wait_for(ready, "kelpie dev to start everything", timeout)

    def exports(self) -> list[str]:
        """The `export NAME=VALUE` lines it printed for another terminal."""
        return [line for line in self.lines if line.startswith("export ")]

    def environment(self) -> dict[str, str]:
        pairs = (shlex.split(line.removeprefix("export "))[0] for line in self.exports())
        return dict(pair.split("=", 1) for pair in pairs)

    def folder(self) -> Path:
        line = next(line for line in self.lines if line.strip().startswith("folder "))
        return Path(line.split()[1])

    def descendants(self) -> list[proctree.ProcessInfo]:
        return proctree.descendants(proctree.read_processes(), [self.proc.pid])

    def output(self) -> str:
        return "\n".join(self.lines[-200:])

    def stop(self, signum: int = signal.SIGINT, timeout: float = 90.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        code = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        """At the end of every test: the process and all it started, if still there (after a
        failed test), and its output pipe."""
        if self.proc.poll() is None:
            proctree.kill_process_tree(self.proc.pid)
            self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_dev(
    command: Sequence[str], cwd: Path, extra_env: dict[str, str] | None = None
) -> DevProcess:
    proc = subprocess.Popen(
        list(command),
        cwd=cwd,
        env={**os.environ, **(extra_env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    dev = DevProcess(proc)
    dev._reader = threading.Thread(target=dev.read_output, name="kelpie-dev-output")
    dev._reader.start()
    return dev


def gone(process: proctree.ProcessInfo) -> bool:
    """True once that process (pid and start time) no longer runs."""
    now = proctree.read_process(process.pid)
    return now is None or now.start_time != process.start_time or not now.alive
