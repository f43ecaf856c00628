"""The InfluxDB v2 write-API uplink (sync/influx.py) against real servers.

Delivery, values, ids, timestamps and an outage are tested against a real VictoriaMetrics
(tests/integration/victoria.py says how it maps line protocol). The answers VictoriaMetrics
never gives to the write API (429 with Retry-After, 503, 400/422 for particular lines, 413,
401, slow answers) are tested against `StubInflux`: a real HTTP server on loopback, written
here, that implements `POST /api/v2/write` and answers what each test scripts. It is a
server on a socket, not a mock object: the requests are real influxdb-client requests, gzip
and headers included.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import logging
import math
import ssl
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import urllib3
from pydantic import ValidationError

from gateway.aio import cancel_until_done
from gateway.errors import SinkRetry, SinkThrottle
from gateway.readings import Quality, Value
from gateway.store import StoredReading
from gateway.types import DataClass
from sync.base import OutboxBatch, PointMeta, UplinkContext
from sync.influx import (
    DEFAULT_THROTTLE_S,
    MAX_RETRY_AFTER_S,
    InfluxSender,
    InfluxUplinkConfig,
    parse_retry_after,
)
from sync.lineproto import encode
from tests.conftest import free_port
from tests.integration import victoria as _victoria
from tests.integration.mosquitto import TlsFiles, make_tls
from tests.integration.victoria import VictoriaMetrics

victoria = _victoria.victoria  # fixture: a real VictoriaMetrics on a free port
victoria_factory = _victoria.victoria_factory

TOKEN = "s3cret-token-XYZ"
T0 = 1_700_000_000.0  # 2023-11-14; whole milliseconds below, VictoriaMetrics keeps ms

METAS = {
    "pump-1.flow": PointMeta("pump-1", "flow", "m3/h", "pump-A", DataClass.PUBLIC),
    "pump-1.running": PointMeta("pump-1", "running", "", "pump-A", DataClass.PUBLIC),
    "pump-1.count": PointMeta("pump-1", "count", "", "pump-A", DataClass.PUBLIC),
    "pump-1.temp": PointMeta("pump-1", "temp", "°C", "pump-A", DataClass.PUBLIC),
    "line-1.status": PointMeta("line-1", "status", "", None, DataClass.PUBLIC),
}


def r(
    rid: int,
    point: str,
    value: Value,
    ts: float,
    *,
    quality: Quality = Quality.GOOD,
    ts_source: float | None = None,
) -> StoredReading:
    return StoredReading(rid, point, value, quality, ts, ts_source, None)


def batch(readings: list[StoredReading], *, seq: int = 1, prev_id: int = 0) -> OutboxBatch:
    return OutboxBatch("central", seq, prev_id, readings[-1].id, readings)


@dataclass
class Quarantine:
    """The context's quarantine sink: what the sender handed over, in order."""

    items: list[tuple[str, str, StoredReading]] = field(default_factory=list)

    def __call__(self, uplink: str, reason: str, reading: StoredReading) -> None:
        self.items.append((uplink, reason, reading))

    @property
    def ids(self) -> list[int]:
        return [rd.id for _, _, rd in self.items]


def context(quarantine: Quarantine | None = None, **over: Any) -> UplinkContext:
    return UplinkContext(
        gateway_id="gw-01",
        site="plant-1",
        point_meta=METAS.get,
        quarantine=quarantine if quarantine is not None else Quarantine(),
        **over,
    )


def config(url: str, **over: Any) -> InfluxUplinkConfig:
    values: dict[str, Any] = {
        "type": "influx",
        "name": "central",
        "url": url,
        "org": "acme",
        "bucket": "plant",
        "token": TOKEN,
        "timeout": "5s",
    }
    values.update(over)
    return InfluxUplinkConfig.model_validate(values)


@asynccontextmanager
async def sender(cfg: InfluxUplinkConfig, ctx: UplinkContext) -> AsyncIterator[InfluxSender]:
    s = InfluxSender(cfg, ctx)
    try:
        yield s
    finally:
        await s.close()


# -- against a real VictoriaMetrics ----------------------------------------------------------


def by_point(series: list[_victoria.Series], name: str) -> dict[str, _victoria.Series]:
    return {s.labels["point"]: s for s in series if s.name == name}


