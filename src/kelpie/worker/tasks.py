"""Named, supervised asyncio tasks: none of the worker's background tasks dies silently.

`spawn` names the task and logs its death with the traceback the moment it happens; the
owner also keeps the task and awaits it (or waits on it next to the job process), so a
dead heartbeat or sync task is acted on, not just logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

logger = logging.getLogger("kelpie.worker")

T = TypeVar("T")


def spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """Start `coro` as a task called `name` whose unexpected death is logged at once."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_log_death)
    return task


def _log_death(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        logger.error("task %s died: %r", task.get_name(), exc, exc_info=exc)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel `tasks` and wait until each has finished (their errors were logged by `spawn`)."""
    pending = [task for task in tasks if task is not None and not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
