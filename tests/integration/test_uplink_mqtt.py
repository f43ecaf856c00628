"""The MQTT uplink against a real Mosquitto with mutual TLS and passwords: a platform-side
subscriber checks topics, payloads (against the published JSON Schema), retained state and
status, the last will, refusals, and a batch resent after the broker went away mid-send.

A small TCP relay (`Relay`) sits between sender and broker where a test needs to hold back
the broker's answers or cut the connection like a dead network; TLS passes through it
untouched. No mocks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
import ssl
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from jsonschema import Draft202012Validator
from paho.mqtt.enums import CallbackAPIVersion

from gateway.errors import SinkRetry
from gateway.readings import Quality, Value
from gateway.store import StoredReading
from gateway.types import DataClass
from sync.base import OutboxBatch, PointMeta, UplinkContext
from sync.mqtt import MqttSender, MqttUplinkConfig
from tests.integration import mosquitto as _broker
from tests.integration.mosquitto import Mosquitto, MosquittoFactory, make_tls

mosquitto_factory = _broker.mosquitto_factory

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "sync/schemas/telemetry-batch.schema.json").read_text(
        encoding="utf-8"
    )
)
BATCH_SCHEMA = Draft202012Validator(SCHEMA)
STATE_SCHEMA = Draft202012Validator(
    {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": "#/$defs/state"}
)

GW_USER, GW_PASS = "gw-1", "s3cret-uplink"
PLATFORM_USER, PLATFORM_PASS = "platform", "platform-pass"
USERS = {GW_USER: GW_PASS, PLATFORM_USER: PLATFORM_PASS}
BASE = "millrace/plant-a/gw-1"
T0 = 1_718_000_000.0

META = {
    "pump-1.flow": PointMeta("pump-1", "flow", "m3/h", "station-1", DataClass.PUBLIC),
    "pump-1.pressure": PointMeta("pump-1", "pressure", "bar", "station-1", DataClass.PUBLIC),
    "mill-1.event": PointMeta("mill-1", "event", "", "line-1", DataClass.PUBLIC),
    "mill-1.alarm_failure_predicted": PointMeta(
        "mill-1", "alarm_failure_predicted", "", "line-1", DataClass.PUBLIC
    ),
    "mill-1.rul": PointMeta("mill-1", "rul", "cycles", "line-1", DataClass.PUBLIC),
}

Quarantined = list[tuple[str, str, StoredReading]]


# -- helpers -----------------------------------------------------------------------------------


def reading(
    rid: int, point: str, value: Value = 1.0, quality: Quality = Quality.GOOD, **kw: Any
) -> StoredReading:
    return StoredReading(
        rid, point, value, quality, T0 + rid / 10, kw.get("ts_source"), kw.get("reason")
    )


def batch(seq: int, prev_id: int, readings: list[StoredReading]) -> OutboxBatch:
    return OutboxBatch("central", seq, prev_id, readings[-1].id, readings)


def sender_for(
    broker: Mosquitto,
    quarantined: Quarantined | None = None,
    *,
    port: int | None = None,
    host: str | None = None,
    tls: dict[str, Any] | bool | None = True,
    **over: Any,
) -> MqttSender:
    """A sender for `broker`'s TLS listener with the client certificate and the gateway's
    password (each can be overridden)."""
    files = broker.tls
    data: dict[str, Any] = {
        "type": "mqtt",
        "name": "central",
        "host": host or broker.host,
        "username": GW_USER,
        "password": GW_PASS,
        "connect_timeout": 2.0,
        "ack_timeout": 3.0,
        **over,
    }
    if tls is True:
        assert files is not None and broker.tls_port is not None
        data["tls"] = {
            "ca": str(files.ca),
            "cert": str(files.client_cert),
            "key": str(files.client_key),
        }
        data["port"] = port or broker.tls_port
    elif isinstance(tls, dict):
        data["tls"] = tls
        data["port"] = port or broker.tls_port
    else:
        data["port"] = port or broker.port
    sink: Quarantined = quarantined if quarantined is not None else []
    context = UplinkContext(
        gateway_id="gw-1",
        site="plant-a",
        point_meta=META.get,
        quarantine=lambda uplink, why, r: sink.append((uplink, why, r)),
    )
    return MqttSender(MqttUplinkConfig.model_validate(data), context)


@contextlib.asynccontextmanager
async def opened(sender: MqttSender) -> AsyncIterator[MqttSender]:
    try:
        yield sender
    finally:
        await sender.close()


class Subscriber:
    """The central platform: subscribes to `topics` (QoS 1) and records every message.
    `session` gives it a persistent session and quick reconnects (it outlives a broker
    restart without missing a message)."""

    def __init__(self, broker: Mosquitto, topics: list[str], *, session: str | None = None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._topics = topics
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=session or "",
            clean_session=session is None,
            protocol=mqtt.MQTTv311,
        )
        self.client.username_pw_set(PLATFORM_USER, PLATFORM_PASS)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "subscription not acknowledged"

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def docs(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def subscribed(broker: Mosquitto, *topics: str, session: str | None = None) -> Iterator[Subscriber]:
    sub = Subscriber(broker, list(topics) or ["millrace/#"], session=session)
    try:
        yield sub
    finally:
        sub.close()


async def eventually(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Relay:
    """TCP relay to `target`: `holding` keeps the broker's bytes from reaching the client
    (PUBACKs never arrive) while still noticing when the broker goes; `cut()` aborts every
    connection (RST), as a dead network or a killed process would."""

    def __init__(self, target: int, host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self.port = 0
        self.holding = False
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    def cut(self) -> None:
        for t in list(self._transports):
            t.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._transports.add(writer.transport)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            except OSError:
                return
            self._transports.add(up_writer.transport)
            pipes = {
                asyncio.create_task(self._pipe(reader, up_writer, hold=False)),
                asyncio.create_task(self._pipe(up_reader, writer, hold=True)),
            }
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for p in pipes:
                p.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            up_writer.transport.abort()
            self._transports.discard(up_writer.transport)
        finally:
            writer.transport.abort()
            self._transports.discard(writer.transport)
            self._handlers.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if hold and self.holding:
                    continue  # swallowed: the client never hears of it
                writer.write(data)
                await writer.drain()


def telemetry_ids(sub: Subscriber, seq: int) -> list[int]:
    return [
        r["id"]
        for doc in sorted(
            (d for d in sub.docs("/telemetry") + sub.docs("/events") if d["seq"] == seq),
            key=lambda d: d["part"],
        )
        for r in doc["readings"]
    ]


# -- delivery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_telemetry_events_state_and_status_over_mutual_tls(
    mosquitto_factory: MosquittoFactory, version: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = mosquitto_factory(users=USERS, tls=True, require_certificate=True)
    quarantined: Quarantined = []
    first = batch(
        1,
        100,
        [
            reading(101, "pump-1.flow", 12.5),
            reading(102, "mill-1.event", '{"event":"alarm_raised","alarm":"failure_predicted"}'),
            reading(103, "pump-1.pressure", 3),
            reading(104, "mill-1.alarm_failure_predicted", True, reason="model:pdm@1.0.0"),
            reading(105, "mill-1.rul", math.nan, Quality.UNCERTAIN, reason="model:pdm@1.0.0"),
            reading(106, "ghost.level", None, Quality.BAD, reason="device down: timeout"),
            reading(107, "pump-1.note", "n" * 6000),  # larger than one message: quarantined
            reading(108, "pump-1.flow", 13.0, ts_source=T0),
        ],
    )
    second = batch(2, 108, [reading(109, "pump-1.pressure", 3.5), reading(110, "ghost.x", "on")])
    with subscribed(broker) as sub:
        sender = sender_for(broker, quarantined, mqtt_version=version, batch_max_bytes="4KiB")
        async with opened(sender):
            await sender.connect()
            await sender.connect()  # idempotent while connected
            await eventually(lambda: sub.on(f"{BASE}/status") == [b"online"], "online")
            await sender.send(first)
            await sender.send(second)
            await eventually(lambda: len(telemetry_ids(sub, 2)) == 2, "batch 2")
            stats = sender.stats()
            assert stats["connected"] == 1 and stats["inflight"] == 0
            assert stats["batches_sent"] == 2 and stats["quarantined"] == 1
            assert stats["messages_sent"] >= 8 and stats["bytes_sent"] > 500
            assert stats["reconnects"] == 0 and sender.last_error is None

        # Every message is on its documented topic and valid against the schema.
        for topic, payload, _ in sub.messages:
            kind = topic.rsplit("/", 1)[-1]
            if kind in ("telemetry", "events"):
                BATCH_SCHEMA.validate(json.loads(payload))
            elif kind == "state":
                STATE_SCHEMA.validate(json.loads(payload))
            else:
                assert topic == f"{BASE}/status" and payload in (b"online", b"offline")
        one = sorted(
            (d for d in sub.docs("/telemetry") + sub.docs("/events") if d["seq"] == 1),
            key=lambda d: d["part"],
        )
        assert [(d["equipment"], [r["id"] for r in d["readings"]]) for d in one] == [
            ("station-1", [101, 103, 108]),
            ("line-1", [102, 104]),
            ("line-1", [105]),
            ("ghost", [106]),
        ]
        topics = {t for t, _, _ in sub.messages}
        assert f"{BASE}/station-1/telemetry" in topics and f"{BASE}/line-1/events" in topics
        assert f"{BASE}/line-1/telemetry" in topics and f"{BASE}/ghost/telemetry" in topics
        assert all(d["parts"] == 4 and d["prev_id"] == 100 and d["last_id"] == 108 for d in one)
        rul = one[2]["readings"][0]
        assert rul["value"] is None and rul["quality"] == "uncertain"
        assert rul["reason"] == "model:pdm@1.0.0; non-finite value: NaN"
        assert [(u, r.id) for u, _, r in quarantined] == [("central", 107)]
        assert "too large" in quarantined[0][1]
        # close() said so (the broker may still be passing it on to this subscriber)
        await eventually(lambda: sub.on(f"{BASE}/status")[-1:] == [b"offline"], "offline")

    # A subscriber arriving later sees the retained state (merged over both batches) and status.
    with subscribed(broker, f"{BASE}/+/state", f"{BASE}/status") as late:
        await eventually(lambda: len(late.messages) >= 4, "retained messages")
        assert all(retained for _, _, retained in late.messages)
        assert late.on(f"{BASE}/status") == [b"offline"]
        station = json.loads(late.on(f"{BASE}/station-1/state")[0])
        assert station["seq"] == 2 and station["last_id"] == 110
        assert {p: v["value"] for p, v in station["points"].items()} == {
            "pump-1.flow": 13.0,
            "pump-1.pressure": 3.5,
        }
        line = json.loads(late.on(f"{BASE}/line-1/state")[0])
        assert set(line["points"]) == {"mill-1.alarm_failure_predicted", "mill-1.rul"}
        ghost = json.loads(late.on(f"{BASE}/ghost/state")[0])
        assert set(ghost["points"]) == {"ghost.level", "ghost.x"}
    assert GW_PASS not in caplog.text


async def test_last_will_says_offline_when_the_connection_dies(
    mosquitto_factory: MosquittoFactory,
) -> None:
    broker = mosquitto_factory(users=USERS, tls=True, require_certificate=True)
    assert broker.tls_port is not None
    with subscribed(broker, f"{BASE}/status") as sub:
        async with Relay(broker.tls_port) as relay:
            sender = sender_for(broker, port=relay.port)
            async with opened(sender):
                await sender.connect()
                await eventually(lambda: sub.on(f"{BASE}/status") == [b"online"], "online")
                relay.cut()  # no DISCONNECT reaches the broker: the will is published
                await eventually(
                    lambda: sub.on(f"{BASE}/status") == [b"online", b"offline"], "last will"
                )
                await eventually(lambda: sender.stats()["connected"] == 0, "loss noticed")
                assert "connection lost" in (sender.last_error or "")
                with pytest.raises(SinkRetry, match="not connected"):
                    await sender.send(batch(1, 0, [reading(1, "pump-1.flow")]))
                await sender.connect()
                await eventually(lambda: sub.on(f"{BASE}/status")[-1:] == [b"online"], "again")
                assert sender.stats()["reconnects"] == 1
                await sender.send(batch(1, 0, [reading(1, "pump-1.flow")]))


async def test_broker_stopped_mid_send_then_the_same_batch_is_resent(
    mosquitto_factory: MosquittoFactory,
) -> None:
    broker = mosquitto_factory(users=USERS, tls=True, require_certificate=True)
    assert broker.tls_port is not None
    # more than _OFFLOAD_READINGS: encoded in a worker thread
    readings = [reading(1000 + i, f"pump-1.p{i % 5}", i * 0.5) for i in range(1200)]
    big = batch(5, 999, readings)
    ids = [r.id for r in readings]
    with subscribed(broker, "millrace/#", session="platform-durable") as sub:
        async with Relay(broker.tls_port) as relay:
            sender = sender_for(
                broker, port=relay.port, max_inflight=4, batch_max_bytes="1KiB", ack_timeout=10
            )
            async with opened(sender):
                await sender.connect()
                await sender.send(batch(4, 900, [reading(901, "pump-1.flow")]))
                relay.holding = True  # the broker gets our messages; its PUBACKs are lost
                sending = asyncio.create_task(sender.send(big))
                await eventually(lambda: len(telemetry_ids(sub, 5)) >= 4, "first parts")
                assert not sending.done()
                assert sender.stats()["inflight"] > 4  # 4 in flight, the rest queued behind
                await asyncio.to_thread(broker.stop)
                with pytest.raises(SinkRetry, match="connection lost"):
                    await sending
                seen_before = set(telemetry_ids(sub, 5))
                assert seen_before < set(ids)  # really mid-batch

                relay.holding = False
                await asyncio.to_thread(broker.start)
                await sender.connect()
                await sender.send(big)  # the runner's resend: same seq, same ids
                parts = sender.stats()
                assert parts["batches_sent"] == 2 and parts["reconnects"] == 1

        def complete() -> bool:
            return set(telemetry_ids(sub, 5)) == set(ids)

        await eventually(complete, "the whole batch after the resend", timeout=10)
        got = telemetry_ids(sub, 5)
        assert set(got) == set(ids) and len(got) >= len(ids)
        docs = [d for d in sub.docs("/telemetry") if d["seq"] == 5]
        assert {d["part"] for d in docs} == set(range(1, docs[0]["parts"] + 1))
        # duplicates only of what the first attempt delivered, never of another batch
        assert [i for i in telemetry_ids(sub, 4)] == [901]


async def test_no_puback_within_ack_timeout_drops_the_connection(
    mosquitto_factory: MosquittoFactory,
) -> None:
    broker = mosquitto_factory(users=USERS, tls=True, require_certificate=True)
    assert broker.tls_port is not None
    one = batch(1, 0, [reading(1, "pump-1.flow"), reading(2, "mill-1.event", "{}")])
    with subscribed(broker, f"{BASE}/status", f"{BASE}/+/telemetry") as sub:
        async with Relay(broker.tls_port) as relay:
            sender = sender_for(broker, port=relay.port, ack_timeout=0.5)
            async with opened(sender):
                await sender.connect()
                relay.holding = True  # a broker that takes our messages and never answers
                sending = asyncio.create_task(sender.send(one))
                await asyncio.sleep(0.05)
                with pytest.raises(RuntimeError, match="another send"):
                    await sender.send(one)
                with pytest.raises(SinkRetry, match=r"no PUBACK for 3 of 3 messages within 0\.5 s"):
                    await sending
                assert sender.stats()["connected"] == 0 and sender.stats()["inflight"] == 0
                # the connection was dropped without DISCONNECT: the broker said so
                await eventually(lambda: sub.on(f"{BASE}/status")[-1:] == [b"offline"], "will")
                relay.holding = False
                await sender.connect()
                await sender.send(one)
                assert sender.stats()["batches_sent"] == 1
    assert len(sub.on(f"{BASE}/station-1/telemetry")) == 2  # the first attempt, and the resend


# -- refusals ----------------------------------------------------------------------------------


async def test_refusals_raise_sink_retry_with_the_reason(
    mosquitto_factory: MosquittoFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = mosquitto_factory(users=USERS, tls=True, require_certificate=True)
    files = broker.tls
    assert files is not None
    other = make_tls(tmp_path / "other-ca")
    cases: list[tuple[MqttSender, str]] = [
        (
            sender_for(
                broker,
                tls={
                    "ca": str(other.ca),
                    "cert": str(files.client_cert),
                    "key": str(files.client_key),
                },
            ),
            "certificate verify failed",
        ),
        (sender_for(broker, tls={"ca": str(files.ca)}), "require a client certificate"),
        (sender_for(broker, password="guess"), "(?i)not authori[sz]ed|bad user name"),
        (
            sender_for(broker, tls={"ca": str(tmp_path / "missing.pem")}),
            "TLS setup failed: ca .*missing.pem",
        ),
        (sender_for(broker, tls=False, port=free_closed_port()), "connection refused"),
    ]
    for sender, reason in cases:
        async with opened(sender):
            with pytest.raises(SinkRetry, match=reason):
                await sender.connect()
            assert sender.stats()["connected"] == 0 and sender.stats()["errors"] == 1
            assert sender.last_error is not None
            with pytest.raises(SinkRetry, match="not connected"):
                await sender.send(batch(1, 0, [reading(1, "pump-1.flow")]))
    assert GW_PASS not in caplog.text and "guess" not in caplog.text


async def test_host_name_is_checked_unless_insecure(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory(users=USERS, tls=True, require_certificate=True)
    files = broker.tls
    assert files is not None and broker.tls_port is not None
    tls = {"ca": str(files.ca), "cert": str(files.client_cert), "key": str(files.client_key)}
    # The broker's certificate names 127.0.0.1 and localhost; 127.0.0.2 is the same box.
    async with Relay(broker.tls_port, host="127.0.0.2") as relay:
        strict = sender_for(broker, host="127.0.0.2", port=relay.port, tls=tls)
        async with opened(strict):
            with pytest.raises(SinkRetry, match=r"certificate verify failed \(IP address mismatch"):
                await strict.connect()
        lax = sender_for(broker, host="127.0.0.2", port=relay.port, tls={**tls, "insecure": True})
        async with opened(lax):
            await lax.connect()
            await lax.send(batch(1, 0, [reading(1, "pump-1.flow")]))


async def test_tls_below_1_2_is_refused(tmp_path: Path) -> None:
    files = make_tls(tmp_path / "tls")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.server_cert, files.server_key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.TLSv1
        server.maximum_version = ssl.TLSVersion.TLSv1_1
    server.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 needs it to speak TLS 1.1 at all
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    outcome: list[str] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                try:
                    server.wrap_socket(conn, server_side=True).close()
                    outcome.append("handshake completed")
                except ssl.SSLError as exc:
                    outcome.append(str(exc))

    thread = threading.Thread(target=serve, name="tls11-server")
    thread.start()
    try:
        context = UplinkContext("gw-1", "plant-a", META.get, lambda *_: None)
        config = MqttUplinkConfig.model_validate(
            {
                "type": "mqtt",
                "name": "central",
                "host": "127.0.0.1",
                "port": port,
                "tls": {"ca": str(files.ca)},
                "connect_timeout": 2,
            }
        )
        sender = MqttSender(config, context)
        async with opened(sender):
            with pytest.raises(SinkRetry, match=r"TLSV1_ALERT_PROTOCOL_VERSION.*TLS 1\.2 or newer"):
                await sender.connect()
    finally:
        await asyncio.to_thread(thread.join, 5)
        listener.close()
    assert outcome and outcome[0] != "handshake completed"


async def test_a_publish_the_broker_refuses_is_retried_never_dropped(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(
        f"user {GW_USER}\n"
        f"topic write {BASE}/status\n"
        f"topic write {BASE}/+/telemetry\n"
        f"topic write {BASE}/+/state\n"
        f"user {PLATFORM_USER}\n"
        "topic read millrace/#\n"
    )
    broker = mosquitto_factory(users=USERS, extra_config=f"acl_file {acl}")
    quarantined: Quarantined = []
    sender = sender_for(broker, quarantined, tls=False)
    assert sender.config.port == broker.port
    async with opened(sender):
        await sender.connect()
        await sender.send(batch(1, 0, [reading(1, "pump-1.flow")]))
        with pytest.raises(SinkRetry, match=r"line-1/events: Not authorized \(0x87\)"):
            await sender.send(batch(2, 1, [reading(2, "pump-1.flow"), reading(3, "mill-1.event")]))
        assert quarantined == [] and sender.stats()["batches_sent"] == 1
        assert sender.stats()["connected"] == 1  # the connection itself is fine


def free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
