"""Report progress to $KELPIE_PROGRESS_FILE, then hang while the worker keeps beating.

STEPS steps, one every 0.05 s (message `warming up` for the first half, `training` after),
each written whole and renamed into place; then a last progress with the message `hung`, the
pid in PID_FILE, and a sleep that never ends nor reports anything again. Invalid JSON is
written once first when WRITE_GARBAGE is set (the worker must ignore it).
"""

import json
import os
import sys
import time
from pathlib import Path

steps = int(sys.argv[1])
path = Path(os.environ["KELPIE_PROGRESS_FILE"])


def write(text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


if os.environ.get("WRITE_GARBAGE"):
    write("{not json")
    time.sleep(1.5)  # a heartbeat or so reads it
for step in range(1, steps + 1):
    message = "warming up" if step <= steps // 2 else "training"
    write(json.dumps({"step": step, "total": steps, "message": message}))
    time.sleep(0.05)
write(json.dumps({"step": steps, "total": steps, "message": "hung"}))
Path(os.environ["PID_FILE"]).write_text(str(os.getpid()))
while True:
    time.sleep(1)
