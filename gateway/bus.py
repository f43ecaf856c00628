"""The in-process bus: drivers publish batches, subscribers receive the same batch object.

Two kinds of subscriber:
- a *sink* is a plain callable run on the event loop for every batch; it must not block
  (the store's `submit` only enqueues for its writer thread; the latest-value cache updates
  a dict);
- a *queue* (`BatchQueue`) decouples a slower async consumer (inference, rules). It is
  bounded; when full, the batch is refused and its readings counted, never silently lost.

A sink that raises is logged (at most once per 10 s per sink) and counted; the others still
receive the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.readings import Batch

log = logging.getLogger("millrace.bus")

Sink = Callable[[Batch], object]


@dataclass(slots=True)
class _SinkEntry:
    name: str
    sink: Sink
    errors: int = 0
    last_logged: float = 0.0


class BatchQueue:
    """A bounded queue of batches for one async consumer; full means refused and counted."""

    def __init__(self, name: str, maxsize: int) -> None:
        self.name = name
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize)
        self.dropped_batches = 0
        self.dropped_readings = 0

    def put(self, batch: Batch) -> None:
        try:
            self._queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.dropped_batches += 1
            self.dropped_readings += len(batch)

    async def get(self) -> Batch:
        return await self._queue.get()

    def task_done(self) -> None:
        self._queue.task_done()

    async def join(self) -> None:
        await self._queue.join()

    def qsize(self) -> int:
        return self._queue.qsize()


class Bus:
    def __init__(self) -> None:
        self._sinks: list[_SinkEntry] = []
        self._queues: list[BatchQueue] = []
        self.batches = 0
        self.readings = 0

    def subscribe(self, name: str, sink: Sink) -> None:
        self._sinks.append(_SinkEntry(name, sink))

    def queue(self, name: str, maxsize: int = 1000) -> BatchQueue:
        q = BatchQueue(name, maxsize)
        self._queues.append(q)
        return q

    def publish(self, batch: Batch) -> None:
        """Hand `batch` to every subscriber. Never raises, never blocks."""
        if not batch:
            return
        self.batches += 1
        self.readings += len(batch)
        for entry in self._sinks:
            try:
                entry.sink(batch)
            except Exception:
                entry.errors += 1
                now = time.monotonic()
                if now - entry.last_logged >= 10:
                    entry.last_logged = now
                    log.exception(
                        "bus subscriber failed", extra={"sink": entry.name, "errors": entry.errors}
                    )
        for q in self._queues:
            q.put(batch)

    async def drain(self, timeout: float) -> bool:
        """Wait until every queue consumer has processed what it was given."""
        if not self._queues:
            return True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(q.join() for q in self._queues))
        except TimeoutError:
            return False
        return True

    def sink_errors(self) -> dict[str, int]:
        return {e.name: e.errors for e in self._sinks}

    def queues(self) -> list[BatchQueue]:
        return list(self._queues)
