"""The MQTT link of the simulators that publish (farm fleet, grading line): which QoS 1
message ids the broker has not acknowledged yet, so `drain()` can wait for them, and the
client's connection state and stop sequence (`QosLink`).

paho may deliver the PUBACK (on its network thread) before `publish()` has returned the
message id to the caller, hence the "acknowledged early" set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

_log = logging.getLogger("millrace.sim")


class PubackTracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unacked: set[int] = set()
        self._early: set[int] = set()

    def sent(self, mid: int) -> None:
        """A QoS 1 message id `publish()` returned."""
        with self._lock:
            if mid in self._early:
                self._early.discard(mid)
            else:
                self._unacked.add(mid)

    def acked(self, mid: int) -> None:
        """paho's on_publish (network thread)."""
        with self._lock:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                self._early.add(mid)

    @property
    def unacknowledged(self) -> int:
        with self._lock:
            return len(self._unacked)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until the broker acknowledged every message sent so far."""
        deadline = time.monotonic() + timeout
        while self.unacknowledged:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.unacknowledged} messages not acknowledged")
            await asyncio.sleep(0.01)


class QosLink:
    """One paho client of a publishing simulator: its connection state (set from paho's
    thread), QoS 1 bookkeeping, and the stop sequence (drain, disconnect, join the thread).
    The farm fleet and the grading line differ in what they publish, not in this."""

    def __init__(self, client: mqtt.Client, qos: int, *, name: str) -> None:
        self.client = client
        self.qos = qos
        self.name = name
        self.connected = threading.Event()
        #: CONNACK seen, good or bad.
        self.answered = threading.Event()
        self.error: str | None = None
        self.pubacks = PubackTracker()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish

    def send(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=self.qos)
        if self.qos:
            self.pubacks.sent(info.mid)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait for the broker's answer; True when it accepted us."""
        await asyncio.to_thread(self.answered.wait, timeout)
        return self.connected.is_set()

    async def close(self, drain: float) -> None:
        """Give the broker `drain` seconds to ack what is in flight, disconnect, join paho."""
        if drain and self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await self.pubacks.drain(timeout=drain)
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)
        # paho's thread is gone: a restarted client must wait for its own CONNACK, not see
        # this session's answer (a reused simulator once raced past its reconnect).
        self.answered.clear()
        self.connected.clear()

    # paho callbacks (paho's thread)

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.error = str(reason)
            _log.warning("%s: broker refused: %s", self.name, reason)
        else:
            self.error = None
            self.connected.set()
        self.answered.set()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        self.error = str(reason)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _props: Any) -> None:
        self.pubacks.acked(mid)
