"""Write numbered lines to stdout and stderr, then exit with EXIT_CODE (default 0).

Each line names the worker that ran it (the name of the folder above OUTPUT_DIR), so the
attempts of a job tell apart: `out <worker> <i>` on stdout, `err <worker> <i>` on stderr,
LINES of each (default 100), STEP_S apart (default 0), each flushed at once. With
UNTIL_SIGTERM=1 it keeps writing until SIGTERM, then writes `err <worker> got SIGTERM` and
exits 0. LAST_WORDS is written to stderr just before the exit.
"""

import os
import signal
import sys
import time
from pathlib import Path

worker = Path(os.environ["OUTPUT_DIR"]).parent.name
lines = int(os.environ.get("LINES", "100"))
step_s = float(os.environ.get("STEP_S", "0"))
until_sigterm = os.environ.get("UNTIL_SIGTERM") == "1"
terminated = False


def on_sigterm(signum: int, frame: object) -> None:
    global terminated
    terminated = True


signal.signal(signal.SIGTERM, on_sigterm)
i = 0
while (i < lines or until_sigterm) and not terminated:
    sys.stdout.write(f"out {worker} {i}\n")
    sys.stdout.flush()
    sys.stderr.write(f"err {worker} {i}\n")
    sys.stderr.flush()
    i += 1
    if step_s:
        time.sleep(step_s)
if terminated:
    sys.stderr.write(f"err {worker} got SIGTERM\n")
if "LAST_WORDS" in os.environ:
    sys.stderr.write(os.environ["LAST_WORDS"] + "\n")
sys.stderr.flush()
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
