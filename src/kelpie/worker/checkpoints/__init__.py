"""Checkpoint generations on the worker: the checkpoint folders committed whole, restored whole.

`CheckpointEngine` is what the job runner uses; `Committer` is how it speaks to the API
(`ApiCommitter` over the client). See the engine module's docstring for the order of calls.
"""

from kelpie.worker.checkpoints.engine import (
    COMMIT_FILE_VARIABLE,
    MODE_VARIABLE,
    ApiCommitter,
    CheckpointEngine,
    CheckpointStats,
    CheckpointStorage,
    Committer,
    explicit_only,
)
from kelpie.worker.checkpoints.generations import ExitKind
from kelpie.worker.checkpoints.restore import Fallback, RestoreReport, fetch_generation

__all__ = [
    "COMMIT_FILE_VARIABLE",
    "MODE_VARIABLE",
    "ApiCommitter",
    "CheckpointEngine",
    "CheckpointStats",
    "CheckpointStorage",
    "Committer",
    "ExitKind",
    "Fallback",
    "RestoreReport",
    "explicit_only",
    "fetch_generation",
]
