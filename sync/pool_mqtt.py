"""The pool sync over retained MQTT messages (`pool.transport: mqtt`): the alternative to the
HTTPS client (`sync.pool_client.PoolClient`), with the same methods and errors, so `PoolSync`
and `PoolSender` run unchanged on either.

Topics, all under `{topic_prefix}/{gateway_id}/` (`millrace-pool/v1/gw-1/...` by default);
payloads are the contract's JSON bodies (`sync/pool_api.yaml`), compact UTF-8:

    machines/{machine_id}      RETAINED  gateway -> pool  a `MachineProfile`; retiring the
                                                          machine replaces it by the retained
                                                          tombstone {"retired": true,
                                                          "version": N} (N: the last version
                                                          this process published, else null)
    availability/{machine_id}  RETAINED  gateway -> pool  the newest `AvailabilityUpdate`
    snapshot                   RETAINED  gateway -> pool  a `Snapshot` body {seq, ts, items}
    usage/{record_id}          QoS 1     gateway -> pool  one `UsageRecord`, not retained
    bookings/{booking_id}      RETAINED  pool -> gateway  a `Booking`, republished with a new
                                                          `version` on every change
    status                     RETAINED  gateway          `online`; the last will `offline`

Why retained: a pool that connects (or restarts on an empty database) after the gateway
published still receives every machine's profile, its current availability and the last
snapshot from the broker, in that order when it subscribes to them in one SUBSCRIBE; and the
gateway gets every booking of its machines the same way after a restart. The tombstone, rather
than an empty retained payload, is what lets a late pool learn of a retirement at all.

Results. There is no answer from the pool over MQTT: what counts is the broker's PUBACK. The
pool applies every message with the same code as over HTTPS (idempotency key, stale `seq`,
organisation checks: `simulators/central_pool_mqtt.py`), on its side, where the gateway cannot
see the outcome. `post_availability` therefore returns `applied` for an item once the broker
PUBACKed it. It never publishes an item older than, or equal to, what this process already got
PUBACKed for that machine (or an older item of the same machine in the same call): a retained
topic must never move backwards, so those come back as `stale` (`duplicate` for the same
`seq`) without being sent. `unknown_machine` never comes back: the machine topic is published
before availability by `PoolSync`, and the broker keeps both. `put_machine` returns result
`published`, `retire_machine` `retired`, `put_snapshot` `published` with no `marked_offline`
(the pool knows, the gateway does not), `post_usage` `applied` per PUBACKed record.

Usage must not be lost between broker and pool: the pool holds a persistent session
subscribed to `+/usage/+`, so the broker queues usage while the pool is away. On MQTT 5 a
PUBACK of 0x10 (no matching subscribers) says no such session exists: `post_usage` raises
SinkRetry and the records stay pending; MQTT 3.1.1 cannot tell.

Errors, mapped as `PoolClient` maps HTTP: broker unreachable, connection lost, no PUBACK or
SUBACK within `ack_timeout` -> SinkRetry; PUBACK quota exceeded (0x97) -> SinkThrottle; not
authorized (0x87, an ACL that does not let this gateway write its topics) -> PoolRefused; payload
format invalid (0x99) -> PoolRejected. Identity is the broker's business: it must let gateway X
write only `{prefix}/X/#` (e.g. a Mosquitto ACL `pattern write millrace-pool/v1/%u/#` with the
gateway id as user name) and read only `{prefix}/X/bookings/#`; the pool maps the gateway id in
the topic to that gateway's token.

Connection. The connection code is the MQTT uplink's (`sync.mqtt.MqttSender`, specialised by
`_PoolLink`): QoS 1, a persistent session (MQTT 5 clean_start=False with `session_expiry`,
3.1.1 clean_session=False) under the stable client id `millrace-pool-<gateway id>` (or
`mqtt.client_id`), TLS and user name/password as the uplink does them, paho's network thread
owning the socket and posting to the event loop, nothing blocking the loop. It connects on
first use and again on the next call after a loss; the callers (PoolSync's cycle, the outbox
runner) own the backoff. Logs name the user, never the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import SinkRetry, SinkThrottle
from sync.base import UplinkContext
from sync.config import MqttUplinkConfig, PoolSyncConfig
from sync.mqtt import (
    THROTTLE_RETRY_AFTER,
    Envelope,
    Message,
    MqttSender,
    _Connection,
    _post,
    encode_json,
    puback_action,
    topic_level,
)
from sync.pool_client import PoolRefused, PoolRejected

log = logging.getLogger("millrace.pool")

Kind = Literal["machines", "availability", "snapshot", "usage", "bookings", "status"]
Verdict = Literal["publish", "duplicate", "stale"]

#: MQTT 5 PUBACK: accepted, but nobody subscribes (no pool session to queue usage for).
RC_NO_MATCHING_SUBSCRIBERS = 0x10
_RC_NOT_AUTHORIZED = 0x87
_RC_PAYLOAD_FORMAT_INVALID = 0x99
#: Bookings kept in memory (newest version per booking id); more than a gateway sees in years.
MAX_BOOKINGS = 100_000


# -- pure: topics and payloads -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolTopics:
    """The topics of one gateway under `prefix` (see the module docstring)."""

    prefix: str
    gateway_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{topic_level(self.gateway_id)}"

    def machine(self, machine_id: str) -> str:
        return f"{self.base}/machines/{topic_level(machine_id)}"

    def availability(self, machine_id: str) -> str:
        return f"{self.base}/availability/{topic_level(machine_id)}"

    @property
    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    def usage(self, record_id: str) -> str:
        return f"{self.base}/usage/{topic_level(record_id)}"

    def booking(self, booking_id: str) -> str:
        return f"{self.base}/bookings/{topic_level(booking_id)}"

    @property
    def bookings_filter(self) -> str:
        return f"{self.base}/bookings/+"

    @property
    def status(self) -> str:
        return f"{self.base}/status"


def pool_filters(prefix: str) -> list[str]:
    """What the pool subscribes to, in the order it must apply retained messages: profiles
    before the availability that needs them, availability before the snapshot (whose older
    items are then `stale`), usage last."""
    return [
        f"{prefix}/+/machines/+",
        f"{prefix}/+/availability/+",
        f"{prefix}/+/snapshot",
        f"{prefix}/+/usage/+",
    ]


def parse_topic(prefix: str, topic: str) -> tuple[str, Kind, str] | None:
    """`{prefix}/{gateway}/{kind}[/{key}]` -> (gateway, kind, key or ""); None when the topic
    is not one of the pool's (wrong prefix, kind, or number of levels)."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head) :].split("/")
    if len(levels) == 2 and levels[1] in ("snapshot", "status") and levels[0]:
        return levels[0], levels[1], ""  # type: ignore[return-value]
    if (
        len(levels) == 3
        and levels[1] in ("machines", "availability", "usage", "bookings")
        and levels[0]
        and levels[2]
    ):
        return levels[0], levels[1], levels[2]  # type: ignore[return-value]
    return None


