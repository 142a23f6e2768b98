"""Copy every input file to OUTPUT_DIR upper-cased, and dump the environment it saw.

With SYNC_LAYOUT=1 it writes into MODEL_DIR and LOGS_DIR instead (the `sync` form test).
"""

import json
import os
from pathlib import Path

env = dict(os.environ)
input_dir = Path(env["INPUT_DIR"])
output_dir = Path(env["OUTPUT_DIR"])
if env.get("SYNC_LAYOUT") == "1":
    data_dir = Path(env["DATA_DIR"])
    model_dir = Path(env["MODEL_DIR"])
    logs_dir = Path(env["LOGS_DIR"])
    for path in sorted(data_dir.rglob("*")):
        if path.is_file():
            out = model_dir / path.relative_to(data_dir)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(path.read_text().upper())
    (model_dir / "weights.bin").write_bytes(b"w" * 1000)
    (model_dir / "scratch.tmp").write_text("not synced")
    logs_dir.mkdir(parents=True, exist_ok=True)
    (logs_dir / "train.log").write_text("loss=0.1\n" * 100)
    (logs_dir / "debug.trace").write_text("not synced")
else:
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(input_dir.rglob("*")):
        if path.is_file():
            out = output_dir / path.relative_to(input_dir)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(path.read_text().upper())
    (output_dir / "env.json").write_text(json.dumps(env))
