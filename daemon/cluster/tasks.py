"""Stopping the cluster's background tasks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

RECANCEL_S = 0.1
"""How long a cancelled task gets before it is cancelled again."""


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None] | None]) -> None:
    """Cancel every task, then wait for each to finish, so none outlives its owner's ``stop``.

    A task still running after ``RECANCEL_S`` is cancelled again: a cancellation can be
    swallowed by the library the task was awaiting (seen with redis-py: a UDP relay's refresh
    returned normally while its task was being cancelled, and the refresher looped on, so
    ``stop`` waited for ever)."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    for task in running:
        while not task.done():
            await asyncio.wait({task}, timeout=RECANCEL_S)
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