def machine_message(topics: PoolTopics, machine_id: str, profile: Mapping[str, Any]) -> Message:
    return Message(topics.machine(machine_id), encode_json(profile), "machines", retain=True)


def retired_message(topics: PoolTopics, machine_id: str, version: int | None) -> Message:
    """The retained tombstone that replaces a retired machine's profile."""
    payload = encode_json({"retired": True, "version": version})
    return Message(topics.machine(machine_id), payload, "machines", retain=True)


def is_retirement(data: Any) -> bool:
    """Whether a machine topic's payload (parsed JSON) is the tombstone."""
    return isinstance(data, dict) and data.get("retired") is True


def availability_message(topics: PoolTopics, item: Mapping[str, Any]) -> Message:
    return Message(
        topics.availability(item["machine_id"]), encode_json(item), "availability", retain=True
    )


def snapshot_message(
    topics: PoolTopics, seq: int, ts: str, items: Sequence[Mapping[str, Any]]
) -> Message:
    body = {"seq": seq, "ts": ts, "items": list(items)}
    return Message(topics.snapshot, encode_json(body), "snapshot", retain=True)


def usage_message(topics: PoolTopics, record: Mapping[str, Any]) -> Message:
    return Message(topics.usage(record["record_id"]), encode_json(record), "usage")


def booking_message(topics: PoolTopics, booking: Mapping[str, Any]) -> Message:
    """What the pool publishes for a booking of one of this gateway's machines."""
    return Message(
        topics.booking(booking["booking_id"]), encode_json(booking), "bookings", retain=True
    )


