"""Build one driver per connection from the validated config.

Devices are grouped by their connection key (a TCP endpoint, a serial port), so units behind
one Modbus TCP gateway or on one RS-485 line share a single client and poller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drivers.base import Driver, Emit
from drivers.modbus.config import ModbusRtuDevice, ModbusTcpDevice
from drivers.modbus.driver import ModbusDriver


def build_drivers(units: Sequence[tuple[Any, Any]], emit: Emit) -> list[Driver]:
    """`units` pairs each device config with its resolved profile."""
    by_key: dict[str, list[tuple[Any, Any]]] = {}
    for device, profile in units:
        if isinstance(device, ModbusTcpDevice | ModbusRtuDevice):
            by_key.setdefault(device.connection_key, []).append((device, profile))
        else:  # pragma: no cover - the config union admits nothing else yet
            raise ValueError(f"no driver for protocol {device.protocol}")
    return [ModbusDriver(group, emit) for group in by_key.values()]
