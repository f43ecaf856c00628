"""What the OPC UA simulators share: how a variable is declared, added to the address space
with the properties real machines carry (Description, EngineeringUnits, EURange), what the
gateway will read back for it, and how a server is (re)started and stopped on the same port.
The machine line and the cogeneration turbine both use these, so a change in how a node looks
or how a restart behaves is made once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from asyncua import Server, ua
from asyncua.common.node import Node
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import variant_from_binary, variant_to_binary

from drivers.opcua.convert import to_value
from gateway.readings import Value

VT = ua.VariantType
#: UNECE units namespace used by EngineeringUnits (OPC UA Part 8).
UNECE = "http://www.opcfoundation.org/UA/units/un/cefact"


@dataclass(frozen=True)
class Var:
    name: str
    vtype: ua.VariantType
    unit: str = ""
    eu_range: tuple[float, float] | None = None
    writable: bool = False
    description: str = ""


async def add_variable(
    parent: Node,
    idx: int,
    owner: str,
    var: Var,
    value: Any,
    *,
    nodeid: ua.NodeId | None = None,
    props: bool = True,
) -> ua.NodeId:
    """Add `var` under `parent` (node id `<owner>.<name>` unless given); `props=False` skips
    the descriptive properties (thousands of benchmark nodes do not need them)."""
    nodeid = nodeid or ua.NodeId(f"{owner}.{var.name}", idx)
    variant = ua.Variant(value, var.vtype)
    node = await parent.add_variable(nodeid, ua.QualifiedName(var.name, idx), variant)
    if var.writable:
        await node.set_writable()
    if props and var.description:
        await node.write_attribute(
            ua.AttributeIds.Description,
            ua.DataValue(ua.Variant(ua.LocalizedText(var.description))),
        )
    if props and var.unit:
        eu = ua.EUInformation(
            NamespaceUri=UNECE,
            UnitId=-1,
            DisplayName=ua.LocalizedText(var.unit),
            Description=ua.LocalizedText(var.unit),
        )
        await node.add_property(
            ua.NodeId(f"{owner}.{var.name}.EngineeringUnits", idx),
            ua.QualifiedName("EngineeringUnits", 0),
            ua.Variant(eu, VT.ExtensionObject),
            datatype=ua.NodeId(ua.ObjectIds.EUInformation),
        )
    if props and var.eu_range is not None:
        rng = ua.Range(Low=float(var.eu_range[0]), High=float(var.eu_range[1]))
        await node.add_property(
            ua.NodeId(f"{owner}.{var.name}.EURange", idx),
            ua.QualifiedName("EURange", 0),
            ua.Variant(rng, VT.ExtensionObject),
            datatype=ua.NodeId(ua.ObjectIds.Range),
        )
    return nodeid


def gateway_value(vtype: ua.VariantType, value: Any) -> Value:
    """What a gateway reading of this value looks like (for `current_values`): encoded and
    decoded as on the wire (a Float is float32), then converted like the driver does."""
    received = variant_from_binary(Buffer(variant_to_binary(ua.Variant(value, vtype))))
    return to_value(received.Value, received.VariantType)


async def listen(server: Server, host: str, port: int) -> int:
    """Start (or restart) listening on `host:port`; returns the real port (port 0: any).

    Server.start() adds its endpoints again on every start, so a restart clears them first
    and never piles them up."""
    server.iserver.endpoints.clear()
    server._policies.clear()
    server.set_endpoint(f"opc.tcp://{host}:{port}/")
    await server.start()
    if port == 0:
        assert server.bserver is not None
        port = int(server.bserver.port)  # type: ignore[arg-type]
    return port


async def stop_listening(server: Server) -> None:
    """Stop as a restarting machine does: sessions with subscriptions outlive their TCP
    connection in asyncua (Part 4 §6.7); a restarted server has none, so close them."""
    for session in list(server.iserver._external_sessions.values()):
        with contextlib.suppress(Exception):
            await session.close_session()
    await server.stop()
