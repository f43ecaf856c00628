"""A fault-injecting TCP proxy on loopback, for the reliability scenarios of issue 10.

Put it between the gateway and a device, or between the gateway and an uplink's far side,
point the gateway at `proxy.port`, and switch faults on and off while the scenario runs:

    async with FaultProxy("127.0.0.1", plant.port) as proxy:
        cfg = plant_config(tmp_path, proxy.port)
        proxy.latency(0.2)      # every chunk, both ways, arrives 200 ms late
        proxy.drop()            # blackhole: sockets stay open, nothing moves
        proxy.reset()           # RST every open connection, now
        proxy.refuse()          # new connections are accepted and reset at once
        proxy.throttle(10_000)  # bytes per second, per connection and direction
        proxy.flap(2.0)         # reset all connections every 2 s (down_s: refuse in between)
        proxy.heal()            # all of the above off; held data flows again

Why these models of a fault, and not simpler ones:

- **drop()** holds data instead of discarding it. TCP never loses a byte in the middle of a
  stream: a real partition stalls it, the sender retransmits, and after the partition heals the
  held bytes arrive (unless a peer gave up and closed first). Discarding bytes would corrupt the
  protocol framing, a failure no real network produces. New connections made while dropped are
  accepted (the kernel does that on loopback) but not connected onward until `heal()`, so a
  client sees a connect that never answers, as it would behind a silent firewall.
- **reset()** sets SO_LINGER to 0 and closes both sockets of each connection, so each peer gets a
  real RST (ConnectionResetError or an abrupt EOF), not a polite FIN.
- **latency** delays each chunk from the moment it was read, both ways; chunks of one direction
  are delivered in order, so a streaming transfer through it is slowed as well. That is enough
  for the request/response protocols the gateway speaks (Modbus, MQTT, HTTP).
- **throttle** paces each direction of each connection on its own, in ~50 ms slices, so a
  rate is visible within a second.

Counters (`stats`) say how many connections were accepted, refused and reset, and how many
bytes were forwarded each way, so a scenario can prove its fault actually happened.

Every task the proxy starts is cancelled and awaited on exit (STYLE 8), so it passes the
suite's task-leak check. Pure asyncio streams, no third-party code.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

_CHUNK = 65536
_SLICES_PER_S = 20  # throttle granularity: how often per second a paced sender wakes up

Direction = Literal["up", "down"]


@dataclass
class ProxyStats:
    """What went through the proxy. `up` is client -> target, `down` is target -> client."""

    connections: int = 0  # TCP connections accepted from clients, refused ones included
    refused: int = 0  # reset on arrival: refuse() was on, or the target could not be reached
    resets: int = 0  # open connections reset by reset() or flap()
    cut_times: list[float] = field(default_factory=list)  # monotonic time of each reset()
    bytes_up: int = 0  # bytes forwarded client -> target
    bytes_down: int = 0  # bytes forwarded target -> client


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, not a FIN: linger 0 makes the kernel drop the connection hard."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and (once made) its connection to the target."""

    __slots__ = ("client", "pumps", "upstream")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.pumps: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """RST both sides and stop the pumps (but not the caller, if it is one of them)."""
        _rst(self.client)
        if self.upstream is not None:
            _rst(self.upstream)
        me = asyncio.current_task()
        for t in self.pumps:
            if t is not me:
                t.cancel()


