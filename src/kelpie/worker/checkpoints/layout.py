"""Where the objects of generations live in the user's bucket.

A file first uploaded for generation N by attempt A lies at
`<prefix>.kelpie/a<A>/g<N>/<path>` (plus `.gz` when the job compresses). Keys carry the
attempt, so a worker that lost the job can never overwrite what a newer holder uploaded,
and a leftover can be told apart from a newer holder's work by its attempt number alone.
"""

from __future__ import annotations

import re

from kelpie.worker.plan import CheckpointTarget

GZ_SUFFIX = ".gz"
_ATTEMPT = re.compile(r"a(\d+)/g\d+/.")


def object_key(
    target: CheckpointTarget, attempt_id: int, generation: int, path: str, *, compress: bool
) -> str:
    """The key `path` of `target` is uploaded to for `generation` by `attempt_id`."""
    key = f"{target.area}a{attempt_id}/g{generation}/{path}"
    return key + GZ_SUFFIX if compress else key


def attempt_of(target: CheckpointTarget, key: str) -> int | None:
    """The attempt that uploaded `key`, or None for a key kelpie did not lay out."""
    if not key.startswith(target.area):
        return None
    found = _ATTEMPT.match(key, len(target.area))
    return int(found.group(1)) if found else None
