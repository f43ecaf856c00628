"""Pure Modbus value codec: registers <-> engineering values. No I/O, no pymodbus.

Transform order on read (the write path is the exact inverse, applied backwards):

    registers (as received, one 16-bit int each)
      -> order      ABCD / BADC / CDAB / DCBA puts the bytes in big-endian order
      -> type       bytes interpreted as the point's data type (the "raw" value)
      -> scale      raw * scale
      -> offset     + offset                                   = engineering value

Byte/word orders, for a 32-bit value whose big-endian bytes are A B C D:

    ABCD  big-endian words, big-endian bytes       (Modbus standard)
    BADC  big-endian words, bytes swapped in each register
    CDAB  word-swapped ("little-endian word order"), big-endian bytes  (very common in PLCs)
    DCBA  fully little-endian

For 64-bit values "word-swapped" means all four registers in reverse order. For 16-bit types
ABCD == CDAB and BADC == DCBA. Strings honour only the byte swap (BADC/DCBA swap the two
characters of each register); the order of registers in a string is always first-to-last.

`bit` reads one bit (0 = least significant) of a 16-bit register after byte ordering.
Every fact about a data type (how many registers, integer bounds, which options apply)
lives in `TYPES`, not in scattered conditionals.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.readings import Value


class CodecError(ValueError):
    """A value cannot be decoded from, or encoded into, registers."""


class DataType(enum.StrEnum):
    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    UINT64 = "uint64"
    INT64 = "int64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    BOOL = "bool"
    BIT = "bit"
    STRING = "string"


class Order(enum.StrEnum):
    ABCD = "ABCD"
    BADC = "BADC"
    CDAB = "CDAB"
    DCBA = "DCBA"

    @property
    def swaps_bytes(self) -> bool:
        return self in (Order.BADC, Order.DCBA)

    @property
    def swaps_words(self) -> bool:
        return self in (Order.CDAB, Order.DCBA)


class Kind(enum.Enum):
    INTEGER = "integer"
    FLOAT = "float"
    BOOL = "bool"
    STRING = "string"


@dataclass(frozen=True, slots=True)
class TypeSpec:
    """Everything the gateway knows about one data type.

    `registers` is None where the point's `length` decides (strings). `bit_tables` says the
    type may live in the single-bit tables (coils, discrete inputs).
    """

    registers: int | None
    kind: Kind
    struct_char: str = ""
    minimum: int | None = None
    maximum: int | None = None
    bit_tables: bool = False
    needs_bit: bool = False
    needs_length: bool = False


TYPES: dict[DataType, TypeSpec] = {
    DataType.UINT16: TypeSpec(1, Kind.INTEGER, "H", 0, 2**16 - 1),
    DataType.INT16: TypeSpec(1, Kind.INTEGER, "h", -(2**15), 2**15 - 1),
    DataType.UINT32: TypeSpec(2, Kind.INTEGER, "I", 0, 2**32 - 1),
    DataType.INT32: TypeSpec(2, Kind.INTEGER, "i", -(2**31), 2**31 - 1),
    DataType.UINT64: TypeSpec(4, Kind.INTEGER, "Q", 0, 2**64 - 1),
    DataType.INT64: TypeSpec(4, Kind.INTEGER, "q", -(2**63), 2**63 - 1),
    DataType.FLOAT32: TypeSpec(2, Kind.FLOAT, "f"),
    DataType.FLOAT64: TypeSpec(4, Kind.FLOAT, "d"),
    DataType.BOOL: TypeSpec(1, Kind.BOOL, bit_tables=True),
    DataType.BIT: TypeSpec(1, Kind.BOOL, needs_bit=True),
    DataType.STRING: TypeSpec(None, Kind.STRING, needs_length=True),
}

MAX_STRING_LENGTH = 250  # characters; a 125-register read holds 250 bytes


@dataclass(frozen=True, slots=True)
class PointCodec:
    """How one point's registers become a value. Built once per point at start-up."""

    data_type: DataType
    order: Order = Order.ABCD
    scale: float = 1.0
    offset: float = 0.0
    bit: int | None = None
    length: int | None = None  # string length in characters (bytes)

    def __post_init__(self) -> None:
        spec = TYPES[self.data_type]
        if spec.needs_bit and (self.bit is None or not 0 <= self.bit <= 15):
            raise CodecError(f"{self.data_type} needs bit 0..15 (got {self.bit})")
        if not spec.needs_bit and self.bit is not None:
            raise CodecError(f"bit applies only to data type 'bit' (got {self.data_type})")
        if spec.needs_length and (self.length is None or not 1 <= self.length <= MAX_STRING_LENGTH):
            raise CodecError(
                f"string needs length 1..{MAX_STRING_LENGTH} characters (got {self.length})"
            )
        if not spec.needs_length and self.length is not None:
            raise CodecError(f"length applies only to strings (got {self.data_type})")
        if self.scale == 0 or not math.isfinite(self.scale):
            raise CodecError(f"scale must be a finite non-zero number (got {self.scale})")
        if not math.isfinite(self.offset):
            raise CodecError(f"offset must be finite (got {self.offset})")

    @property
    def registers(self) -> int:
        return register_count(self.data_type, self.length)

    @property
    def is_identity(self) -> bool:
        return self.scale == 1 and self.offset == 0


