"""A Modbus TCP server that answers badly on purpose: the gateway's hostile-input test peer.

pymodbus's own server can only send well-formed frames, so this one speaks MBAP over a raw
asyncio socket and can break every part of an answer on demand. Each request is decoded
properly and the values come from the same `SimulatedUnit`s the plant simulator serves; the
*answer* is then mangled according to the unit's `HostileMode`:

* ``normal``            a correct answer (the baseline: the same server, nothing broken);
* ``garbage``           random bytes instead of a frame;
* ``wrong_length``      the MBAP length field disagrees with the PDU that follows;
* ``byte_count``        the PDU's byte count disagrees with the registers sent;
* ``short``             a well-formed answer carrying fewer registers (or bits) than asked;
* ``wrong_unit``        the answer names another unit id;
* ``wrong_function``    the answer carries another function code;
* ``wrong_transaction`` the answer carries another transaction id;
* ``bad_protocol``      the MBAP protocol id is not 0;
* ``bad_exception``     an exception response with an undefined exception code (0x7F);
* ``truncated``         half a frame, then the connection is closed;
* ``mixed``             one of the above per request, drawn from a seeded generator.

Writes are refused with ILLEGAL FUNCTION: this peer exists to attack the read path.
`answers` counts what was actually sent, per mode, so a test can prove that the hostile
frames it meant to send were sent. Modes change per unit (or for all units) while clients are
connected. Run alone::

    python -m simulators.modbus_plant --hostile garbage --port 5020
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections import Counter
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING

from drivers.modbus.config import Table

if TYPE_CHECKING:
    from simulators.modbus_plant import SimulatedUnit

__all__ = ["BROKEN_MODES", "HostileModbusServer", "HostileMode"]


class HostileMode(StrEnum):
    NORMAL = "normal"
    GARBAGE = "garbage"
    WRONG_LENGTH = "wrong_length"
    BYTE_COUNT = "byte_count"
    SHORT = "short"
    WRONG_UNIT = "wrong_unit"
    WRONG_FUNCTION = "wrong_function"
    WRONG_TRANSACTION = "wrong_transaction"
    BAD_PROTOCOL = "bad_protocol"
    BAD_EXCEPTION = "bad_exception"
    TRUNCATED = "truncated"
    MIXED = "mixed"


#: Every mode that breaks the answer (what `mixed` draws from).
BROKEN_MODES: tuple[HostileMode, ...] = tuple(
    m for m in HostileMode if m not in (HostileMode.NORMAL, HostileMode.MIXED)
)

_READ_TABLES: dict[int, Table] = {
    1: Table.COIL,
    2: Table.DISCRETE_INPUT,
    3: Table.HOLDING_REGISTER,
    4: Table.INPUT_REGISTER,
}
_ILLEGAL_FUNCTION, _ILLEGAL_ADDRESS, _GATEWAY_NO_RESPONSE = 1, 2, 11
_MAX_PDU = 253  # the Modbus PDU limit; a client announcing more is dropped


def _mbap(tid: int, unit: int, pdu: bytes, *, length: int | None = None, proto: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, proto, len(pdu) + 1 if length is None else length, unit) + pdu


def _read_pdu(fc: int, values: list[int] | list[bool]) -> bytes:
    if fc in (1, 2):
        packed = bytearray((len(values) + 7) // 8)
        for i, bit in enumerate(values):
            if bit:
                packed[i // 8] |= 1 << (i % 8)
        return bytes([fc, len(packed)]) + bytes(packed)
    return bytes([fc, 2 * len(values)]) + struct.pack(f">{len(values)}H", *values)


class HostileModbusServer:
    """Serves `units` over Modbus TCP, mangling answers per unit by `HostileMode`.

    Start with `await server.start()` (port 0 picks a free one, read `server.port`), stop
    with `await server.stop()`, which closes every connection. `set_mode()` may be called at
    any time from the event loop's thread.
    """

    def __init__(
        self,
        units: Mapping[int, SimulatedUnit],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: HostileMode | str = HostileMode.GARBAGE,
        seed: int = 0,
    ) -> None:
        self.units = units
        self.host = host
        self.port = port
        self._all = HostileMode(mode)
        self._per_unit: dict[int, HostileMode] = {}
        self._rng = random.Random(seed)
        self.answers: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    # -- modes -----------------------------------------------------------------------------

    def set_mode(self, mode: HostileMode | str, *, unit: int | None = None) -> None:
        """Mode for one unit, or for every unit (clearing per-unit modes) when unit is None."""
        if unit is None:
            self._all = HostileMode(mode)
            self._per_unit.clear()
        else:
            self._per_unit[unit] = HostileMode(mode)

    @property
    def mode(self) -> HostileMode:
        """The mode of every unit without a mode of its own."""
        return self._all

    def mode_for(self, unit: int) -> HostileMode:
        return self._per_unit.get(unit, self._all)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Closing the transports ends each handler at its next read. Cancelling the handler
        # tasks instead makes asyncio's start_server callback log a spurious error (3.11).
        for writer in self._conns.values():
            writer.transport.abort()
        tasks = list(self._conns)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2.0)

    # -- one connection --------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        try:
            while True:
                header = await reader.readexactly(7)
                tid, _proto, length, unit = struct.unpack(">HHHB", header)
                if not 2 <= length <= _MAX_PDU + 1:
                    return  # not Modbus: hang up, like a real device would
                pdu = await reader.readexactly(length - 1)
                frame, close = self._answer(tid, unit, pdu)
                writer.write(frame)
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self._conns.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, tid: int, unit: int, pdu: bytes) -> tuple[bytes, bool]:
        """The frame to send for one request, and whether to hang up after it."""
        fc = pdu[0]
        sim = self.units.get(unit)
        if sim is None:
            return _mbap(tid, unit, bytes([fc | 0x80, _GATEWAY_NO_RESPONSE])), False
        table = _READ_TABLES.get(fc)
        if table is None or len(pdu) != 5:
            return _mbap(tid, unit, bytes([fc | 0x80, _ILLEGAL_FUNCTION])), False
        address, count = struct.unpack(">HH", pdu[1:5])
        values = sim.read(table, address, count)
        if not isinstance(values, list):
            return _mbap(tid, unit, bytes([fc | 0x80, int(values)])), False
        mode = self.mode_for(unit)
        if mode is HostileMode.MIXED:
            mode = self._rng.choice(BROKEN_MODES)
        self.answers[mode] += 1
        return self._mangle(mode, tid, unit, fc, values)

    def _mangle(
        self, mode: HostileMode, tid: int, unit: int, fc: int, values: list[int] | list[bool]
    ) -> tuple[bytes, bool]:
        rng = self._rng
        good = _read_pdu(fc, values)
        match mode:
            case HostileMode.NORMAL:
                return _mbap(tid, unit, good), False
            case HostileMode.GARBAGE:
                return rng.randbytes(rng.randint(1, 64)), False
            case HostileMode.WRONG_LENGTH:
                wrong = len(good) + 1 + rng.choice((-2, -1, 1, 3, 40))
                return _mbap(tid, unit, good, length=max(wrong, 0)), False
            case HostileMode.BYTE_COUNT:
                bad_count = (good[1] + rng.choice((1, 2, 3, -1))) % 256
                return _mbap(tid, unit, bytes([fc, bad_count]) + good[2:]), False
            case HostileMode.SHORT:
                return _mbap(tid, unit, _read_pdu(fc, values[: len(values) // 2])), False
            case HostileMode.WRONG_UNIT:
                return _mbap(tid, (unit + 1 + rng.randint(0, 200)) % 256, good), False
            case HostileMode.WRONG_FUNCTION:
                other = rng.choice([f for f in (1, 2, 3, 4, 5, 6, 16, 43, 99) if f != fc])
                return _mbap(tid, unit, bytes([other]) + good[1:]), False
            case HostileMode.WRONG_TRANSACTION:
                return _mbap((tid + 1 + rng.randint(0, 1000)) % 65536, unit, good), False
            case HostileMode.BAD_PROTOCOL:
                return _mbap(tid, unit, good, proto=rng.randint(1, 65535)), False
            case HostileMode.BAD_EXCEPTION:
                return _mbap(tid, unit, bytes([fc | 0x80, 0x7F])), False
            case HostileMode.TRUNCATED:
                frame = _mbap(tid, unit, good)
                return frame[: max(1, len(frame) // 2)], True
        raise AssertionError(f"unhandled mode {mode}")
