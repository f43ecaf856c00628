"""systemd's notify protocol (`Type=notify`, `WatchdogSec=`) without a library.

systemd passes `NOTIFY_SOCKET` (a datagram socket path, `@` for the abstract namespace) and,
with `WatchdogSec=`, `WATCHDOG_USEC`. The gateway says `READY=1` once it serves, and
`WATCHDOG=1` from a task on its event loop: if the loop hangs (a blocking call, a deadlock),
the pings stop and systemd kills and restarts the process, which `Restart=on-failure` alone
cannot notice. Outside systemd (docker, balena, a shell) every call here does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping


def _address(env: Mapping[str, str]) -> str | None:
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return None
    return "\0" + addr[1:] if addr.startswith("@") else addr


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one notify message; False when not under systemd or the socket is gone."""
    addr = _address(os.environ if env is None else env)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), addr)
    except OSError:
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of systemd's WatchdogSec), or None when there is none.

    `WATCHDOG_PID`, when set, must be this process: a child must not ping for its parent.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.5)
    except ValueError:
        return None


async def watchdog(
    healthy: Callable[[], bool], interval: float, env: Mapping[str, str] | None = None
) -> None:
    """Ping every `interval` s while `healthy()`; runs until cancelled.

    A ping is skipped (not sent) while the gateway reports itself unhealthy, so systemd
    restarts a gateway that is stuck in a state it cannot leave, not only a hung loop.
    """
    while True:
        if healthy():
            notify("WATCHDOG=1", env)
        await asyncio.sleep(interval)
