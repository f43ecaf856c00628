"""The OPC UA driver against the simulated machine line: a real asyncua server and a real
client on 127.0.0.1, no mocks.

Building an asyncua server takes seconds (its standard address space), so tests that only read
and write share one simulator per module, running in its own thread and event loop with its
clock stopped (`tick=None`: each test advances it with `step()`). Tests that restart or secure
a server build their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from asyncua import ua

from drivers.base import DeviceState
from drivers.opcua.certs import create_client_certificate
from drivers.opcua.config import OpcuaDevice, OpcuaProfile
from drivers.opcua.discover import discover_opcua, profile_yaml
from drivers.opcua.driver import OpcuaDriver
from gateway.aio import cancel_until_done
from gateway.errors import DeviceError, TransportError, WriteRejected
from gateway.readings import Batch, Quality, Reading
from simulators.opcua_machine import DATASET, NAMESPACE, OpcuaMachineLine, load_ai4i

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

FAST = {
    "publishing_interval": 0.05,
    "poll_interval": 0.1,
    "watchdog_interval": 0.3,
    "timeout": 1.0,
    "session_timeout": 10.0,
    "backoff_initial": 0.1,
    "backoff_max": 0.5,
}


# -- harness --------------------------------------------------------------------------------------


class SimThread:
    """An `OpcuaMachineLine` served from its own thread and event loop."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="opcua-sim", daemon=True)
        self.thread.start()
        self.sim = OpcuaMachineLine(**kwargs)
        self.call(self.sim.start())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await a simulator coroutine from a test's own loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def do(self, fn: Callable[[], T]) -> T:
        """Run a plain simulator call on its loop (its state belongs to that thread)."""

        async def wrapped() -> T:
            return fn()

        return await self.run(wrapped())

    @property
    def endpoint(self) -> str:
        return self.sim.endpoint

    def close(self) -> None:
        self.call(self.sim.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@pytest.fixture(scope="module")
def line() -> Iterator[SimThread]:
    sim = SimThread(port=0, tick=None, machines=3)
    yield sim
    sim.close()


@pytest.fixture(scope="module")
def secure_line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimThread]:
    sim = SimThread(
        port=0,
        tick=0.1,
        machines=1,
        secure=True,
        cert_dir=tmp_path_factory.mktemp("server-pki"),
        users={"operator": "s3cret"},
    )
    yield sim
    sim.close()


def builtin_profile() -> OpcuaProfile:
    data = yaml.safe_load((ROOT / "drivers" / "profiles" / "cnc-machine-line.yaml").read_text())
    return OpcuaProfile.model_validate(data)


def profile(points: list[dict[str, Any]], **kw: Any) -> OpcuaProfile:
    return OpcuaProfile.model_validate(
        {"name": "test", "namespaces": {"ml": NAMESPACE}, "points": points} | kw
    )


def device(endpoint: str, **kw: Any) -> OpcuaDevice:
    base = {"id": "line1", "protocol": "opcua", "endpoint": endpoint, "profile": "test"}
    return OpcuaDevice.model_validate(base | FAST | kw)