async def test_batch_written_gzipped_and_read_back_exactly(victoria: VictoriaMetrics) -> None:
    readings = [
        r(1, "pump-1.flow", 21.5, T0 + 0.125),
        r(2, "pump-1.flow", 21.75, T0 + 9.0, ts_source=T0 + 0.5),  # the device's time wins
        r(3, "pump-1.running", True, T0 + 0.5),
        r(4, "pump-1.count", 123_456_789_012, T0 + 0.5),
        r(5, "pump-1.flow", None, T0 + 1.0, quality=Quality.BAD),
        r(6, "pump-1.temp", math.nan, T0 + 1.0, quality=Quality.UNCERTAIN),
        r(7, "line-1.status", "running, fine", T0 + 1.0),
        r(8, "pump-1.flow", -0.001, T0 + 1.001),
    ]
    quarantine = Quarantine()
    async with sender(config(victoria.url, gzip=True), context(quarantine)) as s:
        await s.connect()
        await s.send(batch(readings))
        stats = s.stats()

    assert quarantine.items == []
    assert stats["requests"] == 1
    assert stats["lines_sent"] == 8
    plain = len("\n".join(encode(readings, METAS, site="plant-1", gateway="gw-01")).encode())
    assert 0 < stats["bytes_sent"] < plain, "gzip should shrink the body on the wire"

    got = victoria.export('{__name__=~"millrace_.*"}')
    ms = lambda t: round(t * 1000)  # noqa: E731
    ids = by_point(got, "millrace_id")
    assert ids["pump-1.flow"].samples == [
        (ms(T0 + 0.125), 1),
        (ms(T0 + 0.5), 2),
        (ms(T0 + 1.0), 5),
        (ms(T0 + 1.001), 8),
    ]
    assert ids["pump-1.temp"].samples == [(ms(T0 + 1.0), 6)]
    values = by_point(got, "millrace_value")
    # the BAD reading (id 5) has no value; everything else is exact
    assert values["pump-1.flow"].samples == [
        (ms(T0 + 0.125), 21.5),
        (ms(T0 + 0.5), 21.75),
        (ms(T0 + 1.001), -0.001),
    ]
    assert values["pump-1.running"].samples == [(ms(T0 + 0.5), 1)]
    assert values["pump-1.count"].samples == [(ms(T0 + 0.5), 123_456_789_012)]
    assert "pump-1.temp" not in values  # NaN is never written as a value
    # VictoriaMetrics has no text values: 1.79.5 stores a string field as 0 (newer
    # versions drop it); either way the reading's id and quality arrived.
    assert values.get("line-1.status") is None or values["line-1.status"].values == [0]
    assert ids["line-1.status"].samples == [(ms(T0 + 1.0), 7)]
    quality = by_point(got, "millrace_quality")
    assert quality["pump-1.flow"].samples == [
        (ms(T0 + 0.125), 0),
        (ms(T0 + 0.5), 0),
        (ms(T0 + 1.0), 2),
        (ms(T0 + 1.001), 0),
    ]
    assert quality["pump-1.temp"].values == [1]
    assert ids["pump-1.flow"].labels == {
        "device": "pump-1",
        "equipment": "pump-A",
        "gateway": "gw-01",
        "point": "pump-1.flow",
        "site": "plant-1",
        "unit": "m3/h",
    }
    assert ids["pump-1.temp"].labels["unit"] == "°C"
    assert ids["line-1.status"].labels == {
        "device": "line-1",
        "gateway": "gw-01",
        "point": "line-1.status",
        "site": "plant-1",
    }


async def test_escaped_names_arrive_unescaped(victoria: VictoriaMetrics) -> None:
    """Commas, spaces, equals signs and backslashes in tags, through a real parser."""
    site, unit = "North Field, Plot=3", "kg m\\s"
    metas = {"pump-1.flow": PointMeta("pump-1", "flow", unit, None, DataClass.PUBLIC)}
    ctx = UplinkContext(
        gateway_id="gw 01", site=site, point_meta=metas.get, quarantine=Quarantine()
    )
    async with sender(config(victoria.url, measurement="plant data"), ctx) as s:
        await s.send(batch([r(1, "pump-1.flow", 2.5, T0)]))
    (series,) = victoria.export('{__name__="plant data_value"}')
    assert series.labels == {
        "device": "pump-1",
        "gateway": "gw 01",
        "point": "pump-1.flow",
        "site": site,
        "unit": unit,
    }
    assert series.samples == [(round(T0 * 1000), 2.5)]


