"""Job: record which Python runs it and whether kelpie's packages are visible to it."""

import importlib.util
import json
import os
import sys
from pathlib import Path

identity = {
    "executable": sys.executable,
    "prefix": sys.prefix,
    "kelpie_importable": importlib.util.find_spec("kelpie") is not None,
    "virtual_env": os.environ.get("VIRTUAL_ENV"),
    "pythonpath": os.environ.get("PYTHONPATH"),
    "path": os.environ.get("PATH", ""),
}
(Path(os.environ["OUTPUT_DIR"]) / "python.json").write_text(json.dumps(identity))
