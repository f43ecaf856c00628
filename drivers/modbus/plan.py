"""Pure request planning: which Modbus reads fetch a device's points in as few requests as
the device allows, and how each answer is split back into points. No I/O.

Points are grouped by (poll group, table), sorted by address, and merged while the merged
span stays within the per-request maximum and the hole between neighbours is at most
`max_gap` unused addresses. Points may overlap (several `bit` points in one register).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from drivers.modbus.codec import PointCodec
from drivers.modbus.config import ModbusPoint, Table


@dataclass(frozen=True, slots=True)
class PlannedPoint:
    """A point's place in a read: `offset` registers (or bits) from the request's start."""

    point: ModbusPoint
    point_id: str  # qualified `<device>.<point>`
    offset: int
    width: int
    codec: PointCodec


@dataclass(slots=True)
class ReadRequest:
    table: Table
    start: int
    count: int
    points: list[PlannedPoint] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.start + self.count


class PlanError(ValueError):
    """A point cannot be read within the device's request limits."""


def plan_reads(
    device_id: str,
    points: Iterable[ModbusPoint],
    *,
    max_registers: int,
    max_bits: int,
    max_gap: int = 0,
) -> list[ReadRequest]:
    """Merge `points` (all of one poll group) into read requests.

    Returned requests are ordered by table then address, so a poll walks the address space
    once. Raises PlanError for a point wider than the device's per-request maximum.
    """
    by_table: dict[Table, list[ModbusPoint]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)

    requests: list[ReadRequest] = []
    for table in Table:
        table_points = sorted(by_table.get(table, ()), key=lambda p: (p.address, p.name))
        limit = max_bits if table.is_bits else max_registers
        current: ReadRequest | None = None
        for point in table_points:
            width = point.width
            if width > limit:
                raise PlanError(
                    f"device {device_id} point {point.name}: {width} registers exceed "
                    f"max_registers_per_read {limit}"
                )
            end = point.address + width
            if (
                current is not None
                and point.address <= current.end + max_gap
                and max(end, current.end) - current.start <= limit
            ):
                current.count = max(end, current.end) - current.start
            else:
                current = ReadRequest(table, point.address, width)
                requests.append(current)
            current.points.append(
                PlannedPoint(
                    point=point,
                    point_id=f"{device_id}.{point.name}",
                    offset=point.address - current.start,
                    width=width,
                    codec=point.codec(),
                )
            )
    return requests


def split_registers(request: ReadRequest, registers: Sequence[int]) -> list[Sequence[int]]:
    """The slice of an answer that belongs to each planned point, in `request.points` order."""
    return [registers[p.offset : p.offset + p.width] for p in request.points]
