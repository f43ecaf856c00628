"""An OPC UA server whose nodes change type under a connected gateway (issue 8, hostile input).

A small asyncua server declares a Double, a UInt32, a Boolean and a String variable; the test
then writes values of other kinds into them (text, bytes, arrays of another type, Null, a
number into the text node) through the server's internal write, with asyncua's own check that
a value keeps its node's type switched off: that is exactly what a buggy or hostile PLC lacks.
Each such value must become a BAD reading whose reason names
the declared and the sent type, be counted (`extra["wrong_type"]`), show as the device's last
error, and leave the session up: good values written afterwards come through GOOD.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from asyncua import Server, ua

from drivers.base import DeviceState
from drivers.opcua.config import OpcuaDevice, OpcuaProfile
from drivers.opcua.driver import OpcuaDriver
from gateway.aio import cancel_until_done
from gateway.readings import Batch, Quality, Reading
from tests.conftest import free_port

VT = ua.VariantType
NS = "urn:millrace:test:hostile"

#: name -> (declared type, a good value, [(hostile variant, type name it must report)])
NODES: dict[str, tuple[ua.VariantType, Any, list[tuple[ua.Variant, str]]]] = {
    "Speed": (
        VT.Double,
        1500.5,
        [
            (ua.Variant("fast", VT.String), "String"),
            (ua.Variant(b"\x00\xff\xfe", VT.ByteString), "ByteString"),
            (ua.Variant(["a", "b"], VT.String), "String"),
            (ua.Variant(True, VT.Boolean), "Boolean"),
            (ua.Variant(None, VT.Null), "no value (Null)"),
        ],
    ),
    "Count": (
        VT.UInt32,
        7,
        [
            (ua.Variant("seven", VT.String), "String"),
            (ua.Variant(ua.LocalizedText("sieben"), VT.LocalizedText), "LocalizedText"),
        ],
    ),
    "Running": (VT.Boolean, True, [(ua.Variant(1.0, VT.Double), "Double")]),
    "State": (VT.String, "running", [(ua.Variant(42, VT.Int32), "Int32")]),
}


@contextlib.asynccontextmanager
async def hostile_server() -> AsyncIterator[tuple[Server, dict[str, ua.NodeId], str]]:
    server = Server()
    await server.init()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/hostile/"
    server.set_endpoint(endpoint)
    idx = await server.register_namespace(NS)
    obj = await server.nodes.objects.add_object(idx, "Hostile")
    nodes: dict[str, ua.NodeId] = {}
    for name, (vtype, value, _) in NODES.items():
        var = await obj.add_variable(ua.NodeId(f"Hostile.{name}", idx), name, value, vtype)
        nodes[name] = var.nodeid
    # asyncua refuses a value of another type than the node's; a hostile server does not.
    server.iserver.aspace._is_expected_variant_type = lambda *_: True  # type: ignore[method-assign]
    await server.start()
    try:
        yield server, nodes, endpoint
    finally:
        await server.stop()


async def force(server: Server, node: ua.NodeId, variant: ua.Variant) -> None:
    """Serve `variant` from `node` whatever its declared type."""
    await server.write_attribute_value(node, ua.DataValue(variant))


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_values_of_another_type_are_bad_counted_and_the_session_survives() -> None:
    async with hostile_server() as (server, nodes, endpoint):
        points = [
            {"name": name.lower(), "node": f"nsu={NS};s=Hostile.{name}", "mode": mode}
            for name, mode in zip(NODES, ("subscribe", "poll", "subscribe", "poll"), strict=True)
        ]
        profile = OpcuaProfile.model_validate({"name": "hostile", "points": points})
        device = OpcuaDevice.model_validate(
            {
                "id": "plc",
                "protocol": "opcua",
                "endpoint": endpoint,
                "profile": "hostile",
                "publishing_interval": 0.05,
                "poll_interval": 0.1,
                "watchdog_interval": 0.3,
                "timeout": 2.0,
                "backoff_initial": 0.1,
                "backoff_max": 0.5,
            }
        )
        batches: list[Batch] = []
        drv = OpcuaDriver([(device, profile)], batches.append)

        def latest(point: str) -> Reading | None:
            return next(
                (r for b in reversed(batches) for r in reversed(b) if r.point == point), None
            )

        def is_good(point: str, value: Any) -> bool:
            r = latest(point)
            return r is not None and r.quality is Quality.GOOD and r.value == value

        task = asyncio.create_task(drv.run())
        try:
            for name, (_, value, _) in NODES.items():
                await until(lambda n=name, v=value: is_good(f"plc.{n.lower()}", v), f"{name}")
            health = drv.health()[0]
            assert health.state is DeviceState.ONLINE
            reconnects = health.reconnects
            tried = 0
            for name, (vtype, value, hostile) in NODES.items():
                pid = f"plc.{name.lower()}"
                for variant, sent in hostile:
                    await force(server, nodes[name], variant)
                    want = f"wrong type: node is {vtype.name}, server sent {sent}"

                    def refused(pid: str = pid, want: str = want) -> bool:
                        r = latest(pid)
                        return r is not None and r.quality is Quality.BAD and r.reason == want

                    await until(refused, f"{pid} BAD after {variant}")
                    bad = latest(pid)
                    assert bad is not None and bad.value is None  # nothing made up
                    tried += 1
                    assert drv.health()[0].extra["wrong_type"] >= tried
                    last = drv.health()[0].last_error or ""
                    assert last == f"point {name.lower()}: {want}", last
                    # A good value of the declared type heals the point on the same session.
                    await force(server, nodes[name], ua.Variant(value, vtype))
                    await until(lambda p=pid, v=value: is_good(p, v), f"{pid} good again")

            health = drv.health()[0]
            assert health.state is DeviceState.ONLINE
            assert health.reconnects == reconnects  # the session was never dropped
            assert not task.done()
            # A wider number of the same kind is no type change: Int64 into the UInt32 node.
            await force(server, nodes["Count"], ua.Variant(9, VT.Int64))
            await until(lambda: is_good("plc.count", 9), "Int64 accepted for a UInt32 node")
        finally:
            await cancel_until_done(task)
            await drv.close()