class Collector:
    """The `emit` callable: keeps every batch, and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self._changed = asyncio.Event()

    def __call__(self, batch: Batch) -> None:
        assert isinstance(batch, list) and batch, "batches are non-empty lists"
        self.batches.append(batch)
        self._changed.set()

    @property
    def readings(self) -> list[Reading]:
        return [r for b in self.batches for r in b]

    def latest(self) -> dict[str, Reading]:
        return {r.point: r for r in self.readings}

    def mark(self) -> int:
        return len(self.batches)

    def since(self, mark: int) -> list[Reading]:
        return [r for b in self.batches[mark:] for r in b]

    async def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            assert left > 0, "condition not met in time"
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.1)):
                    await self._changed.wait()


@contextlib.asynccontextmanager
async def running(drv: OpcuaDriver) -> AsyncIterator[OpcuaDriver]:
    task = asyncio.create_task(drv.run())
    try:
        yield drv
    finally:
        await cancel_until_done(task)
        await drv.close()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def state(drv: OpcuaDriver) -> DeviceState:
    return drv.health()[0].state


# -- values ---------------------------------------------------------------------------------------


async def test_builtin_profile_values_match_the_simulator(line: SimThread) -> None:
    """Every point of the line profile arrives once, typed, with the server's timestamps, and
    new values arrive batched after each tick; nothing is emitted after run() ends."""
    prof = builtin_profile()
    got = Collector()
    drv = OpcuaDriver([(device(line.endpoint, profile=prof.name), prof)], got)
    names = {p.name for p in prof.points}
    assert {s.id for s in drv.points()} == {f"line1.{n}" for n in names}
    async with running(drv):
        await got.wait(lambda: {r.point for r in got.readings} == {f"line1.{n}" for n in names})
        assert state(drv) is DeviceState.ONLINE
        first = got.latest()
        assert all(r.quality is Quality.GOOD for r in first.values()), [
            r for r in first.values() if r.quality is not Quality.GOOD
        ]
        sim = await line.do(
            lambda: {
                m: line.sim.current_values(m) for m in ("Mill1", "Mill2", "Mill3", "LineController")
            }
        )
        for mill in (1, 2, 3):
            served = sim[f"Mill{mill}"]
            assert first[f"line1.mill{mill}_spindle_speed"].value == served["SpindleSpeed"]
            assert first[f"line1.mill{mill}_tool_wear"].value == served["ToolWear"]
            assert first[f"line1.mill{mill}_state"].value == served["State"]
            assert first[f"line1.mill{mill}_alarm"].value == served["Alarm"]
            assert (
                first[f"line1.mill{mill}_process_temperature"].value == served["ProcessTemperature"]
            )
        assert type(first["line1.mill1_spindle_speed"].value) is float
        assert type(first["line1.mill1_tool_wear"].value) is int
        assert type(first["line1.mill1_state"].value) is str
        assert type(first["line1.mill1_alarm"].value) is bool
        ctl = sim["LineController"]
        assert first["line1.line_total_parts"].value == ctl["TotalParts"] > 2**32  # UInt64
        assert first["line1.line_operator"].value == "Ana Souza"  # LocalizedText
        assert json.loads(first["line1.line_zone_temperatures"].value) == json.loads(
            ctl["ZoneTemperatures"]
        )
        assert first["line1.line_active_machine"].value == ctl["ActiveMachine"]  # via browse path
        assert isinstance(first["line1.server_time"].value, str)  # i=2258, polled
        for r in first.values():  # SourceTimestamp from the server, not the gateway's clock
            assert r.ts_source is not None and abs(r.ts_gateway - r.ts_source) < 5.0, r
        specs = {s.name: s for s in drv.points()}
        assert specs["mill1_spindle_speed"].data_type == "Double"
        assert specs["mill1_tool_wear"].data_type == "UInt16"

        for _ in range(2):
            mark = got.mark()
            before = time.time()
            await line.run(line.sim.step())
            served = await line.do(lambda: line.sim.current_values("Mill2"))
            await got.wait(
                lambda s=served: got.latest()["line1.mill2_product_id"].value == s["ProductId"]
            )
            await got.wait(
                lambda s=served: (
                    got.latest()["line1.mill2_spindle_speed"].value == s["SpindleSpeed"]
                )
            )
            new = [r for r in got.since(mark) if r.point.startswith("line1.mill")]
            assert len(new) >= 10
            # one publish response is one batch: a tick arrives in a few batches, not per value
            batches = [
                b for b in got.batches[mark:] if any(r.point.startswith("line1.mill") for r in b)
            ]
            assert len(batches) <= 3 < len(new)
            assert all(r.ts_source is not None and r.ts_source >= before - 0.01 for r in new)

    mark = got.mark()
    await line.run(line.sim.step())
    await asyncio.sleep(0.3)
    assert got.mark() == mark, "nothing is emitted after run() is cancelled"


async def test_node_forms_and_browse_paths_resolve_while_unknown_nodes_are_bad(
    line: SimThread,
) -> None:
    idx = line.sim.namespace_index
    points = [
        {"name": "by_uri", "node": f"nsu={NAMESPACE};s=Mill1.SpindleSpeed"},
        {"name": "by_alias", "node": "nsu=ml;s=Mill1.ToolWear"},
        {"name": "by_index", "node": f"ns={idx};s=Mill1.State"},
        {"name": "numeric", "node": "nsu=ml;i=1001"},
        {"name": "guid", "node": "nsu=ml;g=09087e75-8e5e-499b-954f-f2a9603db28a"},
        {"name": "bytes", "node": "nsu=ml;b=cmVjaXBlLWhhc2g="},
        {"name": "ns0", "node": "i=2258", "mode": "poll"},
        {
            "name": "path_index",
            "browse_path": f"0:Objects/{idx}:MachineLine/{idx}:Mill1/{idx}:Vibration",
        },
        {
            "name": "path_uri",
            "browse_path": (
                f"Objects/nsu={NAMESPACE};MachineLine/nsu={NAMESPACE};Mill1/ml:AirTemperature"
            ),
        },
        {
            "name": "path_alias",
            "browse_path": "0:Objects/ml:MachineLine/ml:LineController/ml:LineRate",
        },
        {"name": "unknown_node", "node": "nsu=ml;s=Mill9.SpindleSpeed"},
        {"name": "unknown_ns", "node": "nsu=urn:nobody:here;s=X"},
        {"name": "unknown_path", "browse_path": "0:Objects/ml:MachineLine/ml:Mill1/ml:Nope"},
        {"name": "not_variable", "node": "nsu=ml;s=Mill1"},
    ]
    got = Collector()
    drv = OpcuaDriver([(device(line.endpoint), profile(points))], got)
    async with running(drv):
        await got.wait(lambda: len(got.latest()) == len(points))
        latest = got.latest()
        sim = await line.do(lambda: line.sim.current_values("Mill1"))
        ctl = await line.do(lambda: line.sim.current_values("LineController"))
        assert latest["line1.by_uri"].value == sim["SpindleSpeed"]
        assert latest["line1.by_alias"].value == sim["ToolWear"]
        assert latest["line1.by_index"].value == sim["State"]
        assert isinstance(latest["line1.numeric"].value, int)
        assert latest["line1.guid"].value == ctl["BatchId"]
        assert latest["line1.bytes"].value == ctl["RecipeHash"]
        assert latest["line1.path_index"].value == sim["Vibration"]
        assert latest["line1.path_uri"].value == sim["AirTemperature"]
        assert latest["line1.path_alias"].value == ctl["LineRate"]
        assert isinstance(latest["line1.ns0"].value, str)
        reasons = {r.point: r.reason for r in got.readings if r.quality is Quality.BAD}
        assert set(reasons) == {
            "line1.unknown_node",
            "line1.unknown_ns",
            "line1.unknown_path",
            "line1.not_variable",
        }
        assert "BadNodeIdUnknown" in reasons["line1.unknown_node"]
        assert "'urn:nobody:here' is not on the server" in reasons["line1.unknown_ns"]
        assert "not found (BadNoMatch)" in reasons["line1.unknown_path"]
        assert "is not a variable" in reasons["line1.not_variable"]
        bad_counts = Counter(r.point for r in got.readings if r.quality is Quality.BAD)
        assert set(bad_counts.values()) == {1}, "an unresolved point is reported once"
        h = drv.health()[0]
        assert h.state is DeviceState.ONLINE and h.extra["unresolved_points"] == 4
        assert h.last_error is not None and "4 points unresolved" in h.last_error
        mark = got.mark()
        await line.run(line.sim.step())
        await got.wait(lambda: any(r.point == "line1.by_alias" for r in got.since(mark)))
        assert not [r for r in got.since(mark) if r.quality is Quality.BAD]


async def test_deadband_suppresses_small_changes(
    line: SimThread, caplog: pytest.LogCaptureFixture
) -> None:
    """Two monitored items on one node: the one with an absolute deadband of 0.5 only hears
    the big step; a polled point filters its own deadband on the gateway."""
    node = "nsu=ml;s=Mill3.Vibration"
    points = [
        {"name": "all", "node": node},
        {"name": "banded", "node": node, "deadband_type": "absolute", "deadband_value": 0.5},
        {
            "name": "polled",
            "node": node,
            "mode": "poll",
            "deadband_type": "absolute",
            "deadband_value": 0.5,
        },
        # a deadband on text means nothing: ignored (asyncua's server would choke on it)
        {
            "name": "text",
            "node": "nsu=ml;s=Mill3.ProductId",
            "deadband_type": "absolute",
            "deadband_value": 1,
        },
    ]
    got = Collector()
    drv = OpcuaDriver([(device(line.endpoint, poll_interval=0.05), profile(points))], got)
    async with running(drv):
        await line.run(line.sim.set_value("Mill3", "Vibration", 1.0))
        await got.wait(
            lambda: all(
                got.latest().get(f"line1.{n}") and got.latest()[f"line1.{n}"].value == 1.0
                for n in ("all", "banded", "polled")
            )
        )
        mark = got.mark()
        for value in (1.2, 1.4, 2.0):
            await line.run(line.sim.set_value("Mill3", "Vibration", value))
            await got.wait(lambda v=value: got.latest()["line1.all"].value == v)
            await asyncio.sleep(0.15)  # a few publishing and poll intervals
        seen = {
            n: [r.value for r in got.since(mark) if r.point == f"line1.{n}"]
            for n in ("all", "banded", "polled")
        }
        assert seen["all"] == [1.2, 1.4, 2.0]
        assert seen["banded"] == [2.0]
        assert seen["polled"] == [2.0]
        for text in ("X100", "X101"):
            await line.run(line.sim.set_value("Mill3", "ProductId", text))
            await got.wait(lambda t=text: got.latest()["line1.text"].value == t)
    assert [r.getMessage() for r in caplog.records if "deadband ignored" in r.getMessage()] == [
        "deadband ignored on non-numeric points"
    ]


async def test_poll_mode_reads_in_one_request_per_interval(line: SimThread) -> None:
    points = [
        {"name": "speed", "node": "nsu=ml;s=Mill2.SpindleSpeed", "mode": "poll"},
        {"name": "state", "node": "nsu=ml;s=Mill2.State", "mode": "poll"},
        {"name": "zones", "node": "nsu=ml;s=Line.ZoneTemperatures", "mode": "poll"},
        {"name": "clock", "node": "i=2258", "mode": "poll"},
    ]
    got = Collector()
    drv = OpcuaDriver([(device(line.endpoint, poll_interval=0.1), profile(points))], got)
    async with running(drv):
        await got.wait(lambda: len(got.batches) >= 2)
        requests, polls, mark = drv.health()[0].requests, drv.health()[0].polls_ok, got.mark()
        await asyncio.sleep(1.0)
        h = drv.health()[0]
        batches = got.batches[mark:]
        assert 5 <= len(batches) <= 12
        assert all(
            sorted(r.point for r in b) == sorted(f"line1.{p['name']}" for p in points)
            for b in batches
        )
        assert h.polls_ok - polls >= len(batches) - 1
        # one Read per poll, plus the watchdog's keep-alive reads
        keepalives = int(1.0 / FAST["watchdog_interval"]) + 1
        assert h.requests - requests <= (h.polls_ok - polls) + keepalives
        sim = await line.do(lambda: line.sim.current_values("Mill2"))
        latest = got.latest()
        assert latest["line1.speed"].value == sim["SpindleSpeed"]
        assert latest["line1.state"].value == sim["State"]
        assert latest["line1.zones"].value.startswith("[")
        assert latest["line1.speed"].ts_source is not None


async def test_cancel_is_prompt_even_when_repeated_and_leaves_no_task(line: SimThread) -> None:
    """The gateway supervisor re-delivers a cancel every 0.5 s; repeated cancels must neither
    leave asyncua's publish / watchdog tasks behind (the leak check) nor hang run()."""
    points = [
        {"name": "speed", "node": "nsu=ml;s=Mill1.SpindleSpeed"},
        {"name": "clock", "node": "i=2258", "mode": "poll"},
    ]
    got = Collector()
    drv = OpcuaDriver([(device(line.endpoint), profile(points))], got)
    task = asyncio.create_task(drv.run())
    await got.wait(lambda: state(drv) is DeviceState.ONLINE and len(got.latest()) == 2)
    started = time.monotonic()
    while not task.done():
        task.cancel()
        await asyncio.sleep(0.005)
    assert task.cancelled()
    assert time.monotonic() - started < 2.0
    mark = got.mark()
    await drv.close()
    await line.run(line.sim.step())
    await asyncio.sleep(0.2)
    assert got.mark() == mark


