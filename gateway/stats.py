"""Cheap counters and latency windows, safe to update from the store's writer thread.

Percentiles come from a bounded ring of recent samples, so memory stays flat whatever the
rate and the figures describe the recent past (what a technician looking at /metrics wants).
"""

from __future__ import annotations

import threading
from collections import deque


class LatencyWindow:
    """The last `size` latency samples (seconds) with p50/p99 on demand."""

    def __init__(self, size: int = 50_000) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, seconds: float) -> None:
        with self._lock:
            self._samples.append(seconds)
            self.count += 1

    def add_many(self, seconds: float, n: int) -> None:
        """Record `n` samples of the same latency (a batch that shares one timestamp)."""
        if n <= 0:
            return
        with self._lock:
            self._samples.extend([seconds] * min(n, self._samples.maxlen or n))
            self.count += n

    def quantiles(self, *qs: float) -> list[float | None]:
        with self._lock:
            data = sorted(self._samples)
        if not data:
            return [None for _ in qs]
        last = len(data) - 1
        return [data[min(last, max(0, round(q * last)))] for q in qs]

    def reset(self) -> None:
        with self._lock:
            self._samples.clear()
            self.count = 0
