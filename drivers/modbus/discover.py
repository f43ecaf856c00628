"""Modbus discovery: which unit ids answer, which addresses they let us read, and which
byte/word order makes a 32-bit value plausible. Feeds `millrace discover modbus`.

How it finds things, and why:

- A unit is *alive* if it answers at all, even with a Modbus exception (illegal address
  means "I am here, that register is not"). Silence, or exception 10/11 from a TCP gateway
  ("no path" / "target did not answer"), means nobody is home.
- Readable ranges are found by reading blocks and, where a block is refused, splitting it in
  halves down to single addresses: a sparse map costs a few hundred requests, not 65,536.
- A 32-bit point's order is guessed by decoding its two registers every way
  (uint32/int32/float32 × ABCD/BADC/CDAB/DCBA) and keeping those inside the range the
  technician says is plausible; floats with a "reasonable" magnitude rank first.

The pure parts (`merge_ranges`, `order_candidates`, `consistent_candidates`, `parse_units`,
`starting_profile`) are tested without sockets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from drivers.modbus.codec import DataType, Order, PointCodec, decode
from drivers.modbus.config import Table

#: Exception codes a TCP gateway uses to say the addressed unit is not there.
_NOBODY_HOME = {10, 11}


@dataclass(frozen=True, slots=True)
class Candidate:
    data_type: DataType
    order: Order
    value: float | int


@dataclass(slots=True)
class UnitReport:
    unit_id: int
    ranges: dict[Table, list[tuple[int, int]]] = field(default_factory=dict)  # inclusive
    requests: int = 0


def parse_units(text: str) -> list[int]:
    """'1-10', '1,2,5', '3' -> unit ids (1..247), sorted and unique."""
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"unit ids are numbers or ranges like 1-10 (got {part!r})") from None
        if not 0 <= first <= last <= 255:
            raise ValueError(f"unit ids must be within 0..255 (got {part!r})")
        ids.update(range(first, last + 1))
    if not ids:
        raise ValueError("no unit ids given")
    return sorted(ids)


def parse_tcp_url(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"tcp://{url}")
    if parsed.scheme != "tcp" or not parsed.hostname:
        raise ValueError(f"expected tcp://HOST:PORT (got {url!r})")
    return parsed.hostname, parsed.port or 502


def merge_ranges(addresses: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted addresses -> inclusive (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for a in sorted(set(addresses)):
        if runs and a == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], a)
        else:
            runs.append((a, a))
    return runs


def order_candidates(registers: Sequence[int], low: float, high: float) -> list[Candidate]:
    """Every 32-bit reading of two registers that lands in [low, high], best first.

    Floats whose magnitude is ordinary (not denormal, not astronomically large) rank before
    integers, and among equals the order the Modbus standard prefers (ABCD) comes first.
    """
    if len(registers) != 2:
        raise ValueError("a 32-bit guess needs exactly two registers")
    found: list[tuple[int, Candidate]] = []
    for dt in (DataType.FLOAT32, DataType.INT32, DataType.UINT32):
        for rank_order, order in enumerate(Order):
            value = decode(registers, PointCodec(dt, order))
            assert isinstance(value, int | float)
            if isinstance(value, float) and not math.isfinite(value):
                continue
            if not low <= value <= high:
                continue
            if dt is DataType.FLOAT32:
                plain = value == 0 or 1e-6 <= abs(value) <= 1e9
                rank = 0 if plain else 20
            else:
                rank = 10
            found.append((rank * 10 + rank_order, Candidate(dt, order, value)))
    return [c for _, c in sorted(found, key=lambda item: item[0])]


def consistent_candidates(
    samples: Sequence[Sequence[int]], low: float, high: float
) -> list[Candidate]:
    """Readings plausible in EVERY sample, ranked as `order_candidates` ranks the newest.

    A wrong byte order can land in the plausible range by chance for one value (a swapped
    mantissa byte read as an exponent); it almost never does for several values of a live
    signal, so the guess reads the pair a few times and keeps what survives all of them.
    """
    if not samples:
        raise ValueError("at least one sample is needed")
    keep: set[tuple[DataType, Order]] | None = None
    for regs in samples:
        kinds = {(c.data_type, c.order) for c in order_candidates(regs, low, high)}
        keep = kinds if keep is None else keep & kinds
    newest = order_candidates(samples[-1], low, high)
    survivors = [c for c in newest if (c.data_type, c.order) in (keep or set())]
    # A live signal read in its right order moves by a small fraction between samples; read
    # in a wrong one, its changing low word turns into exponent bits and the value jumps by
    # decades (seen: 104.6, 107.6, 111.1 m3/h read word-swapped as 0.009, 1.06, 38.1).
    # Readings that jump more than a decade go last; the sort keeps the order otherwise.
    return sorted(survivors, key=lambda c: _decades(samples, c) > 1.0)


def _decades(samples: Sequence[Sequence[int]], c: Candidate) -> float:
    """How many decades the candidate's readings span over the samples (zeros left out)."""
    codec = PointCodec(c.data_type, c.order)
    logs = [math.log10(abs(float(v))) for regs in samples if (v := decode(regs, codec))]
    return max(logs) - min(logs) if len(logs) > 1 else 0.0