# -- writes ---------------------------------------------------------------------------------------


async def test_writes_convert_to_the_node_type_and_refuse_before_io(line: SimThread) -> None:
    points = [
        {
            "name": "feed",
            "node": "nsu=ml;s=Mill2.FeedOverride",
            "writable": True,
            "min": 0,
            "max": 150,
        },
        {"name": "rate", "node": "nsu=ml;s=Line.TargetRate", "writable": True},
        {"name": "speed", "node": "nsu=ml;s=Mill2.SpindleSpeed"},
        {"name": "lying", "node": "nsu=ml;s=Mill2.ToolWear", "writable": True},
        {"name": "ghost", "node": "nsu=ml;s=Mill2.Ghost", "writable": True},
    ]
    got = Collector()
    drv = OpcuaDriver([(device(line.endpoint), profile(points))], got)
    with pytest.raises(TransportError, match="device not connected"):
        await drv.write("line1", "feed", 50)
    async with running(drv):
        await got.wait(lambda: state(drv) is DeviceState.ONLINE and "line1.feed" in got.latest())
        await drv.write("line1", "feed", 80)  # int -> the node's Double
        await got.wait(lambda: got.latest()["line1.feed"].value == 80.0)
        assert type(got.latest()["line1.feed"].value) is float
        await drv.write("line1", "rate", 250.0)  # integral float -> UInt16
        await got.wait(lambda: got.latest()["line1.rate"].value == 250)
        await line.run(line.sim.step())  # the machine reacts to its new feed override
        sim = await line.do(lambda: line.sim.machines["Mill2"].feed_override)
        assert sim == 80.0

        requests = drv.health()[0].requests
        refused = [
            ("speed", 1.0, "not writable"),
            ("feed", 151, "151 is above max 150"),
            ("feed", -5, "-5 is below min 0"),
            ("feed", "fast", "Double needs a number"),
            ("rate", 1.5, "UInt16 needs a whole number"),
            ("rate", 70_000, "does not fit UInt16"),
            ("rate", True, "UInt16 needs a number"),
            ("nope", 1, "no such point"),
        ]
        for name, value, message in refused:
            with pytest.raises(WriteRejected, match=message):
                await drv.write("line1", name, value)
        with pytest.raises(WriteRejected, match="not on this connection"):
            await drv.write("press1", "feed", 1)
        assert drv.health()[0].requests == requests, "refused before any I/O"

        with pytest.raises(DeviceError, match="server refused the write: Bad") as info:
            await drv.write("line1", "lying", 5)  # the profile says writable, the server not
        assert info.value.code is not None
        with pytest.raises(DeviceError, match="node not resolved"):
            await drv.write("line1", "ghost", 5)


