"""Exit with the code given as the first argument (after writing a checkpoint)."""

import os
import sys
from pathlib import Path

checkpoint = Path(os.environ["CHECKPOINT_DIR"]) / "before-exit.txt"
checkpoint.parent.mkdir(parents=True, exist_ok=True)
checkpoint.write_text("written before exiting\n")
sys.exit(int(sys.argv[1]))