def starting_profile(
    name: str, report: UnitReport, guesses: dict[tuple[Table, int], Candidate] | None = None
) -> dict[str, Any]:
    """A profile a technician edits: one uint16/bool point per readable address, with the
    guessed 32-bit points in place of their two registers."""
    guesses = guesses or {}
    points: list[dict[str, Any]] = []
    prefix = {
        Table.COIL: "c",
        Table.DISCRETE_INPUT: "di",
        Table.HOLDING_REGISTER: "hr",
        Table.INPUT_REGISTER: "ir",
    }
    for table, runs in report.ranges.items():
        covered: set[int] = set()
        for first, last in runs:
            for address in range(first, last + 1):
                if address in covered:
                    continue
                guess = guesses.get((table, address))
                point: dict[str, Any] = {
                    "name": f"{prefix[table]}{address}",
                    "table": str(table),
                    "address": address,
                    "data_type": "bool" if table.is_bits else "uint16",
                }
                if guess is not None and address + 1 <= last:
                    point["data_type"] = str(guess.data_type)
                    point["order"] = str(guess.order)
                    covered.add(address + 1)
                points.append(point)
    return {
        "name": name,
        "protocol": "modbus",
        "description": f"discovered from unit {report.unit_id}; rename and type the points",
        "points": points,
    }


class ModbusScanner:
    """Scan one Modbus TCP endpoint. One request at a time: a scan must not flood a PLC."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 0.5,
        max_address: int = 1000,
        block: int = 100,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.max_address = max_address
        self.block = block
        self._progress = progress or (lambda _msg: None)
        self._client = AsyncModbusTcpClient(
            host, port=port, timeout=timeout, retries=0, reconnect_delay=0
        )

    async def __aenter__(self) -> ModbusScanner:
        if not await self._client.connect():
            raise ConnectionError(f"cannot connect to tcp://{self.host}:{self.port}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._client.close()

    async def alive(self, unit: int) -> bool:
        try:
            rr = await self._client.read_holding_registers(0, count=1, device_id=unit)
        except (TimeoutError, ModbusException, OSError):
            await self._reconnect()
            return False
        return not (rr.isError() and getattr(rr, "exception_code", 0) in _NOBODY_HOME)

    async def readable(self, unit: int, tables: Sequence[Table]) -> UnitReport:
        report = UnitReport(unit)
        for table in tables:
            ok: list[int] = []
            limit = min(self.block, 2000 if table.is_bits else 125)
            for start in range(0, self.max_address, limit):
                count = min(limit, self.max_address - start)
                ok += await self._readable_in(unit, table, start, count, report)
            report.ranges[table] = merge_ranges(ok)
            self._progress(f"unit {unit} {table}: {len(ok)} readable addresses")
        return report

    async def read_pair(self, unit: int, table: Table, address: int) -> list[int]:
        rr = await self._read(unit, table, address, 2)
        if rr is None or rr.isError():
            raise ValueError(f"unit {unit} {table} {address}-{address + 1} is not readable")
        return list(rr.registers[:2])

    async def _readable_in(
        self, unit: int, table: Table, start: int, count: int, report: UnitReport
    ) -> list[int]:
        report.requests += 1
        rr = await self._read(unit, table, start, count)
        if rr is not None and not rr.isError():
            return list(range(start, start + count))
        if count == 1:
            return []
        half = count // 2
        return await self._readable_in(unit, table, start, half, report) + await self._readable_in(
            unit, table, start + half, count - half, report
        )

    async def _read(self, unit: int, table: Table, start: int, count: int) -> Any:
        c = self._client
        try:
            if table is Table.HOLDING_REGISTER:
                return await c.read_holding_registers(start, count=count, device_id=unit)
            if table is Table.INPUT_REGISTER:
                return await c.read_input_registers(start, count=count, device_id=unit)
            if table is Table.COIL:
                return await c.read_coils(start, count=count, device_id=unit)
            return await c.read_discrete_inputs(start, count=count, device_id=unit)
        except (TimeoutError, ModbusException, OSError):
            await self._reconnect()
            return None

    async def _reconnect(self) -> None:
        if not self._client.connected:
            await self._client.connect()
