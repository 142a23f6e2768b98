"""The kelpie SDK: `KelpieClient` (blocking) and `AsyncKelpieClient` (asyncio).

    from kelpie.client import KelpieClient
    with KelpieClient.from_env() as client:
        job = client.submit_job({"command": "python", "arguments": ["train.py"],
                                 "container_group_id": "my-group"})
        print(client.get_job(job.id).status)

Both speak the same endpoints through the same request specs (`kelpie.client.calls`) and
retry rules (`kelpie.client.retry`); errors are `KelpieError` subclasses.
"""

from kelpie.client.async_client import AsyncKelpieClient
from kelpie.client.errors import (
    ApiUnavailable,
    BadRequest,
    Conflict,
    Forbidden,
    KelpieError,
    NotFoundError,
    Unauthorized,
)
from kelpie.client.retry import Backoff, RetryPolicy
from kelpie.client.sync_client import KelpieClient

__all__ = [
    "ApiUnavailable",
    "AsyncKelpieClient",
    "Backoff",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "KelpieClient",
    "KelpieError",
    "NotFoundError",
    "RetryPolicy",
    "Unauthorized",
]