async def test_outage_is_a_retry_and_the_batch_arrives_after_restart(
    victoria: VictoriaMetrics,
) -> None:
    first = [r(i, "pump-1.flow", i / 4, T0 + i) for i in range(1, 6)]
    second = [r(i, "pump-1.flow", i / 4, T0 + i) for i in range(6, 11)]
    async with sender(config(victoria.url, timeout="2s"), context()) as s:
        await s.connect()
        await s.send(batch(first))

        victoria.stop()
        with pytest.raises(SinkRetry, match="cannot connect"):
            await s.connect()
        with pytest.raises(SinkRetry, match="cannot connect") as info:
            await s.send(batch(second, seq=2, prev_id=5))
        assert TOKEN not in str(info.value)
        assert s.stats()["failing"] == 1.0
        assert s.last_error is not None and "cannot connect" in s.last_error

        victoria.start()  # same port, same data folder
        await s.connect()
        await s.send(batch(second, seq=2, prev_id=5))  # the runner's resend
        assert s.stats()["failing"] == 0.0
        assert s.last_error is None
        # an ack lost after the server wrote it: the runner sends the same batch again
        await s.send(batch(second, seq=2, prev_id=5))
        stats = s.stats()

    assert stats["retries"] >= 2
    assert stats["lines_sent"] == 15
    (ids,) = [x for x in victoria.export('{__name__="millrace_id"}')]
    (values,) = [x for x in victoria.export('{__name__="millrace_value"}')]
    expected = {round((T0 + i) * 1000): i for i in range(1, 11)}
    for series, scale in ((ids, 1.0), (values, 0.25)):
        assert {t for t, _ in series.samples} == set(expected)  # nothing lost
        for t, v in series.samples:  # duplicates are identical
            assert v == expected[t] * scale
    counts = Counter(t for t, _ in ids.samples)
    assert [counts[round((T0 + i) * 1000)] for i in range(1, 11)] == [1] * 5 + [2] * 5


# -- against a stub server (answers VictoriaMetrics never gives) -----------------------------


@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes  # as received (gzip-compressed when Content-Encoding says so)
    lines: list[str]

    @property
    def ids(self) -> list[int]:
        return [int(line.rsplit(" ", 2)[1].split("id=")[1].rstrip("i")) for line in self.lines]


Answer = tuple[int, dict[str, str], bytes]
Responder = Callable[[Request], Answer]


def no_content(_req: Request) -> Answer:
    return 204, {}, b""


class StubInflux:
    """A real HTTP/1.1 server on loopback speaking just enough of InfluxDB's v2 API:
    `GET /ping` (204) and `POST /api/v2/write`, whose answer `respond(request)` scripts.
    Every write request is recorded in `requests`; `accepted` holds those answered 2xx."""

    def __init__(self, respond: Responder = no_content, *, tls: TlsFiles | None = None) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self.accepted: list[Request] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms stalls

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(204 if self.path.startswith("/ping") else 404, {}, b"")

            def do_POST(self) -> None:
                url = urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                text = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
                req = Request(
                    url.path,
                    {k: v[0] for k, v in parse_qs(url.query).items()},
                    headers,
                    raw,
                    text.decode().split("\n") if text else [],
                )
                with stub._lock:
                    stub.requests.append(req)
                status, extra, body = (
                    stub.respond(req) if url.path == "/api/v2/write" else (404, {}, b"")
                )
                if 200 <= status < 300:
                    with stub._lock:
                        stub.accepted.append(req)
                self._answer(status, extra, body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and left is expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls.server_cert, tls.server_key)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="stub-influx"
        )

    def start(self) -> StubInflux:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def delivered_ids(self) -> list[int]:
        return [i for req in self.accepted for i in req.ids]


@pytest.fixture
def stub() -> Iterator[Callable[..., StubInflux]]:
    made: list[StubInflux] = []

    def make(respond: Responder = no_content, **options: Any) -> StubInflux:
        server = StubInflux(respond, **options).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


def influx_error(status: int, message: str, **headers: str) -> Answer:
    body = json.dumps({"code": "invalid", "message": message}).encode()
    return status, {"Content-Type": "application/json", **headers}, body


def flow(n: int, *, start: int = 1) -> list[StoredReading]:
    return [r(i, "pump-1.flow", float(i), T0 + i) for i in range(start, start + n)]


