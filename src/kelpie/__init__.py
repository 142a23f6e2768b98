from __future__ import annotations

"""kelpie: shepherds long-running jobs to completion on interruptible nodes."""

__version__ = "0.1.0"
