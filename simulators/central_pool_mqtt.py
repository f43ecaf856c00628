"""The reference pool's MQTT side: the retained-message transport of `sync/pool_mqtt.py`,
applied through the very `_Store` methods the HTTP routes call, so idempotency, stale `seq`,
organisation and liveness rules are the same whichever way an update came.

The bridge subscribes (one SUBSCRIBE, in this order, so retained messages arrive profiles
first) to `{prefix}/+/machines/+`, `{prefix}/+/availability/+`, `{prefix}/+/snapshot` and
`{prefix}/+/usage/+`, and publishes every booking, retained, to
`{prefix}/{gateway_id}/bookings/{booking_id}` when it is made or cancelled, and all of them
again on every (re)connect, so a booking made while the broker was away still arrives.

Identity. MQTT carries no bearer token: the gateway id in the topic is looked up in
`gateway_tokens` ({gateway_id: token}) and the message is applied with that token's
`TokenInfo`; a gateway without an entry (or whose token is not a gateway's or operator's) is
refused like a 401/403. That the topic's gateway is really the publisher is the broker's ACL's
job (`sync/pool_mqtt.py`). Refusals (unknown gateway, invalid body, a `PoolError`) are
counted and kept in `rejected` (the newest 100), never fatal.

Session. A persistent session (MQTT 3.1.1 clean_session=False) under a stable client id, so
the broker queues usage records while the pool is down; the subscription is made again on
every connect anyway, which makes the broker resend every retained message (all idempotent).
paho reconnects by itself (0.2 s to 2 s apart). Its callbacks only post to the event loop;
one task applies the messages in arrival order, each in the pool's database thread
(`CentralPool.call`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from simulators.central_pool import (
    AvailabilityIn,
    MachineProfileIn,
    PoolError,
    Role,
    SnapshotIn,
    TokenInfo,
    UsageRecordIn,
)
from sync.pool_mqtt import (
    PoolTopics,
    booking_message,
    is_retirement,
    parse_topic,
    pool_filters,
)

if TYPE_CHECKING:
    from simulators.central_pool import CentralPool

log = logging.getLogger("simulators.central_pool.mqtt")

DEFAULT_PREFIX = "millrace-pool/v1"
DEFAULT_CLIENT_ID = "millrace-central-pool"
#: A sentinel in the work queue: (re)connected, publish every booking again.
_RESYNC = ("", b"")


class Rejection(Exception):
    """A message the pool refuses (the MQTT counterpart of a 4xx answer)."""


class PoolMqttBridge:
    """Connects `pool` to the broker at `host:port`; see the module docstring."""

    def __init__(
        self,
        pool: CentralPool,
        host: str,
        port: int,
        *,
        gateway_tokens: Mapping[str, str],
        prefix: str = DEFAULT_PREFIX,
        client_id: str = DEFAULT_CLIENT_ID,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.pool = pool
        self.host, self.port = host, port
        self.gateway_tokens = dict(gateway_tokens)
        self.prefix = prefix
        self.client_id = client_id
        self._username, self._password = username, password
        self.applied = 0
        #: (topic, reason) of the newest refusals.
        self.rejected: collections.deque[tuple[str, str]] = collections.deque(maxlen=100)
        #: (topic, the store's answer) of the newest applied messages.
        self.results: collections.deque[tuple[str, Any]] = collections.deque(maxlen=200)
        self.connected = asyncio.Event()
        self._client: mqtt.Client | None = None
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> str:
        return f"mqtt://{self.host}:{self.port} under {self.prefix}/"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting (in paho's thread); returns at once, the broker may be down."""
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        client.reconnect_delay_set(min_delay=0.2, max_delay=2)  # type: ignore[arg-type]
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._task = asyncio.create_task(self._work(), name="central-pool-mqtt")
        client.connect_async(self.host, self.port, keepalive=30)
        client.loop_start()

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()  # the broker keeps the session (clean_session=False)
            await asyncio.to_thread(client.loop_stop)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.connected.clear()

    # -- paho callbacks (network thread): post to the loop only ------------------------------

    def _post(self, fn: Any, *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("pool mqtt: broker refused the connection", extra={"reason": str(reason)})
            return
        client.subscribe([(f, 1) for f in pool_filters(self.prefix)])
        self._post(self._queue.put_nowait, _RESYNC)
        self._post(self.connected.set)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        self._post(self.connected.clear)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._post(self._queue.put_nowait, (msg.topic, bytes(msg.payload)))

    # -- the work (event loop) ---------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            topic, payload = await self._queue.get()
            try:
                if (topic, payload) == _RESYNC:
                    await self.publish_bookings()
                else:
                    await self._apply(topic, payload)
            except Exception as exc:  # one bad message must not stop the bridge
                log.exception("pool mqtt: message failed", extra={"topic": topic})
                self.rejected.append((topic, f"{type(exc).__name__}: {exc}"))

    async def _apply(self, topic: str, payload: bytes) -> None:
        parsed = parse_topic(self.prefix, topic)
        if parsed is None or not payload:  # not ours, or a retained message being cleared
            return
        gateway_id, kind, key = parsed
        try:
            out = await self._dispatch(gateway_id, kind, key, payload)
        except (Rejection, PoolError, ValidationError, ValueError) as exc:
            reason = exc.detail if isinstance(exc, PoolError) else str(exc)
            self.rejected.append((topic, reason[:500]))
            log.warning("pool mqtt: message refused", extra={"topic": topic, "reason": reason})
            return
        self.applied += 1
        self.results.append((topic, out))

    def _who(self, gateway_id: str) -> TokenInfo:
        token = self.gateway_tokens.get(gateway_id)
        info = self.pool.tokens.get(token) if token is not None else None
        if info is None:
            raise Rejection(f"no known token for gateway {gateway_id}")
        if info.role not in (Role.GATEWAY, Role.OPERATOR):
            raise Rejection(f"the token of gateway {gateway_id} is a {info.role.value} token")
        return info

    async def _dispatch(self, gateway_id: str, kind: str, key: str, payload: bytes) -> Any:
        """One message through the store method its HTTP route uses, with the same checks."""
        pool, store = self.pool, self.pool.store
        who = self._who(gateway_id)
        data = json.loads(payload)
        if kind == "machines":
            if is_retirement(data):
                try:
                    return await pool.call(store.retire_machine, key, who, pool.now())
                except PoolError as exc:
                    if exc.status == 404:  # retired before the pool ever saw it
                        return {"machine_id": key, "result": "unknown"}
                    raise
            body = MachineProfileIn.model_validate(data)
            if body.gateway_id != gateway_id:
                raise Rejection(f"gateway_id {body.gateway_id} is not the topic's {gateway_id}")
            if body.restricted is not None and who.org != body.owner_org:
                raise Rejection("restricted fields are accepted only from the owner organisation")
            return (await pool.call(store.put_machine, key, body, who, pool.now()))[1]
        if kind == "availability":
            item = AvailabilityIn.model_validate(data)
            if item.machine_id != key or item.gateway_id != gateway_id:
                raise Rejection("machine_id/gateway_id differ from the topic's")
            return await pool.call(store.post_availability, [item], who, pool.now())
        if kind == "snapshot":
            snap = SnapshotIn.model_validate(data)
            return await pool.call(store.put_snapshot, gateway_id, snap, who, pool.now())
        if kind == "usage":
            rec = UsageRecordIn.model_validate(data)
            if rec.record_id != key:
                raise Rejection(f"record_id {rec.record_id} is not the topic's {key}")
            # record_id hashes the record as sent: the parsed JSON, not the validated model
            return await pool.call(store.post_usage, [rec], [data], who, pool.now())
        raise Rejection(f"the pool takes no {kind} messages")

    # -- bookings out ------------------------------------------------------------------------

    async def publish_bookings(self, booking_id: str | None = None) -> int:
        """Publish (retained, QoS 1) one booking, or all of them; how many. Without a
        connection paho queues them, and the next connect publishes all again anyway."""
        client = self._client
        if client is None:
            return 0
        targets = await self.pool.call(self.pool.store.booking_targets, booking_id)
        for gateway_id, booking in targets:
            msg = booking_message(PoolTopics(self.prefix, gateway_id), booking)
            client.publish(msg.topic, msg.payload, qos=1, retain=True)
        return len(targets)
