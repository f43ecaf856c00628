"""MQTT uplink: the outbox, forwarded to the central platform's broker (QoS 1, TLS).

Topics (a public contract: the platform subscribes to these; change them only with a new
payload version). `{site}` and `{gateway}` come from the gateway's config, `{equipment}` is
the reading's `PointMeta.equipment`, else `PointMeta.device`, else the point id's part before
the first dot. A `/`, `+`, `#` or NUL inside an id is written `_` in the topic (the payload
keeps the id as it is):

    {prefix}/{site}/{gateway}/{equipment}/telemetry  readings of that equipment
    {prefix}/{site}/{gateway}/{equipment}/events     readings whose point name is `event` or
                                                     starts with `alarm_` (model events and
                                                     alarm states, in full)
    {prefix}/{site}/{gateway}/{equipment}/state      RETAINED: the newest reading of every
                                                     point of that equipment this uplink has
                                                     delivered (`event` points excepted)
    {prefix}/{site}/{gateway}/status                 RETAINED `online` once connected; the
                                                     last will (retained, QoS 1) is `offline`,
                                                     and a clean close publishes `offline`

Telemetry and events payload (compact JSON, UTF-8; `schemas/telemetry-batch.schema.json`):

    {"v": 1, "gateway": "gw-1", "site": "plant-a", "uplink": "central", "seq": 42,
     "part": 1, "parts": 3, "prev_id": 1000, "last_id": 1250, "equipment": "pump-1",
     "readings": [{"id": 1001, "point": "pump-1.flow", "value": 12.5, "quality": "good",
                   "ts": 1718000000123, "ts_source": null, "reason": null}, ...]}

One outbox batch becomes one message per (equipment, kind), split further so that no payload
exceeds `batch_max_bytes` (lowered to what an MQTT 5 broker takes when it announces a smaller
MaximumPacketSize); `part` numbers them 1..`parts` across the whole batch, so the far side
knows when a `seq` is complete. Readings keep id order within each message and across
the parts of one equipment and kind. `ts` and `ts_source` are epoch milliseconds (integers);
`ts` is the gateway's clock. Values are JSON numbers, booleans, strings or null. JSON has no
NaN or infinity: such a value is sent as `null`, its quality unchanged, and the reason gains
`non-finite value: NaN` (or `Infinity`, `-Infinity`), appended after `; ` to a reason it
already had. A reading that cannot fit into one message on its own (a huge string) cannot be
delivered at all: it goes to `UplinkContext.quarantine` and the rest of the batch is sent.

State payload (retained, one per equipment touched by the batch; not counted in `parts`):

    {"v": 1, "gateway": ..., "site": ..., "uplink": ..., "equipment": "pump-1", "seq": 42,
     "last_id": 1250, "points": {"pump-1.flow": {<reading, as above>}, ...}}

State messages go out with the batch's other messages, and `send` awaits their PUBACKs too.
The state map lives in memory (at most `STATE_MAX_EQUIPMENT` equipment of
`STATE_MAX_POINTS` points each): after a restart it starts empty and fills again from new
readings. `retain_state: false` switches the state topic off.

Delivery. `send` publishes every message with QoS 1 (at most `max_inflight` awaiting their
PUBACK; paho queues the rest) and returns only once EVERY message got its PUBACK, so the
runner acks the cursor only for what the broker holds. A connection lost or an `ack_timeout`
mid-batch raises `SinkRetry` and the runner sends the same batch again: the far side then
sees some messages twice, recognisable by their reading `id` (and by a repeated `seq`).
MQTT 5 PUBACK refusals: 0x97 (quota exceeded) raises `SinkThrottle`; 0x99 (payload format
invalid) quarantines that message's readings; any other refusal (not authorized, topic name
invalid, ...) raises `SinkRetry` with the broker's reason: the data waits in the outbox until
the broker's configuration is fixed, it is never thrown away for it.

Connections. Each `connect` builds a new paho client (the persistent session lives on the
broker: MQTT 5 clean_start=False with `session_expiry`, 3.1.1 clean_session=False, under a
stable client id). The TCP connect and TLS handshake run in a worker thread; paho's own
network thread (`loop_start`) then owns the socket, so every read and write happens on that
one thread (an SSL socket must not be used from two). paho callbacks only post to the event
loop (`call_soon_threadsafe`), where CONNACK, PUBACKs and the loss of the connection resolve
futures; nothing here blocks the event loop. The sender never reconnects by itself: the
runner owns backoff and calls `connect` again after a `SinkRetry`.

Logs go to `millrace.uplink.mqtt` with `uplink`, `endpoint` and `reason` fields; they name the
user, never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from drivers.mqtt.config import MqttTls
from gateway.errors import SinkRetry, SinkThrottle
from gateway.readings import Quality
from gateway.store import StoredReading
from sync.base import OutboxBatch, PointMeta, UplinkContext
from sync.config import DEFAULT_BATCH_MAX_BYTES, MIN_BATCH_MAX_BYTES, MqttUplinkConfig

log = logging.getLogger("millrace.uplink.mqtt")

#: Version of the telemetry, events and state payloads (`"v"`).
PAYLOAD_VERSION = 1
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
#: Bounds of the in-memory state map behind the retained state topics.
STATE_MAX_EQUIPMENT = 1000
STATE_MAX_POINTS = 1000
#: Point names published on the events topic: model events, and alarm states.
EVENT_POINT = "event"
ALARM_PREFIX = "alarm_"

#: How long the runner should pause when the broker says its quota is exceeded (MQTT 5 has
#: no retry-after of its own).
THROTTLE_RETRY_AFTER = 5.0
#: Bytes of an MQTT PUBLISH besides its payload (fixed header, topic, packet id, properties),
#: kept free under a broker's MaximumPacketSize.
_PACKET_OVERHEAD = 1024
#: close(): how long the `offline` status may wait for its PUBACK, and the DISCONNECT to go.
_CLOSE_WAIT = 2.0
_DISCONNECT_WAIT = 1.0
#: Batches with more readings than this are encoded in a worker thread, not on the loop.
_OFFLOAD_READINGS = 1000

Kind = Literal["telemetry", "events"]
Action = Literal["ok", "retry", "throttle", "drop"]

_QUALITY = {Quality.GOOD: "good", Quality.UNCERTAIN: "uncertain", Quality.BAD: "bad"}
_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})
_SURROGATE = re.compile("[\ud800-\udfff]")
_CLOSE_READINGS = b"]}"
#: A JSON string literal, non-ASCII kept (json.dumps(..., ensure_ascii=False) for one str).
_json_str: Callable[[str], str] = json.encoder.encode_basestring
#: MQTT 5 PUBACK reason codes with an answer other than "retry later".
_RC_QUOTA_EXCEEDED = 0x97
_RC_PAYLOAD_FORMAT_INVALID = 0x99


# -- pure: routing and payloads ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every payload and topic of one uplink repeats: who sends, and under which prefix."""

    prefix: str
    site: str
    gateway: str
    uplink: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{topic_level(self.site)}/{topic_level(self.gateway)}"

    def topic(self, equipment: str, kind: str) -> str:
        """`kind` is `telemetry`, `events` or `state`."""
        return f"{self.base}/{topic_level(equipment)}/{kind}"

    @property
    def status_topic(self) -> str:
        return f"{self.base}/status"


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message to publish (QoS 1). `readings` are those it carries (state: none)."""

    topic: str
    payload: bytes
    kind: str  # telemetry | events | state | status
    equipment: str | None = None
    readings: tuple[StoredReading, ...] = ()
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """A reading the uplink cannot deliver, and why (for `UplinkContext.quarantine`)."""

    reading: StoredReading
    reason: str


#: equipment -> point id -> (reading id, the reading's JSON object, encoded).
StateMap = dict[str, dict[str, tuple[int, bytes]]]


@dataclass(frozen=True, slots=True)
class Split:
    """A batch as messages: `messages` (telemetry and events, `part` 1..n in order),
    `rejected` (readings that cannot be sent, in id order) and `latest` (the newest encoded
    reading per point and equipment, `event` points excepted: input of `merge_state`)."""

    messages: list[Message]
    rejected: list[Rejected]
    latest: StateMap


def topic_level(text: str) -> str:
    """An id as one topic level: `/` would add levels and `+`, `#` are wildcards to the
    broker, so they (and NUL) become `_`; an empty id becomes `_`."""
    return text.translate(_TOPIC_UNSAFE) or "_"


def route(point: str, meta: PointMeta | None) -> tuple[str, Kind]:
    """Which equipment a reading belongs to and whether it is an event (see module docs)."""
    if meta is not None:
        equipment = meta.equipment or meta.device
        name = meta.name
    else:
        equipment, _, name = point.partition(".")
        name = name or point
    equipment = equipment or "_"  # a point id like ".x": still somewhere to go
    kind: Kind = "events" if name == EVENT_POINT or name.startswith(ALARM_PREFIX) else "telemetry"
    return equipment, kind


def point_name(point: str, meta: PointMeta | None) -> str:
    return meta.name if meta is not None else point.partition(".")[2] or point


def reading_object(r: StoredReading) -> dict[str, Any]:
    """A reading as the JSON object of the payload. Raises ValueError when its gateway
    timestamp is not a finite number (it cannot be written as epoch milliseconds)."""
    value = r.value
    reason = r.reason
    if isinstance(value, float) and not math.isfinite(value):
        note = f"non-finite value: {_nonfinite_name(value)}"
        reason = note if reason is None else f"{reason}; {note}"
        value = None
    try:
        ts_source = None if r.ts_source is None else epoch_ms(r.ts_source)
    except ValueError:  # a device clock beyond any date: the gateway's time still holds
        ts_source = None
    return {
        "id": r.id,
        "point": r.point,
        "value": value,
        "quality": _QUALITY.get(r.quality, "bad"),
        "ts": epoch_ms(r.ts_gateway),
        "ts_source": ts_source,
        "reason": reason,
    }


def encode_reading(r: StoredReading) -> bytes:
    """`encode_json(reading_object(r))`, written out by hand: the hot path of `split_batch`
    (about four times faster than building and dumping a dict per reading, which matters on a
    Pi at thousands of readings per second). Same output byte for byte (tested)."""
    value = r.value
    reason = r.reason
    if value is None:
        text = "null"
    elif isinstance(value, float):
        if math.isfinite(value):
            text = float.__repr__(value)  # what json.dumps writes
        else:
            note = f"non-finite value: {_nonfinite_name(value)}"
            reason = note if reason is None else f"{reason}; {note}"
            text = "null"
    elif isinstance(value, str):
        text = _json_str(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = int.__repr__(value)
    else:  # not a type the store hands out; let json say what it makes of it
        return encode_json(reading_object(r))
    tss = r.ts_source
    try:
        source = "null" if tss is None else str(epoch_ms(tss))
    except ValueError:
        source = "null"
    out = (
        f'{{"id":{int(r.id)},"point":{_json_str(r.point)},"value":{text},'
        f'"quality":"{_QUALITY.get(r.quality, "bad")}","ts":{epoch_ms(r.ts_gateway)},'
        f'"ts_source":{source},"reason":{"null" if reason is None else _json_str(reason)}}}'
    )
    try:
        return out.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", out).encode("utf-8")


def epoch_ms(ts: float) -> int:
    """Epoch seconds -> epoch milliseconds, rounded to the nearest."""
    ms = ts * 1000.0
    if not math.isfinite(ms):
        raise ValueError(f"timestamp {ts!r} is not a finite number of milliseconds")
    return round(ms)


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON. NaN and infinities are refused (they are not JSON); a lone
    surrogate in a string (not encodable as UTF-8) becomes U+FFFD rather than failing."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _nonfinite_name(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _header(env: Envelope, batch: OutboxBatch, part: int, parts: int, equipment: str) -> bytes:
    head = {
        "v": PAYLOAD_VERSION,
        "gateway": env.gateway,
        "site": env.site,
        "uplink": env.uplink,
        "seq": batch.seq,
        "part": part,
        "parts": parts,
        "prev_id": batch.prev_id,
        "last_id": batch.last_id,
        "equipment": equipment,
    }
    if batch.replay:
        head["replay"] = True
    return encode_json(head)[:-1] + b',"readings":['


def split_batch(
    batch: OutboxBatch,
    env: Envelope,
    point_meta: Callable[[str], PointMeta | None],
    *,
    max_bytes: int,
) -> Split:
    """Cut `batch` into telemetry and events messages of at most `max_bytes` payload each.

    Groups are (equipment, kind) in order of their first reading; each group is packed
    greedily in id order. The header is sized for the largest `part`/`parts` a batch of this
    many readings could need, so the bound holds whatever the final count. Deterministic: the
    same batch gives the same messages, so a resend repeats exactly what may have arrived.
    """
    routes: dict[str, tuple[str, Kind, bool]] = {}
    groups: dict[tuple[str, Kind], list[tuple[StoredReading, bytes]]] = {}
    rejected: list[Rejected] = []
    latest: StateMap = {}
    for r in batch.readings:
        known = routes.get(r.point)
        if known is None:
            meta = point_meta(r.point)
            equipment, kind = route(r.point, meta)
            known = routes[r.point] = (equipment, kind, point_name(r.point, meta) != EVENT_POINT)
        equipment, kind, stateful = known
        try:
            data = encode_reading(r)
        except ValueError as exc:
            rejected.append(Rejected(r, f"cannot encode as JSON: {exc}"))
            continue
        groups.setdefault((equipment, kind), []).append((r, data))
        if stateful:
            latest.setdefault(equipment, {})[r.point] = (r.id, data)

    widest = int("9" * len(str(max(len(batch.readings), 1))))
    chunks: list[tuple[str, Kind, list[tuple[StoredReading, bytes]]]] = []
    for (equipment, kind), items in groups.items():
        room = (
            max_bytes - len(_header(env, batch, widest, widest, equipment)) - len(_CLOSE_READINGS)
        )
        current: list[tuple[StoredReading, bytes]] = []
        used = 0
        for r, data in items:
            size = len(data)
            if size > room:
                rejected.append(
                    Rejected(
                        r,
                        f"reading is {size} bytes as JSON: too large for one message "
                        f"(batch_max_bytes {max_bytes})",
                    )
                )
                continue
            if current and used + 1 + size > room:
                chunks.append((equipment, kind, current))
                current, used = [], 0
            used += size + (1 if current else 0)
            current.append((r, data))
        if current:
            chunks.append((equipment, kind, current))

    parts = len(chunks)
    messages = [
        Message(
            topic=env.topic(equipment, kind),
            payload=_header(env, batch, part, parts, equipment)
            + b",".join(data for _, data in items)
            + _CLOSE_READINGS,
            kind=kind,
            equipment=equipment,
            readings=tuple(r for r, _ in items),
        )
        for part, (equipment, kind, items) in enumerate(chunks, 1)
    ]
    if rejected:
        rejected.sort(key=lambda x: x.reading.id)
        # A reading too large to send is not the state either (it could not be published).
        bad_ids = {x.reading.id for x in rejected}
        for equipment, points in list(latest.items()):
            for point, (rid, _) in list(points.items()):
                if rid in bad_ids:
                    del points[point]
            if not points:
                del latest[equipment]
    return Split(messages, rejected, latest)


def merge_state(
    state: Mapping[str, Mapping[str, tuple[int, bytes]]],
    latest: Mapping[str, Mapping[str, tuple[int, bytes]]],
    *,
    max_equipment: int = STATE_MAX_EQUIPMENT,
    max_points: int = STATE_MAX_POINTS,
) -> tuple[StateMap, list[str], int]:
    """`latest` merged over `state`: (the new map, the equipment it touched, the points left
    out because a bound was reached). A point keeps the reading with the higher id, so a
    resent older batch never moves the state back. `state` itself is not modified."""
    merged: StateMap = dict(state)  # type: ignore[arg-type]  # inner maps copied on write
    touched: list[str] = []
    refused = 0
    for equipment, points in latest.items():
        current = merged.get(equipment)
        if current is None:
            if len(merged) >= max_equipment:
                refused += len(points)
                continue
            current = {}
        else:
            current = dict(current)
        for point, entry in points.items():
            old = current.get(point)
            if old is None:
                if len(current) >= max_points:
                    refused += 1
                    continue
                current[point] = entry
            elif entry[0] >= old[0]:
                current[point] = entry
        if current:
            merged[equipment] = current
            touched.append(equipment)
    return merged, touched, refused


def state_message(
    env: Envelope,
    equipment: str,
    points: Mapping[str, tuple[int, bytes]],
    *,
    seq: int,
    last_id: int,
) -> Message:
    """The retained state of one equipment: its points' newest readings, sorted by point."""
    head = {
        "v": PAYLOAD_VERSION,
        "gateway": env.gateway,
        "site": env.site,
        "uplink": env.uplink,
        "equipment": equipment,
        "seq": seq,
        "last_id": last_id,
    }
    body = b",".join(encode_json(p) + b":" + points[p][1] for p in sorted(points))
    payload = encode_json(head)[:-1] + b',"points":{' + body + b"}}"
    return Message(env.topic(equipment, "state"), payload, "state", equipment, retain=True)


