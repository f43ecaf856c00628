"""Build the drivers for a validated config: one per connection key.

Devices are grouped by their connection key (a TCP endpoint, a serial port, an OPC UA
endpoint, a broker), so units behind one Modbus TCP gateway or on one RS-485 line share a
single client and poller. Each protocol adds one branch to `_FACTORIES`; nothing else in the
gateway knows which protocols exist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from drivers.base import Driver, Emit

if TYPE_CHECKING:
    from gateway.configload import LoadedConfig

#: protocol -> factory(units sharing one connection, emit, loaded config) -> Driver
Factory = Callable[[Sequence[tuple[Any, Any]], Emit, "LoadedConfig"], Driver]


def _modbus(units: Sequence[tuple[Any, Any]], emit: Emit, loaded: LoadedConfig) -> Driver:
    from drivers.modbus.driver import ModbusDriver

    return ModbusDriver(units, emit)


_FACTORIES: dict[str, Factory] = {
    "modbus-tcp": _modbus,
    "modbus-rtu": _modbus,
}


def build_drivers(loaded: LoadedConfig, emit: Emit) -> list[Driver]:
    """One driver per connection key, in config order."""
    groups: dict[tuple[str, str], list[tuple[Any, Any]]] = {}
    for device in loaded.config.devices:
        key = (device.protocol, device.connection_key)
        groups.setdefault(key, []).append((device, loaded.profile_for(device)))
    drivers = []
    for (protocol, _), units in groups.items():
        factory = _FACTORIES.get(protocol)
        if factory is None:  # pragma: no cover - the config union admits nothing else
            raise ValueError(f"no driver for protocol {protocol}")
        drivers.append(factory(units, emit, loaded))
    return drivers
