"""The job's progress file: `$KELPIE_PROGRESS_FILE`, a small JSON object the job may write
(e.g. `{"step": 1200, "total": 5000, "message": "epoch 3"}`), sent with heartbeats.

Each attempt gets its own folder for it outside the job's synced folders (so it is never
uploaded), and the job may write the file in place or rename a finished one onto it. A file
larger than MAX_PROGRESS_BYTES, or that is not a JSON object, is ignored with one warning per
attempt; the last good progress stands meanwhile (a read that catches a write half-way never
erases it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kelpie.schemas import MAX_PROGRESS_BYTES

PROGRESS_FILE_VARIABLE = "KELPIE_PROGRESS_FILE"


class ProgressFile:
    """One attempt's progress file, read before each heartbeat."""

    def __init__(self, on_warning: Callable[[str], None]) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="kelpie-progress-"))
        self.path = self._folder / "progress.json"
        self._on_warning = on_warning
        self._warned = False
        self._last: dict[str, Any] | None = None

    def environment(self) -> dict[str, str]:
        return {PROGRESS_FILE_VARIABLE: str(self.path)}

    def read(self) -> Mapping[str, Any] | None:
        """What the job last wrote, or None before it wrote anything usable."""
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_PROGRESS_BYTES + 1)
        except FileNotFoundError:
            return self._last
        except OSError as exc:
            self._warn(f"cannot read the progress file: {exc}")
            return self._last
        if len(raw) > MAX_PROGRESS_BYTES:
            self._warn(f"progress file larger than {MAX_PROGRESS_BYTES} bytes: ignored")
            return self._last
        if not raw.strip():
            return self._last  # being written
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._warn("progress file is not valid JSON: ignored")
            return self._last
        if not isinstance(value, dict) or "\x00" in raw.decode("utf-8", "replace"):
            self._warn("progress file is not a JSON object: ignored")
            return self._last
        self._last = value
        return value

    def remove(self) -> None:
        shutil.rmtree(self._folder, ignore_errors=True)

    def _warn(self, warning: str) -> None:
        if self._warned:
            return
        self._warned = True
        self._on_warning(f"{warning}; later problems with it are not reported")
