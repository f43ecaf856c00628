"""A small MQTT 3.1.1 broker for `millrace demo`, so the demo needs no system package.

It is part of the simulated outside world, not of the gateway: tests and real sites use a
real broker (Mosquitto). It implements what the demo's farm fleet and the gateway's MQTT
driver use: CONNECT/CONNACK, PUBLISH at QoS 0 and 1 (PUBACK), SUBSCRIBE/SUBACK with `+`
and `#` wildcards, UNSUBSCRIBE, retained messages, PINGREQ and DISCONNECT. Sessions are not
persisted and QoS 1 deliveries are not retried; MQTT 5 clients are refused with return
code 1 (unacceptable protocol version), so configure the demo's devices for 3.1.1.

    python -m simulators.mqtt_broker --port 1883
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import struct
import sys
from dataclasses import dataclass, field

from simulators._cli import run_cli, serve_until_signal
from simulators._service import Service

log = logging.getLogger("millrace.sim.broker")

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
MAX_PACKET = 1024 * 1024


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching: `+` one level, `#` the rest (including the parent level)."""
    p_parts, t_parts = pattern.split("/"), topic.split("/")
    for i, p in enumerate(p_parts):
        if p == "#":
            return True
        if i >= len(t_parts):
            return False
        if p != "+" and p != t_parts[i]:
            return False
    return len(p_parts) == len(t_parts)


def _encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(data: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from(">H", data, pos)
    return data[pos + 2 : pos + 2 + n].decode("utf-8"), pos + 2 + n


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + _encode_length(len(body)) + body


@dataclass(eq=False)
class _Client:
    writer: asyncio.StreamWriter
    subscriptions: dict[str, int] = field(default_factory=dict)
    next_id: int = 0

    def packet_id(self) -> int:
        self.next_id = self.next_id % 65535 + 1
        return self.next_id


class MiniBroker(Service):
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[_Client] = set()
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.published = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self._clients):
            c.writer.close()
        # Closing the sockets ends each handler's read; cancelling them instead makes
        # asyncio's stream callback log the CancelledError as an error.
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=2.0)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        client = _Client(writer)
        try:
            kind, _, body = await self._read(reader)
            if kind != CONNECT or not await self._connect(client, body):
                return
            self._clients.add(client)
            while True:
                kind, flags, body = await self._read(reader)
                if kind == PUBLISH:
                    await self._publish(client, flags, body)
                elif kind == SUBSCRIBE:
                    await self._subscribe(client, body)
                elif kind == UNSUBSCRIBE:
                    await self._unsubscribe(client, body)
                elif kind == PINGREQ:
                    await self._send(client, _packet(PINGRESP, 0, b""))
                elif kind == DISCONNECT:
                    return
                # PUBACK from subscribers needs nothing: deliveries are not retried.
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, UnicodeDecodeError):
            return
        finally:
            self._clients.discard(client)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _read(self, reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length += (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ValueError("malformed remaining length")
        if length > MAX_PACKET:
            raise ValueError("packet too large")
        return first >> 4, first & 0x0F, await reader.readexactly(length)

    async def _connect(self, client: _Client, body: bytes) -> bool:
        name, pos = _string(body, 0)
        level = body[pos]
        if name != "MQTT" or level != 4:
            await self._send(client, _packet(CONNACK, 0, b"\x00\x01"))
            return False
        await self._send(client, _packet(CONNACK, 0, b"\x00\x00"))
        return True

    async def _publish(self, client: _Client, flags: int, body: bytes) -> None:
        qos, retain = (flags >> 1) & 0x03, flags & 0x01
        topic, pos = _string(body, 0)
        if qos:
            (pid,) = struct.unpack_from(">H", body, pos)
            pos += 2
            await self._send(client, _packet(PUBACK, 0, struct.pack(">H", pid)))
        payload = body[pos:]
        self.published += 1
        if retain:
            if payload:
                self._retained[topic] = (payload, qos)
            else:
                self._retained.pop(topic, None)
        for other in list(self._clients):
            granted = max(
                (q for f, q in other.subscriptions.items() if topic_matches(f, topic)), default=-1
            )
            if granted >= 0:
                await self._deliver(other, topic, payload, min(qos, granted), retain=False)

    async def _deliver(
        self, client: _Client, topic: str, payload: bytes, qos: int, *, retain: bool
    ) -> None:
        t = topic.encode()
        head = struct.pack(">H", len(t)) + t
        if qos:
            head += struct.pack(">H", client.packet_id())
        flags = (qos << 1) | (1 if retain else 0)
        await self._send(client, _packet(PUBLISH, flags, head + payload))

    async def _subscribe(self, client: _Client, body: bytes) -> None:
        (pid,) = struct.unpack_from(">H", body, 0)
        pos, granted = 2, []
        filters = []
        while pos < len(body):
            flt, pos = _string(body, pos)
            qos = min(body[pos] & 0x03, 1)
            pos += 1
            client.subscriptions[flt] = qos
            granted.append(qos)
            filters.append((flt, qos))
        await self._send(client, _packet(SUBACK, 0, struct.pack(">H", pid) + bytes(granted)))
        for flt, qos in filters:
            for topic, (payload, rqos) in list(self._retained.items()):
                if topic_matches(flt, topic):
                    await self._deliver(client, topic, payload, min(qos, rqos), retain=True)

    async def _unsubscribe(self, client: _Client, body: bytes) -> None:
        (pid,) = struct.unpack_from(">H", body, 0)
        pos = 2
        while pos < len(body):
            flt, pos = _string(body, pos)
            client.subscriptions.pop(flt, None)
        await self._send(client, _packet(UNSUBACK, 0, struct.pack(">H", pid)))

    async def _send(self, client: _Client, data: bytes) -> None:
        try:
            client.writer.write(data)
            await client.writer.drain()
        except ConnectionError:
            self._clients.discard(client)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    args = p.parse_args()
    broker = MiniBroker(args.host, args.port)
    return run_cli(
        "mqtt_broker",
        lambda: serve_until_signal(
            broker, lambda: f"demo MQTT 3.1.1 broker listening on {args.host}:{broker.port}"
        ),
        verbose=False,
    )


if __name__ == "__main__":
    sys.exit(main())