def puback_action(code: int) -> Action:
    """What a PUBACK reason code means for the batch (3.1.1 PUBACKs are always 0)."""
    if code < 0x80:
        return "ok"  # 0x00 success, 0x10 no matching subscribers
    if code == _RC_QUOTA_EXCEEDED:
        return "throttle"
    if code == _RC_PAYLOAD_FORMAT_INVALID:
        return "drop"
    return "retry"


def tls_context(tls: MqttTls, base_dir: str | Path = ".") -> ssl.SSLContext:
    """A client context that verifies the broker against `tls.ca` (the system CAs when
    None), refuses anything below TLS 1.2, and presents the client certificate when given.
    `insecure` drops only the host-name check; the chain is still verified."""

    def path(value: str) -> str:
        p = Path(value)
        return str(p if p.is_absolute() else Path(base_dir) / p)

    ca = path(tls.ca) if tls.ca else None
    # What ssl.create_default_context() builds for a client, as a _TrackedContext.
    ctx = _TrackedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if ca is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        try:
            ctx.load_verify_locations(ca)
        except OSError as exc:  # ssl.SSLError included; the bare error does not name the file
            raise OSError(f"ca {ca}: {exc.strerror or exc}") from exc
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert is not None and tls.key is not None:
        cert, key = path(tls.cert), path(tls.key)
        try:
            ctx.load_cert_chain(cert, key)
        except OSError as exc:
            raise OSError(f"cert {cert} / key {key}: {exc.strerror or exc}") from exc
    if tls.insecure:
        ctx.check_hostname = False
    return ctx