def triage(
    items: Sequence[Mapping[str, Any]], published: Mapping[str, int]
) -> list[tuple[int, Verdict]]:
    """For each item (by index): `publish` for the newest of its machine in this call when it
    is newer than what was `published` for that machine; otherwise `duplicate` (the same
    `seq`) or `stale` (older). A retained topic thus never moves back to an older update."""
    newest: dict[str, int] = {}
    for i, item in enumerate(items):
        j = newest.get(item["machine_id"])
        if j is None or item["seq"] > items[j]["seq"]:
            newest[item["machine_id"]] = i
    out: list[tuple[int, Verdict]] = []
    for i, item in enumerate(items):
        mid, seq = item["machine_id"], item["seq"]
        done = published.get(mid, 0)
        if newest[mid] == i and seq > done:
            out.append((i, "publish"))
        elif seq == done or (newest[mid] != i and seq == items[newest[mid]]["seq"]):
            out.append((i, "duplicate"))
        else:
            out.append((i, "stale"))
    return out


def read_booking(booking_id: str, payload: bytes) -> dict[str, Any] | None:
    """A booking message's JSON object, or None when it is not one (an empty payload clears a
    retained message; anything else unreadable is the pool's bug and is logged by the caller).
    The full check is `gateway.equipment.ledger.booking_from_feed`, at apply time."""
    if not payload:
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("booking_id") != booking_id:
        return None
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return None
    return data


def merge_booking(
    bookings: dict[str, dict[str, Any]], booking: Mapping[str, Any], *, limit: int = MAX_BOOKINGS
) -> bool:
    """Keep `booking` when it is newer than the version held for its id; True when kept. At
    `limit`, the lowest versions make room (they were delivered long ago)."""
    old = bookings.get(booking["booking_id"])
    if old is not None and old["version"] >= booking["version"]:
        return False
    bookings[booking["booking_id"]] = dict(booking)
    while len(bookings) > limit:
        del bookings[min(bookings, key=lambda k: bookings[k]["version"])]
    return True


def booking_feed(
    gateway_id: str, bookings: Iterable[Mapping[str, Any]], since_version: int
) -> dict[str, Any]:
    """The contract's `BookingFeed` from the bookings held: those after `since_version`, in
    version order, all in one page."""
    items = sorted((dict(b) for b in bookings if b["version"] > since_version),
                   key=lambda b: b["version"])  # fmt: skip
    return {
        "gateway_id": gateway_id,
        "bookings": items,
        "next_since_version": items[-1]["version"] if items else since_version,
        "has_more": False,
    }


def link_config(config: PoolSyncConfig, gateway_id: str) -> MqttUplinkConfig:
    """The `pool.mqtt` section as the MQTT uplink's config, so the uplink's connection code
    serves the pool unchanged."""
    m = config.mqtt
    if m is None:
        raise ValueError("transport: mqtt needs an `mqtt:` broker section")
    return MqttUplinkConfig(
        type="mqtt",
        name="pool",
        host=m.host,
        port=m.port,
        mqtt_version=m.mqtt_version,
        client_id=m.client_id or f"millrace-pool-{gateway_id}",
        username=m.username,
        password=m.password,
        tls=m.tls,
        keepalive=m.keepalive,
        session_expiry=m.session_expiry,
        topic_prefix=m.topic_prefix,
        retain_state=False,
        connect_timeout=m.connect_timeout,
        ack_timeout=m.ack_timeout,
    )


# -- the connection ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PoolEnvelope(Envelope):
    """The pool's topics have no site level: the status topic is `{prefix}/{gateway}/status`."""

    @property
    def base(self) -> str:
        return f"{self.prefix}/{topic_level(self.gateway)}"


class _PoolLink(MqttSender):
    """The MQTT uplink's connection (dial, TLS, persistent session, last will, PUBACK
    bookkeeping, clean shutdown) plus the one thing the pool needs on top: incoming booking
    messages, handed to `on_message` on the event loop. Its `send` (outbox batches) is unused."""

    def __init__(
        self,
        config: MqttUplinkConfig,
        context: UplinkContext,
        on_message: Callable[[str, bytes], None],
    ) -> None:
        super().__init__(config, context)
        self.envelope = _PoolEnvelope(config.topic_prefix, context.site, context.gateway_id, "pool")
        self._on_incoming = on_message
        self.subacks: dict[int, asyncio.Future[list[int]]] = {}

    @property
    def connection(self) -> _Connection | None:
        conn = self._conn
        return conn if conn is not None and conn.up else None

    def _dial(self, conn: _Connection) -> None:
        super()._dial(conn)
        client = conn.client
        assert client is not None
        # Set before loop_start: messages queued in our session arrive right after CONNACK.
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe

    def _on_message(self, _client: mqtt.Client, conn: _Connection, msg: mqtt.MQTTMessage) -> None:
        _post(conn, self._on_incoming, msg.topic, bytes(msg.payload))

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        conn: _Connection,
        mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        codes = [int(getattr(r, "value", 0) or 0) for r in reasons]
        _post(conn, self._subacked, mid, codes)

    def _subacked(self, mid: int, codes: list[int]) -> None:
        fut = self.subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)


