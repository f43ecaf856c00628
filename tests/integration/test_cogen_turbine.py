"""The cogeneration turbine simulator over real OPC UA: an asyncua client and the gateway's own
OPC UA driver on 127.0.0.1, no mocks.

What matters to the `pdm-rul` model is that a cycle is one row: every value of a cycle must
reach a subscriber in ONE publish response (the driver turns each into one batch), with `Cycle`
among them, and the values must be the dataset's. Building an asyncua server takes ~2 s, so each
test builds one and does several things with it; the clock is stopped (`cycle_period=None`) and
each test advances it with `step()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import Client, ua

from drivers.opcua.config import OpcuaDevice, OpcuaProfile
from drivers.opcua.driver import OpcuaDriver
from gateway.aio import cancel_until_done
from gateway.configload import load_config_data
from gateway.readings import Batch, Quality, Value
from simulators.cogen_turbine import (
    DATASET,
    NAMESPACE,
    SENSORS,
    TURBINE_VARS,
    CogenTurbinePlant,
    CycleRow,
    load_cmapss,
)

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "drivers" / "profiles" / "cogen-turbine.yaml"
VARS = [v.name for v in TURBINE_VARS]


# -- a plain asyncua client that records publish responses ----------------------------------


class Recorder:
    """Subscribes to a turbine's variables and keeps every publish response apart, so a test
    can tell which values arrived together. Asks for StatusValueTimestamp, so unchanged values
    are reported too (every cycle has a new SourceTimestamp)."""

    def __init__(self, client: Client, idx: int, turbine: str) -> None:
        self.client, self.idx, self.turbine = client, idx, turbine
        self.publishes: list[dict[str, ua.DataValue]] = []
        self._names: dict[int, str] = {}

    async def subscribe(self, interval_ms: float = 20.0) -> None:
        session = self.client.uaclient.session
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=interval_ms,
            RequestedLifetimeCount=3000,
            RequestedMaxKeepAliveCount=100,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        result = await session.create_subscription(params, self._on_publish)
        items = []
        for handle, name in enumerate(VARS, start=1):
            self._names[handle] = name
            items.append(
                ua.MonitoredItemCreateRequest(
                    ItemToMonitor=ua.ReadValueId(
                        NodeId=ua.NodeId(f"{self.turbine}.{name}", self.idx),
                        AttributeId=ua.AttributeIds.Value,
                    ),
                    MonitoringMode=ua.MonitoringMode.Reporting,
                    RequestedParameters=ua.MonitoringParameters(
                        ClientHandle=handle,
                        SamplingInterval=-1.0,
                        QueueSize=1,
                        DiscardOldest=True,
                        Filter=ua.DataChangeFilter(
                            Trigger=ua.DataChangeTrigger.StatusValueTimestamp
                        ),
                    ),
                )
            )
        created = await session.create_monitored_items(
            ua.CreateMonitoredItemsParameters(
                SubscriptionId=result.SubscriptionId,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                ItemsToCreate=items,
            )
        )
        assert all(r.StatusCode.is_good() for r in created), created

    def _on_publish(self, result: ua.PublishResult) -> None:
        got: dict[str, ua.DataValue] = {}
        for notification in result.NotificationMessage.NotificationData or ():
            if isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    got[self._names[item.ClientHandle]] = item.Value
        if got:
            self.publishes.append(got)

    def with_cycle(self, cycle: int, unit: int) -> list[dict[str, ua.DataValue]]:
        return [
            p
            for p in self.publishes
            if "Cycle" in p
            and "UnitId" in p
            and value_of(p["Cycle"]) == cycle
            and value_of(p["UnitId"]) == unit
        ]

    async def wait_cycle(self, cycle: int, unit: int) -> dict[str, ua.DataValue]:
        await until(lambda: bool(self.with_cycle(cycle, unit)))
        (publish,) = self.with_cycle(cycle, unit)
        return publish


def value_of(dv: ua.DataValue) -> Any:
    assert dv.Value is not None, dv
    return dv.Value.Value


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def connected(endpoint: str) -> AsyncIterator[tuple[Client, int]]:
    client = Client(endpoint, timeout=5)
    await client.connect()
    try:
        yield client, await client.get_namespace_index(NAMESPACE)
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


def expected(row: CycleRow, true_rul: int) -> dict[str, Any]:
    """What the turbine should serve for this dataset row."""
    out: dict[str, Any] = {s.var: row.sensor(s.number) for s in SENSORS}
    out.update(
        Setting1=row.settings[0],
        Setting2=row.settings[1],
        Setting3=row.settings[2],
        UnitId=row.unit,
        TrueRul=float(true_rul),
        Cycle=row.cycle,
    )
    return out


def assert_whole_cycle(
    publish: dict[str, ua.DataValue], recorder: Recorder, row: CycleRow, true_rul: int
) -> None:
    """All 20 values in this one publish, equal to the row, with one SourceTimestamp, and no
    other publish carries any value of that cycle."""
    assert set(publish) == set(VARS)
    assert {k: value_of(dv) for k, dv in publish.items()} == expected(row, true_rul)
    stamps = {dv.SourceTimestamp for dv in publish.values()}
    assert len(stamps) == 1
    elsewhere = [
        p
        for p in recorder.publishes
        if p is not publish and any(dv.SourceTimestamp in stamps for dv in p.values())
    ]
    assert not elsewhere, "a cycle was split over several publish responses"


# -- tests -------------------------------------------------------------------------------------


async def test_a_cycle_arrives_whole_and_equals_the_dataset_then_an_overhaul() -> None:
    """Two turbines replay their own units; each step is one publish with the dataset's values;
    at the end of a trajectory the turbine is overhauled: UnitId moves on by the number of
    turbines and Cycle restarts at 1."""
    real = DATASET.is_file()
    data = load_cmapss(DATASET) if real else None
    async with CogenTurbinePlant(port=0, cycle_period=None, turbines=2) as sim:
        assert sim.synthetic is not real
        rows1 = data[1] if data else sim.trajectories.rows(1)
        rows2 = data[2] if data else sim.trajectories.rows(2)
        async with connected(sim.endpoint) as (client, idx):
            assert sim.node_id("Turbine1", "T24") == f"ns={idx};s=Turbine1.T24"
            t1, t2 = Recorder(client, idx, "Turbine1"), Recorder(client, idx, "Turbine2")
            await t1.subscribe()
            await t2.subscribe()
            first = await t1.wait_cycle(1, 1)
            assert {k: value_of(dv) for k, dv in first.items()} == expected(
                rows1[0], len(rows1) - 1
            )
            for cycle in (2, 3):  # two steps, each one whole cycle in one publish
                await sim.step()
                publish = await t1.wait_cycle(cycle, 1)
                assert_whole_cycle(publish, t1, rows1[cycle - 1], len(rows1) - cycle)
                other = await t2.wait_cycle(cycle, 2)
                assert_whole_cycle(other, t2, rows2[cycle - 1], len(rows2) - cycle)
            assert sim.current_values("Turbine1") == expected(rows1[2], len(rows1) - 3)

            # Jump near the end of unit 1: the last cycle (TrueRul 0), then an overhaul.
            sim.turbines["Turbine1"].jump(len(rows1) - 1)
            await sim.step()
            last = await t1.wait_cycle(len(rows1), 1)
            assert_whole_cycle(last, t1, rows1[-1], 0)
            await sim.step()
            rows3 = data[3] if data else sim.trajectories.rows(3)
            fresh = await t1.wait_cycle(1, 3)  # turbines=2: Turbine1 takes units 1, 3, 5, ...
            assert_whole_cycle(fresh, t1, rows3[0], len(rows3) - 1)
            assert sim.turbines["Turbine1"].overhauls == 1
            assert sim.turbines["Turbine2"].unit == 2


async def test_restart_on_the_same_port_keeps_node_ids_and_carries_on() -> None:
    """stop() drops every session like a server restart; start() listens on the same port with
    the same node ids and the turbine carries on from where it was. Synthetic data here (a
    short life, so the overhaul comes quickly), which is what a box without datasets serves."""
    async with CogenTurbinePlant(
        port=0, cycle_period=None, dataset=None, synthetic_life=(3, 3)
    ) as sim:
        assert sim.synthetic and "SYNTHETIC" in sim.describe()
        port = sim.port
        async with connected(sim.endpoint) as (client, idx):
            cycle = client.get_node(ua.NodeId("Turbine1.Cycle", idx))
            assert await cycle.read_value() == 1
            await sim.step()
            assert await cycle.read_value() == 2
        await sim.stop()
        with pytest.raises((OSError, asyncio.TimeoutError, ua.UaError)):
            async with connected(sim.endpoint):
                pass
        await sim.step()  # the turbine keeps turning while its server is down
        await sim.start()
        assert sim.port == port
        async with connected(sim.endpoint) as (client, idx):
            node = client.get_node(f"ns={idx};s=Turbine1.Cycle")
            unit = client.get_node(f"ns={idx};s=Turbine1.UnitId")
            rul = client.get_node(f"ns={idx};s=Turbine1.TrueRul")
            assert (await node.read_value(), await unit.read_value()) == (3, 1)
            assert await rul.read_value() == 0.0
            await sim.step()  # life 3: an overhaul, a fresh engine from cycle 1
            assert (await node.read_value(), await unit.read_value()) == (1, 2)
            assert await rul.read_value() == 2.0
            t24 = await client.get_node(f"ns={idx};s=Turbine1.T24").read_value()
            assert t24 == sim.trajectories.rows(2)[0].sensor(2)


async def test_the_gateway_driver_reads_it_with_the_builtin_profile() -> None:
    """The shipped profile loads through the config loader, every point resolves and reads
    GOOD, and each cycle reaches the driver as one batch holding `cycle` and every value that
    changed (OPC UA's default trigger: unchanged values are not resent)."""
    cfg = {
        "gateway": {"id": "mill-1", "site": "cane-mill"},
        "devices": [
            {
                "id": "turbine-1",
                "protocol": "opcua",
                "endpoint": "opc.tcp://127.0.0.1:4842/",
                "profile": "cogen-turbine",
            }
        ],
    }
    loaded = load_config_data(cfg, base_dir=ROOT)
    profile = loaded.profiles["cogen-turbine"]
    assert profile == OpcuaProfile.model_validate(yaml.safe_load(PROFILE.read_text()))
    manifest = yaml.safe_load((ROOT / "models" / "pdm-rul" / "manifest.yaml").read_text())
    features = manifest["inputs"][0]["features"]
    by_name = {p.name: p for p in profile.points}
    for f in features:  # exactly the model's point names and units
        assert by_name[f["point"]].unit == f["unit"], f
    assert {"cycle", "unit_id", "true_rul", "setting_1", "setting_2", "setting_3"} <= set(by_name)

    # point name -> simulator variable, from the profile's node ids (nsu=ct;s=Turbine1.T24)
    var = {p.name: str(p.node).rsplit(".", 1)[1] for p in profile.points}
    batches: list[Batch] = []
    async with CogenTurbinePlant(port=0, cycle_period=None, start_fraction=0.5) as sim:
        device = OpcuaDevice.model_validate(
            {
                "id": "turbine-1",
                "protocol": "opcua",
                "endpoint": sim.endpoint,
                "profile": "cogen-turbine",
                "publishing_interval": 0.02,
                "timeout": 2.0,
            }
        )
        driver = OpcuaDriver([(device, profile)], batches.append)
        task = asyncio.create_task(driver.run())
        try:
            await until(lambda: len({r.point for b in batches for r in b}) == len(var))
            assert all(r.quality is Quality.GOOD for b in batches for r in b)
            for _ in range(3):
                before = sim.current_values("Turbine1")
                mark = len(batches)
                await sim.step()
                now = sim.current_values("Turbine1")
                cycle = now["Cycle"]

                def arrived(mark: int = mark, cycle: Value = cycle) -> bool:
                    return any(
                        r.point == "turbine-1.cycle" and r.value == cycle
                        for b in batches[mark:]
                        for r in b
                    )

                await until(arrived)
                await asyncio.sleep(0.1)  # anything split off would have arrived by now
                new = batches[mark:]
                assert len(new) == 1, "one cycle, one publish, one batch"
                got = {r.point.removeprefix("turbine-1."): r.value for r in new[0]}
                changed = {
                    p.name for p in profile.points if before[var[p.name]] != now[var[p.name]]
                }
                assert set(got) == changed and "cycle" in got
                assert got == {name: now[var[name]] for name in got}
        finally:
            await cancel_until_done(task)
            await driver.close()


async def test_runs_alone_and_stops_cleanly_on_sigterm() -> None:
    """`python -m simulators.cogen_turbine` prints one line with its endpoint, advances a cycle
    per period, and exits 0 on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cogen_turbine", "--port", "0",
        "--cycle-period", "0.1", "--start-fraction", "0.5",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            line = (await proc.stdout.readline()).decode()
        assert "listening on opc.tcp://" in line and "start fraction 0.5" in line, line
        endpoint = line.split("listening on ")[1].split()[0]
        async with connected(endpoint) as (client, idx):
            node = client.get_node(f"ns={idx};s=Turbine1.Cycle")
            first = await node.read_value()
            deadline = time.monotonic() + 10
            while await node.read_value() < first + 3:
                assert time.monotonic() < deadline, "cycles do not advance"
                await asyncio.sleep(0.05)
            assert first > 1  # started half-way through the trajectory
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            code = await proc.wait()
    assert code == 0