def register_count(data_type: DataType, length: int | None = None) -> int:
    """How many 16-bit registers a value of this type occupies."""
    spec = TYPES[data_type]
    if spec.registers is not None:
        return spec.registers
    if length is None:
        raise CodecError(f"{data_type} needs a length")
    return (length + 1) // 2


def _to_bytes(registers: Sequence[int], order: Order, *, words: bool = True) -> bytes:
    regs = list(reversed(registers)) if words and order.swaps_words else list(registers)
    endian = "<" if order.swaps_bytes else ">"
    try:
        return struct.pack(f"{endian}{len(regs)}H", *regs)
    except struct.error as exc:
        raise CodecError(f"registers must be integers 0..65535 (got {list(registers)})") from exc


def _from_bytes(data: bytes, order: Order, *, words: bool = True) -> list[int]:
    endian = "<" if order.swaps_bytes else ">"
    regs = list(struct.unpack(f"{endian}{len(data) // 2}H", data))
    if words and order.swaps_words:
        regs.reverse()
    return regs


def decode_raw(registers: Sequence[int], codec: PointCodec) -> Value:
    """Registers -> raw typed value (before scale and offset)."""
    dt = codec.data_type
    spec = TYPES[dt]
    need = codec.registers
    if len(registers) != need:
        raise CodecError(f"{dt} needs {need} register(s), got {len(registers)}")
    if spec.kind is Kind.STRING:
        data = _to_bytes(registers, codec.order, words=False)[: codec.length]
        return data.split(b"\x00", 1)[0].decode("utf-8", errors="replace").rstrip(" ")
    data = _to_bytes(registers, codec.order)
    if dt is DataType.BOOL:
        return registers[0] != 0
    if dt is DataType.BIT:
        (word,) = struct.unpack(">H", data)
        return bool((word >> (codec.bit or 0)) & 1)
    (raw,) = struct.unpack(">" + spec.struct_char, data)
    return raw


def to_engineering(raw: Value, codec: PointCodec) -> Value:
    """Raw -> engineering value. Integers stay integers when scale and offset are identity."""
    if codec.is_identity or isinstance(raw, bool | str) or raw is None:
        return raw
    return raw * codec.scale + codec.offset


def decode(registers: Sequence[int], codec: PointCodec) -> Value:
    """Registers -> engineering value: order, then type, then scale, then offset."""
    return to_engineering(decode_raw(registers, codec), codec)


