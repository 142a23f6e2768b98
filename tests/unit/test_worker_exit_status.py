"""Exit codes as users read them: 128 + signal for signal deaths."""

from __future__ import annotations

import signal

from kelpie.worker.runner import ExitStatus


def test_signal_deaths_follow_the_shell_convention() -> None:
    status = ExitStatus.from_returncode(-signal.SIGKILL)
    assert status.exit_code == 137 and status.signal == signal.SIGKILL
    assert not status.succeeded
    assert status.describe() == "killed by signal SIGKILL (out of memory?), exit code 137"


def test_plain_exit_codes_pass_through() -> None:
    assert ExitStatus.from_returncode(3).describe() == "exited with code 3"
    assert ExitStatus.from_returncode(0).succeeded
