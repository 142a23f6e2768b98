"""Rewrite one checkpoint file in place every STEP_S seconds, the way torch.save does: open
(truncating), many writes, close. Halfway through each write it pauses PAUSE_S with the file
open, longer than the worker's settle time, so only the open-for-writing check keeps the
half-written file out of a generation.

CHECKPOINT_DIR/model.bin holds the step (checkpoint_format); CHECKPOINT_LOG gets `start`
(with the step resumed and whether it was whole) and `complete` per step.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository
from tests.support.jobs.checkpoint_format import content, log, step_of

folder = Path(os.environ["CHECKPOINT_DIR"])
journal = Path(os.environ["CHECKPOINT_LOG"])
steps = int(os.environ.get("STEPS", "1000"))
step_s = float(os.environ.get("STEP_S", "0.3"))
pause_s = float(os.environ.get("PAUSE_S", "0.6"))
size = int(os.environ.get("FILE_SIZE", str(4 * 1024 * 1024)))
pieces = 64

path = folder / "model.bin"
resumed = step_of("model.bin", path.read_bytes()) if path.exists() else None
log(journal, event="start", resumed=resumed, intact=resumed is not None or not path.exists())
folder.mkdir(parents=True, exist_ok=True)
for step in range((resumed or 0) + 1, steps + 1):
    data = content("model.bin", step, size)
    chunk = len(data) // pieces
    with path.open("wb") as out:
        for i in range(pieces):
            out.write(data[i * chunk : (i + 1) * chunk if i < pieces - 1 else len(data)])
            out.flush()
            if i == pieces // 2:
                time.sleep(pause_s)
    log(journal, event="complete", step=step)
    time.sleep(step_s)
