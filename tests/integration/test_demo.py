"""`kelpie demo` runs to completion, shows a real resume, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.slow
def test_demo_job_resumes_from_its_checkpoint_and_cleans_up(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kelpie", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout)
    events = [event["event"] for event in summary["events"]]
    assert events[0] == "submitted"
    assert events[-1] == "completed"
    assert events.index("killed") < events.index("resumed") < events.index("completed")
    claimers = [e["machine_id"] for e in summary["events"] if e["event"] == "claimed"]
    killed = next(e for e in summary["events"] if e["event"] == "killed")
    resumed = next(e for e in summary["events"] if e["event"] == "resumed")
    assert claimers[0] == killed["machine_id"]
    assert resumed["machine_id"] != killed["machine_id"]
    assert resumed["step"] > 0
    assert summary["result"] == {"counted_to": 20, "starts": [0, resumed["step"]]}
    assert not Path(summary["workdir"]).exists()
    assert _processes_mentioning(summary["workdir"]) == []
