"""MQTT southbound driver: one instance per broker connection (one `MqttDevice`), reading the
telemetry that farm machinery publishes. The only module that imports paho for subscribing.

Threads and batching. paho's network loop runs in one thread this driver owns
(`millrace-mqtt-<device>`), which connects, reconnects with capped exponential backoff and
jitter (ours, not paho's: paho's has no jitter), and pumps paho through its external-loop calls
(`loop_read`/`loop_write`/`loop_misc`, reading every waiting packet per select). paho callbacks
never touch driver state: `on_message` appends `(topic, payload)` to an inbox and, when the
inbox was empty, schedules one drain on the event loop (`call_soon_threadsafe`, then a
`_LINGER` of 5 ms); connection events are posted the same way. The drain takes up to
`_DRAIN_MAX` messages, parses them (pure `PayloadParser`), and emits ONE batch: every message
that arrived during the linger or while the loop was busy. The inbox is bounded: when it is
full the network thread waits before taking the next message, so the broker, not our memory,
holds the backlog.

Sessions and delivery. The session is persistent (MQTT 5: clean_start=False with a
SessionExpiryInterval; 3.1.1: clean_session=False) under a stable client id, and topics are
subscribed with the device's QoS (1) on every connect. The broker therefore queues what is
published while we are away, and redelivers unacknowledged QoS 1 messages after a reconnect:
nothing is lost across a broker restart (with broker persistence) or a gateway restart, and
the duplicates are the few messages in flight at the break.

Acknowledged after commit. With a `committed` barrier (the gateway passes `Store.flush`) and
QoS 1, the client runs with paho's `manual_ack` and a message is acknowledged (PUBACK) only
once everything it produced is committed: its readings, its dead letter, or its hand-off to
the item sink. A `kill -9` at any moment therefore loses nothing the broker accepted: what
was not committed was not acknowledged, and the broker delivers it again to the next session.
Each drain records the `(connection, mid, qos)` of its messages after emitting its batch. One
task on the event loop (`_ack_main`) waits `_ACK_LINGER` (10 ms) after a drain, awaits ONE
`committed()` for every drain recorded by then (at most one per drain; under load one per
10 ms plus a commit), then hands those ids, in arrival order, to the network thread and wakes
its `select` through a socket pair. Only that thread calls `client.ack`: with an external
loop paho's `ack` writes to the socket at once, and paho is not safe to drive from two
threads. It sends them before its next read, so PUBACKs go out in the order the PUBLISHes
came in, as MQTT requires ([MQTT-4.6.0-2]), and an id from an earlier connection is never
sent on a later one (the broker resends that message: a duplicate, not a loss). A commit that
fails or takes longer than `_COMMIT_TIMEOUT` withholds the acknowledgements and is awaited
again (the readings are still queued in the store's writer); past `_UNACKED_MAX` messages
waiting for their commit the drain holds back, the inbox fills, and the broker keeps the
backlog. On a stop, the last drains' commit is awaited for `_CLOSE_COMMIT_TIMEOUT` at most
and their PUBACKs go out before DISCONNECT; what is still not committed stays unacknowledged
and comes again at the next start. MQTT 5 sessions ask for a Receive Maximum of
`_RECEIVE_MAX`, so the broker's default in-flight window (Mosquitto: 20 messages) does not
set the pace; under MQTT 3.1.1 that window is the broker's `max_inflight_messages`.
Without `committed` (drivers built directly, as in tests) or with QoS 2, paho acknowledges
on receipt as before. QoS 2 cannot be helped this way: paho answers PUBREC on receipt, after
which the broker no longer holds the message, and with `manual_ack` a PUBREL for a message
an earlier process received would never be completed.

Bad input never stops the driver. A payload that is too large, does not parse, or names
unknown equipment or points is counted per reason, logged at most once per `_LOG_EVERY`
seconds per reason (with the number suppressed), and handed to `dead_letter(device id, topic,
payload[:DEAD_LETTER_BYTES], "reason: detail")`. A field that is present but cannot be coerced
is emitted as a BAD reading with the reason; values outside the point's min/max are
UNCERTAIN.

Items. A message on one of the device's item topics (`items:` in the config) is not
telemetry: it is one discrete thing (a fruit's score record, its camera image) and goes, raw
and unparsed, to the `item_sink` as a `drivers.base.Item`. It takes the same path as telemetry
up to the parser (inbox, drain on the event loop, so the sink is only ever called on the loop
thread, in arrival order within a batch), the same equipment lookup (unknown equipment is
dead-lettered or adopted alike) and the same health bookkeeping (an equipment that only sends
items is ONLINE). Then: larger than the item topic's `max_payload_bytes` -> dead letter
`too_large`; no sink -> dead letter `no_item_consumer`; the sink says False (its queue is full)
-> counted `items_refused` and logged rate-limited, NOT dead-lettered (a dead letter keeps 4 KB:
thousands of image stubs would be noise, and would push real dead letters out). A refused item
is acknowledged all the same (after the commit, in order with the rest): left unacknowledged
it would hold one of the broker's in-flight slots until the next reconnect, and enough of them
would stop the telemetry that shares the connection; the loss is counted. An accepted item is
acknowledged after the same commit, though it lives in the consumer's memory, not in the
store: a crash can lose items accepted but not yet processed. Item topics
are matched before telemetry templates; a topic with an `{item}` level is not cached (every
item has a new topic). The inbox is also bounded in bytes (`_INBOX_MAX_BYTES`), since 20,000
images would not fit in a small box's memory.

Health: one `DeviceHealth` per equipment (what `/devices` shows), endpoint = the topic its
messages arrive on. STARTING until its first message, then ONLINE; DOWN when nothing arrived
within `stale_after`, or when the broker connection is lost, with the reason in `last_error`
and its points emitted once as BAD. Any message from an equipment (even one that fails to
parse: it is alive, just garbled) brings it back ONLINE. Counters per equipment (`messages`,
`values`, `bad_values`, `dead_lettered`, `duplicates`, `items`, `items_refused`,
`item_sink_failed`, `errors.<reason>`) and for the whole connection (`connection.*`, the same
numbers on every equipment of the connection) are in `DeviceHealth.extra`.
`polls_ok`/`polls_failed` count messages read (items: accepted by the sink)/refused,
`requests` messages received, `reconnects` broker reconnects. Acknowledging after commit:
`connection.unacked` messages emitted and waiting for their commit, `connection.acked` those
released after it, `connection.acks_sent` PUBACKs written, `connection.acks_stale` released
after their connection was gone (the broker resends them), `connection.commit_slow` /
`connection.commit_failed` commit waits that timed out / raised.

Contract: nothing is emitted after `run()` returns or is cancelled; the network thread is
stopped and joined before `run()` returns; `close()` disconnects cleanly (MQTT DISCONNECT, so
the broker keeps the session) and is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import select
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from drivers.base import (
    DeviceHealth,
    DeviceState,
    Emit,
    Item,
    ItemSink,
    PointSpec,
)
from drivers.mqtt.config import MqttDevice, MqttPoint, MqttProfile, check_profile
from drivers.mqtt.parse import (
    ParseError,
    PayloadFormat,
    PayloadParser,
    TopicMatch,
    TopicTemplate,
    match_topic,
)
from gateway.aio import cancel_until_done
from gateway.errors import TransportError
from gateway.readings import Batch, Quality, Reading, bad
from gateway.types import NAME_PATTERN

log = logging.getLogger("millrace.mqtt")

DeadLetterSink = Callable[[str, str, bytes, str], None]
#: Returns once everything emitted and dead-lettered before the call is committed.
Committed = Callable[[], Awaitable[None]]
#: What acknowledging one message takes: (connection number, packet id, QoS).
_Ack = tuple[int, int, int]
#: One message in the inbox: (topic or None when not UTF-8, payload, dup, what to ack).
_Msg = tuple[str | None, bytes, bool, _Ack | None]

#: Refusals decided by the driver (the parser's are `drivers.mqtt.parse.PARSE_REASONS`).
DRIVER_REASONS = (
    "unknown_topic",
    "unknown_equipment",
    "unknown_point",
    "bad_topic",
    "too_many_equipment",
    "no_item_consumer",
    "internal",
)
#: Bytes of a refused payload handed to `dead_letter` (the reason says the full size when
#: the size was the problem).
DEAD_LETTER_BYTES = 4096
#: Messages waiting for the event loop before the network thread holds back (backpressure).
_INBOX_MAX = 20_000
#: ... or bytes waiting: item payloads (camera images) are a thousand times larger than
#: telemetry, and 20,000 of them would not fit in a gateway's memory.
_INBOX_MAX_BYTES = 64 * 1024 * 1024
#: Messages parsed per drain callback: bounds how long one drain holds the event loop.
_DRAIN_MAX = 2_000
#: How long the first message of a batch waits for others (latency vs wake-ups per message).
_LINGER = 0.005
#: At most one log line per reason this often.
_LOG_EVERY = 10.0
#: Equipment accepted from topics (accept_unknown_equipment) per connection.
_UNKNOWN_MAX = 1000
#: How often the network thread looks up from select() to see whether it should stop.
_LOOP_TIMEOUT = 0.1
#: Packets read after one select() before looking at keepalive and stop again.
_READ_BURST = 100
_TOPIC_CACHE_MAX = 10_000
#: Messages emitted and waiting for their commit before the drain holds back (and the inbox,
#: then the broker, keeps the rest). Normal flow needs rate x (linger + commit): about a
#: hundred. Kept well below what fills the store's writer queue (`queue_max`, 200,000
#: readings: some 8,700 farm messages), so a stalled store makes us wait, not its refusals.
_UNACKED_MAX = 5_000
#: A commit wait longer than this is logged and counted, then awaited again.
_COMMIT_TIMEOUT = 10.0
#: How long acknowledgements wait for later drains to share their commit: `committed()` makes
#: the store commit at once, and one commit per 5 ms drain cost ~15 % more CPU at 1,450 msg/s.
_ACK_LINGER = 0.01
#: On stop, how long the last acknowledgements may wait for their commit.
_CLOSE_COMMIT_TIMEOUT = 2.0
#: MQTT 5 Receive Maximum asked for when acknowledging after commit: how many unacknowledged
#: QoS 1 messages the broker may have in flight to us (the spec's largest value).
_RECEIVE_MAX = 65_535
_NAME_RE = re.compile(NAME_PATTERN)


@dataclass(slots=True)
class _Equipment:
    id: str
    health: DeviceHealth
    configured: bool
    last_seen: float | None = None  # loop time of the last message
    counts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


class _ItemRoute(NamedTuple):
    """One configured item topic, compiled."""

    channel: str
    template: TopicTemplate
    max_bytes: int


class _ItemMatch(NamedTuple):
    """A topic matched to an item route (what `_match` returns for item topics)."""

    route: _ItemRoute
    equipment: str
    item: str | None


@dataclass(slots=True)
class _Limiter:
    """One log line per reason per `_LOG_EVERY` seconds, saying how many were not logged."""

    last: dict[str, float] = field(default_factory=dict)
    suppressed: Counter[str] = field(default_factory=Counter)

    def allow(self, reason: str) -> int | None:
        now = time.monotonic()
        if now - self.last.get(reason, -math.inf) < _LOG_EVERY:
            self.suppressed[reason] += 1
            return None
        self.last[reason] = now
        return self.suppressed.pop(reason, 0)


class MqttDriver:
    """Subscribes to one broker for the equipment configured on one MQTT device.

    `units` holds exactly one (device, profile) pair: the device IS the connection.
    `equipment` are the equipment ids configured on this device (the `{equipment}` topic
    level); point ids are `<equipment>.<point>`. `dead_letter(device_id, topic, payload,
    reason)` receives refused messages (`Store.dead_letter` fits). `item_sink(item)` receives
    the messages on the device's item topics, on the event loop thread (see the module
    docstring). `committed()` returns once everything emitted and dead-lettered before the
    call is durable (`Store.flush` fits): given, QoS 1 messages are acknowledged to the broker
    only after it (module docstring, "Acknowledged after commit"). `base_dir` resolves
    relative TLS file paths (the config file's folder).
    """

    def __init__(
        self,
        units: Sequence[tuple[MqttDevice, MqttProfile]],
        emit: Emit,
        *,
        equipment: Sequence[str],
        dead_letter: DeadLetterSink | None = None,
        item_sink: ItemSink | None = None,
        committed: Committed | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        base_dir: Path | None = None,
    ) -> None:
        if len(units) != 1:
            raise ValueError(f"an MQTT driver serves exactly one device (got {len(units)})")
        device, profile = units[0]
        problems = check_profile(device, profile)
        if problems:
            raise ValueError(f"device {device.id}: " + "; ".join(problems))
        bad_ids = [e for e in equipment if not _NAME_RE.fullmatch(e)]
        if bad_ids:
            raise ValueError(f"device {device.id}: invalid equipment ids {bad_ids}")
        if len(set(equipment)) != len(equipment):
            raise ValueError(f"device {device.id}: equipment ids repeat")
        self.key = device.connection_key
        self._device = device
        self._profile = profile
        self._emit = emit
        self._dead_letter = dead_letter
        self._item_sink = item_sink
        self._committed = committed
        #: Acknowledge after commit (paho's manual_ack): QoS 1 only, see the module docstring.
        self._manual = committed is not None and device.qos == 1
        self._clock = clock
        self._rng = rng or random.Random()
        self._base_dir = base_dir
        self._parser = PayloadParser(profile, max_bytes=device.max_payload_bytes)
        self._templates = [TopicTemplate(t) for t in device.topics]
        self._item_routes = [
            _ItemRoute(it.name, TopicTemplate(it.topic, kind="item"), it.max_payload_bytes)
            for it in device.items
        ]
        # Subscribed in this order; on_subscribe pairs the broker's answers with it.
        self._filters = [t.filter for t in self._templates] + [
            r.template.filter for r in self._item_routes
        ]
        self._point_specs: dict[str, MqttPoint] = {p.name: p for p in profile.points}
        #: (min, max) of the points that declare either (numbers only, by validation).
        self._bounds: dict[str, tuple[float, float]] = {
            p.name: (-math.inf if p.min is None else p.min, math.inf if p.max is None else p.max)
            for p in profile.points
            if p.min is not None or p.max is not None
        }
        self._number = profile.format is PayloadFormat.NUMBER
        self._equipment: dict[str, _Equipment] = {}
        for eq in equipment:
            self._add_equipment(eq, configured=True)
        self._topic_cache: dict[str, TopicMatch | _ItemMatch | None] = {}

        # Connection-level counters and state (event-loop side).
        self._stats: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._limiter = _Limiter()
        self._connected = False
        self._ever_connected = False
        self._conn_error: str | None = None
        self._started_at = 0.0  # loop time run() started: STARTING equipment go stale from it

        # Acknowledgements (event-loop side): what each drain emitted, waiting for a commit.
        self._unacked: list[list[_Ack]] = []
        self._unacked_n = 0
        self._held = False  # a drain held back because _UNACKED_MAX wait for their commit
        self._ack_wanted: asyncio.Event | None = None
        self._ack_task: asyncio.Task[None] | None = None

        # Shared with the network thread.
        self._inbox: list[_Msg] = []
        self._inbox_bytes = 0  # payload bytes in the inbox (guarded by _inbox_cond)
        self._inbox_cond = threading.Condition()
        self._drain_scheduled = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._closed = False
        self._net_reason: str | None = None  # why the broker refused or dropped us (thread)
        self._paho_error: str | None = None  # paho's first error this attempt (thread)
        self._session_up = False  # CONNACK accepted on the current socket (thread)
        self._received = 0  # messages paho handed over (thread)
        self._conn_no = 0  # connection number, +1 per successful connect (thread writes)
        self._paused = threading.Event()  # set: the network thread reads no more messages
        self._acks_ready: list[_Ack] = []  # committed, for the network thread to send
        self._acks_lock = threading.Lock()
        self._acks_sent = 0  # PUBACKs written (thread)
        self._acks_stale = 0  # committed on a connection that is gone: the broker resends
        self._wake_r: socket.socket | None = None  # wakes the network thread's select
        self._wake_w: socket.socket | None = None

    # -- public interface ----------------------------------------------------------------

    @property
    def device(self) -> MqttDevice:
        return self._device

    @property
    def connected(self) -> bool:
        return self._connected

    def health(self) -> list[DeviceHealth]:
        conn = {f"connection.{k}": float(v) for k, v in self._stats.items()}
        conn.update({f"connection.errors.{k}": float(v) for k, v in self._errors.items()})
        conn["connection.connected"] = 1.0 if self._connected else 0.0
        conn["connection.inbox"] = float(len(self._inbox))
        conn["connection.inbox_bytes"] = float(self._inbox_bytes)
        if self._manual:
            conn["connection.unacked"] = float(self._unacked_n)
            conn["connection.acks_sent"] = float(self._acks_sent)
            conn["connection.acks_stale"] = float(self._acks_stale)
        out = []
        for eq in self._equipment.values():
            extra = {k: float(v) for k, v in eq.counts.items()}
            extra.update({f"errors.{k}": float(v) for k, v in eq.errors.items()})
            extra.update(conn)
            eq.health.extra = extra
            out.append(eq.health)
        return out

    def points(self) -> list[PointSpec]:
        return [
            PointSpec(
                id=f"{eq.id}.{p.name}",
                device=eq.id,
                name=p.name,
                source=self._device.id,
                unit=p.unit,
                data_type=str(p.data_type),
                data_class=p.data_class,
                writable=False,
                description=p.description,
            )
            for eq in self._equipment.values()
            if eq.configured
            for p in self._profile.points
        ]

    def stats(self) -> dict[str, int]:
        """Connection-level counters: messages (all received, items included), values,
        dead_lettered, items (item messages received), items_refused (the sink said it was
        full), item_sink_failed (the sink raised), errors by reason; when acknowledging after
        commit also acked (released after their commit), acks_sent (PUBACKs written),
        acks_stale (committed after their connection was gone), commit_slow/commit_failed."""
        out = dict(self._stats) | {f"errors.{k}": v for k, v in self._errors.items()}
        if self._manual:
            out |= {"acks_sent": self._acks_sent, "acks_stale": self._acks_stale}
        return out

    async def run(self) -> None:
        """Connect, subscribe and emit batches until cancelled (see the module docstring)."""
        if self._closed:
            raise RuntimeError(f"MQTT driver {self._device.id}: run() after close()")
        if self._thread is not None:
            raise RuntimeError(f"MQTT driver {self._device.id}: run() is already running")
        if not self._device.enabled:
            for eq in self._equipment.values():
                eq.health.state = DeviceState.DISABLED
            await asyncio.Event().wait()  # nothing to do until cancelled
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._started_at = loop.time()
        try:
            self._client = self._make_client()
        except (OSError, ValueError) as exc:  # TLS files unreadable or invalid
            reason = f"TLS setup failed: {exc}"
            self._mark_all_down(reason)
            raise TransportError(f"device {self._device.id}: {reason}") from exc
        if not self._equipment and not self._device.accept_unknown_equipment:
            log.warning(
                "mqtt device has no equipment: every message will be dead-lettered",
                extra=self._ctx(),
            )
        if self._item_routes and self._item_sink is None:
            log.warning(
                "mqtt device has item topics but no item consumer: items will be dead-lettered",
                extra=self._ctx(channels=[r.channel for r in self._item_routes]),
            )
        if self._committed is not None and self._device.qos == 2:
            log.warning(
                "mqtt QoS 2 messages are acknowledged on receipt, not after the store's commit;"
                " use QoS 1 for that guarantee",
                extra=self._ctx(),
            )
        self._stop.clear()
        self._paused.clear()
        self._running = True
        # Ids left from an earlier run() belong to a connection that is gone.
        self._unacked, self._unacked_n, self._held = [], 0, False
        with self._acks_lock:
            self._acks_ready = []
        if self._manual:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._ack_wanted = asyncio.Event()
            self._ack_task = loop.create_task(
                self._ack_main(), name=f"millrace-mqtt-acks-{self._device.id}"
            )
        self._thread = threading.Thread(
            target=self._network_main,
            args=(self._client,),
            name=f"millrace-mqtt-{self._device.id}",
            daemon=True,
        )
        self._thread.start()
        tick = max(0.05, min(1.0, self._device.stale_after / 4))
        try:
            while True:
                await asyncio.sleep(tick)
                self._check_stale()
        finally:
            # Stop intake (no callback emits from here on; the network thread reads no more),
            # emit what it had handed over, acknowledge what of it the store committed in
            # time, then stop and join the network thread (it sends those PUBACKs before
            # DISCONNECT). A message read meanwhile is emitted, unacknowledged: it comes again.
            self._running = False
            self._paused.set()
            self._drain(final=True)
            await self._settle_acks()
            await self._stop_network()
            self._connected = False
            self._drain(final=True)
            self._close_wake()

    async def close(self) -> None:
        """Disconnect cleanly (the broker keeps our session) and stop the network thread.
        Acknowledgements still waiting for their commit are not sent (the broker resends)."""
        self._closed = True
        self._running = False
        await self._stop_network()
        self._connected = False
        self._close_wake()

    # -- network thread ------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        dev = self._device
        v5 = dev.mqtt_version == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=dev.effective_client_id,
            # MQTT 5 takes clean_start on connect; 3.1.1 takes clean_session here.
            clean_session=None if v5 else False,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,  # we own reconnects (and their jitter)
            manual_ack=self._manual,  # PUBACK after the store's commit (module docstring)
        )
        # A bug in a callback must not kill the network thread; ours catch their own errors.
        client.suppress_exceptions = True
        # paho reports socket and TLS failures only in its log ("failed to receive on socket:
        # [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] ..."); its first error goes in last_error.
        # A private logger (not in the logging tree) at WARNING: no per-message formatting.
        paho_log = logging.Logger(f"millrace.mqtt.paho.{dev.id}", logging.WARNING)
        paho_log.addHandler(_FirstError(self))
        client.enable_logger(paho_log)
        client.connect_timeout = dev.connect_timeout
        if dev.username is not None:
            password = dev.password.get_secret_value() if dev.password is not None else None
            client.username_pw_set(dev.username, password)
        if dev.tls is not None:
            client.tls_set_context(self._tls_context())
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = min(int(dev.session_expiry), 0xFFFFFFFF)
            if self._manual:
                # A PUBACK now waits for a commit: the broker's default window (Mosquitto:
                # 20 in flight) would make that the pace. The inbox bounds our memory.
                properties.ReceiveMaximum = _RECEIVE_MAX
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.connect_async(
            dev.host,
            dev.port,
            keepalive=math.ceil(dev.keepalive),
            # paho's default (MQTT_CLEAN_START_FIRST_ONLY) would wipe the broker's session on
            # every process start: exactly the queued messages we want to keep.
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        return client

    def _tls_context(self) -> ssl.SSLContext:
        tls = self._device.tls
        assert tls is not None
        ctx = ssl.create_default_context(cafile=self._path(tls.ca) if tls.ca else None)
        if tls.cert is not None and tls.key is not None:
            ctx.load_cert_chain(self._path(tls.cert), self._path(tls.key))
        if tls.insecure:
            ctx.check_hostname = False  # the chain is still verified against the CA
        return ctx

    def _path(self, value: str) -> str:
        p = Path(value)
        if not p.is_absolute() and self._base_dir is not None:
            p = self._base_dir / p
        return str(p)

    def _network_main(self, client: mqtt.Client) -> None:
        """Connect, loop, reconnect with backoff, until told to stop; then disconnect."""
        delay = 0.0
        try:
            while not self._stop.is_set():
                self._net_reason = None
                self._paho_error = None
                self._session_up = False
                try:
                    client.reconnect()
                except Exception as exc:  # OSError, ssl errors, certificate mismatch
                    self._post(self._on_connect_failed, _describe(exc))
                    delay = self._backoff(delay)
                    self._stop.wait(self._jitter(delay))
                    continue
                # Packet ids are per connection: acks for an earlier one must not go out now.
                self._conn_no += 1
                rc = MQTTErrorCode.MQTT_ERR_SUCCESS
                while not self._stop.is_set():
                    try:
                        rc = self._pump(client)
                    except Exception as exc:  # pragma: no cover - paho bug; heal by reconnecting
                        log.exception("mqtt network loop failed", extra=self._ctx())
                        self._net_reason = f"network loop failed: {exc}"
                        rc = MQTTErrorCode.MQTT_ERR_UNKNOWN
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                if self._stop.is_set():
                    break
                reason = self._net_reason or _rc_text(rc)
                if self._paho_error:
                    reason = f"{reason} ({self._paho_error})"
                if self._session_up:
                    delay = 0.0  # it was a working connection: start the backoff afresh
                    self._post(self._on_lost, reason)
                else:
                    self._post(self._on_connect_failed, reason)
                delay = self._backoff(delay)
                self._stop.wait(self._jitter(delay))
        finally:
            self._disconnect(client)

    def _pump(self, client: mqtt.Client) -> MQTTErrorCode:
        """One turn of the network loop, through paho's calls for external loops.

        `client.loop()` selects once per packet; this reads every packet already waiting
        (up to `_READ_BURST`) after one select, which measured about a third less CPU per
        message at a few thousand messages per second. PUBACKs go out from inside
        `loop_read` as each message is handled, or, acknowledging after commit, from
        `_send_acks` when the event loop hands committed ids over (and wakes the select);
        `loop_misc` keeps the keepalive. While `_paused` (stopping) nothing more is read.
        """
        sock = client.socket()
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        wake = self._wake_r
        if self._acks_ready:
            self._send_acks(client)
        reading = not self._paused.is_set()
        # TLS may hold decrypted bytes the kernel socket no longer signals.
        readable = reading and isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        if not readable:
            watch: list[Any] = [sock] if reading else []
            if wake is not None:
                watch.append(wake)
            writing = [sock] if client.want_write() else []
            try:
                ready, _, _ = select.select(watch, writing, [], _LOOP_TIMEOUT)
            except (OSError, ValueError):  # closed under us
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            if wake is not None and wake in ready:
                with contextlib.suppress(OSError):
                    wake.recv(4096)
                self._send_acks(client)
            readable = sock in ready
        if readable:
            for _ in range(_READ_BURST):
                before = self._received
                rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return rc
                if self._received == before or client.socket() is None:
                    break  # nothing more waiting (or not a message: select again)
                if self._paused.is_set():
                    break
        if client.want_write():
            rc = client.loop_write()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        return client.loop_misc()

    def _send_acks(self, client: mqtt.Client) -> None:
        """Acknowledge what the event loop released (committed), in arrival order. Network
        thread only: paho's `ack` writes to the socket at once, and only this thread may."""
        with self._acks_lock:
            acks, self._acks_ready = self._acks_ready, []
        current = self._conn_no
        sent = stale = 0
        for conn_no, mid, qos in acks:
            if conn_no == current and client.socket() is not None:
                client.ack(mid, qos)
                sent += 1
            else:
                stale += 1  # that connection is gone: the broker resends the message
        self._acks_sent += sent
        self._acks_stale += stale

    def _disconnect(self, client: mqtt.Client) -> None:
        """Send the PUBACKs released so far, then DISCONNECT (normal: the broker keeps the
        session) and close the socket."""
        with contextlib.suppress(Exception):
            if client.socket() is not None:
                self._send_acks(client)
                client.disconnect()
                deadline = time.monotonic() + 1.0
                while client.socket() is not None and time.monotonic() < deadline:
                    self._pump(client)

    def _backoff(self, delay: float) -> float:
        dev = self._device
        return min(max(delay * 2, dev.backoff_initial), dev.backoff_max)

    def _jitter(self, delay: float) -> float:
        """Upper-half jitter: many gateways reconnecting to one restarted broker spread out,
        and none retries sooner than half the backoff."""
        return delay * (0.5 + self._rng.random() * 0.5)

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
            loop.call_soon_threadsafe(fn, *args)

    # paho callbacks: run in the network thread, touch only the inbox and `_post`.

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        try:
            if reason.is_failure:
                self._net_reason = f"broker refused the connection: {reason}"
                return
            self._session_up = True
            qos = self._device.qos
            if self._device.mqtt_version == "5":
                # Retained messages only for a new subscription, not again on each reconnect.
                opts = SubscribeOptions(
                    qos=qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
                )
                client.subscribe([(f, opts) for f in self._filters])
            else:
                plain: list[tuple[str, int]] = [(f, qos) for f in self._filters]
                client.subscribe(plain)
            self._post(self._on_connected, bool(flags.session_present))
        except Exception:  # pragma: no cover - defensive: never kill the network thread
            log.exception("mqtt on_connect failed", extra=self._ctx())

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self._net_reason is None and not self._stop.is_set():
            who = "broker" if flags.is_disconnect_packet_from_server else "connection"
            self._net_reason = f"{who} closed: {reason}"

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = [
            f"{flt} ({rc})"
            for flt, rc in zip(self._filters, reasons, strict=False)
            if rc.is_failure
        ]
        if refused:
            self._post(self._on_subscribe_refused, refused)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic: str | None = msg.topic
        except UnicodeDecodeError:
            topic = None
        self._received += 1
        # Typed bytes | bytearray; paho's decode_publish always produces bytes.
        payload = cast(bytes, msg.payload)
        qos = msg.qos
        ack = (self._conn_no, msg.mid, qos) if qos and self._manual else None
        item: _Msg = (topic, payload, bool(msg.dup), ack)
        with self._inbox_cond:
            # Backpressure: hold paho (and so the PUBACK and the broker) while the loop catches
            # up, rather than growing without bound (in messages, or in bytes for images).
            while (
                len(self._inbox) >= _INBOX_MAX or self._inbox_bytes >= _INBOX_MAX_BYTES
            ) and not self._stop.is_set():
                self._inbox_cond.wait(0.1)
            self._inbox.append(item)
            self._inbox_bytes += len(payload)
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        self._post(self._drain_soon)

    async def _stop_network(self) -> None:
        """Tell the network thread to stop and wait for it, even through repeated cancels (the
        supervisor re-delivers cancels; the thread exits within ~_LOOP_TIMEOUT plus a
        connect timeout at worst)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(None, thread.join, self._device.connect_timeout + 5.0)
        while True:
            try:
                await asyncio.shield(done)
                break
            except asyncio.CancelledError:
                if done.done():
                    break
                # keep waiting: a thread left running could still hand us messages
        if thread.is_alive():  # pragma: no cover - a connect stuck beyond its timeout
            log.error("mqtt network thread did not stop", extra=self._ctx())
        self._client = None

    # -- acknowledgements after commit (event loop side) -------------------------------------

    async def _ack_main(self) -> None:
        """Release acknowledgements once committed: one `committed()` for every drain
        recorded before the call, in order. A failed or slow commit withholds them and is
        awaited again: the readings are still queued in the store, and the broker keeps
        what we have not acknowledged."""
        committed, wanted = self._committed, self._ack_wanted
        assert committed is not None and wanted is not None
        failures = 0
        while True:
            await wanted.wait()
            await asyncio.sleep(_ACK_LINGER)  # the drains of the next moment share the commit
            wanted.clear()
            n = len(self._unacked)  # drains recorded (so emitted) before this call
            if not n:
                continue
            try:
                await asyncio.wait_for(committed(), _COMMIT_TIMEOUT)
            except Exception as exc:
                failures += 1
                slow = isinstance(exc, TimeoutError)
                code = "commit_slow" if slow else "commit_failed"
                self._stats[code] += 1
                suppressed = self._limiter.allow(code)
                if suppressed is not None:
                    why = f"no commit within {_COMMIT_TIMEOUT:g} s" if slow else repr(exc)
                    log.warning(
                        "mqtt acknowledgements withheld: the store has not committed",
                        extra=self._ctx(
                            reason=why[:300], waiting=self._unacked_n, suppressed=suppressed
                        ),
                    )
                if not slow:  # a store that raises at once must not be asked in a busy loop
                    await asyncio.sleep(min(5.0, 0.05 * 2 ** min(failures, 7)))
                wanted.set()
                continue
            if failures:
                log.info("mqtt acknowledgements resumed", extra=self._ctx(after=failures))
                failures = 0
            groups = self._unacked[:n]
            del self._unacked[:n]
            self._release(groups)

    def _release(self, groups: list[list[_Ack]]) -> None:
        """Hand committed acknowledgements to the network thread, in order, and wake it."""
        acks = [a for g in groups for a in g]
        self._unacked_n -= len(acks)
        self._stats["acked"] += len(acks)
        with self._acks_lock:
            self._acks_ready.extend(acks)
        if self._wake_w is not None:
            with contextlib.suppress(OSError):  # full (it is awake anyway) or closed
                self._wake_w.send(b"\0")
        if self._held and self._loop is not None:
            self._held = False
            self._loop.call_soon(self._drain)

    async def _settle_acks(self) -> None:
        """On stop: stop the ack task, wait (bounded) for one last commit covering every
        drain, and release those acknowledgements so they go out before DISCONNECT."""
        task, self._ack_task = self._ack_task, None
        if task is not None:
            await cancel_until_done(task, _CLOSE_COMMIT_TIMEOUT, outlast=True)
        n = len(self._unacked)
        if not n or self._committed is None:
            return
        commit = asyncio.ensure_future(self._committed())
        await _outlast_cancels(commit, _CLOSE_COMMIT_TIMEOUT)
        if commit.done() and not commit.cancelled() and commit.exception() is None:
            groups = self._unacked[:n]
            del self._unacked[:n]
            self._release(groups)
            return
        if not commit.done():
            commit.cancel()
        log.warning(
            "mqtt stopping without acknowledging messages not committed: the broker sends"
            " them again",
            extra=self._ctx(messages=self._unacked_n),
        )

    def _close_wake(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None

    # -- event loop side -------------------------------------------------------------------

    def _drain_soon(self) -> None:
        """Linger a moment before draining, so that a busy connection hands over batches of
        many messages (one wake-up, one emit, one store transaction) instead of one each.
        The first message after a quiet spell waits `_LINGER` at most."""
        if self._loop is not None:
            self._loop.call_later(_LINGER, self._drain)

    def _drain(self, *, final: bool = False, everything: bool = False) -> None:
        """Parse what the network thread gathered and emit it as one batch per call
        (`_DRAIN_MAX` messages at most, unless `everything` or `final`); then record what
        to acknowledge once the batch is committed. Held back (until `_release`) while
        `_UNACKED_MAX` messages wait for their commit."""
        if not self._running and not final:
            return  # run() is stopping: its final drain takes what is left
        if self._unacked_n >= _UNACKED_MAX and not final:
            self._held = True  # the store is behind: the inbox, then the broker, waits
            return
        with self._inbox_cond:
            inbox = self._inbox
            if len(inbox) <= _DRAIN_MAX or final or everything:
                items, self._inbox = inbox, []
                self._inbox_bytes = 0
                self._drain_scheduled = False
                more = False
            else:
                items, self._inbox = inbox[:_DRAIN_MAX], inbox[_DRAIN_MAX:]
                self._inbox_bytes -= sum(len(p) for _, p, _, _ in items)
                more = True
            self._inbox_cond.notify_all()
        if more and self._loop is not None:
            self._loop.call_soon(self._drain)  # let other tasks run between chunks
        if not items:
            return
        batch = self._process(items)
        if batch:
            self._emit(batch)
        if self._manual:
            # After the emit: the next committed() call covers this batch (and its dead
            # letters), whatever became of each message.
            acks = [a for _, _, _, a in items if a is not None]
            if acks:
                self._unacked.append(acks)
                self._unacked_n += len(acks)
                if self._ack_wanted is not None:
                    self._ack_wanted.set()

    def _process(self, items: list[_Msg]) -> Batch:
        now = self._clock()
        loop_now = self._loop.time() if self._loop is not None else 0.0
        parser = self._parser
        specs = self._point_specs
        bounds = self._bounds
        good = Quality.GOOD
        out: Batch = []
        self._stats["messages"] += len(items)
        for topic, payload, dup, _ack in items:
            if topic is None:
                self._refuse(None, "(not UTF-8)", payload, "bad_topic", "topic is not UTF-8")
                continue
            match = self._match(topic)
            if match is None:
                self._refuse(None, topic, payload, "unknown_topic", "matches no topic template")
                continue
            if isinstance(match, _ItemMatch):
                self._take_item(match, topic, payload, dup, now, loop_now)
                continue
            eq = self._equipment.get(match.equipment)
            if eq is None:
                eq = self._unknown(topic, payload, match.equipment)
                if eq is None:
                    continue
            self._seen(eq, topic, now, loop_now)
            eq.counts["messages"] += 1
            if dup:
                eq.counts["duplicates"] += 1
                self._stats["duplicates"] += 1
            if self._number and match.point is not None and match.point not in specs:
                self._refuse(eq, topic, payload, "unknown_point", f"no point {match.point!r}")
                continue
            try:
                values = parser.parse(payload, point=match.point)
            except ParseError as exc:
                self._refuse(eq, topic, payload, exc.code, exc.detail)
                continue
            except Exception as exc:  # a parser bug must not stop the driver
                log.exception("mqtt payload parser failed", extra=self._ctx(topic=topic))
                self._refuse(eq, topic, payload, "internal", f"parser failed: {exc!r}")
                continue
            eq.health.polls_ok += 1
            eq.health.last_error = None
            prefix = eq.id + "."
            bad_values = 0
            for name, value, ts_source, problem in values:
                if problem is not None:
                    out.append(Reading(prefix + name, None, Quality.BAD, now, ts_source, problem))
                    bad_values += 1
                    continue
                b = bounds.get(name)
                if b is None or b[0] <= value <= b[1]:  # type: ignore[operator]
                    out.append(Reading(prefix + name, value, good, now, ts_source, None))
                    continue
                why = _outside(b, value)  # type: ignore[arg-type]
                out.append(Reading(prefix + name, value, Quality.UNCERTAIN, now, ts_source, why))
            eq.counts["values"] += len(values)
            eq.health.points_read += len(values)
            self._stats["values"] += len(values)
            if bad_values:
                eq.counts["bad_values"] += bad_values
                self._stats["bad_values"] += bad_values
                first = next(v.problem for v in values if v.problem is not None)
                self._log_limited("bad_value", topic, first, eq.id)
        return out

    def _match(self, topic: str) -> TopicMatch | _ItemMatch | None:
        """Item templates first (a deliberate route for payloads that must never reach the
        parser), then telemetry templates, each in config order."""
        cache = self._topic_cache
        try:
            return cache[topic]
        except KeyError:
            pass
        match: TopicMatch | _ItemMatch | None = None
        for route in self._item_routes:
            m = route.template.match(topic)
            if m is not None:
                match = _ItemMatch(route, m.equipment, m.item)
                if route.template.has_item:
                    return match  # a new topic per item: caching it would only evict others
                break
        else:
            match = match_topic(self._templates, topic)
        if len(cache) >= _TOPIC_CACHE_MAX:
            cache.clear()  # hostile topic churn: start over rather than grow
        cache[topic] = match
        return match

    def _take_item(
        self, match: _ItemMatch, topic: str, payload: bytes, dup: bool, now: float, loop_now: float
    ) -> None:
        """Hand one item message to the sink (event loop thread), or say why not."""
        eq = self._equipment.get(match.equipment)
        if eq is None:
            eq = self._unknown(topic, payload, match.equipment)
            if eq is None:
                return
        # The equipment is alive whatever becomes of the item; the endpoint stays the
        # telemetry topic (an item topic is new for every item).
        self._seen(eq, topic, now, loop_now, endpoint=False)
        counts = eq.counts
        counts["messages"] += 1
        counts["items"] += 1
        self._stats["items"] += 1
        if dup:
            counts["duplicates"] += 1
            self._stats["duplicates"] += 1
        route = match.route
        if len(payload) > route.max_bytes:
            detail = f"{len(payload)} bytes, more than {route.max_bytes} ({route.channel} item)"
            self._refuse(eq, topic, payload, "too_large", detail)
            return
        sink = self._item_sink
        if sink is None:
            detail = f"no item consumer for {route.channel!r} items"
            self._refuse(eq, topic, payload, "no_item_consumer", detail)
            return
        item = Item(self._device.id, eq.id, route.channel, match.item, payload, topic, now)
        try:
            accepted = sink(item)
        except Exception:  # a broken consumer must not stop intake (telemetry included)
            counts["item_sink_failed"] += 1
            self._stats["item_sink_failed"] += 1
            suppressed = self._limiter.allow("item_sink_failed")
            if suppressed is not None:
                log.error(
                    "mqtt item sink failed",
                    exc_info=True,
                    extra=self._ctx(
                        topic=topic[:200],
                        equipment=eq.id,
                        channel=route.channel,
                        suppressed=suppressed,
                        total=self._stats["item_sink_failed"],
                    ),
                )
            return
        if not accepted:
            # Full: the consumer is behind. Counted and logged, not dead-lettered (see the
            # module docstring); the equipment itself is fine, so no last_error.
            counts["items_refused"] += 1
            self._stats["items_refused"] += 1
            suppressed = self._limiter.allow("items_refused")
            if suppressed is not None:
                log.warning(
                    "mqtt item refused by its consumer (full)",
                    extra=self._ctx(
                        topic=topic[:200],
                        equipment=eq.id,
                        channel=route.channel,
                        suppressed=suppressed,
                        total=self._stats["items_refused"],
                    ),
                )
            return
        eq.health.polls_ok += 1
        eq.health.last_error = None

    def _unknown(self, topic: str, payload: bytes, name: str) -> _Equipment | None:
        """An equipment not in the config: refused, or adopted when the device allows it."""
        if not self._device.accept_unknown_equipment:
            self._refuse(None, topic, payload, "unknown_equipment", f"{name!r} is not configured")
            return None
        if not _NAME_RE.fullmatch(name):
            self._refuse(None, topic, payload, "bad_topic", f"{name[:80]!r} is not a valid id")
            return None
        if sum(1 for e in self._equipment.values() if not e.configured) >= _UNKNOWN_MAX:
            self._refuse(None, topic, payload, "too_many_equipment", f"more than {_UNKNOWN_MAX}")
            return None
        log.info("mqtt equipment discovered", extra=self._ctx(topic=topic, equipment=name))
        return self._add_equipment(name, configured=False)

    def _add_equipment(self, name: str, *, configured: bool) -> _Equipment:
        # A device may have item topics only (validation ensures one or the other).
        tmpl = self._templates[0] if self._templates else self._item_routes[0].template
        health = DeviceHealth(
            device=name,
            protocol="mqtt",
            endpoint=tmpl.topic_for(name),
            points=len(self._profile.points),
            state=DeviceState.STARTING,
        )
        eq = self._equipment[name] = _Equipment(name, health, configured)
        return eq

    def _seen(
        self, eq: _Equipment, topic: str, now: float, loop_now: float, *, endpoint: bool = True
    ) -> None:
        """A message from `eq` arrived: it is alive (whatever the payload turns out to be).
        `endpoint`: show `topic` as where its messages arrive (telemetry, not items)."""
        health = eq.health
        eq.last_seen = loop_now
        health.last_contact = now
        health.requests += 1
        if endpoint and health.endpoint != topic:
            health.endpoint = topic
        if health.state is not DeviceState.ONLINE:
            if health.state is DeviceState.DOWN:
                log.info("equipment recovered", extra=self._ctx(topic=topic, equipment=eq.id))
            health.state = DeviceState.ONLINE
            health.since = now

    def _refuse(
        self, eq: _Equipment | None, topic: str, payload: bytes, code: str, detail: str
    ) -> None:
        self._errors[code] += 1
        self._stats["dead_lettered"] += 1
        if eq is not None:
            eq.errors[code] += 1
            eq.counts["dead_lettered"] += 1
            eq.health.polls_failed += 1
            eq.health.last_error = f"{code}: {detail}"
        if code == "too_large":
            detail = f"{detail} (kept the first {min(len(payload), DEAD_LETTER_BYTES)})"
        reason = f"{code}: {detail}"
        self._log_limited(code, topic, reason, eq.id if eq is not None else None)
        sink = self._dead_letter
        if sink is None:
            return
        try:
            sink(self._device.id, topic, bytes(payload[:DEAD_LETTER_BYTES]), reason)
        except Exception as exc:  # a full or closed store must not stop intake
            self._stats["dead_letter_failed"] += 1
            self._log_limited("dead_letter_failed", topic, str(exc), None)

    def _log_limited(self, code: str, topic: str, reason: str, equipment: str | None) -> None:
        suppressed = self._limiter.allow(code)
        if suppressed is None:
            return
        log.warning(
            "mqtt message refused" if code != "bad_value" else "mqtt message has bad values",
            extra=self._ctx(
                topic=topic[:200],
                equipment=equipment,
                reason=reason[:300],
                suppressed=suppressed,
                total=self._stats["bad_values"] if code == "bad_value" else self._errors[code],
            ),
        )

    def _check_stale(self) -> None:
        if self._loop is None or self._closed:
            return
        if self._inbox:
            self._drain(everything=True)  # a message still lingering is not staleness
            if self._held:
                return  # nor is one held back for the store: nobody is judged on a backlog
        loop_now = self._loop.time()
        stale_after = self._device.stale_after
        for eq in self._equipment.values():
            state = eq.health.state
            if state is DeviceState.DOWN or state is DeviceState.DISABLED:
                continue
            last = eq.last_seen if eq.last_seen is not None else self._started_at
            if loop_now - last > stale_after:
                what = "no message" if eq.last_seen is not None else "no message yet"
                self._down(eq, f"stale: {what} for {stale_after:g} s")

    def _down(self, eq: _Equipment, reason: str, *, quiet: bool = False) -> None:
        health = eq.health
        now = self._clock()
        health.state = DeviceState.DOWN
        health.since = now
        health.last_error = reason
        if not quiet:
            log.warning("equipment down", extra=self._ctx(equipment=eq.id, reason=reason))
        if self._running:
            self._emit([bad(f"{eq.id}.{p.name}", reason, now) for p in self._profile.points])

    def _mark_all_down(self, reason: str) -> None:
        """The connection failed: every equipment is DOWN (logged once, by the caller)."""
        for eq in self._equipment.values():
            if eq.health.state in (DeviceState.ONLINE, DeviceState.STARTING):
                self._down(eq, reason, quiet=True)
            else:
                eq.health.last_error = eq.health.last_error or reason

    # connection events posted by the network thread

    def _on_connected(self, session_present: bool) -> None:
        if not self._running:
            return
        again = self._ever_connected
        self._connected = True
        self._ever_connected = True
        self._conn_error = None
        self._stats["connects"] += 1
        if again:
            for eq in self._equipment.values():
                eq.health.reconnects += 1
        log.info(
            "mqtt broker reconnected" if again else "mqtt broker connected",
            extra=self._ctx(session_present=session_present),
        )

    def _on_lost(self, reason: str) -> None:
        if not self._running:
            return
        # Messages that arrived before the break are still lingering: they go first, so
        # they cannot bring an equipment back ONLINE after it was marked DOWN below.
        self._drain(everything=True)
        self._connected = False
        self._conn_error = reason
        self._stats["disconnects"] += 1
        log.warning("mqtt broker connection lost", extra=self._ctx(reason=reason))
        self._mark_all_down(f"broker connection lost: {reason}")

    def _on_connect_failed(self, reason: str) -> None:
        if not self._running:
            return
        self._drain(everything=True)  # as in _on_lost
        self._connected = False
        self._stats["connect_failures"] += 1
        if reason != self._conn_error:  # log on change, not on every retry
            log.warning("mqtt broker unreachable", extra=self._ctx(reason=reason))
        self._conn_error = reason
        self._mark_all_down(f"cannot connect to broker: {reason}")

    def _on_subscribe_refused(self, refused: list[str]) -> None:
        self._stats["subscriptions_refused"] += len(refused)
        reason = f"broker refused subscription: {', '.join(refused)}"
        log.error("mqtt subscription refused", extra=self._ctx(reason=reason))
        for eq in self._equipment.values():
            eq.health.last_error = reason

    def _ctx(self, **extra: Any) -> dict[str, Any]:
        return {"device": self._device.id, "endpoint": self.key, **extra}


class _FirstError(logging.Handler):
    """Keeps the first error paho logged since the driver's last connection attempt (the
    cause; what follows is consequence, like "Client is not connected"). Network thread."""

    def __init__(self, driver: MqttDriver) -> None:
        super().__init__(logging.WARNING)
        self._driver = driver

    def emit(self, record: logging.LogRecord) -> None:
        if self._driver._paho_error is None:
            with contextlib.suppress(Exception):
                self._driver._paho_error = record.getMessage()[:300]


async def _outlast_cancels(fut: asyncio.Future[Any], timeout: float) -> None:
    """Wait up to `timeout` s for `fut` while the caller's task is being cancelled (the
    supervisor re-delivers cancels every 0.5 s; a stopping driver must still finish).
    `fut` is never cancelled here, and its outcome is not raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not fut.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({fut}, timeout=remaining)
    if not fut.cancelled():
        fut.exception()  # retrieved: no "exception was never retrieved" warning


def _outside(bounds: tuple[float, float], value: float) -> str:
    if value < bounds[0]:
        return f"below declared min {bounds[0]:g}"
    return f"above declared max {bounds[1]:g}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "no answer (timeout)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed ({exc.verify_message or exc.reason})"
    text = str(exc).strip() or type(exc).__name__
    return text


def _rc_text(rc: MQTTErrorCode | int) -> str:
    return mqtt.error_string(rc).rstrip(".").lower()


__all__ = ["DEAD_LETTER_BYTES", "DRIVER_REASONS", "DeadLetterSink", "MqttDriver"]
