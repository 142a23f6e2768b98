"""Count to COUNT_TO, one checkpoint per step, resuming from CHECKPOINT_DIR/count.txt.

With STEP_FILES=1 each step also writes CHECKPOINT_DIR/steps/<i>.txt; KEEP_STEPS=k then
deletes all but the last k of them (a deletion the worker mirrors in the bucket).
Every start is appended to CHECKPOINT_DIR/starts.txt (so resumes are visible in the
bucket); on SIGTERM the current step is checkpointed, CHECKPOINT_DIR/sigterm.txt written and
the process exits 143. At the end OUTPUT_DIR/result.json holds the count, the starts and the
environment the job saw.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

checkpoint_dir = Path(os.environ["CHECKPOINT_DIR"])
output_dir = Path(os.environ["OUTPUT_DIR"])
count_to = int(os.environ.get("COUNT_TO", "10"))
step_s = float(os.environ.get("STEP_S", "0.1"))
step_files = os.environ.get("STEP_FILES") == "1"
keep_steps = int(os.environ.get("KEEP_STEPS", "0"))
terminated = False


def on_sigterm(signum: int, frame: object) -> None:
    global terminated
    terminated = True


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        f.write(text)


signal.signal(signal.SIGTERM, on_sigterm)
count_file = checkpoint_dir / "count.txt"
start = int(count_file.read_text()) if count_file.exists() else 0
starts_file = checkpoint_dir / "starts.txt"
starts = starts_file.read_text() if starts_file.exists() else ""
write(starts_file, f"{starts}{start}\n")
print(f"count: starting at {start} of {count_to}", flush=True)

for i in range(start + 1, count_to + 1):
    time.sleep(step_s)
    if step_files:
        write(checkpoint_dir / "steps" / f"{i}.txt", f"step {i}\n")
        if keep_steps and i - keep_steps >= 1:
            (checkpoint_dir / "steps" / f"{i - keep_steps}.txt").unlink(missing_ok=True)
    write(count_file, str(i))
    if terminated:
        write(checkpoint_dir / "sigterm.txt", str(i))
        print(f"count: SIGTERM at {i}", flush=True)
        sys.exit(143)

result = {
    "count": int(count_file.read_text()) if count_file.exists() else 0,
    "starts": [int(x) for x in starts_file.read_text().split()],
    "env": dict(os.environ),
}
write(output_dir / "result.json", json.dumps(result))
print("count: done", flush=True)