def decode_bit(bit: bool | int, codec: PointCodec) -> bool:
    """A coil or discrete input -> bool (those tables only hold `bool` points)."""
    if codec.data_type is not DataType.BOOL:
        raise CodecError(f"coils and discrete inputs hold bool, not {codec.data_type}")
    return bool(bit)


def from_engineering(value: Value, codec: PointCodec) -> Value:
    """Engineering value -> raw typed value, checked against the type's range.

    Integers are rounded to the nearest raw step: a setpoint of 12.34 with scale 0.1 writes
    raw 123. A value that does not fit the type raises `CodecError` before any I/O.
    """
    dt = codec.data_type
    spec = TYPES[dt]
    if spec.kind is Kind.STRING:
        if not isinstance(value, str):
            raise CodecError(f"{dt} needs text (got {value!r})")
        encoded = value.encode("utf-8")
        if len(encoded) > (codec.length or 0):
            raise CodecError(f"text is {len(encoded)} bytes, longer than length {codec.length}")
        return value
    if spec.kind is Kind.BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise CodecError(f"{dt} needs true/false or 0/1 (got {value!r})")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"{dt} needs a number (got {value!r})")
    if isinstance(value, float) and not math.isfinite(value):
        if spec.kind is Kind.FLOAT and codec.is_identity:
            return value
        raise CodecError(f"{dt} cannot hold {value!r} here")
    try:  # a huge int, or scaling past the float range, must not leak OverflowError or inf
        raw: float | int = value if codec.is_identity else (value - codec.offset) / codec.scale
        if spec.kind is Kind.FLOAT:
            raw = float(raw)
            if not math.isfinite(raw) or (
                dt is DataType.FLOAT32 and abs(raw) > 3.4028234663852886e38
            ):
                raise CodecError(f"{value!r} is out of range for {dt}")
            return raw
        raw_int = raw if isinstance(raw, int) else round(raw)
    except OverflowError:
        raise CodecError(f"{value!r} is out of range for {dt}") from None
    assert spec.minimum is not None and spec.maximum is not None
    if not spec.minimum <= raw_int <= spec.maximum:
        raise CodecError(
            f"{value!r} is out of range for {dt} (raw {raw_int} not in "
            f"{spec.minimum}..{spec.maximum})"
        )
    return raw_int


def encode_raw(raw: Value, codec: PointCodec) -> list[int]:
    """Raw typed value -> registers, in the point's order. Inverse of `decode_raw`.

    `bit` points cannot be encoded alone (the other 15 bits belong to someone else):
    use `set_bit` on the register read back from the device.
    """
    dt = codec.data_type
    spec = TYPES[dt]
    if spec.kind is Kind.STRING:
        assert isinstance(raw, str)
        data = raw.encode("utf-8").ljust(codec.registers * 2, b"\x00")
        return _from_bytes(data, codec.order, words=False)
    if dt is DataType.BOOL:  # a 16-bit 0 or 1, byte-ordered like uint16
        return _from_bytes(struct.pack(">H", 1 if raw else 0), codec.order)
    if dt is DataType.BIT:
        raise CodecError("a bit point is written with set_bit on the current register")
    data = struct.pack(">" + spec.struct_char, raw)
    return _from_bytes(data, codec.order)


def encode(value: Value, codec: PointCodec) -> list[int]:
    """Engineering value -> registers: the exact inverse of `decode`."""
    return encode_raw(from_engineering(value, codec), codec)


def set_bit(register: int, value: bool, codec: PointCodec) -> int:
    """Return `register` with the point's bit set or cleared, honouring the byte order."""
    if codec.data_type is not DataType.BIT or codec.bit is None:
        raise CodecError(f"set_bit needs a bit point (got {codec.data_type})")
    (word,) = struct.unpack(">H", _to_bytes([register], codec.order))
    word = word | (1 << codec.bit) if value else word & ~(1 << codec.bit)
    return _from_bytes(struct.pack(">H", word), codec.order)[0]
