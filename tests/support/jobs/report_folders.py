"""Write the job's folders as JSON to REPORT_FILE, then run until RELEASE_FILE exists."""

import json
import os
import time
from pathlib import Path

folders = {name: os.environ[name] for name in ("INPUT_DIR", "CHECKPOINT_DIR", "OUTPUT_DIR")}
report = Path(os.environ["REPORT_FILE"])
partial = report.with_name(report.name + ".partial")
partial.write_text(json.dumps(folders))
os.replace(partial, report)  # the test never reads half a report
release = Path(os.environ["RELEASE_FILE"])
while not release.exists():
    time.sleep(0.05)
