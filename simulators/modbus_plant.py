"""A simulated plant behind a real Modbus server: a pump station and a sugarcane press.

Tests, the gateway demo and the benchmarks talk to this exactly as they would to PLCs: over
Modbus TCP (or RTU on a serial line / pty pair), one server answering for several unit ids.
Each unit serves the register map of a profile from `drivers/profiles/` (or any directory you
pass) and its values come from a signal model (`simulators.signals`): the pump station and the
press have physical-ish models with a slowly wearing bearing; any other profile gets a generic
smooth signal per point. Values are computed only when a request touches them, then cached for
0.1 s per unit, so 500 units cost nothing until they are polled.

Run it alone::

    python -m simulators.modbus_plant --port 5020
    python -m simulators.modbus_plant --port 5020 --unit pump-station:1 --unit bench-30:10-59 \\
        --profile-dir tests/bench/profiles --wear-rate 5000
    python -m simulators.modbus_plant --serial /dev/pts/7 --baudrate 19200

It prints one line saying where it listens and which units it serves, and runs until SIGINT or
SIGTERM (exit status 0).

Use it in-process::

    async with ModbusPlant.tcp(units=["pump-station:1"], port=0) as plant:
        client = AsyncModbusTcpClient("127.0.0.1", port=plant.port)
        ...
        plant.units[1].current_values()     # what it is serving right now

Fault injection (`plant.set_fault(mode, unit=None, code=4, delay=2.0)`, `plant.clear_faults()`),
per unit or for all units, changeable while clients are connected:

* ``normal``    answer normally.
* ``silent``    stop answering, like a device that lost power behind a gateway: each request is
  held (up to `silent_hold` seconds) and then dropped without a reply, so the client times
  out. Requests held when the fault is cleared are dropped too — a dead device never answers
  late — and the next request is answered normally.
* ``exception`` answer every request with Modbus exception `code` (4 device failure, 6 device
  busy, 2 illegal address, ...).
* ``slow``      answer correctly, but only after `delay` seconds.

`plant.stop()` closes the listener and every connection (a dead device); `plant.start()` opens
it again on the same port.

Hostile mode (TCP only; `ModbusPlant.tcp(..., hostile="garbage")` or `--hostile garbage`):
the same units are served by `simulators.hostile_modbus.HostileModbusServer`, a raw MBAP
server that mangles every read answer on purpose (malformed frames, wrong lengths, wrong unit
ids, function codes or transaction ids, truncated answers, random bytes; see that module for
the modes). `plant.set_hostile(mode, unit=None)` changes it while clients are connected;
`plant.set_hostile("normal")` answers correctly on the same server. Fault injection does not
apply in hostile mode. Without `hostile` nothing changes: pymodbus's server answers.

Behaviour worth knowing when writing tests against it:

* Addresses are checked like a PLC does: a read or write fails with ILLEGAL_ADDRESS (2) if any
  address in it is not mapped by the profile; a write to a read-only point fails the same way;
  a write that leaves a point outside its profile min..max fails with ILLEGAL_VALUE (3).
* An unknown unit id gets GATEWAY_NO_RESPONSE (0x0B) over TCP (what a TCP-to-RTU gateway says)
  and no answer at all on a serial line (nobody on the bus has that address). Unit id 0 on a
  serial line is a broadcast: every unit acts on it and nobody answers.
* A unit id is one byte, so one plant serves at most 256 units (247 on RTU). For more (the
  500-unit benchmark), run several plants, each on its own port, sharing one clock.
* Requests on one connection are answered independently (a slow unit does not hold up the
  next request), each with its own transaction id.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

import yaml
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException, NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimData, SimDevice
from pymodbus.transaction import TransactionManager

from drivers.modbus.codec import (
    TYPES,
    CodecError,
    DataType,
    Kind,
    PointCodec,
    decode,
    encode,
    encode_raw,
    set_bit,
)
from drivers.modbus.config import ModbusPoint, ModbusProfile, Table
from gateway.readings import Value
from simulators._cli import run_cli, serve_until_signal
from simulators._service import Service
from simulators.hostile_modbus import HostileModbusServer, HostileMode
from simulators.signals import Clock, GenericModel, SignalModel, model_for, unit_seed

__all__ = [
    "DEFAULT_UNITS",
    "PROFILES_DIR",
    "Fault",
    "FaultInjector",
    "FaultMode",
    "ModbusPlant",
    "PlantContext",
    "RequestDropped",
    "SimulatedUnit",
    "build_units",
    "load_profile",
    "main",
    "parse_unit_spec",
]

_log = logging.getLogger(__name__)

PROFILES_DIR = Path(__file__).resolve().parent.parent / "drivers" / "profiles"
DEFAULT_UNITS: tuple[str, ...] = ("pump-station:1", "sugarcane-press:2")
DEFAULT_PORT = 5020

#: Function code -> table it addresses. 22 (mask write) and 23 (read/write) are holding too.
_TABLE_BY_FC: dict[int, Table] = {
    1: Table.COIL,
    5: Table.COIL,
    15: Table.COIL,
    2: Table.DISCRETE_INPUT,
    3: Table.HOLDING_REGISTER,
    6: Table.HOLDING_REGISTER,
    16: Table.HOLDING_REGISTER,
    22: Table.HOLDING_REGISTER,
    23: Table.HOLDING_REGISTER,
    4: Table.INPUT_REGISTER,
}
# pymodbus calls the datastore once or twice per request (a write is set-then-read-back for
# 5/6/23, read-then-set for 22). A fault must hit a request once, so it is applied on the call
# that comes first for that function code.
_FAULT_ON_GET = frozenset({1, 2, 3, 4, 22})
_FAULT_ON_SET = frozenset({5, 6, 15, 16, 23})


# --------------------------------------------------------------------------------------------
# Register layout of a profile
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cell:
    """A run of addresses produced together: one word point, or one register of bit points.

    Bit points share a register, so the register is their cell (built with `set_bit`). In the
    coil / discrete-input tables every point is a one-bit cell.
    """

    index: int
    table: Table
    address: int
    width: int
    owner: ModbusPoint | None
    codec: PointCodec | None
    bit_points: tuple[tuple[ModbusPoint, PointCodec], ...]
    writable: bool


class _Layout:
    """Which cell answers each address of a profile; shared by every unit of that profile.

    Built once per profile so 500 units of one profile cost one layout. When points overlap
    (a status word and bit points of the same register, say), the first word point owns the
    addresses and the others are *derived*: decoded from the owner's registers, never produced
    separately, so what a client reads is always consistent.
    """

    _cache: dict[int, _Layout] = {}  # noqa: RUF012 - keyed by id(profile); holds the profile

    def __init__(self, profile: ModbusProfile) -> None:
        self.profile = profile
        self.cells: list[_Cell] = []
        self.slots: dict[Table, dict[int, tuple[_Cell, int]]] = {t: {} for t in Table}
        self.points: list[tuple[ModbusPoint, PointCodec]] = [(p, p.codec()) for p in profile.points]
        bit_groups: dict[tuple[Table, int], list[tuple[ModbusPoint, PointCodec]]] = {}
        for point, codec in self.points:
            slots = self.slots[point.table]
            if codec.data_type is DataType.BIT:
                bit_groups.setdefault((point.table, point.address), []).append((point, codec))
                continue
            addresses = range(point.address, point.address + point.width)
            if any(a in slots for a in addresses):
                continue  # derived from whoever owns these addresses
            cell = _Cell(
                len(self.cells), point.table, point.address, point.width, point, codec, (),
                point.writable,
            )  # fmt: skip
            self.cells.append(cell)
            for offset, a in enumerate(addresses):
                slots[a] = (cell, offset)
        for (table, address), bits in bit_groups.items():
            if address in self.slots[table]:
                continue  # bits of a register a word point already produces
            cell = _Cell(
                len(self.cells), table, address, 1, None, None, tuple(bits),
                all(p.writable for p, _ in bits),
            )  # fmt: skip
            self.cells.append(cell)
            self.slots[table][address] = (cell, 0)

    @classmethod
    def of(cls, profile: ModbusProfile) -> _Layout:
        layout = cls._cache.get(id(profile))
        if layout is None or layout.profile is not profile:
            layout = cls._cache[id(profile)] = cls(profile)
        return layout


def _encode_clamped(value: Value, codec: PointCodec) -> list[int]:
    """Encode a model value, clamping it into the data type rather than failing.

    A generic signal on a profile with odd scaling can land outside what the type holds; a
    real device would saturate, so the simulator does too.
    """
    try:
        return encode(value, codec)
    except CodecError:
        pass
    spec = TYPES[codec.data_type]
    if spec.kind is Kind.STRING:
        text = str(value or "").encode("utf-8")[: codec.length or 0]
        return encode_raw(text.decode("utf-8", errors="ignore"), codec)
    if spec.kind is Kind.BOOL:
        return encode_raw(bool(value), codec)
    number = float(value) if isinstance(value, int | float) else 0.0
    if not math.isfinite(number):
        number = 0.0
    raw = (number - codec.offset) / codec.scale
    if spec.kind is Kind.FLOAT:
        limit = 3.4028234663852886e38 if codec.data_type is DataType.FLOAT32 else math.inf
        return encode_raw(max(-limit, min(limit, raw)), codec)
    assert spec.minimum is not None and spec.maximum is not None
    return encode_raw(max(spec.minimum, min(spec.maximum, round(raw))), codec)


# --------------------------------------------------------------------------------------------
# A simulated unit
# --------------------------------------------------------------------------------------------


class SimulatedUnit:
    """One Modbus unit (slave): a profile's register map filled from a signal model.

    Values are computed lazily: a request computes only the cells it touches, from one model
    sample per `refresh` window (0.1 s; the window is aligned to the clock, so the value at a
    given time does not depend on who polled when). Writable points hold whatever was written
    and the model is told, so it can react. `current_values()` decodes the registers being
    served right now — exactly what a client decoding a read in the same window gets.
    """

    def __init__(
        self,
        unit_id: int,
        profile: ModbusProfile,
        model: SignalModel | None = None,
        *,
        clock: Clock = time.time,
        refresh: float = 0.1,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit id must be 0..255 (got {unit_id})")
        self.unit_id = unit_id
        self.profile = profile
        self.model: SignalModel = model if model is not None else GenericModel(profile)
        self.clock = clock
        self.refresh = refresh
        self._layout = _Layout.of(profile)
        missing = {p.name for p in profile.points} - self.model.names
        self._fallback: GenericModel | None = (
            GenericModel(profile, seed=unit_id, label=f"{profile.name}-{unit_id}")
            if missing
            else None
        )
        self._window: int | float | None = None
        self._values: dict[str, Value] | None = None
        self._regs: dict[int, list[int]] = {}
        self._held: dict[int, list[int]] = {}
        for cell in self._layout.cells:
            if cell.writable:
                self._held[cell.index] = list(self._produce(cell))
        self._window = None  # writable cells were sampled once; reads start fresh

    def __repr__(self) -> str:
        return f"SimulatedUnit({self.unit_id}, {self.profile.name!r})"

    # -- model values -----------------------------------------------------------------------

    def _sync(self) -> None:
        """Drop cached registers when the clock has moved into a new refresh window."""
        now = self.clock()
        window = math.floor(now / self.refresh) if self.refresh > 0 else now
        if window != self._window:
            self._window = window
            self._values = None
            self._regs.clear()

    def _sample(self) -> dict[str, Value]:
        if self._values is None:
            assert self._window is not None
            t = self._window * self.refresh if self.refresh > 0 else float(self._window)
            values = self.model.sample(t)
            if self._fallback is not None:
                values = {**self._fallback.sample(t), **values}
            self._values = values
        return self._values

    def _produce(self, cell: _Cell) -> list[int]:
        """The registers (bits: 0/1) a cell holds now; cached for the refresh window."""
        if cell.writable and cell.index in self._held:
            return self._held[cell.index]
        self._sync()
        regs = self._regs.get(cell.index)
        if regs is None:
            values = self._sample()
            if cell.owner is not None:
                assert cell.codec is not None
                value = values.get(cell.owner.name)
                if cell.table.is_bits:
                    regs = [1 if value else 0]
                else:
                    regs = _encode_clamped(value, cell.codec)
            else:
                word = 0
                for point, codec in cell.bit_points:
                    word = set_bit(word, bool(values.get(point.name)), codec)
                regs = [word]
            self._regs[cell.index] = regs
        return regs

    # -- Modbus access ----------------------------------------------------------------------

    def read(self, table: Table, address: int, count: int) -> list[int] | list[bool] | ExcCodes:
        """Registers (or bits) for a read request; ILLEGAL_ADDRESS if any address is unmapped."""
        slots = self._layout.slots[table]
        end = address + count
        for a in range(address, end):
            if a not in slots:
                return ExcCodes.ILLEGAL_ADDRESS
        out: list[int] = []
        a = address
        while a < end:
            cell, offset = slots[a]
            regs = self._produce(cell)
            take = min(cell.width - offset, end - a)
            out.extend(regs[offset : offset + take])
            a += take
        if table.is_bits:
            return [bool(v) for v in out]
        return out

    def write(self, table: Table, address: int, values: Sequence[int | bool]) -> ExcCodes | None:
        """Apply a write request to writable points and tell the model.

        Every address must belong to a writable point (else ILLEGAL_ADDRESS); the points it
        leaves must decode inside their min..max (else ILLEGAL_VALUE). Nothing changes unless
        the whole request is acceptable.
        """
        if not table.is_writable:
            return ExcCodes.ILLEGAL_FUNCTION
        slots = self._layout.slots[table]
        staged: dict[int, list[int]] = {}
        cells: dict[int, _Cell] = {}
        for i, value in enumerate(values):
            slot = slots.get(address + i)
            if slot is None or not slot[0].writable:
                return ExcCodes.ILLEGAL_ADDRESS
            cell, offset = slot
            if cell.index not in staged:
                staged[cell.index] = list(self._held[cell.index])
                cells[cell.index] = cell
            staged[cell.index][offset] = (1 if value else 0) if table.is_bits else int(value)
        updates: list[tuple[str, Value]] = []
        for index, cell in cells.items():
            regs = staged[index]
            if cell.owner is not None:
                assert cell.codec is not None
                value = bool(regs[0]) if table.is_bits else decode(regs, cell.codec)
                if not _in_range(cell.owner, value):
                    return ExcCodes.ILLEGAL_VALUE
                updates.append((cell.owner.name, value))
            for point, codec in cell.bit_points:
                updates.append((point.name, decode(regs, codec)))
        self._held.update(staged)
        now = self.clock()
        for name, value in updates:
            self.model.write(name, value, now)
        self._window = None  # the model may have reacted: recompute on the next read
        return None

    def write_value(self, name: str, value: Value) -> None:
        """Write one writable point by engineering value, as a client (or an operator) would."""
        found = next(((p, c) for p, c in self._layout.points if p.name == name), None)
        if found is None:
            raise KeyError(name)
        point, codec = found
        if codec.data_type is DataType.BIT:
            slot = self._layout.slots[point.table].get(point.address)
            current = self._produce(slot[0])[0] if slot else 0
            regs: list[int] | list[bool] = [set_bit(current, bool(value), codec)]
        elif point.table.is_bits:
            regs = [bool(value)]
        else:
            regs = encode(value, codec)
        rc = self.write(point.table, point.address, regs)
        if rc is not None:
            raise ValueError(f"{name} = {value!r} refused: {rc.name}")

    def current_values(self) -> dict[str, Value]:
        """Engineering values being served now, decoded from the registers like a client would.

        Scaled integers are quantised and floats rounded to float32 exactly as on the wire, so
        a test can compare what a gateway read with `==` when the clock is frozen.
        """
        image: dict[Table, dict[int, int]] = {t: {} for t in Table}
        for cell in self._layout.cells:
            regs = self._produce(cell)
            target = image[cell.table]
            for offset, reg in enumerate(regs):
                target[cell.address + offset] = reg
        out: dict[str, Value] = {}
        for point, codec in self._layout.points:
            table = image[point.table]
            if point.table.is_bits:
                out[point.name] = bool(table.get(point.address, 0))
                continue
            regs = [table.get(a, 0) for a in range(point.address, point.address + codec.registers)]
            out[point.name] = decode(regs, codec)
        return out


def _in_range(point: ModbusPoint, value: Value) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return True
    if point.min is not None and not value >= point.min:
        return False
    return point.max is None or value <= point.max


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


class FaultMode(StrEnum):
    NORMAL = "normal"
    SILENT = "silent"
    EXCEPTION = "exception"
    SLOW = "slow"


@dataclass(frozen=True, slots=True)
class Fault:
    mode: FaultMode = FaultMode.NORMAL
    code: ExcCodes = ExcCodes.DEVICE_FAILURE
    delay: float = 2.0


class RequestDropped(Exception):
    """Raised by the datastore when a request must get no reply at all (silent unit)."""


class FaultInjector:
    """Current fault per unit, plus one for all units; a unit's own fault wins.

    Call it from the event loop's thread (tests, the demo); changes apply to the next request
    and wake requests held by a silent fault (which are then dropped).
    """

    def __init__(self, *, silent_hold: float = 300.0) -> None:
        self.silent_hold = silent_hold
        self._all = Fault()
        self._units: dict[int, Fault] = {}
        self._active = False
        self._changed = asyncio.Event()

    @property
    def active(self) -> bool:
        """Whether any fault is set (the request path skips fault handling when not)."""
        return self._active

    def set(
        self,
        mode: FaultMode | str,
        *,
        unit: int | None = None,
        code: int = ExcCodes.DEVICE_FAILURE,
        delay: float = 2.0,
    ) -> Fault:
        """Set a fault for one unit, or for all units when `unit` is None."""
        fault = Fault(FaultMode(mode), ExcCodes(code), float(delay))
        if fault.delay < 0:
            raise ValueError(f"delay must be >= 0 (got {delay})")
        if unit is None:
            self._all = fault
            self._units.clear()
        else:
            self._units[unit] = fault
        self._changed_now()
        return fault

    def clear(self, unit: int | None = None) -> None:
        """Back to normal: one unit's own fault, or every fault when `unit` is None."""
        if unit is None:
            self._all = Fault()
            self._units.clear()
        else:
            self._units.pop(unit, None)
        self._changed_now()

    def fault_for(self, unit: int) -> Fault:
        return self._units.get(unit, self._all)

    def _changed_now(self) -> None:
        self._active = self._all.mode is not FaultMode.NORMAL or any(
            f.mode is not FaultMode.NORMAL for f in self._units.values()
        )
        self._changed.set()
        self._changed = asyncio.Event()

    async def apply(self, unit: int) -> ExcCodes | None:
        """Act out the unit's fault: return an exception code, sleep, or raise RequestDropped."""
        fault = self.fault_for(unit)
        mode = fault.mode
        if mode is FaultMode.NORMAL:
            return None
        if mode is FaultMode.EXCEPTION:
            return fault.code
        if mode is FaultMode.SLOW:
            await asyncio.sleep(fault.delay)
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), self.silent_hold)
        raise RequestDropped(f"unit {unit} is silent")