# -- probe ----------------------------------------------------------------------------------------


async def test_probe_reads_every_point_once(line: SimThread) -> None:
    points = [
        {"name": "speed", "node": "nsu=ml;s=Mill1.SpindleSpeed", "unit": "rpm"},
        {"name": "ghost", "node": "nsu=ml;s=Mill1.Ghost"},
    ]
    got = Collector()
    drv = OpcuaDriver([(device(line.endpoint), profile(points))], got)
    results = await drv.probe()  # without run(): a short session of its own
    await drv.close()
    assert [(r.point, r.ok) for r in results] == [("speed", True), ("ghost", False)]
    assert results[0].unit == "rpm" and isinstance(results[0].value, float)
    assert "BadNodeIdUnknown" in results[1].reason
    assert got.batches == [], "probe never emits"
    offline = OpcuaDriver([(device(f"opc.tcp://127.0.0.1:{_free_port()}/"), profile(points))], got)
    results = await offline.probe()
    assert all(not r.ok and "connection refused" in r.reason for r in results)


# -- discovery ------------------------------------------------------------------------------------


async def test_discovery_profile_validates_and_reads_back(line: SimThread) -> None:
    data = await discover_opcua(line.endpoint, name="Mill line", include=["Mill1/*"], depth=4)
    prof = OpcuaProfile.model_validate(yaml.safe_load(profile_yaml(data)))
    assert prof.name == "mill_line"
    names = {p.name: p for p in prof.points}
    assert {"spindle_speed", "tool_wear", "feed_override"} <= set(names)
    assert names["spindle_speed"].node == f"nsu={NAMESPACE};s=Mill1.SpindleSpeed"
    assert names["spindle_speed"].unit == "rpm"
    assert (names["spindle_speed"].min, names["spindle_speed"].max) == (0.0, 3000.0)
    assert names["feed_override"].writable and not names["spindle_speed"].writable
    assert not any("engineering" in n for n in names), "properties are not points"

    everything = await discover_opcua(line.endpoint, exclude=["LineController"], max_nodes=500)
    assert not any(p["name"].startswith("line_controller") for p in everything["points"])
    assert len(everything["points"]) == 3 * 18
    capped = await discover_opcua(line.endpoint, max_nodes=10)
    assert "stopped after 10 nodes" in capped["description"]
    with pytest.raises(ValueError, match="no readable variables"):
        await discover_opcua(line.endpoint, include=["NoSuchVariable"])
    with pytest.raises(TransportError, match="connection refused"):
        await discover_opcua(f"opc.tcp://127.0.0.1:{_free_port()}/")

    got = Collector()
    drv = OpcuaDriver([(device(line.endpoint, profile=prof.name), prof)], got)
    async with running(drv):
        await got.wait(lambda: len(got.latest()) == len(prof.points))
        assert all(r.quality is Quality.GOOD for r in got.latest().values())
        sim = await line.do(lambda: line.sim.current_values("Mill1"))
        assert got.latest()["line1.spindle_speed"].value == sim["SpindleSpeed"]