async def test_stub_server_sees_gzip_token_and_write_parameters(
    stub: Callable[..., StubInflux], caplog: pytest.LogCaptureFixture
) -> None:
    """A stub because VictoriaMetrics does not show us the request headers."""
    server = stub(no_content)
    caplog.set_level(logging.DEBUG)
    readings = flow(3)
    async with sender(config(server.url), context()) as s:
        await s.connect()
        await s.send(batch(readings))
        wire = s.stats()["bytes_sent"]
    (req,) = server.requests
    assert req.path == "/api/v2/write"
    assert req.query == {"org": "acme", "bucket": "plant", "precision": "ns"}
    assert req.headers["content-encoding"] == "gzip"
    assert req.headers["authorization"] == f"Token {TOKEN}"
    assert req.headers["content-type"].startswith("text/plain")
    assert req.ids == [1, 2, 3]
    assert req.lines[0] == (
        "millrace,device=pump-1,equipment=pump-A,gateway=gw-01,point=pump-1.flow,site=plant-1,"
        f"unit=m3/h value=1.0,quality=0i,id=1i {round((T0 + 1) * 1e9)}"
    )
    assert wire == len(req.body)  # the compressed size, as it went on the wire
    assert all(TOKEN not in rec.getMessage() for rec in caplog.records)
    assert all(TOKEN not in str(rec.__dict__) for rec in caplog.records)


async def test_stub_server_plain_body_and_no_token(
    stub: Callable[..., StubInflux],
) -> None:
    """A stub because VictoriaMetrics does not show us the request headers."""
    server = stub(no_content)
    async with sender(config(server.url, gzip=False, token=None), context()) as s:
        await s.send(batch(flow(2)))
    (req,) = server.requests
    assert "content-encoding" not in req.headers
    assert "authorization" not in req.headers
    assert req.ids == [1, 2]


async def test_stub_server_429_retry_after_seconds_then_delivered(
    stub: Callable[..., StubInflux],
) -> None:
    """A stub because VictoriaMetrics never answers 429."""
    answers = iter([influx_error(429, "rate limited", **{"Retry-After": "7"})])
    server = stub(lambda req: next(answers, (204, {}, b"")))
    b = batch(flow(4))
    async with sender(config(server.url), context()) as s:
        with pytest.raises(SinkThrottle) as info:
            await s.send(b)
        assert info.value.retry_after == 7.0
        assert "429" in str(info.value)
        assert s.stats()["throttled"] == 1
        await s.send(b)  # the runner waited and sends the same batch
        assert s.stats()["lines_sent"] == 4
    assert server.delivered_ids() == [1, 2, 3, 4]


async def test_stub_server_503_with_http_date_and_without_retry_after(
    stub: Callable[..., StubInflux],
) -> None:
    """A stub because VictoriaMetrics never answers 503 with Retry-After."""
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    answers = iter(
        [
            influx_error(503, "busy", **{"Retry-After": when}),
            influx_error(503, "busy"),
        ]
    )
    server = stub(lambda req: next(answers, (204, {}, b"")))
    b = batch(flow(2))
    async with sender(config(server.url), context()) as s:
        with pytest.raises(SinkThrottle) as dated:
            await s.send(b)
        with pytest.raises(SinkThrottle) as bare:
            await s.send(b)
        await s.send(b)
    assert 25.0 <= dated.value.retry_after <= 31.0
    assert bare.value.retry_after == DEFAULT_THROTTLE_S
    assert server.delivered_ids() == [1, 2]


def refuse_lines_with(bad: set[int], status: int = 400) -> Responder:
    """InfluxDB's way: a request with any bad line is refused whole, naming the first."""

    def respond(req: Request) -> Answer:
        hits = [i for i in req.ids if i in bad]
        if hits:
            return influx_error(status, f"unable to parse line with id={hits[0]}i: bad field")
        return 204, {}, b""

    return respond


