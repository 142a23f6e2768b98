"""Write COUNT checkpoint files of SIZE bytes, one every INTERVAL_S, for the latency bench.

After closing CHECKPOINT_DIR/f<i>.bin it appends "<i> <time.time()>" to CLOSE_LOG, which
lies outside the synced folders.
"""

import os
import time
from pathlib import Path

checkpoint_dir = Path(os.environ["CHECKPOINT_DIR"])
close_log = Path(os.environ["CLOSE_LOG"])
count = int(os.environ.get("COUNT", "30"))
size = int(os.environ.get("SIZE", str(1024 * 1024)))
interval = float(os.environ.get("INTERVAL_S", "0.3"))
payload = os.urandom(size)
checkpoint_dir.mkdir(parents=True, exist_ok=True)
for i in range(count):
    with (checkpoint_dir / f"f{i}.bin").open("wb") as f:
        f.write(payload)
    closed = time.time()
    with close_log.open("a") as log:
        log.write(f"{i} {closed}\n")
    time.sleep(interval)
