"""The unit of data on the hot path.

A `Reading` is a small slotted record, not a pydantic model: at 15,000 points/s the cost of
validation per value would dominate the gateway. Validation happens once, at the edges
(config load, API bodies); everything between drivers and the store trusts its inputs.

Drivers hand the bus a *batch* (a plain list of readings from one poll or one subscription
callback). Batches stay intact through the bus and into one store transaction.
"""

from __future__ import annotations

import enum
import time
from typing import TypeAlias

Value: TypeAlias = float | int | bool | str | None


class Quality(enum.IntEnum):
    """OPC-UA-style quality, reduced to the three states a technician acts on.

    GOOD: the device answered and the value decoded. UNCERTAIN: a value exists but is
    doubtful (stale, out of declared range). BAD: no usable value; `Reading.reason` says why.
    """

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


class Reading:
    """One value of one point at one moment.

    `point` is the qualified point id `<device>.<point>`. `ts_source` is the device's own
    timestamp when the protocol carries one (OPC UA SourceTimestamp, an MQTT payload field),
    otherwise None; `ts_gateway` is when the gateway received it. Both are epoch seconds.
    """

    __slots__ = ("point", "quality", "reason", "ts_gateway", "ts_source", "value")

    def __init__(
        self,
        point: str,
        value: Value,
        quality: Quality = Quality.GOOD,
        ts_gateway: float | None = None,
        ts_source: float | None = None,
        reason: str | None = None,
    ) -> None:
        self.point = point
        self.value = value
        self.quality = quality
        self.ts_gateway = time.time() if ts_gateway is None else ts_gateway
        self.ts_source = ts_source
        self.reason = reason

    def __repr__(self) -> str:
        extra = f", reason={self.reason!r}" if self.reason else ""
        return (
            f"Reading({self.point!r}, {self.value!r}, {self.quality.name}"
            f", ts_gateway={self.ts_gateway:.3f}{extra})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reading):
            return NotImplemented
        return (
            self.point == other.point
            and self.value == other.value
            and self.quality == other.quality
            and self.ts_gateway == other.ts_gateway
            and self.ts_source == other.ts_source
            and self.reason == other.reason
        )

    __hash__ = None  # type: ignore[assignment]  # mutable record


Batch: TypeAlias = list[Reading]


def bad(point: str, reason: str, ts_gateway: float | None = None) -> Reading:
    """A BAD-quality reading with no value: how a failed read is recorded, never dropped."""
    return Reading(point, None, Quality.BAD, ts_gateway=ts_gateway, reason=reason)