# -- healing --------------------------------------------------------------------------------------


async def test_server_restart_is_survived_without_a_flood(line: SimThread) -> None:
    """Stop the server, keep it down for a while, start it on the same port: the device goes
    DOWN once, heals by itself, re-subscribes, and reports each value once."""
    points = [
        {"name": "speed", "node": "nsu=ml;s=Mill1.SpindleSpeed"},
        {"name": "wear", "browse_path": "0:Objects/ml:MachineLine/ml:Mill1/ml:ToolWear"},
        {"name": "product", "node": "nsu=ml;s=Mill1.ProductId"},
        {
            "name": "clock",
            "node": "i=2258",
            "mode": "poll",
            "deadband_type": "absolute",
            "deadband_value": 1,
        },
    ]
    got = Collector()
    drv = OpcuaDriver([(device(line.endpoint), profile(points))], got)
    async with running(drv):
        await got.wait(lambda: len(got.latest()) == 4 and state(drv) is DeviceState.ONLINE)
        port = line.sim.port
        assert Counter(r.point for r in got.readings) == {f"line1.{p['name']}": 1 for p in points}
        await line.run(line.sim.stop())
        try:
            await until(lambda: state(drv) is DeviceState.DOWN)
            down_mark = got.mark()
            await asyncio.sleep(1.0)  # down for a while: several reconnect attempts
            bad = [r for r in got.readings if r.quality is Quality.BAD]
            assert Counter(r.point for r in bad) == {f"line1.{p['name']}": 1 for p in points}
            assert all(r.reason and r.reason.startswith("device down: ") for r in bad)
            assert got.mark() == down_mark, "nothing emitted while down"
            assert drv.health()[0].reconnects >= 2
            assert drv.health()[0].last_error.startswith("cannot connect")  # type: ignore[union-attr]
        finally:
            await line.run(line.sim.start())
        assert line.sim.port == port
        mark = got.mark()
        await until(lambda: state(drv) is DeviceState.ONLINE)
        await got.wait(
            lambda: (
                {r.point for r in got.since(mark)} >= {"line1.speed", "line1.wear", "line1.product"}
            )
        )
        for _ in range(5):
            await line.run(line.sim.step())
            served = await line.do(lambda: line.sim.current_values("Mill1"))
            await got.wait(lambda s=served: got.latest()["line1.product"].value == s["ProductId"])
        after = got.since(mark)
        counts = Counter(r.point for r in after)
        # the new subscription's initial value, then at most one report per tick
        assert 1 <= counts["line1.product"] <= 6 and counts["line1.speed"] <= 6, counts
        per_value = Counter((r.point, r.ts_source, r.value) for r in after)
        assert max(per_value.values()) == 1, "no value reported twice"
        assert all(r.quality is Quality.GOOD for r in after)
        h = drv.health()[0]
        assert h.extra["monitored_items"] == 3 and h.last_error is None


