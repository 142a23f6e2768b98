"""What the checkpoint job scripts write, and how a test (or the job itself, on resume) tells
an intact checkpoint set from a torn or mixed one. Stdlib only: the scripts import it too.

Every file of a set holds its name and the set's step in a header, then a body derived from
the step, so any file cut short, half overwritten or left from another step is recognised.
Layouts of a set in CHECKPOINT_DIR:

- `overwrite`: NAMES at the top, rewritten in place every step;
- `folder`: `step-<n>/` holding NAMES, the folder of the step before deleted after;
- `aside`: NAMES at the top, each written to `<name>.tmp` and renamed into place.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

NAMES = ("model.bin", "optimizer.bin", "step.json")
LAYOUTS = ("overwrite", "folder", "aside")


def content(name: str, step: int, size: int) -> bytes:
    """`size` bytes (more if the header needs them) naming the file, the step and the size."""
    header = f"{name} step {step} size {size}\n".encode()
    unit = f"{step:08d}|".encode()
    body = unit * (max(0, size - len(header)) // len(unit) + 1)
    return (header + body)[: max(size, len(header))]


def step_of(name: str, data: bytes) -> int | None:
    """The step `data` was written for, or None when it is not one whole file of `name`."""
    first, _, _ = data.partition(b"\n")
    fields = first.decode(errors="replace").split(" ")
    if len(fields) != 5 or fields[0] != name or not (fields[2].isdigit() and fields[4].isdigit()):
        return None
    step, size = int(fields[2]), int(fields[4])
    return step if data == content(name, step, size) else None


@dataclass(frozen=True)
class SetState:
    step: int | None
    """The step of the set found (None: no set at all)."""
    intact: bool
    """Every file whole, all of one step (and, for `folder`, every step folder whole)."""
    detail: str


def read_set(folder: Path, layout: str, size: int) -> SetState:
    """The checkpoint set in `folder` as `layout` lays it out, files of `size` bytes."""
    if layout == "folder":
        steps = sorted(
            int(p.name.removeprefix("step-"))
            for p in folder.glob("step-*")
            if p.name.removeprefix("step-").isdigit()
        )
        if not steps:
            return SetState(None, not any(folder.iterdir()) if folder.exists() else True, "empty")
        states = [_read_names(folder / f"step-{s}", s, size) for s in steps]
        broken = [s for s in states if not s.intact]
        if broken:
            return broken[0]
        return SetState(steps[-1], True, f"step folders {steps}")
    present = [name for name in NAMES if (folder / name).exists()]
    if not present:
        return SetState(None, True, "empty")
    return _read_names(folder, None, size)


def _read_names(folder: Path, expected: int | None, size: int) -> SetState:
    steps: dict[str, int | None] = {}
    for name in NAMES:
        path = folder / name
        if not path.exists():
            return SetState(expected, False, f"{path} is missing")
        data = path.read_bytes()
        steps[name] = step_of(name, data) if len(data) == file_size(name, size) else None
    found = set(steps.values())
    if None in found or len(found) != 1:
        return SetState(expected, False, f"{folder}: {steps}")
    (step,) = found
    if expected is not None and step != expected:
        return SetState(expected, False, f"{folder} holds step {step}")
    return SetState(step, True, f"{folder}: step {step}")


def file_size(name: str, size: int) -> int:
    """The size of `name` in a set whose data files have `size` bytes (step.json is small)."""
    return 64 if name == "step.json" else size


def write_whole(path: Path, data: bytes, pieces: int = 8) -> None:
    """Write `data` to `path` in place (truncate, several writes, close)."""
    step = max(1, len(data) // pieces)
    with path.open("wb") as out:
        for start in range(0, len(data), step):
            out.write(data[start : start + step])
            out.flush()


def log(path: Path, **fields: object) -> None:
    """Append one JSON line to the job's log, which lies outside the synced folders."""
    with path.open("a") as out:
        out.write(json.dumps({"time": time.time(), "pid": os.getpid(), **fields}) + "\n")


def read_log(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
