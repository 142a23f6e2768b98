"""`Idempotency-Key` on submissions: what a key may be, and which requests count as the same.

A repeat of a submission with the same key and the same request within 24 hours answers the
jobs the first one created, with its status code; the same key with another request is a
409. Keys belong to the user who sent them. The store takes the key in the transaction that
creates the jobs (`Store.create_jobs_once`), so racing repeats create the jobs once, through
any number of API processes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import Header

from kelpie.api.errors import ApiError
from kelpie.schemas import JobCreate
from kelpie.store.models import IdempotentRequest

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
_KEY = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: what clients put in a header

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description="Makes the submission safe to repeat: the same key (yours alone) with "
        "the same body within 24 hours answers the jobs the first request created, with its "
        "status code, and creates nothing; the same key with another body is a 409. 1-255 "
        "visible ASCII characters, e.g. a UUID.",
    ),
]


def idempotent_request(
    key: str | None, endpoint: Literal["job", "batch"], submissions: Sequence[JobCreate]
) -> IdempotentRequest | None:
    """The key and the request's fingerprint, or None without a key; 400 for a bad key."""
    if key is None:
        return None
    if len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
        raise ApiError(
            400, f"{HEADER}: must be 1-{MAX_KEY_LENGTH} visible ASCII characters (no spaces)"
        )
    return IdempotentRequest(key, fingerprint(endpoint, submissions))


def fingerprint(endpoint: Literal["job", "batch"], submissions: Sequence[JobCreate]) -> str:
    """Equal for requests that submit the same jobs, however their JSON was spelt (key order,
    spacing, numbers written as in the body, defaults given or left out)."""
    body = [item.model_dump(mode="json", exclude_defaults=True) for item in submissions]
    text = json.dumps([endpoint, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