async def test_namespace_index_change_across_restart_resolves_by_uri(line: SimThread) -> None:
    """The restarted server registers two namespaces first: every index moves by two, and
    nodes named by URI, alias or browse path are found again (writes too)."""
    points = [
        {"name": "speed", "node": f"nsu={NAMESPACE};s=Mill1.SpindleSpeed"},
        {"name": "wear", "node": "nsu=ml;s=Mill1.ToolWear"},
        {"name": "vib", "browse_path": "0:Objects/ml:MachineLine/ml:Mill1/ml:Vibration"},
        {
            "name": "feed",
            "node": "nsu=ml;s=Mill1.FeedOverride",
            "writable": True,
            "min": 0,
            "max": 150,
        },
    ]
    got = Collector()
    old_index = line.sim.namespace_index
    assert old_index is not None
    drv = OpcuaDriver([(device(line.endpoint), profile(points))], got)
    try:
        async with running(drv):
            await got.wait(lambda: len(got.latest()) == 4)
            await line.run(line.sim.stop())
            try:
                await until(lambda: state(drv) is DeviceState.DOWN)
            finally:
                await line.run(
                    line.sim.start(extra_namespaces=["urn:vendor:drives", "urn:vendor:safety"])
                )
            assert line.sim.namespace_index == old_index + 2
            assert (
                line.sim.node_id("Mill1", "SpindleSpeed")
                == f"ns={old_index + 2};s=Mill1.SpindleSpeed"
            )
            mark = got.mark()
            await until(lambda: state(drv) is DeviceState.ONLINE)
            await got.wait(
                lambda: {r.point for r in got.since(mark)} == {f"line1.{p['name']}" for p in points}
            )
            assert all(r.quality is Quality.GOOD for r in got.since(mark))
            await drv.write("line1", "feed", 90)  # writes follow the new index too
            await got.wait(lambda: got.latest()["line1.feed"].value == 90.0)
    finally:  # leave the shared simulator as the other tests expect it
        await line.run(line.sim.set_value("Mill1", "FeedOverride", 100.0))
        await line.run(line.sim.stop())
        await line.run(line.sim.start())
        assert line.sim.namespace_index == old_index