class FaultProxy:
    """A TCP proxy from `127.0.0.1:<free port>` to `target_host:target_port` with live faults.

    Use it as an async context manager; `port` is valid inside. Fault switches are plain
    methods (callable from a test at any moment) and take effect on data already in flight.
    On exit every connection is reset and every task the proxy started is awaited.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        connect_timeout: float = 5.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.connect_timeout = connect_timeout
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._flap_task: asyncio.Task[None] | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._latency = 0.0
        self._rate: float | None = None
        self._refusing = False
        self._refuse_until = 0.0  # monotonic; flap(down_s=...) refuses until then

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self.listen_host, 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # A handler task created by the last accept may not have run yet; let it register.
        await asyncio.sleep(0)
        for link in list(self._links):
            link.abort()
        tasks = [*self._handlers, *self._background]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    @property
    def port(self) -> int:
        """The loopback port clients connect to instead of the target's."""
        if self._server is None:
            raise RuntimeError("FaultProxy is not running: use `async with FaultProxy(...)`")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Client connections currently linked to the target."""
        return sum(1 for link in self._links if link.upstream is not None)

    # -- faults ----------------------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        """Deliver every chunk `seconds` after it was read, both ways (0 turns it off)."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        self._latency = float(seconds)

    def drop(self) -> None:
        """Blackhole: stop forwarding, keep every socket open; data is held until heal()."""
        self._flowing.clear()

    def reset(self) -> None:
        """RST every open connection now (both the client's and the target's side)."""
        links = list(self._links)
        self.stats.resets += len(links)
        self.stats.cut_times.append(time.monotonic())
        for link in links:
            link.abort()

    def refuse(self) -> None:
        """Reset each new connection as soon as it is accepted (a port with nobody home);
        connections already open carry on: call reset() as well for a server that died."""
        self._refusing = True

    def throttle(self, bytes_per_s: float | None) -> None:
        """Pace each direction of each connection to `bytes_per_s` (None turns it off)."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError(f"throttle rate must be > 0, got {bytes_per_s}")
        self._rate = None if bytes_per_s is None else float(bytes_per_s)

    def flap(self, period_s: float, *, down_s: float = 0.0) -> None:
        """Reset every open connection every `period_s`, and refuse new ones for `down_s`
        after each reset: a link that goes down and comes back on its own."""
        if period_s <= 0 or not 0 <= down_s < period_s:
            raise ValueError(f"flap needs period_s > 0 and 0 <= down_s < period_s, got "
                             f"{period_s}, {down_s}")  # fmt: skip
        self._stop_flap()
        self._flap_task = self._own(self._flap_loop(period_s, down_s))

    def heal(self) -> None:
        """Every fault off: no latency, no throttle, no refusing, no flapping; held data flows."""
        self._stop_flap()
        self._latency = 0.0
        self._rate = None
        self._refusing = False
        self._refuse_until = 0.0
        self._flowing.set()

    # -- internals -------------------------------------------------------------------------

    def _own(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _stop_flap(self) -> None:
        if self._flap_task is not None:
            self._flap_task.cancel()  # awaited in __aexit__ with the other background tasks
            self._flap_task = None
        self._refuse_until = 0.0

    async def _flap_loop(self, period_s: float, down_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            self._refuse_until = time.monotonic() + down_s
            self.reset()

    def _refusing_now(self) -> bool:
        return self._refusing or time.monotonic() < self._refuse_until

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.stats.connections += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            if self._refusing_now():
                self.stats.refused += 1
                _rst(writer)
                return
            # Blackholed: the client's connect "succeeded" but nothing reaches the target.
            await self._flowing.wait()
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port),
                    self.connect_timeout,
                )
            except (OSError, TimeoutError):
                self.stats.refused += 1
                _rst(writer)
                return
            link.upstream = up_writer
            link.pumps = [
                asyncio.create_task(self._pump(reader, up_writer, "up", link)),
                asyncio.create_task(self._pump(up_reader, writer, "down", link)),
            ]
            await asyncio.gather(*link.pumps, return_exceptions=True)
        finally:
            self._links.discard(link)
            for t in link.pumps:
                t.cancel()
            if link.pumps:
                await asyncio.gather(*link.pumps, return_exceptions=True)
            for w in (link.client, link.upstream):
                if w is not None:
                    w.close()
            self._handlers.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
        link: _Link,
    ) -> None:
        """Copy one direction until EOF; a reset on either side resets the whole link, since
        that is what both peers would see if the network between them had failed."""
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    # Pass the half-close on; the other direction may still be talking.
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                arrived = time.monotonic()
                await self._flowing.wait()
                delay = arrived + self._latency - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._send(writer, data, direction)
        except (ConnectionError, OSError):
            link.abort()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes, direction: Direction) -> None:
        view = memoryview(data)
        while view:
            await self._flowing.wait()  # a drop switched on mid-chunk holds the rest
            rate = self._rate
            size = len(view) if rate is None else max(1, int(rate / _SLICES_PER_S))
            piece = bytes(view[:size])
            view = view[size:]
            writer.write(piece)
            await writer.drain()
            if direction == "up":
                self.stats.bytes_up += len(piece)
            else:
                self.stats.bytes_down += len(piece)
            if rate is not None:
                await asyncio.sleep(len(piece) / rate)