# --------------------------------------------------------------------------------------------
# Datastore context and pymodbus server glue
# --------------------------------------------------------------------------------------------


class PlantContext:
    """The datastore pymodbus's request handler calls (`server.context`).

    Implements the three methods the server uses, replacing pymodbus's deprecated
    ModbusServerContext / ModbusDeviceContext (which log deprecation warnings). Per request
    the work is a dict lookup per address and, once per unit per 0.1 s, a model sample.
    """

    def __init__(self, units: Mapping[int, SimulatedUnit], faults: FaultInjector) -> None:
        self.units = units
        self.faults = faults

    def device_ids(self) -> list[int]:
        return list(self.units)

    def _unit(self, device_id: int) -> SimulatedUnit:
        unit = self.units.get(device_id)
        if unit is None:
            raise NoSuchIdException(f"unit {device_id}")
        return unit

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        unit = self._unit(device_id)
        if self.faults.active and func_code in _FAULT_ON_GET:
            code = await self.faults.apply(device_id)
            if code is not None:
                return code
        table = _TABLE_BY_FC.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        return unit.read(table, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        unit = self._unit(device_id)
        if self.faults.active and func_code in _FAULT_ON_SET:
            code = await self.faults.apply(device_id)
            if code is not None:
                return code
        table = _TABLE_BY_FC.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        return unit.write(table, address, values)


class _PlantRequestHandler(ServerRequestHandler):
    """pymodbus's per-connection handler, made safe for requests that take a while.

    The stock handler reads `self.last_pdu` again *after* awaiting the datastore, so a request
    held by a slow or silent unit gets the transaction id of whatever request arrived since
    (or crashes on None), and it schedules work that reads `last_pdu` later still. Here each
    request is captured when it is decoded and answered by its own task with its own ids.
    """

    server: _PlantServerMixin

    def callback_data(self, data: bytes, addr: tuple | None = None) -> int:
        used = 0
        while used < len(data):
            try:
                n = TransactionManager.callback_data(self, data[used:], addr)
            except ModbusIOException as exc:
                reply = ExceptionResponse(
                    exc.fcode or 0,
                    exception_code=ExcCodes.ILLEGAL_FUNCTION,
                    device_id=exc.dev_id,
                    transaction=exc.transaction_id,
                )
                self.server_send(reply, addr)
                return len(data)
            used += n
            pdu = self.last_pdu
            if pdu is None or n == 0:
                break
            self.server.spawn(self._respond(pdu, addr))
        return used

    async def _respond(self, pdu: ModbusPDU, addr: tuple | None) -> None:
        context = self.server.context
        try:
            if pdu.dev_id == 0 and self.server.serial_line:
                # RTU broadcast: every unit acts on it, nobody answers.
                for unit in context.device_ids():
                    await pdu.datastore_update(context, unit)  # type: ignore[arg-type]
                return
            response = await pdu.datastore_update(context, pdu.dev_id)  # type: ignore[arg-type]
        except RequestDropped:
            return
        except NoSuchIdException:
            if self.server.serial_line:
                return
            response = ExceptionResponse(pdu.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        except Exception:
            _log.exception("simulated unit %s failed on %s", pdu.dev_id, pdu)
            response = ExceptionResponse(pdu.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = pdu.transaction_id
        response.dev_id = pdu.dev_id
        if self.transport:
            self.server_send(response, addr)


class _PlantServerMixin:
    """Shared by the TCP and serial servers: our handler, our context, our task set."""

    context: PlantContext
    serial_line: bool = False
    loop: asyncio.AbstractEventLoop
    trace_packet: Any
    trace_pdu: Any
    trace_connect: Any

    def _plant_setup(self, context: PlantContext) -> None:
        # pymodbus insists on a datastore at construction; it is thrown away here.
        self.context = context
        self.tasks: set[asyncio.Task[None]] = set()

    def callback_new_connection(self) -> ServerRequestHandler:
        return _PlantRequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _throwaway_device() -> SimDevice:
    return SimDevice(id=1, simdata=SimData(0))


class _PlantTcpServer(_PlantServerMixin, ModbusTcpServer):
    def __init__(self, context: PlantContext, *, address: tuple[str, int]) -> None:
        ModbusTcpServer.__init__(self, _throwaway_device(), address=address)
        self._plant_setup(context)


class _PlantSerialServer(_PlantServerMixin, ModbusSerialServer):
    serial_line = True

    def __init__(self, context: PlantContext, **serial: Any) -> None:
        ModbusSerialServer.__init__(self, _throwaway_device(), framer=FramerType.RTU, **serial)
        self._plant_setup(context)


# --------------------------------------------------------------------------------------------
# Profiles and unit specs
# --------------------------------------------------------------------------------------------


def load_profile(name: str, profile_dirs: Iterable[str | Path] = ()) -> ModbusProfile:
    """Load a profile by name (`<dir>/<name>.yaml`), extra dirs first, then drivers/profiles.

    `name` may also be a path to a YAML file.
    """
    candidates: list[Path] = []
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml"):
        candidates.append(as_path)
    for directory in [*map(Path, profile_dirs), PROFILES_DIR]:
        candidates += [directory / f"{name}.yaml", directory / f"{name}.yml"]
    for path in candidates:
        if path.is_file():
            return ModbusProfile.model_validate(yaml.safe_load(path.read_text()))
    searched = ", ".join(str(d) for d in [*map(str, profile_dirs), PROFILES_DIR])
    raise ValueError(f"profile {name!r} not found (looked in {searched})")


def parse_unit_spec(spec: str) -> tuple[str, list[int]]:
    """`"pump-station:1"` -> ("pump-station", [1]); `"bench-30:1-50"` -> 50 unit ids."""
    name, sep, ids = spec.rpartition(":")
    if not sep or not name or not ids:
        raise ValueError(f"unit spec {spec!r} must look like PROFILE:ID or PROFILE:FIRST-LAST")
    first, dash, last = ids.partition("-")
    try:
        lo = int(first)
        hi = int(last) if dash else lo
    except ValueError:
        raise ValueError(f"unit spec {spec!r}: {ids!r} is not an id or a range") from None
    if not 0 <= lo <= hi <= 255:
        raise ValueError(
            f"unit spec {spec!r}: ids must be 0..255 with first <= last (a unit id is one "
            "byte; for more units run more plants, each on its own port)"
        )
    return name, list(range(lo, hi + 1))


def build_units(
    specs: Iterable[str],
    *,
    profile_dirs: Iterable[str | Path] = (),
    wear_rate: float = 1.0,
    seed: int = 0,
    clock: Clock = time.time,
    refresh: float = 0.1,
) -> list[SimulatedUnit]:
    """Units for specs like `"pump-station:1"`; the model is chosen by the profile's name."""
    dirs = list(profile_dirs)
    profiles: dict[str, ModbusProfile] = {}
    units: list[SimulatedUnit] = []
    seen: set[int] = set()
    for spec in specs:
        name, ids = parse_unit_spec(spec)
        if name not in profiles:
            profiles[name] = load_profile(name, dirs)
        profile = profiles[name]
        for unit_id in ids:
            if unit_id in seen:
                raise ValueError(f"unit id {unit_id} is given twice")
            seen.add(unit_id)
            model = model_for(
                profile,
                seed=unit_seed(seed, unit_id),
                wear_rate=wear_rate,
                label=f"{profile.name}-{unit_id}",
            )
            units.append(SimulatedUnit(unit_id, profile, model, clock=clock, refresh=refresh))
    return units


# --------------------------------------------------------------------------------------------
# The plant
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tcp:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class _Serial:
    port: str
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int


class ModbusPlant(Service):
    """Simulated units behind one Modbus server (TCP or RTU), with fault injection.

    Build it with `ModbusPlant.tcp(...)` or `ModbusPlant.rtu(...)` and use it as an async
    context manager (or call `start()` / `stop()`); `stop()` then `start()` reuses the port.
    """

    def __init__(
        self,
        units: Iterable[SimulatedUnit],
        endpoint: _Tcp | _Serial,
        *,
        silent_hold: float = 300.0,
        hostile: HostileMode | str | None = None,
        hostile_seed: int = 0,
    ) -> None:
        self.units: dict[int, SimulatedUnit] = {}
        for unit in units:
            if unit.unit_id in self.units:
                raise ValueError(f"unit id {unit.unit_id} is given twice")
            self.units[unit.unit_id] = unit
        if not self.units:
            raise ValueError("a plant needs at least one unit")
        self._endpoint = endpoint
        self.faults = FaultInjector(silent_hold=silent_hold)
        self.context = PlantContext(self.units, self.faults)
        self._server: _PlantTcpServer | _PlantSerialServer | HostileModbusServer | None = None
        self._hostile = HostileMode(hostile) if hostile is not None else None
        self._hostile_seed = hostile_seed
        if self._hostile is not None and not isinstance(endpoint, _Tcp):
            raise ValueError("hostile mode is served over Modbus TCP only")

    @classmethod
    def tcp(
        cls,
        units: Iterable[str | SimulatedUnit] = DEFAULT_UNITS,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        profile_dirs: Iterable[str | Path] = (),
        wear_rate: float = 1.0,
        seed: int = 0,
        clock: Clock = time.time,
        refresh: float = 0.1,
        silent_hold: float = 300.0,
        hostile: HostileMode | str | None = None,
    ) -> Self:
        """A Modbus TCP plant; `port=0` picks a free port (read it from `plant.port`).
        `hostile` serves the units through the hostile server in that mode."""
        built = _units(units, profile_dirs, wear_rate, seed, clock, refresh)
        return cls(
            built, _Tcp(host, port), silent_hold=silent_hold, hostile=hostile, hostile_seed=seed
        )

    @classmethod
    def rtu(
        cls,
        units: Iterable[str | SimulatedUnit] = DEFAULT_UNITS,
        *,
        port: str,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        profile_dirs: Iterable[str | Path] = (),
        wear_rate: float = 1.0,
        seed: int = 0,
        clock: Clock = time.time,
        refresh: float = 0.1,
        silent_hold: float = 300.0,
    ) -> Self:
        """A Modbus RTU plant on a serial device (or one end of a pty pair)."""
        built = _units(units, profile_dirs, wear_rate, seed, clock, refresh)
        endpoint = _Serial(port, baudrate, parity, stopbits, bytesize)
        return cls(built, endpoint, silent_hold=silent_hold)

    # -- where ------------------------------------------------------------------------------

    @property
    def port(self) -> int | str:
        """TCP port (the real one once started with port 0) or the serial device path."""
        return self._endpoint.port

    @property
    def host(self) -> str | None:
        return self._endpoint.host if isinstance(self._endpoint, _Tcp) else None

    @property
    def url(self) -> str:
        ep = self._endpoint
        if isinstance(ep, _Tcp):
            return f"tcp://{ep.host}:{ep.port}"
        return f"rtu://{ep.port}?baudrate={ep.baudrate}&parity={ep.parity}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def describe(self) -> str:
        """One line: where it listens and which units (the CLI prints this)."""
        units = ", ".join(f"{u.unit_id}={u.profile.name}" for u in self.units.values())
        if len(self.units) > 8:
            names = sorted({u.profile.name for u in self.units.values()})
            units = f"{len(self.units)} units ({', '.join(names)})"
        return f"Modbus plant simulator listening on {self.url} serving units {units}"

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the listener (TCP) or the serial device. Restarting reuses the same port."""
        if self._server is not None:
            return
        ep = self._endpoint
        if self._hostile is not None and isinstance(ep, _Tcp):
            hostile = HostileModbusServer(
                self.units, host=ep.host, port=ep.port, mode=self._hostile, seed=self._hostile_seed
            )
            await hostile.start()
            self._endpoint = _Tcp(ep.host, hostile.port)
            self._server = hostile
            return
        server: _PlantTcpServer | _PlantSerialServer
        if isinstance(ep, _Tcp):
            server = _PlantTcpServer(self.context, address=(ep.host, ep.port))
        else:
            server = _PlantSerialServer(
                self.context,
                port=ep.port,
                baudrate=ep.baudrate,
                parity=ep.parity,
                stopbits=ep.stopbits,
                bytesize=ep.bytesize,
            )
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            server.close()
            raise OSError(f"cannot listen on {self.url}") from exc
        if isinstance(ep, _Tcp) and ep.port == 0:
            listener: asyncio.Server = server.transport  # type: ignore[assignment]
            self._endpoint = _Tcp(ep.host, listener.sockets[0].getsockname()[1])
        self._server = server

    async def stop(self) -> None:
        """Close the listener and every connection, and cancel requests in progress."""
        server, self._server = self._server, None
        if server is None:
            return
        if isinstance(server, HostileModbusServer):
            self._hostile = server.mode  # a restart keeps the mode set for all units
            await server.stop()
            return
        listener = server.transport
        await server.shutdown()
        if isinstance(listener, asyncio.Server):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.wait_closed(), 2.0)
        tasks = list(server.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let transports run their connection_lost callbacks

    # -- faults and knobs -------------------------------------------------------------------

    def set_fault(
        self,
        mode: FaultMode | str,
        *,
        unit: int | None = None,
        code: int = ExcCodes.DEVICE_FAILURE,
        delay: float = 2.0,
    ) -> Fault:
        """Inject a fault for one unit, or all units (`unit=None`). See the module docstring."""
        if unit is not None and unit not in self.units:
            raise KeyError(f"no unit {unit}")
        return self.faults.set(mode, unit=unit, code=code, delay=delay)

    @property
    def hostile(self) -> HostileModbusServer | None:
        """The hostile server while one runs (its `answers` count what it sent, per mode)."""
        return self._server if isinstance(self._server, HostileModbusServer) else None

    def set_hostile(self, mode: HostileMode | str, *, unit: int | None = None) -> None:
        """Change how a hostile plant answers, for one unit or all (`unit=None`)."""
        server = self.hostile
        if server is None:
            raise RuntimeError("set_hostile needs a running plant built with hostile=...")
        if unit is not None and unit not in self.units:
            raise KeyError(f"no unit {unit}")
        server.set_mode(mode, unit=unit)

    def clear_faults(self, unit: int | None = None) -> None:
        """Back to normal for one unit, or for all units."""
        self.faults.clear(unit)

    def set_wear_rate(self, rate: float) -> None:
        """Speed bearing wear up (or down) on every unit whose model wears, from now on."""
        for unit in self.units.values():
            if hasattr(unit.model, "wear_rate"):
                unit.model.wear_rate = rate  # type: ignore[attr-defined]


def _units(
    units: Iterable[str | SimulatedUnit],
    profile_dirs: Iterable[str | Path],
    wear_rate: float,
    seed: int,
    clock: Clock,
    refresh: float,
) -> list[SimulatedUnit]:
    dirs = list(profile_dirs)
    out: list[SimulatedUnit] = []
    specs: list[str] = []
    for item in units:
        if isinstance(item, SimulatedUnit):
            out.append(item)
        else:
            specs.append(item)
    if specs:
        out += build_units(
            specs, profile_dirs=dirs, wear_rate=wear_rate, seed=seed, clock=clock, refresh=refresh
        )
    return out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.modbus_plant",
        description="Simulated pump station and sugarcane press (and any profile) "
        "behind a Modbus TCP or RTU server.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="TCP address to bind (default %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port (default %(default)s; 0 = any free)",
    )
    parser.add_argument(
        "--unit",
        action="append",
        dest="units",
        metavar="PROFILE:ID[-LAST]",
        help="unit(s) to serve, repeatable (default: pump-station:1 sugarcane-press:2)",
    )
    parser.add_argument(
        "--profile-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="extra profile directory, repeatable",
    )
    parser.add_argument(
        "--wear-rate", type=float, default=1.0, help="bearing wear speed-up (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="signal seed (default 0)")
    parser.add_argument(
        "--serial", metavar="DEVICE", help="serve Modbus RTU on this serial device instead of TCP"
    )
    parser.add_argument(
        "--baudrate", type=int, default=9600, help="RTU baud rate (default %(default)s)"
    )
    parser.add_argument(
        "--parity", choices=["N", "E", "O"], default="N", help="RTU parity (default N)"
    )
    parser.add_argument(
        "--stopbits", type=int, choices=[1, 2], default=1, help="RTU stop bits (default 1)"
    )
    parser.add_argument(
        "--hostile",
        choices=[m.value for m in HostileMode],
        metavar="MODE",
        help="answer reads badly on purpose (TCP only): " + ", ".join(m.value for m in HostileMode),
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log pymodbus and simulator details"
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    units = args.units or list(DEFAULT_UNITS)
    common: dict[str, Any] = {
        "profile_dirs": args.profile_dir,
        "wear_rate": args.wear_rate,
        "seed": args.seed,
    }
    if args.serial and args.hostile:
        raise SystemExit("--hostile works over TCP only, not with --serial")
    if args.serial:
        plant = ModbusPlant.rtu(
            units, port=args.serial, baudrate=args.baudrate, parity=args.parity,
            stopbits=args.stopbits, **common,
        )  # fmt: skip
    else:
        plant = ModbusPlant.tcp(
            units, host=args.host, port=args.port, hostile=args.hostile, **common
        )
    await serve_until_signal(plant, plant.describe)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    return run_cli("modbus_plant", lambda: _serve(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
