"""Modbus configuration: profile points (what a machine model exposes) and devices (where one
unit lives). Pydantic models only; no pymodbus here, so config validation never imports I/O.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.modbus.codec import TYPES, CodecError, DataType, Order, PointCodec
from gateway.types import DataClass, Duration, Name


class Table(enum.StrEnum):
    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    HOLDING_REGISTER = "holding_register"
    INPUT_REGISTER = "input_register"

    @property
    def is_bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def is_writable(self) -> bool:
        return self in (Table.COIL, Table.HOLDING_REGISTER)


#: Protocol ceilings (Modbus Application Protocol v1.1b3, §6): per read request.
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModbusPoint(_Strict):
    """One value in a device's address space. `address` is the zero-based protocol address
    (holding register 40001 in the old one-based notation is `address: 0`)."""

    name: Name
    table: Table
    address: int = Field(ge=0, le=65535)
    data_type: DataType = DataType.UINT16
    order: Order = Order.ABCD
    bit: int | None = Field(default=None, ge=0, le=15)
    length: int | None = Field(default=None, ge=1, le=250)
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    deadband: float | None = Field(default=None, ge=0)
    writable: bool = False
    min: float | None = None
    max: float | None = None
    data_class: DataClass = DataClass.PUBLIC
    poll_group: Name = "default"
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        spec = TYPES[self.data_type]
        if self.table.is_bits and not spec.bit_tables:
            raise ValueError(
                f"{self.table} holds single bits: data_type must be bool (got {self.data_type})"
            )
        if self.writable and not self.table.is_writable:
            raise ValueError(f"{self.table} is read-only in Modbus; writable must be false")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        try:
            codec = self.codec()
        except CodecError as exc:
            raise ValueError(str(exc)) from None
        if not self.table.is_bits and self.address + codec.registers > 65536:
            raise ValueError(f"{codec.registers} registers from {self.address} pass 65535")
        return self

    def codec(self) -> PointCodec:
        return PointCodec(
            data_type=self.data_type,
            order=self.order,
            scale=self.scale,
            offset=self.offset,
            bit=self.bit,
            length=self.length,
        )

    @property
    def width(self) -> int:
        """Registers (or bits, in the bit tables) this point occupies."""
        return 1 if self.table.is_bits else self.codec().registers


class ModbusProfile(_Strict):
    """An equipment model's register map: data, shared by every unit of that model."""

    name: Name
    protocol: Literal["modbus"] = "modbus"
    description: str = ""
    manufacturer: str = ""
    model: str = ""
    points: list[ModbusPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[str] = set()
        dupes = sorted({p.name for p in self.points if p.name in seen or seen.add(p.name)})
        if dupes:
            raise ValueError(f"duplicate point names: {', '.join(dupes)}")
        return self


class _ModbusDeviceBase(_Strict):
    id: Name
    profile: Name
    unit_id: int = Field(default=1, ge=0, le=255)
    enabled: bool = True
    description: str = ""
    poll_interval: Duration = 1.0
    #: Intervals for named poll groups; points name a group, the rest poll at poll_interval.
    poll_groups: dict[Name, Duration] = Field(default_factory=dict)
    timeout: Duration = 1.0
    retries: int = Field(default=1, ge=0, le=10)
    #: Consecutive failed polls before the device is marked down and backoff starts.
    down_after: int = Field(default=2, ge=1, le=100)
    max_registers_per_read: int = Field(default=MAX_REGISTERS_PER_READ, ge=1, le=125)
    max_bits_per_read: int = Field(default=MAX_BITS_PER_READ, ge=1, le=2000)
    #: Unused registers a merged read may span. 0 reads only mapped addresses (safest).
    max_gap: int = Field(default=0, ge=0, le=100)
    backoff_initial: Duration = 1.0
    backoff_max: Duration = 60.0
    #: Emit an unchanged value at least this often when a point has a deadband.
    heartbeat: Duration = 300.0

    def interval_for(self, group: str) -> float:
        return self.poll_groups.get(group, self.poll_interval)


class ModbusTcpDevice(_ModbusDeviceBase):
    """A Modbus TCP unit. Devices with the same host and port share one connection."""

    protocol: Literal["modbus-tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=0, le=65535)

    @property
    def connection_key(self) -> str:
        return f"tcp://{self.host}:{self.port}"


class ModbusRtuDevice(_ModbusDeviceBase):
    """A Modbus RTU unit on a serial line. Units on the same port share the line and its lock."""

    protocol: Literal["modbus-rtu"]
    port: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(default=1, ge=1, le=247)

    @property
    def connection_key(self) -> str:
        return f"rtu://{self.port}"

    @property
    def line_settings(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)


ModbusDevice = Annotated[ModbusTcpDevice | ModbusRtuDevice, Field(discriminator="protocol")]
