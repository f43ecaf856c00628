"""The contract between the outbox runner and a transport.

The runner (`sync.runner`) owns the cursor: it reads the next readings after the
uplink's cursor from the store, wraps them in an `OutboxBatch` with the uplink's next sequence
number, hands it to `Sender.send`, and advances the cursor only when `send` returns. A sender
therefore never acks anything itself, and nothing leaves the outbox before the far side
confirmed it (PUBACK, HTTP 2xx).

What `send` may raise:

* `SinkRetry`     the far side is unreachable or failed (connection lost, 5xx, timeout): the
                  runner keeps the batch, backs off (capped, with jitter), calls `connect` again
                  and re-sends the SAME batch (same seq, same ids): duplicates are possible only
                  for what was in flight, and the ids identify them;
* `SinkThrottle`  the far side asked for a pause (429, 503 with Retry-After): the runner waits
                  `retry_after` seconds and re-sends the same batch.

A batch the far side rejects as malformed (`SinkDrop`) must not block the queue: the sender
isolates the bad readings itself (e.g. by splitting the batch), hands each to
`UplinkContext.quarantine` with the reason, delivers the rest, and returns normally.

Sequence numbers: `seq` counts batches per uplink (1, 2, 3, ...; persisted with the cursor, so
it survives restarts). `prev_id` is the cursor before the batch, `last_id` the cursor after it:
the far side sees a gap when a batch's `prev_id` is not the previous batch's `last_id`, and a
resend when `seq` repeats. Readings inside a batch are in id order, which is per-point order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.store import StoredReading
from gateway.types import DataClass


@dataclass(frozen=True, slots=True)
class PointMeta:
    """What a transport may need to know about a point besides its reading."""

    device: str
    name: str
    unit: str
    equipment: str | None  # the first equipment the point describes, or None
    data_class: DataClass


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    uplink: str
    seq: int
    prev_id: int
    last_id: int
    readings: list[StoredReading]
    #: A page of a replay asked for through the API (`POST /uplinks/{name}/replay`): readings
    #: the far side may already have, re-sent from history; `seq` is 0 and the cursor does
    #: not move. The far side de-duplicates by reading id.
    replay: bool = False

    @property
    def first_id(self) -> int:
        return self.readings[0].id if self.readings else self.last_id


#: (uplink, reason, the offending reading) -> None: a reading the far side refused as malformed.
Quarantine = Callable[[str, str, StoredReading], None]


@dataclass(frozen=True)
class UplinkContext:
    gateway_id: str
    site: str
    #: Point id -> its metadata (None for a point no longer configured: send it anyway).
    point_meta: Callable[[str], PointMeta | None]
    quarantine: Quarantine
    #: Config file folder: relative certificate paths are relative to it.
    base_dir: str = "."
    extra: dict[str, str] = field(default_factory=dict)


class Sender(Protocol):
    """One uplink transport. All methods run on the event loop and must not block it."""

    name: str

    async def connect(self) -> None:
        """Be ready to send; raise SinkRetry (with the reason) when the far side is not."""
        ...

    async def send(self, batch: OutboxBatch) -> None:
        """Deliver every reading of `batch`, returning once the far side confirmed all of it."""
        ...

    async def close(self) -> None:
        """Release the connection; what was not confirmed stays in the outbox."""
        ...

    def stats(self) -> dict[str, float]:
        """Transport counters for /uplinks and /metrics (messages, bytes, reconnects...)."""
        ...
