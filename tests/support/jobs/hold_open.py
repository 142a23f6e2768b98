"""Write half a checkpoint and hold it open for HOLD_S seconds, then finish it.

CHECKPOINT_DIR/ready.txt (closed at once) says the half is written and the file is open.
"""

import os
import time
from pathlib import Path

checkpoint_dir = Path(os.environ["CHECKPOINT_DIR"])
hold = float(os.environ.get("HOLD_S", "3"))
checkpoint_dir.mkdir(parents=True, exist_ok=True)
with (checkpoint_dir / "model.ckpt").open("w") as ckpt:
    ckpt.write("first-half;")
    ckpt.flush()
    os.fsync(ckpt.fileno())
    (checkpoint_dir / "ready.txt").write_text("half written, still open\n")
    time.sleep(hold)
    ckpt.write("second-half\n")
