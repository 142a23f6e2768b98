"""The demo's job: count to N, one checkpoint per step, resuming from the last checkpoint.

Plain standard library on purpose: kelpie runs it with the container's own `python3`, the
way it runs any user's job. It does what every kelpie job should do: look in CHECKPOINT_DIR
first, write checkpoints atomically (write, then rename into place), write results to
OUTPUT_DIR, exit 0 when done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RESUME_MARK = "kelpie-demo: resuming from step"


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--step-seconds", type=float, default=0.2)
    args = parser.parse_args(argv)

    checkpoint = Path(os.environ["CHECKPOINT_DIR"]) / "progress.json"
    output = Path(os.environ["OUTPUT_DIR"]) / "result.json"
    state: dict[str, Any] = {"step": 0, "starts": []}
    if checkpoint.exists():
        state = json.loads(checkpoint.read_text())
        print(f"{RESUME_MARK} {state['step']}", flush=True)
    state["starts"].append(state["step"])

    for step in range(state["step"], args.steps):
        time.sleep(args.step_seconds)  # the "work" of one step
        state["step"] = step + 1
        _write_atomically(checkpoint, state)
        print(f"kelpie-demo: step {step + 1}/{args.steps}", flush=True)

    output.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(output, {"counted_to": state["step"], "starts": state["starts"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
