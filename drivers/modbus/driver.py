"""Modbus TCP/RTU driver: one instance per connection (a TCP endpoint or a serial line),
polling every unit reached through it. The only module that imports pymodbus for clients.

Why one driver per connection: a Modbus TCP gateway in front of an RS-485 bus, or a serial
line itself, answers one request at a time. Units sharing it are polled in turn by one
scheduler, and a dead unit only costs its own timeouts, at its own backoff pace.

Per poll group of each unit, the reads are planned once (`plan.py`), executed in address
order, decoded with the pure codec and emitted as one batch. Failures are classified:

- the unit answered with a Modbus exception -> those points BAD with the exception named,
  the unit stays online (it is alive, the request was wrong or it is busy);
- no answer / connection refused / garbled frame -> the poll fails; after `down_after`
  consecutive failures the unit is DOWN, its points are emitted once as BAD, and it is
  retried with capped exponential backoff and jitter until it answers again.

A garbled frame (bytes arrived but no usable answer: malformed MBAP, wrong length, wrong unit
id, function code or transaction id, fewer values than asked) says so in `last_error` with the
first bytes received, is counted in `DeviceHealth.extra["bad_frames"]`, and drops the
connection: what is left in the receive buffer cannot be trusted to line up with the next
answer. pymodbus itself only says "no response received" in that case.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from drivers.base import DeviceHealth, DeviceState, Emit, PointSpec, ProbeResult
from drivers.modbus import codec
from drivers.modbus.config import (
    ModbusPoint,
    ModbusProfile,
    ModbusRtuDevice,
    ModbusTcpDevice,
    Table,
)
from drivers.modbus.plan import PlannedPoint, ReadRequest, plan_reads
from gateway.errors import DeviceError, TransportError, WriteRejected
from gateway.readings import Batch, Quality, Reading, Value, bad

log = logging.getLogger("millrace.modbus")

ModbusDeviceConfig = ModbusTcpDevice | ModbusRtuDevice

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def exception_reason(code: int) -> str:
    return f"modbus exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"


@dataclass(slots=True)
class _PointState:
    """Deadband memory of one point: what was last emitted and when."""

    value: Value = None
    quality: Quality | None = None
    at: float = 0.0


@dataclass(slots=True)
class _Unit:
    config: ModbusDeviceConfig
    profile: ModbusProfile
    plans: dict[str, list[ReadRequest]]
    health: DeviceHealth
    points: dict[str, ModbusPoint]
    state: dict[str, _PointState] = field(default_factory=dict)
    retry_at: float = 0.0  # loop time before which a DOWN unit is not polled
    backoff: float = 0.0

    @property
    def id(self) -> str:
        return self.config.id


class ModbusDriver:
    """Polls the units on one Modbus connection and emits their readings.

    Nothing is emitted after `run()` returns. `write()` and `probe()` may be called while
    `run()` polls: pymodbus serializes requests on the connection.
    """

    def __init__(
        self,
        units: Sequence[tuple[ModbusDeviceConfig, ModbusProfile]],
        emit: Emit,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if not units:
            raise ValueError("a Modbus driver needs at least one unit")
        keys = {cfg.connection_key for cfg, _ in units}
        if len(keys) != 1:
            raise ValueError(f"units of one driver must share a connection (got {sorted(keys)})")
        self.key = keys.pop()
        self._emit = emit
        self._clock = clock
        self._rng = rng or random.Random()
        self._units: dict[str, _Unit] = {}
        for cfg, profile in units:
            groups: dict[str, list[ModbusPoint]] = {}
            for point in profile.points:
                groups.setdefault(point.poll_group, []).append(point)
            plans = {
                group: plan_reads(
                    cfg.id,
                    pts,
                    max_registers=cfg.max_registers_per_read,
                    max_bits=cfg.max_bits_per_read,
                    max_gap=cfg.max_gap,
                )
                for group, pts in groups.items()
            }
            health = DeviceHealth(
                device=cfg.id,
                protocol=cfg.protocol,
                endpoint=f"{self.key}#{cfg.unit_id}",
                points=len(profile.points),
                state=DeviceState.STARTING if cfg.enabled else DeviceState.DISABLED,
            )
            self._units[cfg.id] = _Unit(
                config=cfg,
                profile=profile,
                plans=plans,
                health=health,
                points={p.name: p for p in profile.points},
            )
        first = units[0][0]
        self._timeout = max(cfg.timeout for cfg, _ in units)
        self._retries = max(cfg.retries for cfg, _ in units)
        self._first = first
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._write_lock = asyncio.Lock()
        self._running = False
        self._rx_head: bytes | None = None  # first bytes received since the last request

    # -- public interface ----------------------------------------------------------------

    @property
    def devices(self) -> list[str]:
        return list(self._units)

    def health(self) -> list[DeviceHealth]:
        return [u.health for u in self._units.values()]

    def points(self) -> list[PointSpec]:
        return [
            PointSpec(
                id=f"{unit.id}.{p.name}",
                device=unit.id,
                name=p.name,
                source=unit.id,
                unit=p.unit,
                data_type=str(p.data_type),
                data_class=p.data_class,
                writable=p.writable,
                description=p.description,
                min=p.min,
                max=p.max,
            )
            for unit in self._units.values()
            for p in unit.profile.points
        ]

    async def run(self) -> None:
        """Poll every enabled unit's groups on their intervals until cancelled."""
        loop = asyncio.get_running_loop()
        heap: list[tuple[float, int, str, str]] = []
        seq = 0
        start = loop.time()
        for unit in self._units.values():
            if not unit.config.enabled:
                continue
            for group in unit.plans:
                # Spread first polls over the interval so 500 units do not fire at once.
                interval = unit.config.interval_for(group)
                first = start + self._rng.uniform(0, min(interval, 1.0))
                heapq.heappush(heap, (first, seq, unit.id, group))
                seq += 1
        if not heap:
            await asyncio.Event().wait()  # nothing enabled: idle until cancelled
        self._running = True
        try:
            while True:
                due, _, unit_id, group = heapq.heappop(heap)
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                unit = self._units[unit_id]
                interval = unit.config.interval_for(group)
                now = loop.time()
                if unit.health.state is not DeviceState.DOWN or now >= unit.retry_at:
                    await self._poll(unit, group)
                nxt = due + interval
                now = loop.time()
                if nxt <= now:  # overran: skip missed ticks rather than bursting
                    unit.health.overruns += 1
                    nxt = now + interval - ((now - due) % interval)
                heapq.heappush(heap, (nxt, seq, unit_id, group))
                seq += 1
        finally:
            self._running = False

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def write(self, device: str, point: str, value: Value) -> None:
        """Check, convert and write one point. Raises WriteRejected before any I/O when the
        point is unknown, read-only, outside its min/max, or the value does not fit."""
        unit = self._units.get(device)
        if unit is None:
            raise WriteRejected(f"device {device}: not on this connection")
        spec = unit.points.get(point)
        if spec is None:
            raise WriteRejected(f"device {device} point {point}: no such point")
        if not spec.writable:
            raise WriteRejected(f"device {device} point {point}: not writable")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # NaN compares false with min and max
                raise WriteRejected(f"device {device} point {point}: {value} is not finite")
            if spec.min is not None and value < spec.min:
                raise WriteRejected(f"device {device} point {point}: {value} < min {spec.min}")
            if spec.max is not None and value > spec.max:
                raise WriteRejected(f"device {device} point {point}: {value} > max {spec.max}")
        pc = spec.codec()
        try:
            if spec.table is Table.COIL:
                registers: list[int] = [1 if codec.from_engineering(value, pc) else 0]
            elif spec.data_type is codec.DataType.BIT:
                codec.from_engineering(value, pc)
                registers = []
            else:
                registers = codec.encode(value, pc)
        except codec.CodecError as exc:
            raise WriteRejected(f"device {device} point {point}: {exc}") from exc

        uid = unit.config.unit_id
        async with self._write_lock:
            client = await self._connected()
            try:
                if spec.table is Table.COIL:
                    rr = await client.write_coil(spec.address, bool(registers[0]), device_id=uid)
                elif spec.data_type is codec.DataType.BIT:
                    current = await client.read_holding_registers(
                        spec.address, count=1, device_id=uid
                    )
                    _raise_for_exception(current, device, point)
                    new = codec.set_bit(current.registers[0], bool(value), pc)
                    rr = await client.write_register(spec.address, new, device_id=uid)
                elif len(registers) == 1:
                    rr = await client.write_register(spec.address, registers[0], device_id=uid)
                else:
                    rr = await client.write_registers(spec.address, registers, device_id=uid)
            except (TimeoutError, ModbusException, OSError) as exc:
                raise TransportError(f"device {device} point {point}: write failed: {exc}") from exc
            _raise_for_exception(rr, device, point)
        log.info("point written", extra={"device": device, "point": point, "value": value})

    async def probe(self) -> list[ProbeResult]:
        """Read every point of every enabled unit once; merged reads first, then point by
        point inside a request that failed, so each FAIL names its own reason."""
        results: list[ProbeResult] = []
        for unit in self._units.values():
            if not unit.config.enabled:
                continue
            silent: str | None = None  # once a unit does not answer, do not wait per point
            for requests in unit.plans.values():
                for req in requests:
                    if silent is not None:
                        results += [
                            ProbeResult(unit.id, p.point.name, False, reason=silent)
                            for p in req.points
                        ]
                        continue
                    try:
                        data = await self._read(unit, req)
                    except (DeviceError, TransportError) as exc:
                        if isinstance(exc, TransportError):
                            silent = str(exc)
                        if len(req.points) == 1 or isinstance(exc, TransportError):
                            results += [
                                ProbeResult(unit.id, p.point.name, False, reason=str(exc))
                                for p in req.points
                            ]
                            continue
                        for planned in req.points:
                            results.append(await self._probe_one(unit, req.table, planned))
                        continue
                    results += [_probe_result(unit.id, p, data) for p in req.points]
        return results

    # -- polling -------------------------------------------------------------------------

    async def _poll(self, unit: _Unit, group: str) -> None:
        readings: Batch = []
        failure: TransportError | None = None
        refused: str | None = None
        for req in unit.plans[group]:
            try:
                data = await self._read(unit, req)
            except DeviceError as exc:
                refused = refused or str(exc)
                ts = self._clock()
                readings += [bad(p.point_id, str(exc), ts) for p in req.points]
                self._forget(unit, req.points)
                continue
            except TransportError as exc:
                failure = exc
                break
            readings += self._decode(unit, req, data, self._clock())
        unit.health.points_read += len(readings)
        if failure is None:
            self._succeeded(unit, refused)
        else:
            readings += self._failed(unit, failure)
        if readings:
            self._emit(readings)

    async def _read(self, unit: _Unit, req: ReadRequest) -> Sequence[int] | Sequence[bool]:
        client = await self._connected()
        uid = unit.config.unit_id
        unit.health.requests += 1
        try:
            if req.table is Table.HOLDING_REGISTER:
                rr = await client.read_holding_registers(req.start, count=req.count, device_id=uid)
            elif req.table is Table.INPUT_REGISTER:
                rr = await client.read_input_registers(req.start, count=req.count, device_id=uid)
            elif req.table is Table.COIL:
                rr = await client.read_coils(req.start, count=req.count, device_id=uid)
            else:
                rr = await client.read_discrete_inputs(req.start, count=req.count, device_id=uid)
        except (TimeoutError, ModbusException, OSError) as exc:
            head = self._rx_head
            if head is not None and not isinstance(exc, OSError):
                detail = f"no valid answer in what it sent ({head.hex(' ')})"
                raise self._bad_frame(unit, detail) from exc
            raise TransportError(f"{_describe(exc)}") from exc
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            raise DeviceError(exception_reason(code), code=code)
        if req.table.is_bits:
            bits = rr.bits
            if len(bits) < req.count:
                raise self._bad_frame(unit, f"short answer: {len(bits)} bits for {req.count}")
            return bits[: req.count]
        regs = rr.registers
        if len(regs) != req.count:
            raise self._bad_frame(unit, f"short answer: {len(regs)} registers for {req.count}")
        return regs

    def _bad_frame(self, unit: _Unit, detail: str) -> TransportError:
        """Count an unusable answer and drop the connection, whose buffer may still hold the
        rest of it; the caller raises the returned error (the poll fails as for no answer)."""
        extra = unit.health.extra
        extra["bad_frames"] = extra.get("bad_frames", 0.0) + 1
        if self._client is not None:
            self._client.close()
        return TransportError(f"bad frame from unit {unit.config.unit_id}: {detail}")

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's raw-bytes hook: remembers whether (and what) the peer sent since the
        last request, so a failed read can tell a garbled answer from silence."""
        self._rx_head = None if sending else bytes(data[:16])
        return data

    async def _connected(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        client = self._client
        if client is not None and client.connected:
            return client
        if client is None:
            client = self._client = self._make_client()
        else:
            self._units_health_reconnect()
        try:
            ok = await client.connect()
        except (ModbusException, OSError) as exc:
            raise TransportError(f"cannot connect to {self.key}: {_describe(exc)}") from exc
        if not ok:
            raise TransportError(f"cannot connect to {self.key}")
        return client

    def _units_health_reconnect(self) -> None:
        for unit in self._units.values():
            unit.health.reconnects += 1

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        cfg = self._first
        # reconnect_delay=0: the driver owns reconnects and their backoff, not pymodbus.
        if isinstance(cfg, ModbusTcpDevice):
            return AsyncModbusTcpClient(
                cfg.host,
                port=cfg.port,
                timeout=self._timeout,
                retries=self._retries,
                reconnect_delay=0,
                name=self.key,
                trace_packet=self._trace_packet,
            )
        return AsyncModbusSerialClient(
            cfg.port,
            framer=FramerType.RTU,
            baudrate=cfg.baudrate,
            parity=cfg.parity,
            stopbits=cfg.stopbits,
            bytesize=cfg.bytesize,
            timeout=self._timeout,
            retries=self._retries,
            reconnect_delay=0,
            name=self.key,
            trace_packet=self._trace_packet,
        )

    def _decode(
        self, unit: _Unit, req: ReadRequest, data: Sequence[int] | Sequence[bool], ts: float
    ) -> Batch:
        out: Batch = []
        heartbeat = unit.config.heartbeat
        for planned in req.points:
            value, quality, reason = _decode_point(planned, data)
            deadband = planned.point.deadband
            if deadband is not None:
                st = unit.state.get(planned.point_id)
                if st is None:
                    st = unit.state[planned.point_id] = _PointState()
                elif (
                    st.quality is quality
                    and ts - st.at < heartbeat
                    and not _changed(st.value, value, deadband)
                ):
                    continue
                st.value, st.quality, st.at = value, quality, ts
            out.append(Reading(planned.point_id, value, quality, ts, None, reason))
        return out

    def _forget(self, unit: _Unit, points: Sequence[PlannedPoint]) -> None:
        for p in points:
            unit.state.pop(p.point_id, None)

    def _succeeded(self, unit: _Unit, refused: str | None) -> None:
        """The unit answered every request (some perhaps with a Modbus exception: it is
        alive, so it stays online, and the exception shows as its last error)."""
        health = unit.health
        now = self._clock()
        health.polls_ok += 1
        health.last_contact = now
        health.consecutive_failures = 0
        health.last_error = refused
        unit.backoff = 0.0
        if health.state is not DeviceState.ONLINE:
            if health.state is DeviceState.DOWN:
                log.info(
                    "device recovered",
                    extra={"device": unit.id, "endpoint": health.endpoint},
                )
            health.state = DeviceState.ONLINE
            health.since = now

    def _failed(self, unit: _Unit, exc: Exception) -> Batch:
        health = unit.health
        now = self._clock()
        health.polls_failed += 1
        health.consecutive_failures += 1
        health.last_error = str(exc)
        cfg = unit.config
        loop_now = asyncio.get_running_loop().time()
        if health.state is DeviceState.DOWN:
            unit.backoff = min(max(unit.backoff * 2, cfg.backoff_initial), cfg.backoff_max)
            unit.retry_at = loop_now + self._jitter(unit.backoff)
            return []
        if health.consecutive_failures < cfg.down_after:
            return []
        unit.backoff = cfg.backoff_initial
        unit.retry_at = loop_now + self._jitter(unit.backoff)
        health.state = DeviceState.DOWN
        health.since = now
        log.warning(
            "device down",
            extra={"device": unit.id, "endpoint": health.endpoint, "error": str(exc)},
        )
        unit.state.clear()
        reason = f"device down: {exc}"
        return [bad(f"{unit.id}.{p.name}", reason, now) for p in unit.profile.points]

    def _jitter(self, delay: float) -> float:
        """Full jitter on the upper half: spreads retries of many units without ever
        retrying sooner than half the backoff."""
        return delay * (0.5 + self._rng.random() * 0.5)

    async def _probe_one(self, unit: _Unit, table: Table, planned: PlannedPoint) -> ProbeResult:
        single = ReadRequest(table, planned.point.address, planned.width)
        single.points.append(
            PlannedPoint(planned.point, planned.point_id, 0, planned.width, planned.codec)
        )
        try:
            data = await self._read(unit, single)
        except (DeviceError, TransportError) as exc:
            return ProbeResult(unit.id, planned.point.name, False, reason=str(exc))
        return _probe_result(unit.id, single.points[0], data)


def _probe_result(
    device: str, planned: PlannedPoint, data: Sequence[int] | Sequence[bool]
) -> ProbeResult:
    value, quality, reason = _decode_point(planned, data)
    return ProbeResult(
        device,
        planned.point.name,
        quality is not Quality.BAD,
        value,
        planned.point.unit,
        reason or "",
    )


def _decode_point(
    planned: PlannedPoint, data: Sequence[int] | Sequence[bool]
) -> tuple[Value, Quality, str | None]:
    """One point's value out of a request's answer, with its quality and reason."""
    point = planned.point
    try:
        if point.table.is_bits:
            value: Value = bool(data[planned.offset])
        else:
            regs = data[planned.offset : planned.offset + planned.width]
            value = codec.decode(regs, planned.codec)  # type: ignore[arg-type]
    except codec.CodecError as exc:
        return None, Quality.BAD, f"cannot decode: {exc}"
    if isinstance(value, float) and not math.isfinite(value):
        return None, Quality.BAD, f"device sent {value}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if point.min is not None and value < point.min:
            return value, Quality.UNCERTAIN, f"below declared min {point.min}"
        if point.max is not None and value > point.max:
            return value, Quality.UNCERTAIN, f"above declared max {point.max}"
    return value, Quality.GOOD, None


def _changed(old: Value, new: Value, deadband: float) -> bool:
    if isinstance(new, int | float) and isinstance(old, int | float):
        return abs(new - old) > deadband
    return new != old


def _raise_for_exception(rr: object, device: str, point: str) -> None:
    if getattr(rr, "isError", lambda: False)():
        code = getattr(rr, "exception_code", 0)
        raise DeviceError(f"device {device} point {point}: {exception_reason(code)}", code=code)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer (timeout)"
    text = str(exc).strip() or type(exc).__name__
    # pymodbus prefixes messages with "Modbus Error: [Input/Output] ..."; keep the useful part.
    return text.replace("Modbus Error: ", "")
