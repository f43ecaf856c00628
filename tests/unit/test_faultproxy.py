"""The fault proxy against a real echo server on loopback: each fault is observed from the
client's side (times, errors, bytes), not inferred from the proxy's own flags, because the
reliability scenarios trust the proxy to do exactly what it says."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.conftest import free_port
from tests.tools.faultproxy import FaultProxy


class EchoServer:
    """Echoes every byte back; counts connections and resets so a test can see the far side."""

    def __init__(self) -> None:
        self.connections = 0
        self.resets_seen = 0
        self.reset_seen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            self.resets_seen += 1
            self.reset_seen.set()
        finally:
            writer.close()
            self._tasks.discard(task)

    async def __aenter__(self) -> EchoServer:
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.sleep(0)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    async with EchoServer() as server:
        yield server


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


@contextlib.asynccontextmanager
async def connect(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 5.0
) -> float:
    """Send `data`, read the same number of bytes back; returns the seconds it took."""
    start = time.monotonic()
    writer.write(data)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(data)), timeout)
    assert got == data
    return time.monotonic() - start


async def closed_hard(reader: asyncio.StreamReader, timeout: float = 3.0) -> str:
    """How the connection ended for this side: 'reset' (RST) or 'eof'; fails if it stays up."""
    try:
        data = await asyncio.wait_for(reader.read(1), timeout)
    except ConnectionResetError:
        return "reset"
    assert data == b"", f"connection still delivering data: {data!r}"
    return "eof"


async def test_forwards_both_ways_and_counts(proxy: FaultProxy, echo: EchoServer) -> None:
    async with connect(proxy.port) as (r, w):
        for size in (1, 1000, 200_000):
            await roundtrip(r, w, bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        assert proxy.open_connections == 1
    total = 1 + 1000 + 200_000
    assert proxy.stats.bytes_up == total
    assert proxy.stats.bytes_down == total
    assert proxy.stats.connections == 1 and echo.connections == 1
    assert proxy.stats.refused == 0 and proxy.stats.resets == 0


async def test_latency_applies_per_chunk_both_ways(proxy: FaultProxy) -> None:
    async with connect(proxy.port) as (r, w):
        baseline = await roundtrip(r, w, b"ping")
        proxy.latency(0.2)
        slow = [await roundtrip(r, w, b"ping") for _ in range(3)]
        proxy.latency(0)
        fast_again = await roundtrip(r, w, b"ping")
    assert baseline < 0.1
    # One chunk each way, 0.2 s each: 0.4 s, plus scheduling on a busy CI box.
    assert all(0.39 <= t < 1.2 for t in slow), slow
    assert fast_again < 0.1


async def test_drop_blackholes_then_heal_delivers_the_held_bytes(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    async with connect(proxy.port) as (r, w):
        await roundtrip(r, w, b"before")
        proxy.drop()
        w.write(b"held")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.readexactly(4), 0.5)
        # A blackhole is silent, not closed: the socket is still open.
        assert not r.at_eof() and proxy.open_connections == 1
        proxy.heal()
        assert await asyncio.wait_for(r.readexactly(4), 2) == b"held"


async def test_connection_made_during_drop_never_reaches_the_target(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    proxy.drop()
    async with connect(proxy.port) as (r, w):
        w.write(b"hello")
        await w.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.readexactly(5), 0.5)
        assert echo.connections == 0 and proxy.stats.connections == 1
        proxy.heal()
        assert await asyncio.wait_for(r.readexactly(5), 2) == b"hello"
    assert echo.connections == 1


async def test_reset_sends_rst_to_both_sides(proxy: FaultProxy, echo: EchoServer) -> None:
    async with connect(proxy.port) as (r, w):
        await roundtrip(r, w, b"up")
        proxy.reset()
        assert await closed_hard(r) in ("reset", "eof")
    assert proxy.stats.resets == 1 and len(proxy.stats.cut_times) == 1
    # The target saw a reset too (not a clean close), and a new connection works: one-shot.
    await asyncio.wait_for(echo.reset_seen.wait(), 2)
    async with connect(proxy.port) as (r, w):
        assert await roundtrip(r, w, b"again") < 1


async def test_reset_reaches_a_client_that_is_writing(proxy: FaultProxy) -> None:
    async with connect(proxy.port) as (r, w):
        await roundtrip(r, w, b"up")
        proxy.reset()
        await asyncio.sleep(0.1)
        # Writing into a reset socket fails on the first or a later write: never silently.
        with pytest.raises(ConnectionError):
            for _ in range(50):
                w.write(b"x" * 1000)
                await w.drain()
                await asyncio.sleep(0.01)


async def test_refuse_resets_new_connections_only(proxy: FaultProxy, echo: EchoServer) -> None:
    async with connect(proxy.port) as (r_old, w_old):
        await roundtrip(r_old, w_old, b"old")
        proxy.refuse()
        async with connect(proxy.port) as (r, w):
            w.write(b"anyone?")
            assert await closed_hard(r) in ("reset", "eof")
        assert await roundtrip(r_old, w_old, b"still here") < 1
        proxy.heal()
        async with connect(proxy.port) as (r, w):
            await roundtrip(r, w, b"back")
    assert proxy.stats.refused == 1 and proxy.stats.connections == 3
    assert echo.connections == 2  # the refused one never reached the target


async def test_throttle_paces_within_a_wide_band(proxy: FaultProxy) -> None:
    rate = 40_000
    size = 80_000  # two seconds' worth at the set rate
    async with connect(proxy.port) as (r, w):
        unthrottled = await roundtrip(r, w, b"z" * size)
        proxy.throttle(rate)
        elapsed = await roundtrip(r, w, b"z" * size, timeout=15)
    # Both directions are paced, but concurrently (the echo streams back while the rest goes up).
    measured = size / elapsed
    assert unthrottled < 0.5
    assert 0.5 * rate <= measured <= 1.2 * rate, f"{measured:.0f} B/s for a {rate} B/s throttle"


async def test_flap_resets_every_period_and_refuses_while_down(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    proxy.flap(0.4, down_s=0.2)
    start = time.monotonic()
    async with connect(proxy.port) as (r, _w):
        assert await closed_hard(r, timeout=2) in ("reset", "eof")
    first_cut = time.monotonic() - start
    assert 0.3 <= first_cut < 1.0, first_cut
    # Right after a cut the link is down: a connect is refused (reset at once).
    async with connect(proxy.port) as (r, _w):
        assert await closed_hard(r, timeout=1) in ("reset", "eof")
    await asyncio.sleep(0.25)  # past the down window: the link is up until the next cut
    async with connect(proxy.port) as (r, w):
        assert await roundtrip(r, w, b"up between flaps") < 0.2
        assert await closed_hard(r, timeout=2) in ("reset", "eof")
    proxy.heal()
    async with connect(proxy.port) as (r, w):
        await asyncio.sleep(0.6)  # longer than a period: healed means no more cuts
        assert await roundtrip(r, w, b"steady") < 0.5
    assert proxy.stats.resets >= 2 and proxy.stats.refused >= 1


async def test_unreachable_target_resets_the_client() -> None:
    async with FaultProxy("127.0.0.1", free_port(), connect_timeout=1) as proxy:
        async with connect(proxy.port) as (r, _w):
            assert await closed_hard(r) in ("reset", "eof")
        assert proxy.stats.refused == 1 and proxy.open_connections == 0


async def test_exit_closes_everything_it_started(echo: EchoServer) -> None:
    """Connections open, one held by a blackhole, one flap running: exit still ends them all
    (the autouse leak check fails this test if any proxy task survives)."""
    async with (
        FaultProxy("127.0.0.1", echo.port) as proxy,
        connect(proxy.port) as (r1, w1),
        connect(proxy.port) as (r2, _w2),
    ):
        await roundtrip(r1, w1, b"a")
        proxy.flap(30)
        proxy.drop()
        await asyncio.sleep(0.05)
        await proxy.__aexit__(None, None, None)
        assert await closed_hard(r1) in ("reset", "eof")
        assert await closed_hard(r2) in ("reset", "eof")
    with pytest.raises(RuntimeError, match="not running"):
        _ = proxy.port


async def test_bad_fault_arguments_are_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="latency"):
        proxy.latency(-1)
    with pytest.raises(ValueError, match="throttle"):
        proxy.throttle(0)
    with pytest.raises(ValueError, match="flap"):
        proxy.flap(1, down_s=1)
