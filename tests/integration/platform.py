"""The central platform's side of an uplink test: a persistent QoS 1 session (fixed client id,
clean_session false) on the central broker collecting every message under `millrace/#` in
arrival order. Persistent, so messages published while it reconnects after a broker outage are
queued for it by the broker, not lost."""

from __future__ import annotations

import json
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.integration.mosquitto import Mosquitto


class PlatformSubscriber:
    def __init__(
        self,
        broker: Mosquitto,
        *,
        client_id: str = "platform-reader",
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if username is not None:
            c.username_pw_set(username, password)
        port = broker.port
        if tls:
            files = broker.tls
            assert files is not None and broker.tls_port is not None
            c.tls_set(ca_certs=str(files.ca), certfile=str(files.client_cert),
                      keyfile=str(files.client_key))  # fmt: skip
            port = broker.tls_port
        c.reconnect_delay_set(0.2, 1)
        c.on_connect = lambda cl, *_: cl.subscribe("millrace/#", qos=1)
        c.on_subscribe = lambda *_: self._subscribed.set()
        c.on_message = self._on_message
        c.connect(broker.host, port, keepalive=10)
        c.loop_start()
        self.client = c
        if not self._subscribed.wait(10):
            self.close()
            raise AssertionError("the platform subscriber got no SUBACK from the central broker")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def raw(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def batches(self) -> list[dict[str, Any]]:
        """Telemetry and events payloads, decoded, in arrival order."""
        return [
            json.loads(payload)
            for topic, payload in self.raw()
            if topic.endswith(("/telemetry", "/events"))
        ]

    def readings(self) -> list[dict[str, Any]]:
        """Every reading of those payloads, in arrival order (duplicates kept)."""
        return [r for b in self.batches() for r in b["readings"]]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
