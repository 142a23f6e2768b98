"""Exit with the code given as the first argument, a while after writing a checkpoint.

The checkpoint is finished (closed, then nothing written) PAUSE_S seconds (default 2)
before the exit, as a training job fails some time after its last checkpoint.
"""

import os
import sys
import time
from pathlib import Path

checkpoint = Path(os.environ["CHECKPOINT_DIR"]) / "before-exit.txt"
checkpoint.parent.mkdir(parents=True, exist_ok=True)
checkpoint.write_text("written before exiting\n")
time.sleep(float(os.environ.get("PAUSE_S", "2")))
sys.exit(int(sys.argv[1]))
