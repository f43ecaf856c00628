"""Build the drivers for a validated config: one per connection key.

Devices are grouped by their connection key (a TCP endpoint, a serial port, an OPC UA
endpoint, a broker), so units behind one Modbus TCP gateway or on one RS-485 line share a
single client and poller. Each protocol adds one branch to `_FACTORIES`; nothing else in the
gateway knows which protocols exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.base import Driver, Emit, ItemSink

if TYPE_CHECKING:
    from gateway.configload import LoadedConfig

#: (source device, topic, payload, reason): where a driver hands input it could not use.
DeadLetterSink = Callable[[str, str, bytes, str], None]
#: Returns once everything emitted (and dead-lettered) before the call is durable
#: (`Store.flush` fits); raises when it cannot say so.
Committed = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class DriverContext:
    """What every factory gets: where readings, refused input and items go."""

    emit: Emit
    loaded: LoadedConfig
    dead_letter: DeadLetterSink | None = None
    #: Receives discrete items (e.g. a fruit's image) from drivers that have item topics.
    item_sink: ItemSink | None = None
    #: Durability barrier for drivers that acknowledge their input to the source (MQTT):
    #: they acknowledge only what was emitted before a call that returned. None: a driver
    #: acknowledges on receipt (tests that build drivers without a store).
    committed: Committed | None = None


#: protocol -> factory(units sharing one connection, context) -> Driver
Factory = Callable[[Sequence[tuple[Any, Any]], DriverContext], Driver]


def _modbus(units: Sequence[tuple[Any, Any]], ctx: DriverContext) -> Driver:
    from drivers.modbus.driver import ModbusDriver

    return ModbusDriver(units, ctx.emit)


def _opcua(units: Sequence[tuple[Any, Any]], ctx: DriverContext) -> Driver:
    from drivers.opcua.driver import OpcuaDriver

    return OpcuaDriver(units, ctx.emit)


def _mqtt(units: Sequence[tuple[Any, Any]], ctx: DriverContext) -> Driver:
    from drivers.mqtt.driver import MqttDriver

    device = units[0][0]
    equipment = [eq.id for eq in ctx.loaded.config.equipment if eq.device == device.id]
    return MqttDriver(
        units,
        ctx.emit,
        equipment=equipment,
        dead_letter=ctx.dead_letter,
        item_sink=ctx.item_sink,
        committed=ctx.committed,
        base_dir=ctx.loaded.base_dir,
    )


_FACTORIES: dict[str, Factory] = {
    "modbus-tcp": _modbus,
    "modbus-rtu": _modbus,
    "opcua": _opcua,
    "mqtt": _mqtt,
}


def build_drivers(
    loaded: LoadedConfig,
    emit: Emit,
    dead_letter: DeadLetterSink | None = None,
    item_sink: ItemSink | None = None,
    committed: Committed | None = None,
) -> list[Driver]:
    """One driver per connection key, in config order. `item_sink` receives the items of
    MQTT devices with item topics (without one, those items are dead-lettered).
    `committed` (the store's `flush`) lets the MQTT driver acknowledge a message to its
    broker only once what it produced is committed (see `DriverContext`)."""
    groups: dict[tuple[str, str], list[tuple[Any, Any]]] = {}
    for device in loaded.config.devices:
        key = (device.protocol, device.connection_key)
        groups.setdefault(key, []).append((device, loaded.profile_for(device)))
    drivers = []
    for (protocol, _), units in groups.items():
        factory = _FACTORIES.get(protocol)
        if factory is None:  # pragma: no cover - the config union admits nothing else
            raise ValueError(f"no driver for protocol {protocol}")
        ctx = DriverContext(emit, loaded, dead_letter, item_sink, committed)
        drivers.append(factory(units, ctx))
    return drivers
