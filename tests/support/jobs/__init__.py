"""Small job scripts the worker tests run as real subprocesses (stdlib only).

Each reads INPUT_DIR / CHECKPOINT_DIR / OUTPUT_DIR like a user's job would; `JOBS` maps a
name to the script's path, to be run with the test interpreter's absolute path.
"""

from pathlib import Path

JOBS = Path(__file__).parent