class Proxy:
    """A TCP relay that can cut the network without closing sockets (a pulled cable):
    bytes are then swallowed in both directions, so only a keep-alive notices."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.cut = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                if not self.cut:
                    dst.write(data)
        dst.close()

    def heal(self) -> None:
        """Back on the network: connections that saw the cut are reset."""
        self.cut = False
        for w in list(self._writers):
            w.close()
        self._writers.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.heal()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


async def test_network_cut_is_noticed_by_the_keepalive_and_healed(line: SimThread) -> None:
    proxy = Proxy(line.sim.port)
    await proxy.start()
    points = [
        {"name": "clock", "node": "i=2258", "mode": "poll"},
        {"name": "speed", "node": "nsu=ml;s=Mill1.SpindleSpeed"},
    ]
    got = Collector()
    drv = OpcuaDriver(
        [
            (
                device(f"opc.tcp://127.0.0.1:{proxy.port}/", poll_interval=1.0, timeout=0.5),
                profile(points),
            )
        ],
        got,
    )
    try:
        async with running(drv):
            await got.wait(lambda: state(drv) is DeviceState.ONLINE and len(got.latest()) == 2)
            proxy.cut = True
            cut_at = time.monotonic()
            await until(lambda: state(drv) is DeviceState.DOWN, timeout=5)
            assert time.monotonic() - cut_at < 3.0  # watchdog 0.3 s + timeout 0.5 s
            reason = drv.health()[0].last_error or ""
            assert "keep-alive" in reason or "timeout" in reason or "poll failed" in reason, reason
            assert got.latest()["line1.speed"].quality is Quality.BAD
            proxy.heal()
            await until(lambda: state(drv) is DeviceState.ONLINE, timeout=10)
            mark = got.mark()
            # An explicit new value: `step()` alone may not change the speed (no dataset next
            # to the checkout means a synthetic signal on this fixture's stopped clock).
            await line.run(line.sim.set_value("Mill1", "SpindleSpeed", 1234.5))
            await got.wait(
                lambda: any(
                    r.point == "line1.speed" and r.quality is Quality.GOOD and r.value == 1234.5
                    for r in got.since(mark)
                )
            )
    finally:
        await proxy.close()


# -- security -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("client-pki")
    return create_client_certificate(
        folder / "gateway-cert.der",
        folder / "gateway-key.pem",
        application_uri="urn:millrace:line1",
        hostname=socket.gethostname(),
    )


def secure_device(sim: SimThread, pki: tuple[Path, Path], **kw: Any) -> OpcuaDevice:
    cert, key = pki
    secured = {
        "security_policy": "Basic256Sha256",
        "security_mode": "SignAndEncrypt",
        "certificate": str(cert),
        "private_key": str(key),
        "username": "operator",
        "password": "s3cret",
    }
    return device(sim.endpoint, **(secured | kw))


SPEED = [{"name": "speed", "node": "nsu=ml;s=Mill1.SpindleSpeed"}]


@pytest.mark.parametrize("mode", ["SignAndEncrypt", "Sign"])
async def test_secured_session_with_certificate_and_user(
    secure_line: SimThread, client_pki: tuple[Path, Path], mode: str
) -> None:
    got = Collector()
    server_cert = str(secure_line.sim.server_certificate)
    drv = OpcuaDriver(
        [
            (
                secure_device(
                    secure_line, client_pki, security_mode=mode, server_certificate=server_cert
                ),
                profile(SPEED),
            )
        ],
        got,
    )
    async with running(drv):
        await got.wait(
            lambda: len({r.value for r in got.readings if r.quality is Quality.GOOD}) >= 2
        )
        assert state(drv) is DeviceState.ONLINE


async def test_secured_refusals_say_why(
    secure_line: SimThread, client_pki: tuple[Path, Path], tmp_path: Path
) -> None:
    other_cert, _ = create_client_certificate(
        tmp_path / "other.pem", tmp_path / "other-key.pem", application_uri="urn:x", hostname="h"
    )
    cases = [
        (
            {"application_uri": "urn:millrace:elsewhere"},
            "is for ApplicationUri urn:millrace:line1, but device line1 uses "
            "application_uri urn:millrace:elsewhere",
        ),
        ({"password": "wrong"}, "BadUserAccessDenied"),
        ({"username": None, "password": None}, "BadIdentityTokenRejected"),
        (
            {"server_certificate": str(other_cert)},
            "presented a certificate other than server_certificate",
        ),
        ({"private_key": str(tmp_path / "missing.pem")}, "cannot read private key"),
    ]
    for overrides, message in cases:
        got = Collector()
        drv = OpcuaDriver(
            [(secure_device(secure_line, client_pki, **overrides), profile(SPEED))], got
        )
        async with running(drv):
            await until(lambda d=drv: state(d) is DeviceState.DOWN)
            h = drv.health()[0]
            assert message in (h.last_error or ""), (overrides, h.last_error)
            assert [(r.point, r.quality) for r in got.readings] == [("line1.speed", Quality.BAD)]
            assert message in (got.readings[0].reason or "")
            attempts = h.consecutive_failures
            await asyncio.sleep(0.3)
            # what retrying cannot fix is retried slowly (at backoff_max, 0.25-0.5 s here)
            assert drv.health()[0].consecutive_failures <= attempts + 1


async def test_untrusted_client_certificate_is_refused(
    secure_line: SimThread, client_pki: tuple[Path, Path], tmp_path: Path
) -> None:
    trusted, _ = create_client_certificate(
        tmp_path / "trusted.pem",
        tmp_path / "trusted-key.pem",
        application_uri="urn:x",
        hostname="h",
    )
    await secure_line.do(lambda: secure_line.sim.trust([trusted]))
    try:
        got = Collector()
        drv = OpcuaDriver([(secure_device(secure_line, client_pki), profile(SPEED))], got)
        async with running(drv):
            await until(lambda: state(drv) is DeviceState.DOWN)
            assert "BadCertificateUntrusted" in (drv.health()[0].last_error or "")
        await secure_line.do(lambda: secure_line.sim.trust([client_pki[0]]))
        got = Collector()
        drv = OpcuaDriver([(secure_device(secure_line, client_pki), profile(SPEED))], got)
        async with running(drv):
            await got.wait(lambda: any(r.quality is Quality.GOOD for r in got.readings))
    finally:
        await secure_line.do(lambda: secure_line.sim.trust(None))


async def test_plain_client_cannot_use_a_secured_only_server(secure_line: SimThread) -> None:
    got = Collector()
    drv = OpcuaDriver(
        [(device(secure_line.endpoint, username="operator", password="s3cret"), profile(SPEED))],
        got,
    )
    async with running(drv):
        await until(lambda: state(drv) is DeviceState.DOWN)
        assert "cannot connect" in (drv.health()[0].last_error or "") or "Bad" in (
            drv.health()[0].last_error or ""
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_names_used_in_reasons_exist() -> None:
    """The reasons the tests match on are real status code names."""
    for name in (
        "BadUserAccessDenied",
        "BadIdentityTokenRejected",
        "BadNodeIdUnknown",
        "BadNoMatch",
    ):
        assert hasattr(ua.StatusCodes, name)


# -- the simulator itself -----------------------------------------------------------------------


async def test_simulator_runs_alone_with_bench_nodes_and_stops_cleanly() -> None:
    """`python -m simulators.opcua_machine` prints its endpoint, serves changing bench nodes
    (synthetic data without the dataset) and exits 0 on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.opcua_machine", "--port", "0", "--machines", "1",
        "--no-dataset", "--bench-nodes", "50", "--bench-tick", "0.1",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            line_out = (await proc.stdout.readline()).decode()
        assert "synthetic data" in line_out and "50 bench nodes" in line_out, line_out
        endpoint = line_out.split("listening on ")[1].split()[0]
        points = [{"name": f"n{i}", "node": f"nsu=ml;s=Bench.Node{i:04d}"} for i in (0, 1, 49)]
        points.append(
            {"name": "speed", "node": "nsu=ml;s=Mill1.SpindleSpeed", "min": 0, "max": 3000}
        )
        got = Collector()
        drv = OpcuaDriver([(device(endpoint), profile(points))], got)
        async with running(drv):
            await got.wait(lambda: Counter(r.point for r in got.readings)["line1.n49"] >= 4)
            assert all(r.quality is Quality.GOOD for r in got.readings)
            assert len({r.value for r in got.readings if r.point == "line1.n0"}) >= 3
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            code = await proc.wait()
    assert code == 0