@pytest.mark.parametrize("status", [400, 422])
async def test_stub_server_bisection_quarantines_exactly_the_bad_lines(
    stub: Callable[..., StubInflux], status: int
) -> None:
    """A stub because VictoriaMetrics skips unparsable lines and still answers 204."""
    bad = {5, 11}
    server = stub(refuse_lines_with(bad, status))
    quarantine = Quarantine()
    async with sender(config(server.url), context(quarantine)) as s:
        await s.send(batch(flow(16)))  # returns normally: the queue is not blocked
        stats = s.stats()
    assert sorted(quarantine.ids) == [5, 11]
    for uplink, reason, reading in quarantine.items:
        assert uplink == "central"
        assert f"HTTP {status}" in reason
        assert f"id={reading.id}i" in reason  # the server's own message is kept
    delivered = server.delivered_ids()
    assert sorted(delivered) == [i for i in range(1, 17) if i not in bad]
    assert len(delivered) == len(set(delivered)), "a good line was delivered twice"
    assert stats["quarantined"] == 2
    assert stats["lines_sent"] == 14
    assert stats["requests"] == len(server.requests) < 16  # far fewer than one per line


async def test_stub_server_throttle_during_bisection_resumes_without_repeats(
    stub: Callable[..., StubInflux],
) -> None:
    """A stub because VictoriaMetrics answers neither 400 nor 429."""
    bad = {3}
    refuse = refuse_lines_with(bad)
    calls = {"n": 0}

    def respond(req: Request) -> Answer:
        calls["n"] += 1
        if calls["n"] == 4:  # in the middle of the bisection
            return influx_error(429, "slow down", **{"Retry-After": "0"})
        return refuse(req)

    server = stub(respond)
    quarantine = Quarantine()
    async with sender(config(server.url), context(quarantine)) as s:
        with pytest.raises(SinkThrottle):
            await s.send(batch(flow(8)))
        done_before = server.delivered_ids()
        # the runner re-reads from the same cursor: same seq, and meanwhile more arrived
        await s.send(batch(flow(10)))
    assert quarantine.ids == [3]
    delivered = server.delivered_ids()
    assert sorted(delivered) == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert len(delivered) == len(set(delivered))
    assert done_before, "the throttle should strike after a half was delivered"
    resent = [i for req in server.requests[4:] for i in req.ids]  # after the throttled one
    assert not set(done_before) & set(resent), "confirmed lines went out again"


async def test_stub_server_413_splits_until_requests_fit(
    stub: Callable[..., StubInflux],
) -> None:
    """A stub because VictoriaMetrics never answers 413 to the write API."""

    def respond(req: Request) -> Answer:
        if len(req.lines) > 3 or any(len(line) > 500 for line in req.lines):
            return influx_error(413, "request entity too large")
        return 204, {}, b""

    server = stub(respond)
    quarantine = Quarantine()
    readings = [*flow(9), r(10, "line-1.status", "x" * 1000, T0 + 10)]
    async with sender(config(server.url), context(quarantine)) as s:
        await s.send(batch(readings))
        stats = s.stats()
    assert sorted(server.delivered_ids()) == list(range(1, 10))
    assert all(len(req.lines) <= 3 for req in server.accepted)
    assert quarantine.ids == [10]  # alone and still too large: it can never be sent
    assert "HTTP 413" in quarantine.items[0][1]
    assert stats["splits"] >= 3


async def test_stub_server_requests_hold_at_most_max_lines(
    stub: Callable[..., StubInflux],
) -> None:
    """A stub to count and inspect the requests."""
    server = stub(no_content)
    async with sender(config(server.url, max_lines_per_request=5), context()) as s:
        await s.send(batch(flow(12)))
    assert [len(req.lines) for req in server.requests] == [5, 5, 2]
    assert server.delivered_ids() == list(range(1, 13))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, "server error (HTTP 500): boom"),
        (502, "server error (HTTP 502)"),
        (401, "token refused (HTTP 401)"),
        (403, "token refused (HTTP 403)"),
        (404, "bucket or organization not found (HTTP 404)"),
        (409, "unexpected answer (HTTP 409)"),
    ],
)
async def test_stub_server_errors_are_retries(
    stub: Callable[..., StubInflux], status: int, expected: str
) -> None:
    """A stub because VictoriaMetrics does not check tokens or buckets, nor fail on cue."""
    server = stub(lambda req: influx_error(status, "boom"))
    quarantine = Quarantine()
    async with sender(config(server.url), context(quarantine)) as s:
        with pytest.raises(SinkRetry) as info:
            await s.send(batch(flow(3)))
        assert expected in str(info.value)
        assert TOKEN not in str(info.value)
        assert s.last_error is not None and expected in s.last_error
        assert s.stats()["retries"] == 1
    assert quarantine.items == []
    assert len(server.requests) == 1  # no splitting: the content is not the problem


