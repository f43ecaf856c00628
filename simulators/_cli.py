"""What every simulator's command line shares: stop on SIGINT/SIGTERM, logging, exit codes.

Each simulator runs alone as `python -m simulators.<name>`: it prints one line saying where
it listens, runs until SIGINT or SIGTERM, and exits 0 on a clean stop or 2 with a one-line
message when its arguments or its port are unusable.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any


def stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_until_signal(
    resource: AbstractAsyncContextManager[Any], describe: Callable[[], str]
) -> None:
    """Enter `resource`, print its one-line description, wait for a stop signal, exit it."""
    stop = stop_event()
    async with resource:
        print(describe(), flush=True)
        await stop.wait()


def run_cli(
    name: str,
    serve: Callable[[], Coroutine[Any, Any, None]],
    *,
    verbose: bool,
    verbose_level: int = logging.DEBUG,
    quiet: Iterable[str] = (),
) -> int:
    """Configure logging, run `serve()`, map bad arguments or an unusable port to exit 2."""
    logging.basicConfig(
        level=verbose_level if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        for logger in quiet:
            logging.getLogger(logger).setLevel(logging.ERROR)
    try:
        asyncio.run(serve())
    except (ValueError, OSError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    return 0
