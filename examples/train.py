"""A resumable training job for kelpie, in plain Python (nothing to install).

It fits y = a*x + b to noisy points by stochastic gradient descent, one mini-batch per step,
and does what every kelpie job should do:

- resume: start from the checkpoint in $CHECKPOINT_DIR when there is one (kelpie restores
  the newest committed one there before the job starts, on whichever machine runs it);
- checkpoint every --checkpoint-every steps, either in place as torch.save(state, path)
  does (--save in-place, the default) or written aside and renamed into place
  (--save rename); then create $KELPIE_CHECKPOINT_COMMIT_FILE, which tells kelpie "this
  checkpoint is complete, commit it now", and leave the folder alone until kelpie removes it;
- stop cleanly: on SIGTERM or SIGINT (the node is going away, or the job was canceled)
  save once more between two steps and exit 128+signal, never 0;
- report progress on stdout and, when kelpie gives one, in $KELPIE_PROGRESS_FILE;
- write the result to $OUTPUT_DIR and exit 0 only when done.

Every step's mini-batch is drawn from a generator seeded by the step number, so a run that
was interrupted and resumed ends with exactly the weights of one that never stopped.

    STEPS=40 python3 examples/train.py --save rename      # outside kelpie too
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

CHECKPOINT_NAME = "state.json"
TRUE_A, TRUE_B = 3.0, 2.0
LEARNING_RATE = 0.2
BATCH = 16
COMMIT_WAIT_S = 60.0
STOPPING_COMMIT_WAIT_S = 3.0  # kelpie's grace between SIGTERM and SIGKILL is longer

stop_signal = 0


def on_signal(signum: int, frame: FrameType | None) -> None:
    """Only note it: the loop stops between two steps, never in the middle of a save."""
    global stop_signal
    stop_signal = signum


def batch_for(step: int) -> list[tuple[float, float]]:
    rng = random.Random(step)
    xs = [rng.uniform(-1.0, 1.0) for _ in range(BATCH)]
    return [(x, TRUE_A * x + TRUE_B + rng.gauss(0.0, 0.1)) for x in xs]


def train_step(state: dict[str, Any]) -> None:
    a, b = state["a"], state["b"]
    points = batch_for(state["step"])
    grad_a = sum(2 * (a * x + b - y) * x for x, y in points) / len(points)
    grad_b = sum(2 * (a * x + b - y) for x, y in points) / len(points)
    state["a"] = a - LEARNING_RATE * grad_a
    state["b"] = b - LEARNING_RATE * grad_b
    state["loss"] = sum((a * x + b - y) ** 2 for x, y in points) / len(points)
    state["step"] += 1


def save_in_place(path: Path, state: dict[str, Any]) -> None:
    """As torch.save(state, path) does: open the file itself, write, close."""
    with open(path, "w") as file:
        json.dump(state, file)


def save_by_rename(path: Path, state: dict[str, Any]) -> None:
    """Write a file beside it, then rename it over the old one: never half a checkpoint."""
    aside = path.with_name("." + path.name + ".partial")
    with open(aside, "w") as file:
        json.dump(state, file)
    os.replace(aside, path)


def mark_complete() -> None:
    """Ask kelpie to commit the checkpoint folder as it is now (when run by kelpie)."""
    marker = os.environ.get("KELPIE_CHECKPOINT_COMMIT_FILE")
    if marker:
        Path(marker).touch()


def wait_until_committed(patience: float = COMMIT_WAIT_S) -> None:
    """kelpie removes the marker once it has taken the checkpoint; until then, hands off."""
    marker = os.environ.get("KELPIE_CHECKPOINT_COMMIT_FILE")
    deadline = time.monotonic() + patience
    while marker and os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.02)


def report_progress(state: dict[str, Any], steps: int) -> None:
    print(f"step {state['step']}/{steps} loss {state['loss']:.4f}", flush=True)
    progress_file = os.environ.get("KELPIE_PROGRESS_FILE")
    if progress_file:
        save_by_rename(Path(progress_file), {"step": state["step"], "total": steps})


def main() -> int:
    parser = argparse.ArgumentParser(description="A resumable training job for kelpie.")
    parser.add_argument("--save", choices=["in-place", "rename"], default="in-place")
    parser.add_argument("--checkpoint-every", type=int, default=5, metavar="STEPS")
    args = parser.parse_args()
    steps = int(os.environ.get("STEPS", "40"))
    step_seconds = float(os.environ.get("STEP_SECONDS", "0.25"))
    checkpoint_dir = Path(os.environ.get("CHECKPOINT_DIR", "checkpoint"))
    output_dir = Path(os.environ.get("OUTPUT_DIR", "output"))
    save = save_in_place if args.save == "in-place" else save_by_rename
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    checkpoint = checkpoint_dir / CHECKPOINT_NAME
    if checkpoint.exists():
        state: dict[str, Any] = json.loads(checkpoint.read_text())
        print(f"resuming from step {state['step']}", flush=True)
    else:
        state = {"step": 0, "a": 0.0, "b": 0.0, "loss": None, "starts": []}
        print("starting from step 0", flush=True)
    state["starts"].append(state["step"])

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    while state["step"] < steps and not stop_signal:
        time.sleep(step_seconds)  # stands for the real work of a step
        train_step(state)
        report_progress(state, steps)
        if state["step"] % args.checkpoint_every == 0 or state["step"] == steps:
            wait_until_committed()
            save(checkpoint, state)
            mark_complete()
    if stop_signal:
        wait_until_committed(STOPPING_COMMIT_WAIT_S)
        save(checkpoint, state)
        print(f"stopped by signal {stop_signal} at step {state['step']}", flush=True)
        return 128 + stop_signal

    output_dir.mkdir(parents=True, exist_ok=True)
    result = {"steps": state["step"], "a": state["a"], "b": state["b"], "starts": state["starts"]}
    save_by_rename(output_dir / "result.json", result)
    print(f"done: y = {state['a']:.3f}*x + {state['b']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
