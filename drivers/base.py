"""The driver interface: small on purpose.

A driver owns one connection (a Modbus TCP endpoint, a serial line, an OPC UA session, a
broker subscription) and the devices reached through it. Contract:

- `run()` connects, polls or subscribes, and hands every batch of readings to the `emit`
  callable it was built with. It returns only when cancelled, and heals its own connection
  (reconnect with capped exponential backoff and jitter) rather than raising. An exception
  escaping `run()` is a bug or an unrecoverable setup error; the supervisor restarts it.
- Nothing is emitted after `run()` has returned or been cancelled.
- `health()` is cheap and callable from the event loop at any time: one `DeviceHealth` per
  device, updated on transitions (online -> down -> online), not rewritten per poll.
- A device that is down has its points emitted once as BAD quality with the reason, so
  the store and API show why values stopped; it never stops the other devices.

Optional abilities are separate protocols: `Writer` (write a point), `Prober` (probe every
point once for the commissioning report).

Items. Some messages are not telemetry but one discrete thing each (a fruit on a grading line:
its score record or its camera image). A driver that receives them hands each one, raw, to an
`ItemSink` as an `Item`, on the event loop thread; items never become readings. The sink
returns at once (it queues; the work happens elsewhere, e.g. the inference engine) and says
False when it refused the item because it is full: the driver counts that, it does not retry.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gateway.readings import Batch, Value
from gateway.types import DataClass

Emit = Callable[[Batch], None]


@dataclass(frozen=True, slots=True)
class Item:
    """One discrete thing to process (a fruit on a grading line), handed over raw: a JSON
    score record or the bytes of a camera image (JPEG/PNG), exactly as published. The driver
    never parses it, so a consumer gets the bytes the device sent, and a payload that is not
    telemetry never turns into bogus readings or dead letters.

    `source` is the driver's device (connection) id; `equipment` the configured (or, with
    `accept_unknown_equipment`, adopted) equipment named by the topic; `channel` the item
    topic's configured name (`fruit`, `image`) and so how to read `payload`; `item_id` the
    topic's `{item}` level as sent (untrusted text without `/`, possibly empty; None when the
    template has no `{item}`); `ts_gateway` is `time.time()` when the message was received.
    Under QoS 1 an item can arrive twice (after a reconnect): `item_id` is the key to
    de-duplicate on where that matters.
    """

    source: str
    equipment: str
    channel: str
    item_id: str | None
    payload: bytes = field(repr=False)  # an image in a log line helps nobody
    topic: str
    ts_gateway: float


#: Takes one item on the event loop thread and returns at once: True when accepted, False when
#: it refused the item (its queue full). It must not block; the driver counts refusals.
ItemSink = Callable[[Item], bool]


class DeviceState(enum.StrEnum):
    STARTING = "starting"
    ONLINE = "online"
    DOWN = "down"
    DISABLED = "disabled"


@dataclass(slots=True)
class DeviceHealth:
    """What `/devices` shows for one device."""

    device: str
    protocol: str
    endpoint: str
    state: DeviceState = DeviceState.STARTING
    last_contact: float | None = None
    last_error: str | None = None
    since: float | None = None  # when the current state began
    points: int = 0  # points configured
    points_read: int = 0  # values read since start (GOOD or not)
    polls_ok: int = 0
    polls_failed: int = 0
    consecutive_failures: int = 0
    requests: int = 0
    reconnects: int = 0
    overruns: int = 0  # polls that started later than one interval after their due time
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PointSpec:
    """A point a driver produces, declared up front so the API can list it before any value.

    `id` is `<device>.<name>`, where `device` is what `/devices` shows health for: the config
    device for Modbus and OPC UA, the equipment named in the topic for MQTT. `source` is the
    config device (connection) it arrives through.
    """

    id: str
    device: str
    name: str
    source: str
    unit: str = ""
    data_type: str = ""
    data_class: DataClass = DataClass.PUBLIC
    writable: bool = False
    description: str = ""
    #: Declared engineering range: writes outside it are refused before any I/O.
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One line of the commissioning report."""

    device: str
    point: str
    ok: bool
    value: Value = None
    unit: str = ""
    reason: str = ""
    #: The configured device the point came through, where it is not `device` itself (an
    #: MQTT device's points belong to each machine that publishes on it).
    source: str = ""


@runtime_checkable
class Driver(Protocol):
    key: str  # connection key, e.g. tcp://10.0.0.5:502

    async def run(self) -> None: ...

    def health(self) -> list[DeviceHealth]: ...

    def points(self) -> list[PointSpec]: ...

    async def close(self) -> None: ...


@runtime_checkable
class Writer(Protocol):
    async def write(self, device: str, point: str, value: Value) -> None:
        """Convert and check `value`, then write it. Raises WriteRejected before any I/O
        when the point is not writable or the value is out of range."""
        ...


@runtime_checkable
class Prober(Protocol):
    async def probe(self) -> list[ProbeResult]:
        """Read every point once, reporting each as OK with its value or FAIL with why."""
        ...