class _TrackedContext(ssl.SSLContext):
    """Remembers the sockets it wrapped: when the handshake fails inside paho's connect, paho
    drops the half-open TLS socket without closing it, and only we can."""

    wrapped: list[ssl.SSLSocket]

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        sock = super().wrap_socket(*args, **kwargs)
        self.__dict__.setdefault("wrapped", []).append(sock)
        return sock

    def close_failed(self) -> None:
        for sock in self.__dict__.pop("wrapped", []):
            with contextlib.suppress(OSError):
                sock.close()


# -- the sender ------------------------------------------------------------------------------


class _Acks:
    """PUBACKs awaited for one group of messages: reason code per message index."""

    __slots__ = ("codes", "done", "left", "names")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.left = count
        self.codes: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.done: asyncio.Future[None] = loop.create_future()
        if count == 0:
            self.done.set_result(None)

    def ack(self, index: int, code: int, name: str) -> None:
        if index in self.codes:
            return
        self.codes[index] = code
        self.names[index] = name
        self.left -= 1
        if self.left <= 0 and not self.done.done():
            self.done.set_result(None)


class _Connection:
    """One paho client, one MQTT connection: a new one per `connect`, so callbacks of a dead
    connection can never touch the next one's bookkeeping."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.client: mqtt.Client | None = None
        #: None once the broker accepted us, else why not.
        self.connack: asyncio.Future[str | None] = loop.create_future()
        #: Resolves (with the reason) when the connection is gone.
        self.lost: asyncio.Future[str] = loop.create_future()
        self.pending: dict[int, tuple[_Acks, int]] = {}
        self.accepted = False
        self.started = False  # paho's network thread runs
        self.abandoned = False  # connect gave up while the worker thread was still dialling
        self.stopping = False  # we are closing it: its loss is not news
        self.gone = threading.Event()  # paho reported the disconnect (network thread)
        self.paho_error: str | None = None
        self.max_packet: int | None = None
        self.session_present = False

    @property
    def up(self) -> bool:
        return self.accepted and not self.lost.done()


class _SetupError(Exception):
    """The client could not be built (TLS files unreadable or invalid)."""


class MqttSender:
    """The MQTT transport of one uplink (`Sender`); see the module docstring.

    `connect` is idempotent while connected and builds a new connection otherwise; `close`
    publishes `offline`, disconnects cleanly and may be followed by `connect` again. One
    `send` at a time (the runner's loop): a second concurrent call is a bug and raises
    RuntimeError. `last_error` is the latest failure's reason (None once delivering again).
    """

    def __init__(self, config: MqttUplinkConfig, context: UplinkContext) -> None:
        self.config = config
        self.context = context
        self.name = config.name
        self.client_id = config.client_id or f"millrace-{context.gateway_id}-{config.name}"
        self.envelope = Envelope(config.topic_prefix, context.site, context.gateway_id, config.name)
        self.endpoint = f"mqtt{'s' if config.tls else ''}://{config.host}:{config.port}"
        self.last_error: str | None = None
        self._conn: _Connection | None = None
        self._state: StateMap = {}
        self._sending = False
        self._ever_connected = False
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "messages_sent",
                "bytes_sent",
                "batches_sent",
                "reconnects",
                "errors",
                "quarantined",
                "state_skipped",
            ),
            0,
        )
        v5 = config.mqtt_version == "5"
        self._json_props = _publish_properties("application/json") if v5 else None
        self._text_props = _publish_properties("text/plain") if v5 else None

    # -- Sender ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, be accepted, and publish the retained `online` status (PUBACK awaited).
        Raises SinkRetry with the reason: refused, timeout, TLS (certificate verify failed,
        certificate required, protocol version), not authorized."""
        conn = self._conn
        if conn is not None and conn.up:
            return
        if conn is not None:
            self._conn = None
            await self._stop(conn, graceful=False)
        conn = _Connection(asyncio.get_running_loop())
        try:
            await self._open(conn)
        except SinkRetry as exc:
            self._failed(str(exc), "mqtt uplink cannot connect")
            await self._stop(conn, graceful=False)
            raise
        except BaseException:  # cancelled: leave no thread or socket behind
            await self._stop(conn, graceful=False)
            raise
        again = self._ever_connected
        self._ever_connected = True
        if again:
            self._counts["reconnects"] += 1
        self._conn = conn
        self.last_error = None
        log.info(
            "mqtt uplink reconnected" if again else "mqtt uplink connected",
            extra=self._ctx(
                client_id=self.client_id,
                session_present=conn.session_present,
                tls=self.config.tls is not None,
                max_packet=conn.max_packet,
            ),
        )

    async def send(self, batch: OutboxBatch) -> None:
        """Publish every part of `batch` and return once all were PUBACKed (module docs)."""
        if self._sending:
            raise RuntimeError(f"mqtt uplink {self.name}: send() while another send() runs")
        if not batch.readings:
            return
        conn = self._conn
        if conn is None or not conn.up:
            why = self.last_error or "connect() was not called"
            raise SinkRetry(f"uplink {self.name}: not connected ({why})")
        self._sending = True
        try:
            await self._deliver(conn, batch)
        except SinkRetry as exc:
            self._failed(str(exc), "mqtt uplink batch not delivered")
            raise
        finally:
            self._sending = False
            conn.pending.clear()

    async def close(self) -> None:
        """Publish `offline` (retained), disconnect cleanly and stop the network thread.
        What was not PUBACKed stays in the outbox. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.stopping = True
        if conn.up:
            with contextlib.suppress(SinkRetry, SinkThrottle, RuntimeError):
                await self._publish_and_wait(
                    conn,
                    [self._status_message(STATUS_OFFLINE)],
                    min(self.config.ack_timeout, _CLOSE_WAIT),
                )
        await self._stop(conn, graceful=True)
        log.info("mqtt uplink closed", extra=self._ctx())

    def stats(self) -> dict[str, float]:
        """messages_sent, bytes_sent (payload bytes) and batches_sent count what the broker
        acknowledged; reconnects (connections after the first), inflight (messages of the
        current send awaiting PUBACK), connected (1/0), errors (failed connects and sends),
        quarantined (readings), state_skipped (state messages over batch_max_bytes or
        points beyond the state bounds). The reason of the last failure is `last_error`."""
        conn = self._conn
        out = {k: float(v) for k, v in self._counts.items()}
        out["inflight"] = float(len(conn.pending)) if conn is not None else 0.0
        out["connected"] = 1.0 if conn is not None and conn.up else 0.0
        return out

    # -- sending ----------------------------------------------------------------------------

    async def _deliver(self, conn: _Connection, batch: OutboxBatch) -> None:
        limit = self._limit(conn)
        # Point metadata is looked up here, on the loop (the context's function promises no
        # thread safety); a large batch is then encoded in a worker thread (~3 µs a reading)
        # so the loop never stalls for tens of milliseconds on a slow box.
        lookup = self.context.point_meta
        metas = {p: lookup(p) for p in {r.point for r in batch.readings}}
        if len(batch.readings) > _OFFLOAD_READINGS:
            split = await asyncio.to_thread(
                split_batch, batch, self.envelope, metas.get, max_bytes=limit
            )
        else:
            split = split_batch(batch, self.envelope, metas.get, max_bytes=limit)
        messages = list(split.messages)
        new_state: StateMap | None = None
        if self.config.retain_state and split.latest:
            new_state, touched, refused = merge_state(self._state, split.latest)
            self._counts["state_skipped"] += refused
            for equipment in touched:
                msg = state_message(
                    self.envelope,
                    equipment,
                    new_state[equipment],
                    seq=batch.seq,
                    last_id=batch.last_id,
                )
                if len(msg.payload) > limit:
                    self._counts["state_skipped"] += 1
                    log.warning(
                        "mqtt uplink state too large for one message: not published",
                        extra=self._ctx(equipment=equipment, size=len(msg.payload), limit=limit),
                    )
                    continue
                messages.append(msg)

        acks = await self._publish_and_wait(conn, messages, self.config.ack_timeout)

        retry: list[str] = []
        throttle: list[str] = []
        dropped: list[Rejected] = []
        for index, code in acks.codes.items():
            action = puback_action(code)
            if action == "ok":
                continue
            msg = messages[index]
            what = f"{msg.topic}: {acks.names[index]} (0x{code:02x})"
            if action == "retry":
                retry.append(what)
            elif action == "throttle":
                throttle.append(what)
            else:
                reason = f"broker refused the message: {acks.names[index]} (0x{code:02x})"
                dropped += [Rejected(r, reason) for r in msg.readings]
        if retry:
            raise SinkRetry(
                f"uplink {self.name}: broker refused {len(retry)} of {len(messages)} messages "
                f"({'; '.join(retry[:3])})"
            )
        if throttle:
            reason = f"uplink {self.name}: broker quota exceeded ({throttle[0]})"
            self._failed(reason, "mqtt uplink throttled")
            raise SinkThrottle(reason, retry_after=THROTTLE_RETRY_AFTER)

        sent = [m for i, m in enumerate(messages) if puback_action(acks.codes[i]) == "ok"]
        self._counts["messages_sent"] += len(sent)
        self._counts["bytes_sent"] += sum(len(m.payload) for m in sent)
        self._counts["batches_sent"] += 1
        if new_state is not None:
            self._state = new_state
        self.last_error = None
        self._quarantine(split.rejected + dropped)

    def _quarantine(self, rejected: Sequence[Rejected]) -> None:
        if not rejected:
            return
        self._counts["quarantined"] += len(rejected)
        log.warning(
            "mqtt uplink quarantined readings it cannot deliver",
            extra=self._ctx(
                readings=len(rejected),
                first_id=rejected[0].reading.id,
                reason=rejected[0].reason,
            ),
        )
        for item in rejected:
            self.context.quarantine(self.name, item.reason, item.reading)

    async def _publish_and_wait(
        self, conn: _Connection, messages: Sequence[Message], timeout: float
    ) -> _Acks:
        """Publish `messages` (QoS 1) and wait for every PUBACK. Raises SinkRetry when the
        connection goes or `timeout` passes first (the connection is then dropped: a broker
        that stopped answering is not trusted with the next batch)."""
        client = conn.client
        if client is None or not conn.up:
            raise SinkRetry(f"uplink {self.name}: not connected")
        acks = _Acks(conn.loop, len(messages))
        # No await in this loop: a PUBACK is resolved on the event loop, so it cannot be
        # handled before its mid is registered here.
        for index, msg in enumerate(messages):
            props = self._text_props if msg.kind == "status" else self._json_props
            info = client.publish(
                msg.topic, msg.payload, qos=1, retain=msg.retain, properties=props
            )
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise SinkRetry(
                    f"uplink {self.name}: publish failed: {_rc_text(info.rc)}"
                    + (f" ({conn.lost.result()})" if conn.lost.done() else "")
                )
            conn.pending[info.mid] = (acks, index)
        total = len(messages)
        waiters: set[asyncio.Future[Any]] = {acks.done, conn.lost}
        done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if acks.done in done:
            return acks
        if conn.lost in done:
            raise SinkRetry(
                f"uplink {self.name}: connection lost with {acks.left} of {total} messages "
                f"unacknowledged: {conn.lost.result()}"
            )
        if self._conn is conn:
            self._conn = None
        await self._stop(conn, graceful=False)
        raise SinkRetry(
            f"uplink {self.name}: no PUBACK for {acks.left} of {total} messages within "
            f"{timeout:g} s (ack_timeout)"
        )

    def _limit(self, conn: _Connection) -> int:
        """batch_max_bytes, lowered to what the broker takes (MQTT 5 MaximumPacketSize)."""
        limit = self.config.batch_max_bytes
        if conn.max_packet:
            limit = min(limit, max(conn.max_packet - _PACKET_OVERHEAD, MIN_BATCH_MAX_BYTES))
        return limit

    def _status_message(self, status: bytes) -> Message:
        return Message(self.envelope.status_topic, status, "status", retain=True)

    def _failed(self, reason: str, message: str) -> None:
        """Count and remember a failure; log it when the reason changed (not every retry)."""
        self._counts["errors"] += 1
        if reason != self.last_error:
            log.warning(message, extra=self._ctx(reason=reason))
        self.last_error = reason

    # -- connecting -------------------------------------------------------------------------

    async def _open(self, conn: _Connection) -> None:
        cfg = self.config
        loop = conn.loop
        dial = loop.run_in_executor(None, self._dial, conn)
        try:
            # The TCP connect and the TLS handshake are each bounded by connect_timeout.
            done, _ = await asyncio.wait({dial}, timeout=2 * cfg.connect_timeout + 1.0)
        except asyncio.CancelledError:
            self._abandon(conn, dial)
            raise
        if not done:
            self._abandon(conn, dial)
            raise SinkRetry(f"uplink {self.name}: {self.endpoint}: no answer (timeout)")
        exc = dial.exception()
        if isinstance(exc, _SetupError):
            raise SinkRetry(f"uplink {self.name}: TLS setup failed: {exc}") from exc
        if exc is not None:
            raise SinkRetry(f"uplink {self.name}: {self.endpoint}: {_describe(exc)}") from exc
        client = conn.client
        assert client is not None
        client.loop_start()
        conn.started = True
        answered, _ = await asyncio.wait({conn.connack}, timeout=cfg.connect_timeout)
        if not answered:
            raise SinkRetry(f"uplink {self.name}: {self.endpoint}: no CONNACK (timeout)")
        failure = conn.connack.result()
        if failure is not None:
            if cfg.tls is not None and cfg.tls.cert is None and conn.lost.done():
                # TLS 1.3 checks the client certificate after the handshake: the broker just
                # hangs up, and OpenSSL calls it EOF.
                failure += " (does the broker require a client certificate? tls.cert is not set)"
            raise SinkRetry(f"uplink {self.name}: {self.endpoint}: {failure}")
        conn.accepted = True
        acks = await self._publish_and_wait(
            conn, [self._status_message(STATUS_ONLINE)], cfg.ack_timeout
        )
        code = acks.codes.get(0, 0)
        if puback_action(code) != "ok":
            raise SinkRetry(
                f"uplink {self.name}: broker refused the status message on "
                f"{self.envelope.status_topic}: {acks.names.get(0)} (0x{code:02x})"
            )

    def _dial(self, conn: _Connection) -> None:
        """Worker thread: build the client (TLS files are read here) and connect the socket
        (TCP, TLS handshake, CONNECT sent). Blocking by nature, never on the event loop."""
        cfg = self.config
        v5 = cfg.mqtt_version == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else False,
            userdata=conn,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,  # the runner owns reconnects and their backoff
        )
        client.suppress_exceptions = True
        # paho reports socket and TLS failures only in its log; the first one is the cause.
        paho_log = logging.Logger(f"millrace.uplink.mqtt.paho.{cfg.name}", logging.WARNING)
        paho_log.addHandler(_FirstError(conn))
        client.enable_logger(paho_log)
        client.connect_timeout = cfg.connect_timeout
        client.max_inflight_messages_set(cfg.max_inflight)
        if cfg.username is not None:
            password = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, password)
        ctx: ssl.SSLContext | None = None
        if cfg.tls is not None:
            try:
                ctx = tls_context(cfg.tls, self.context.base_dir)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise _SetupError(_describe(exc)) from exc
            client.tls_set_context(ctx)
            if cfg.tls.insecure:
                client.tls_insecure_set(True)  # else paho checks the host name itself
        client.will_set(self.envelope.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = min(int(cfg.session_expiry), 0xFFFFFFFF)
        conn.client = client
        try:
            client.connect(
                cfg.host,
                cfg.port,
                keepalive=math.ceil(cfg.keepalive),
                clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                properties=properties,
            )
        except BaseException:
            if isinstance(ctx, _TrackedContext):
                ctx.close_failed()
            raise
        if isinstance(ctx, _TrackedContext):
            ctx.__dict__.pop("wrapped", None)  # paho owns the socket from here on

    def _abandon(self, conn: _Connection, dial: asyncio.Future[None]) -> None:
        """connect gave up on a dial still running: close its socket once it is done."""
        conn.abandoned = True

        def close(_: asyncio.Future[None]) -> None:
            if not dial.cancelled():
                dial.exception()  # retrieved: nobody else will look at it
            _close_socket(conn.client)

        dial.add_done_callback(close)

    async def _stop(self, conn: _Connection, *, graceful: bool) -> None:
        """Stop the connection's network thread and socket (in a worker thread), waiting
        for it even through cancellation, which is re-raised afterwards."""
        conn.stopping = True
        if conn.client is None or conn.abandoned:
            return
        loop = asyncio.get_running_loop()
        stopping = loop.run_in_executor(None, _shutdown, conn, graceful)
        cancelled = False
        while not stopping.done():
            try:
                await asyncio.shield(stopping)
            except asyncio.CancelledError:
                cancelled = True
        if stopping.exception() is not None:  # pragma: no cover - defensive
            log.error("mqtt uplink stop failed", exc_info=stopping.exception(), extra=self._ctx())
        if cancelled:
            raise asyncio.CancelledError

    # -- paho callbacks: network thread; they only post to the event loop --------------------

    def _on_connect(
        self,
        _client: mqtt.Client,
        conn: _Connection,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        failure = f"broker refused the connection: {reason}" if reason.is_failure else None
        max_packet = getattr(properties, "MaximumPacketSize", None) if properties else None
        _post(conn, self._connack, conn, failure, bool(flags.session_present), max_packet)

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        conn: _Connection,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        who = "broker" if flags.is_disconnect_packet_from_server else "connection"
        text = f"{who} closed: {reason}"
        if conn.paho_error:
            text = f"{text} ({conn.paho_error})"
        conn.gone.set()
        _post(conn, self._lost, conn, text)

    def _on_publish(
        self,
        _client: mqtt.Client,
        conn: _Connection,
        mid: int,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        code = int(getattr(reason, "value", 0) or 0)
        _post(conn, self._acked, conn, mid, code, str(reason))

    # -- event loop side of the callbacks ---------------------------------------------------

    def _connack(
        self, conn: _Connection, failure: str | None, session_present: bool, max_packet: Any
    ) -> None:
        conn.session_present = session_present
        if isinstance(max_packet, int) and max_packet > 0:
            conn.max_packet = max_packet
        if not conn.connack.done():
            conn.connack.set_result(failure)

    def _lost(self, conn: _Connection, reason: str) -> None:
        was_up = conn.up
        if not conn.connack.done():
            conn.connack.set_result(f"connection closed before CONNACK: {reason}")
        if not conn.lost.done():
            conn.lost.set_result(reason)
        if was_up and not conn.stopping and conn is self._conn:
            self.last_error = f"connection lost: {reason}"
            log.warning("mqtt uplink connection lost", extra=self._ctx(reason=reason))

    def _acked(self, conn: _Connection, mid: int, code: int, name: str) -> None:
        entry = conn.pending.pop(mid, None)
        if entry is not None:
            acks, index = entry
            acks.ack(index, code, name)

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {
            "uplink": self.name,
            "endpoint": self.endpoint,
            "username": self.config.username,
            **extra,
        }


class _FirstError(logging.Handler):
    """Keeps the first error paho logged on a connection: the cause (what follows is
    consequence, like "Client is not connected")."""

    def __init__(self, conn: _Connection) -> None:
        super().__init__(logging.WARNING)
        self._conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        if self._conn.paho_error is None:
            with contextlib.suppress(Exception):
                self._conn.paho_error = record.getMessage()[:300]


def _shutdown(conn: _Connection, graceful: bool) -> None:
    """Worker thread: end the connection and its network thread. Graceful: DISCONNECT (the
    broker keeps the session and drops the will). Otherwise, or when DISCONNECT does not get
    out in time, the socket is shut down under paho, which ends its loop at once."""
    client = conn.client
    if client is None:
        return
    if not conn.started:
        _close_socket(client)
        return
    if graceful and not conn.gone.is_set():
        with contextlib.suppress(Exception):
            client.disconnect()
        conn.gone.wait(_DISCONNECT_WAIT)
    if not conn.gone.is_set():
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                # The raw socket's shutdown: leaves the SSL object to paho's thread, and a
                # closed socket (fileno -1) only raises.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # type: ignore[arg-type]
    client.loop_stop()  # the loop ends with its socket (reconnect_on_failure is off)


def _close_socket(client: mqtt.Client | None) -> None:
    if client is None:
        return
    with contextlib.suppress(Exception):
        sock = client.socket()
        if sock is not None:
            sock.close()


def _post(conn: _Connection, fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        conn.loop.call_soon_threadsafe(fn, *args)


def _publish_properties(content_type: str) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1  # UTF-8
    props.ContentType = content_type
    return props


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer (timeout)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc)
        if "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason:
            reason += " (no TLS version both sides accept: this gateway needs TLS 1.2 or newer)"
        return f"TLS: {reason}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc})"
    return str(exc).strip() or type(exc).__name__


def _rc_text(rc: MQTTErrorCode | int) -> str:
    return mqtt.error_string(rc).rstrip(".").lower()


__all__ = [
    "ALARM_PREFIX",
    "DEFAULT_BATCH_MAX_BYTES",
    "EVENT_POINT",
    "PAYLOAD_VERSION",
    "STATE_MAX_EQUIPMENT",
    "STATE_MAX_POINTS",
    "STATUS_OFFLINE",
    "STATUS_ONLINE",
    "Envelope",
    "Message",
    "MqttSender",
    "MqttUplinkConfig",
    "Rejected",
    "Split",
    "encode_json",
    "encode_reading",
    "epoch_ms",
    "merge_state",
    "point_name",
    "puback_action",
    "reading_object",
    "route",
    "split_batch",
    "state_message",
    "tls_context",
    "topic_level",
]