# -- the client --------------------------------------------------------------------------------


class PoolMqttClient:
    """`PoolClient`'s methods over retained MQTT messages (see the module docstring).

    `on_booking` is called (on the event loop) when a booking message newer than the one held
    arrives, so the owner can read the feed at once instead of at its next interval. Safe to
    call from several tasks at once (PoolSync's cycle and the outbox runner do)."""

    def __init__(
        self,
        config: PoolSyncConfig,
        *,
        gateway_id: str,
        base_dir: str | Path = ".",
        on_booking: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        link_cfg = link_config(config, gateway_id)
        self.mqtt = link_cfg
        self.gateway_id = gateway_id
        self.topics = PoolTopics(link_cfg.topic_prefix, gateway_id)
        context = UplinkContext(
            gateway_id=gateway_id,
            site="",
            point_meta=lambda _point: None,
            quarantine=lambda *_args: None,
            base_dir=str(base_dir),
        )
        self._link = _PoolLink(link_cfg, context, self._incoming)
        self.client_id = self._link.client_id
        self.endpoint = self._link.endpoint
        self.on_booking = on_booking
        self._lock = asyncio.Lock()
        self._subscribed: _Connection | None = None
        self._bookings: dict[str, dict[str, Any]] = {}
        #: machine -> the highest availability seq the broker PUBACKed (this process).
        self._published: dict[str, int] = {}
        #: machine -> the last profile version the broker PUBACKed (for the tombstone).
        self._versions: dict[str, int] = {}
        self.requests = 0
        self.failures = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.bookings_received = 0

    # -- the contract's operations ----------------------------------------------------------

    async def put_machine(self, machine_id: str, profile: dict[str, Any]) -> dict[str, Any]:
        await self._publish([machine_message(self.topics, machine_id, profile)])
        version = int(profile["version"])
        self._versions[machine_id] = version
        return {"machine_id": machine_id, "version": version, "result": "published"}

    async def retire_machine(self, machine_id: str) -> dict[str, Any]:
        version = self._versions.get(machine_id)
        await self._publish([retired_message(self.topics, machine_id, version)])
        return {"machine_id": machine_id, "result": "retired"}

    async def post_availability(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        verdicts = triage(items, self._published)
        send = [items[i] for i, v in verdicts if v == "publish"]
        if send:
            await self._publish([availability_message(self.topics, u) for u in send])
            for u in send:
                self._published[u["machine_id"]] = u["seq"]
        return [
            {
                "machine_id": items[i]["machine_id"],
                "seq": items[i]["seq"],
                "result": "applied" if v == "publish" else v,
            }
            for i, v in verdicts
        ]

    async def put_snapshot(
        self, gateway_id: str, seq: int, ts: str, items: list[dict[str, Any]]
    ) -> dict[str, Any]:
        self._check_gateway(gateway_id)
        await self._publish([snapshot_message(self.topics, seq, ts, items)])
        return {
            "gateway_id": gateway_id,
            "seq": seq,
            "result": "published",
            "results": [],
            "marked_offline": [],
        }

    async def bookings(self, gateway_id: str, since_version: int) -> dict[str, Any]:
        """The bookings received so far (retained, so all of them shortly after connecting);
        connecting first if need be, so a dead broker raises SinkRetry here as over HTTPS."""
        self._check_gateway(gateway_id)
        await self._ensure()
        return booking_feed(gateway_id, self._bookings.values(), since_version)

    async def post_usage(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not records:
            return []
        codes = await self._publish([usage_message(self.topics, r) for r in records])
        if RC_NO_MATCHING_SUBSCRIBERS in codes:
            self.failures += 1
            raise SinkRetry(
                f"pool mqtt {self.endpoint}: no pool subscribed to {self.topics.base}/usage "
                "(the broker would not keep the records for it); they stay pending"
            )
        return [{"record_id": r["record_id"], "result": "applied"} for r in records]

    async def close(self) -> None:
        """Publish `offline`, disconnect (the broker keeps our session), stop the thread."""
        async with self._lock:
            self._subscribed = None
            await self._link.close()

    def stats(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "bookings_received": self.bookings_received,
            "connected": 1.0 if self._link.connection is not None else 0.0,
            "reconnects": self._link.stats()["reconnects"],
        }

    # -- connection -------------------------------------------------------------------------

    def _check_gateway(self, gateway_id: str) -> None:
        if gateway_id != self.gateway_id:
            raise ValueError(f"this client publishes for {self.gateway_id}, not {gateway_id}")

    async def _ensure(self) -> _Connection:
        """The live connection, subscribed to our bookings: connect and subscribe when there
        is none. Subscribing again on every new connection (even with the session kept) makes
        the broker send every retained booking again, which refills the map after a restart."""
        async with self._lock:
            conn = self._link.connection
            if conn is None:
                try:
                    await self._link.connect()
                except SinkRetry:
                    self.failures += 1
                    raise
                conn = self._link.connection
                if conn is None:  # lost between CONNACK and here
                    self.failures += 1
                    raise SinkRetry(f"pool mqtt {self.endpoint}: connection lost at once")
            if self._subscribed is not conn:
                await self._subscribe(conn)
                self._subscribed = conn
            return conn

    async def _subscribe(self, conn: _Connection) -> None:
        client = conn.client
        assert client is not None
        rc, mid = client.subscribe(self.topics.bookings_filter, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            self.failures += 1
            raise SinkRetry(f"pool mqtt {self.endpoint}: subscribe failed: {mqtt.error_string(rc)}")
        fut: asyncio.Future[list[int]] = conn.loop.create_future()
        self._link.subacks[mid] = fut
        waiters: set[asyncio.Future[Any]] = {fut, conn.lost}
        try:
            done, _ = await asyncio.wait(
                waiters,
                timeout=self.mqtt.ack_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self._link.subacks.pop(mid, None)
        if fut not in done:
            self.failures += 1
            why = conn.lost.result() if conn.lost.done() else "no SUBACK (ack_timeout)"
            raise SinkRetry(f"pool mqtt {self.endpoint}: subscribing to bookings: {why}")
        codes = fut.result()
        if any(c >= 0x80 for c in codes):
            self.failures += 1
            raise PoolRefused(
                f"pool mqtt {self.endpoint}: broker refused the subscription to "
                f"{self.topics.bookings_filter} (0x{codes[0]:02x})",
                status=403,
            )

    async def _publish(self, messages: list[Message]) -> list[int]:
        """Publish (QoS 1) and wait for every PUBACK; the reason codes, or the module
        docstring's errors."""
        conn = await self._ensure()
        self.requests += len(messages)
        try:
            acks = await self._link._publish_and_wait(conn, messages, self.mqtt.ack_timeout)
        except SinkRetry:
            self.failures += 1
            raise
        codes = [acks.codes.get(i, 0) for i in range(len(messages))]
        for i, code in enumerate(codes):
            action = puback_action(code)
            if action == "ok":
                continue
            self.failures += 1
            name = acks.names.get(i)
            what = f"pool mqtt {messages[i].topic}: broker refused: {name} (0x{code:02x})"
            if action == "throttle":
                raise SinkThrottle(what, retry_after=THROTTLE_RETRY_AFTER)
            if code == _RC_NOT_AUTHORIZED:
                raise PoolRefused(what, status=403)
            if code == _RC_PAYLOAD_FORMAT_INVALID:
                raise PoolRejected(what, status=422)
            raise SinkRetry(what)
        self.bytes_out += sum(len(m.payload) for m in messages)
        return codes

    # -- incoming (event loop) --------------------------------------------------------------

    def _incoming(self, topic: str, payload: bytes) -> None:
        self.bytes_in += len(payload)
        parsed = parse_topic(self.topics.prefix, topic)
        if parsed is None or parsed[0] != topic_level(self.gateway_id) or parsed[1] != "bookings":
            return
        booking = read_booking(parsed[2], payload)
        if booking is None:
            if payload:
                log.error(
                    "pool sent a booking message we cannot read",
                    extra={"topic": topic, "size": len(payload)},
                )
            return
        if merge_booking(self._bookings, booking):
            self.bookings_received += 1
            if self.on_booking is not None:
                with contextlib.suppress(Exception):  # a hook must not break the network path
                    self.on_booking()


__all__ = [
    "MAX_BOOKINGS",
    "RC_NO_MATCHING_SUBSCRIBERS",
    "PoolMqttClient",
    "PoolTopics",
    "availability_message",
    "booking_feed",
    "booking_message",
    "is_retirement",
    "link_config",
    "machine_message",
    "merge_booking",
    "parse_topic",
    "pool_filters",
    "read_booking",
    "retired_message",
    "snapshot_message",
    "triage",
    "usage_message",
]