def test_simulator_replays_the_ai4i_rows() -> None:
    if not DATASET.is_file():
        pytest.skip("the AI4I 2020 developer copy is not next to this checkout")
    rows = load_ai4i(DATASET)
    assert len(rows) == 8000
    sim = OpcuaMachineLine(machines=2, tick=None)
    assert sim.rows == 8000 and sim.dataset == DATASET
    m1, m2 = sim.machines["Mill1"], sim.machines["Mill2"]
    assert m1.row == rows[0] and m2.row == rows[4000]  # each machine from its own offset
    for i in range(1, 40):
        asyncio.run(sim.step())  # no server: the values still advance
        row = rows[i]
        assert m1.row == row
        v = sim.current_values("Mill1")
        assert v["ToolWear"] == row.tool_wear
        assert v["ProcessTemperature"] == row.process_k and v["AirTemperature"] == row.air_k
        assert v["ProductId"] == row.product_id and v["MachineFailure"] is row.failure
        if row.failure:
            assert v["State"] == "fault" and v["Alarm"] is True and v["FaultCode"] > 0
        else:
            assert v["SpindleSpeed"] == row.rpm and v["SpindleTorque"] == row.torque
            assert v["State"] == "running" and v["FaultCode"] == 0
    assert m1.part_count == 39


def test_simulator_faults_and_synthetic_process() -> None:
    sim = OpcuaMachineLine(machines=1, tick=None, dataset=None, seed=3)
    assert sim.dataset is None
    rows = []
    for _ in range(600):
        asyncio.run(sim.step())
        rows.append(sim.machines["Mill1"].row)
    torque = [r.torque for r in rows]
    assert 36 < sum(torque) / len(torque) < 44
    assert all(1168 <= r.rpm <= 2886 for r in rows)
    wear = [r.tool_wear for r in rows]
    assert max(wear) <= 245
    assert any(b < a for a, b in itertools.pairwise(wear)), "the tool is changed"
    sim.set_fault("Mill1", 42)
    asyncio.run(sim.step())
    v = sim.current_values("Mill1")
    assert (v["State"], v["StateCode"], v["FaultCode"], v["Alarm"], v["SpindleSpeed"]) == (
        "fault",
        2,
        42,
        True,
        0.0,
    )
    count = v["PartCount"]
    asyncio.run(sim.step())
    assert sim.current_values("Mill1")["PartCount"] == count, "no parts while in fault"
    sim.clear_fault("Mill1")
    asyncio.run(sim.step())
    assert sim.current_values("Mill1")["FaultCode"] in (0, 1, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="fault code"):
        sim.set_fault("Mill1", 0)