async def test_stub_server_slow_answer_is_a_timeout_retry(
    stub: Callable[..., StubInflux],
) -> None:
    """A stub because VictoriaMetrics answers fast."""

    def slow(req: Request) -> Answer:
        time.sleep(1.0)
        return 204, {}, b""

    server = stub(slow)
    async with sender(config(server.url, timeout="200ms"), context()) as s:
        started = time.monotonic()
        with pytest.raises(SinkRetry, match=r"timeout after 0\.2 s"):
            await s.send(batch(flow(1)))
        assert time.monotonic() - started < 0.9


async def test_connect_refused_without_a_server() -> None:
    async with sender(config(f"http://127.0.0.1:{free_port()}"), context()) as s:
        with pytest.raises(SinkRetry, match=r"cannot connect \(Connection refused\)"):
            await s.connect()


async def test_event_loop_keeps_running_during_a_request(
    stub: Callable[..., StubInflux],
) -> None:
    """A stub whose answer takes 0.3 s: the loop must tick meanwhile (worker thread)."""

    def slow(req: Request) -> Answer:
        time.sleep(0.3)
        return 204, {}, b""

    server = stub(slow)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        async with sender(config(server.url), context()) as s:
            await s.send(batch(flow(2)))
    finally:
        assert await cancel_until_done(task, 10) and task.cancelled()
    assert ticks >= 10


async def test_stub_server_https_with_the_configured_ca(
    stub: Callable[..., StubInflux], tmp_path: Path
) -> None:
    """A stub because the Debian VictoriaMetrics is run without TLS here."""
    tls = make_tls(tmp_path / "tls")
    server = stub(no_content, tls=tls)
    ctx = context(base_dir=str(tmp_path))
    async with sender(config(server.url, tls_ca="tls/ca.pem"), ctx) as s:  # relative path
        await s.connect()
        await s.send(batch(flow(2)))
    assert server.delivered_ids() == [1, 2]
    async with sender(config(server.url), ctx) as s:  # system CAs: our test CA is unknown
        with pytest.raises(SinkRetry, match="TLS") as info:
            await s.send(batch(flow(1)))
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
        async with sender(config(server.url, verify_tls=False), ctx) as s:
            await s.send(batch(flow(1, start=3)))
    assert server.delivered_ids() == [1, 2, 3]


async def test_unencodable_reading_is_quarantined_not_sent(
    stub: Callable[..., StubInflux],
) -> None:
    server = stub(no_content)
    quarantine = Quarantine()
    readings = [*flow(2), r(3, "pump-1.flow", 1.0, math.inf)]
    async with sender(config(server.url), context(quarantine)) as s:
        await s.send(batch(readings))
    assert server.delivered_ids() == [1, 2]
    assert quarantine.ids == [3]
    assert "cannot encode" in quarantine.items[0][1]


# -- config and Retry-After ------------------------------------------------------------------


def test_config_defaults_and_checks() -> None:
    cfg = config("https://influx.example.com:8086/", token=None)
    assert cfg.url == "https://influx.example.com:8086"
    assert (cfg.gzip, cfg.verify_tls, cfg.measurement) == (True, True, "millrace")
    assert cfg.max_lines_per_request == 5000
    assert cfg.timeout == 5.0
    assert TOKEN not in repr(config("http://h", token=TOKEN))
    bad = [
        {"url": "ftp://h"},
        {"url": "http://user:pw@h"},
        {"url": "http://h?x=1"},
        {"measurement": "#m"},
        {"measurement": "_m"},
        {"measurement": ""},
        {"tls_ca": "ca.pem"},  # with an http url
        {"max_lines_per_request": 0},
        {"timeout": "0s"},
        {"name": "bad name"},
        {"extra": 1},
    ]
    for over in bad:
        with pytest.raises(ValidationError):
            config(over.pop("url", "http://h"), **over)
    assert config("https://h", tls_ca="ca.pem").tls_ca == "ca.pem"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("999999", MAX_RETRY_AFTER_S),
        (None, DEFAULT_THROTTLE_S),
        ("", DEFAULT_THROTTLE_S),
        ("soon", DEFAULT_THROTTLE_S),
        ("nan", DEFAULT_THROTTLE_S),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(header: str | None, expected: float) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(header, now=now) == expected
