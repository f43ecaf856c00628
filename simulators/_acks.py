"""QoS 1 bookkeeping for the simulators that publish (farm fleet, grading line): which
message ids the broker has not acknowledged yet, so `drain()` can wait for them.

paho may deliver the PUBACK (on its network thread) before `publish()` has returned the
message id to the caller, hence the "acknowledged early" set."""

from __future__ import annotations

import asyncio
import threading
import time


class PubackTracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unacked: set[int] = set()
        self._early: set[int] = set()

    def sent(self, mid: int) -> None:
        """A QoS 1 message id `publish()` returned."""
        with self._lock:
            if mid in self._early:
                self._early.discard(mid)
            else:
                self._unacked.add(mid)

    def acked(self, mid: int) -> None:
        """paho's on_publish (network thread)."""
        with self._lock:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._early.add(mid)

    @property
    def unacknowledged(self) -> int:
        with self._lock:
            return len(self._unacked)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until the broker acknowledged every message sent so far."""
        deadline = time.monotonic() + timeout
        while self.unacknowledged:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.unacknowledged} messages not acknowledged")
            await asyncio.sleep(0.01)
