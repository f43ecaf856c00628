"""asyncio helpers the gateway, its drivers and its box services share."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_until_done(
    task: asyncio.Task[Any], timeout: float | None = None, *, outlast: bool = False
) -> bool:
    """Cancel `task` and wait for it to end, cancelling again every 0.1 s; True when it ended
    (False after `timeout` s). Once is not always enough: on Python 3.11 `asyncio.wait_for`
    swallows a cancel that arrives as its awaitable completes, and a loop around it carries on
    (a helper task waiting for its next round forever, a stop that never returns). With
    `outlast`, a cancel of the caller meanwhile is absorbed (a stopping driver whose
    supervisor repeats its cancel must still end its helpers); otherwise it is raised."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while not task.done():
        if deadline is not None and loop.time() >= deadline:
            return False
        task.cancel()
        with contextlib.suppress(*(() if not outlast else (asyncio.CancelledError,))):
            await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning
    return True
