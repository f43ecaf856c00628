"""Tests for the pure Modbus codec (drivers/modbus/codec.py).

The golden tables are written by hand from the big-endian bytes of each value and the four
orders (ABCD, BADC, CDAB, DCBA) as the codec's module docstring defines them. They are never
produced by calling the codec, so a symmetric bug in encode and decode cannot hide.
"""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import (
    MAX_STRING_LENGTH,
    TYPES,
    CodecError,
    DataType,
    Kind,
    Order,
    PointCodec,
    decode,
    decode_bit,
    decode_raw,
    encode,
    encode_raw,
    from_engineering,
    register_count,
    set_bit,
)

ABCD, BADC, CDAB, DCBA = Order.ABCD, Order.BADC, Order.CDAB, Order.DCBA
ORDERS = list(Order)
INTEGER_TYPES = [
    DataType.UINT16,
    DataType.INT16,
    DataType.UINT32,
    DataType.INT32,
    DataType.UINT64,
    DataType.INT64,
]
FLOAT_TYPES = [DataType.FLOAT32, DataType.FLOAT64]
FLOAT32_MAX = 3.4028234663852886e38

# Hypothesis budget: every property below runs for every order (and usually every type), so
# keep each one small; the whole module stays well under the ~20 s target.
FAST = settings(max_examples=60, deadline=None)
MEDIUM = settings(max_examples=120, deadline=None)


def codec(data_type: DataType, order: Order = ABCD, **kwargs: object) -> PointCodec:
    return PointCodec(data_type=data_type, order=order, **kwargs)  # type: ignore[arg-type]


def _hex(regs: list[int]) -> str:
    return "[" + ",".join(f"{r:04X}" for r in regs) + "]"


# --------------------------------------------------------------------------------------------
# 1. Golden tables: (type, order, value, registers exactly as the device sends them)
# --------------------------------------------------------------------------------------------


def _four(
    data_type: DataType,
    value: object,
    abcd: list[int],
    badc: list[int],
    cdab: list[int],
    dcba: list[int],
) -> list[tuple]:
    return [
        (data_type, ABCD, value, abcd),
        (data_type, BADC, value, badc),
        (data_type, CDAB, value, cdab),
        (data_type, DCBA, value, dcba),
    ]


GOLDEN: list[tuple] = [
    # uint16 4660 = 12 34
    *_four(DataType.UINT16, 4660, [0x1234], [0x3412], [0x1234], [0x3412]),
    # uint16 65280 = FF 00
    *_four(DataType.UINT16, 65280, [0xFF00], [0x00FF], [0xFF00], [0x00FF]),
    # int16 -2 = FF FE
    *_four(DataType.INT16, -2, [0xFFFE], [0xFEFF], [0xFFFE], [0xFEFF]),
    # int16 -12345 = CF C7
    *_four(DataType.INT16, -12345, [0xCFC7], [0xC7CF], [0xCFC7], [0xC7CF]),
    # int16 256 = 01 00
    *_four(DataType.INT16, 256, [0x0100], [0x0001], [0x0100], [0x0001]),
    # uint32 305419896 = 12 34 56 78
    *_four(
        DataType.UINT32,
        305419896,
        [0x1234, 0x5678],
        [0x3412, 0x7856],
        [0x5678, 0x1234],
        [0x7856, 0x3412],
    ),
    # uint32 3735928559 = DE AD BE EF
    *_four(
        DataType.UINT32,
        3735928559,
        [0xDEAD, 0xBEEF],
        [0xADDE, 0xEFBE],
        [0xBEEF, 0xDEAD],
        [0xEFBE, 0xADDE],
    ),
    # int32 -123456789 = F8 A4 32 EB
    *_four(
        DataType.INT32,
        -123456789,
        [0xF8A4, 0x32EB],
        [0xA4F8, 0xEB32],
        [0x32EB, 0xF8A4],
        [0xEB32, 0xA4F8],
    ),
    # int32 65536 = 00 01 00 00
    *_four(
        DataType.INT32,
        65536,
        [0x0001, 0x0000],
        [0x0100, 0x0000],
        [0x0000, 0x0001],
        [0x0000, 0x0100],
    ),
    # uint64 72623859790382856 = 01 02 03 04 05 06 07 08
    *_four(
        DataType.UINT64,
        72623859790382856,
        [0x0102, 0x0304, 0x0506, 0x0708],
        [0x0201, 0x0403, 0x0605, 0x0807],
        [0x0708, 0x0506, 0x0304, 0x0102],
        [0x0807, 0x0605, 0x0403, 0x0201],
    ),
    # int64 -72623859790382856 = FE FD FC FB FA F9 F8 F8
    *_four(
        DataType.INT64,
        -72623859790382856,
        [0xFEFD, 0xFCFB, 0xFAF9, 0xF8F8],
        [0xFDFE, 0xFBFC, 0xF9FA, 0xF8F8],
        [0xF8F8, 0xFAF9, 0xFCFB, 0xFEFD],
        [0xF8F8, 0xF9FA, 0xFBFC, 0xFDFE],
    ),
    # int64 -2 = FF FF FF FF FF FF FF FE
    *_four(
        DataType.INT64,
        -2,
        [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE],
        [0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF],
        [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF],
        [0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF],
    ),
    # float32 123.456 -> nearest float32 123.45600128173828 = 42 F6 E9 79
    *_four(
        DataType.FLOAT32,
        123.45600128173828,
        [0x42F6, 0xE979],
        [0xF642, 0x79E9],
        [0xE979, 0x42F6],
        [0x79E9, 0xF642],
    ),
    # float32 -1.5 = BF C0 00 00
    *_four(
        DataType.FLOAT32,
        -1.5,
        [0xBFC0, 0x0000],
        [0xC0BF, 0x0000],
        [0x0000, 0xBFC0],
        [0x0000, 0xC0BF],
    ),
    # float64 pi = 40 09 21 FB 54 44 2D 18
    *_four(
        DataType.FLOAT64,
        math.pi,
        [0x4009, 0x21FB, 0x5444, 0x2D18],
        [0x0940, 0xFB21, 0x4454, 0x182D],
        [0x2D18, 0x5444, 0x21FB, 0x4009],
        [0x182D, 0x4454, 0xFB21, 0x0940],
    ),
    # float64 0.1 = 3F B9 99 99 99 99 99 9A
    *_four(
        DataType.FLOAT64,
        0.1,
        [0x3FB9, 0x9999, 0x9999, 0x999A],
        [0xB93F, 0x9999, 0x9999, 0x9A99],
        [0x999A, 0x9999, 0x9999, 0x3FB9],
        [0x9A99, 0x9999, 0x9999, 0xB93F],
    ),
    # bool: a 16-bit 0 / 1, byte-ordered like uint16
    *_four(DataType.BOOL, True, [0x0001], [0x0100], [0x0001], [0x0100]),
    *_four(DataType.BOOL, False, [0x0000], [0x0000], [0x0000], [0x0000]),
]

# Strings: (order, length, text, registers). Only the byte swap applies; register order is
# always first-to-last, padded with NUL.
STRING_GOLDEN: list[tuple] = [
    # "Pump-1" = 50 75 6D 70 2D 31 (+ 00 00)
    (ABCD, 8, "Pump-1", [0x5075, 0x6D70, 0x2D31, 0x0000]),
    (BADC, 8, "Pump-1", [0x7550, 0x706D, 0x312D, 0x0000]),
    (CDAB, 8, "Pump-1", [0x5075, 0x6D70, 0x2D31, 0x0000]),
    (DCBA, 8, "Pump-1", [0x7550, 0x706D, 0x312D, 0x0000]),
    # odd length: "abc" = 61 62 63 (+ 00)
    (ABCD, 3, "abc", [0x6162, 0x6300]),
    (BADC, 3, "abc", [0x6261, 0x0063]),
    (CDAB, 3, "abc", [0x6162, 0x6300]),
    (DCBA, 3, "abc", [0x6261, 0x0063]),
    # full length, no padding: "ABCD" = 41 42 43 44
    (ABCD, 4, "ABCD", [0x4142, 0x4344]),
    (BADC, 4, "ABCD", [0x4241, 0x4443]),
    (CDAB, 4, "ABCD", [0x4142, 0x4344]),
    (DCBA, 4, "ABCD", [0x4241, 0x4443]),
    # UTF-8: "é" = C3 A9, length counts bytes
    (ABCD, 2, "é", [0xC3A9]),
    (BADC, 2, "é", [0xA9C3]),
    (CDAB, 2, "é", [0xC3A9]),
    (DCBA, 2, "é", [0xA9C3]),
]

# bit: (order, bit, register as received, expected). Register 0x0102 is bytes 01 02; after
# ABCD/CDAB the word is 0x0102 (bits 1 and 8 set), after BADC/DCBA it is 0x0201 (bits 0, 9).
BIT_GOLDEN: list[tuple] = [
    *[(o, b, 0x0102, b in (1, 8)) for o in (ABCD, CDAB) for b in (0, 1, 8, 9, 15)],
    *[(o, b, 0x0102, b in (0, 9)) for o in (BADC, DCBA) for b in (0, 1, 8, 9, 15)],
    (ABCD, 15, 0x8000, True),
    (BADC, 15, 0x8000, False),
    (BADC, 7, 0x8000, True),
    (DCBA, 7, 0x8000, True),
    (CDAB, 0, 0x0001, True),
    (DCBA, 8, 0x0001, True),
]

# set_bit: (order, bit, register before, value, register after)
SET_BIT_GOLDEN: list[tuple] = [
    (ABCD, 0, 0x0000, True, 0x0001),
    (CDAB, 0, 0x0000, True, 0x0001),
    (BADC, 0, 0x0000, True, 0x0100),
    (DCBA, 0, 0x0000, True, 0x0100),
    (ABCD, 15, 0xFFFF, False, 0x7FFF),
    (CDAB, 15, 0xFFFF, False, 0x7FFF),
    (BADC, 15, 0xFFFF, False, 0xFF7F),
    (DCBA, 15, 0xFFFF, False, 0xFF7F),
    (ABCD, 9, 0x1234, True, 0x1234),  # already set: unchanged
    (ABCD, 9, 0x1234, False, 0x1034),
    (BADC, 9, 0x1234, True, 0x1236),
    (BADC, 1, 0x1234, False, 0x1034),
]


@pytest.mark.parametrize(
    ("data_type", "order", "value", "registers"),
    GOLDEN,
    ids=[f"{t}-{o}-{v!r}-{_hex(r)}" for t, o, v, r in GOLDEN],
)
def test_golden_decode_and_encode(data_type, order, value, registers):
    c = codec(data_type, order)
    decoded = decode(registers, c)
    assert decoded == value
    assert type(decoded) is type(value)
    assert encode(value, c) == registers


@pytest.mark.parametrize(
    ("order", "length", "text", "registers"),
    STRING_GOLDEN,
    ids=[f"string{n}-{o}-{t!r}" for o, n, t, _ in STRING_GOLDEN],
)
def test_golden_string(order, length, text, registers):
    c = codec(DataType.STRING, order, length=length)
    assert decode(registers, c) == text
    assert encode(text, c) == registers


@pytest.mark.parametrize(
    ("order", "length", "registers", "text"),
    [
        # trailing spaces are padding
        (ABCD, 6, [0x4142, 0x2020, 0x2020], "AB"),
        (BADC, 6, [0x4241, 0x2020, 0x2020], "AB"),
        # stop at the first NUL, even with data after it
        (ABCD, 6, [0x4100, 0x4243, 0x4445], "A"),
        (DCBA, 6, [0x0041, 0x4342, 0x4544], "A"),
        # leading spaces are kept
        (CDAB, 4, [0x2041, 0x4200], " AB"),
        # odd length: the spare byte of the last register is ignored
        (ABCD, 3, [0x6162, 0x6358], "abc"),
        (BADC, 3, [0x6261, 0x5863], "abc"),
        # all NUL -> empty
        (ABCD, 4, [0x0000, 0x0000], ""),
        # invalid UTF-8 does not raise
        (ABCD, 2, [0xFFFE], "\ufffd\ufffd"),
    ],
    ids=[
        "spaces-ABCD",
        "spaces-BADC",
        "nul-ABCD",
        "nul-DCBA",
        "leading-space-kept",
        "odd-spare-ABCD",
        "odd-spare-BADC",
        "all-nul",
        "bad-utf8",
    ],
)
def test_string_decode_only(order, length, registers, text):
    assert decode(registers, codec(DataType.STRING, order, length=length)) == text


@pytest.mark.parametrize(
    ("order", "bit", "register", "expected"),
    BIT_GOLDEN,
    ids=[f"bit{b}-{o}-{r:04X}-{e}" for o, b, r, e in BIT_GOLDEN],
)
def test_golden_bit_decode(order, bit, register, expected):
    assert decode([register], codec(DataType.BIT, order, bit=bit)) is expected


@pytest.mark.parametrize(
    ("order", "bit", "before", "value", "after"),
    SET_BIT_GOLDEN,
    ids=[f"bit{b}-{o}-{r:04X}-{v}" for o, b, r, v, _ in SET_BIT_GOLDEN],
)
def test_golden_set_bit(order, bit, before, value, after):
    c = codec(DataType.BIT, order, bit=bit)
    assert set_bit(before, value, c) == after
    assert decode([after], c) is value


def test_golden_tables_cover_every_type_and_order():
    covered = {(t, o) for t, o, _, _ in GOLDEN}
    covered |= {(DataType.STRING, o) for o, *_ in STRING_GOLDEN}
    covered |= {(DataType.BIT, o) for o, *_ in BIT_GOLDEN}
    assert covered == {(t, o) for t in DataType for o in Order}


# --------------------------------------------------------------------------------------------
# 2. Integer extremes, negatives, float specials
# --------------------------------------------------------------------------------------------

EXTREMES: list[tuple] = [
    (DataType.UINT16, ABCD, 0, [0x0000]),
    (DataType.UINT16, ABCD, 65535, [0xFFFF]),
    (DataType.UINT16, BADC, 1, [0x0100]),
    (DataType.INT16, ABCD, -32768, [0x8000]),
    (DataType.INT16, BADC, -32768, [0x0080]),
    (DataType.INT16, ABCD, 32767, [0x7FFF]),
    (DataType.INT16, DCBA, 32767, [0xFF7F]),
    (DataType.INT16, ABCD, -1, [0xFFFF]),
    (DataType.UINT32, ABCD, 0, [0x0000, 0x0000]),
    (DataType.UINT32, ABCD, 4294967295, [0xFFFF, 0xFFFF]),
    (DataType.UINT32, CDAB, 1, [0x0001, 0x0000]),
    (DataType.UINT32, DCBA, 1, [0x0100, 0x0000]),
    (DataType.INT32, ABCD, -2147483648, [0x8000, 0x0000]),
    (DataType.INT32, CDAB, -2147483648, [0x0000, 0x8000]),
    (DataType.INT32, DCBA, -2147483648, [0x0000, 0x0080]),
    (DataType.INT32, ABCD, 2147483647, [0x7FFF, 0xFFFF]),
    (DataType.INT32, BADC, 2147483647, [0xFF7F, 0xFFFF]),
    (DataType.INT32, ABCD, -1, [0xFFFF, 0xFFFF]),
    (DataType.UINT64, ABCD, 0, [0, 0, 0, 0]),
    (DataType.UINT64, ABCD, 18446744073709551615, [0xFFFF] * 4),
    (DataType.UINT64, CDAB, 1, [0x0001, 0, 0, 0]),
    (DataType.UINT64, DCBA, 1, [0x0100, 0, 0, 0]),
    (DataType.INT64, ABCD, -9223372036854775808, [0x8000, 0, 0, 0]),
    (DataType.INT64, BADC, -9223372036854775808, [0x0080, 0, 0, 0]),
    (DataType.INT64, CDAB, -9223372036854775808, [0, 0, 0, 0x8000]),
    (DataType.INT64, DCBA, -9223372036854775808, [0, 0, 0, 0x0080]),
    (DataType.INT64, ABCD, 9223372036854775807, [0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF]),
    (DataType.INT64, CDAB, 9223372036854775807, [0xFFFF, 0xFFFF, 0xFFFF, 0x7FFF]),
    (DataType.INT64, ABCD, -1, [0xFFFF] * 4),
]


@pytest.mark.parametrize(
    ("data_type", "order", "value", "registers"),
    EXTREMES,
    ids=[f"{t}-{o}-{v}" for t, o, v, _ in EXTREMES],
)
def test_integer_extremes(data_type, order, value, registers):
    c = codec(data_type, order)
    decoded = decode(registers, c)
    assert decoded == value
    assert type(decoded) is int
    assert encode(value, c) == registers


@pytest.mark.parametrize("data_type", INTEGER_TYPES, ids=str)
def test_integer_one_past_range_raises_naming_type(data_type):
    spec = TYPES[data_type]
    c = codec(data_type)
    for bad in (spec.minimum - 1, spec.maximum + 1):
        with pytest.raises(CodecError, match=str(data_type)):
            encode(bad, c)
    # the bounds themselves are fine
    assert decode(encode(spec.minimum, c), c) == spec.minimum
    assert decode(encode(spec.maximum, c), c) == spec.maximum


@pytest.mark.parametrize(
    ("data_type", "order", "registers", "expected"),
    [
        (DataType.FLOAT32, ABCD, [0x7F80, 0x0000], math.inf),
        (DataType.FLOAT32, ABCD, [0xFF80, 0x0000], -math.inf),
        (DataType.FLOAT32, CDAB, [0x0000, 0x7F80], math.inf),
        (DataType.FLOAT32, BADC, [0x807F, 0x0000], math.inf),
        (DataType.FLOAT32, DCBA, [0x0000, 0x80FF], -math.inf),
        (DataType.FLOAT32, ABCD, [0x7FC0, 0x0000], math.nan),
        (DataType.FLOAT32, DCBA, [0x0000, 0xC07F], math.nan),
        (DataType.FLOAT32, ABCD, [0xFFFF, 0xFFFF], math.nan),
        (DataType.FLOAT32, ABCD, [0x8000, 0x0000], -0.0),
        (DataType.FLOAT32, ABCD, [0x0000, 0x0001], 1.401298464324817e-45),  # min subnormal
        (DataType.FLOAT32, ABCD, [0x7F7F, 0xFFFF], FLOAT32_MAX),
        (DataType.FLOAT64, ABCD, [0x7FF0, 0, 0, 0], math.inf),
        (DataType.FLOAT64, ABCD, [0xFFF0, 0, 0, 0], -math.inf),
        (DataType.FLOAT64, CDAB, [0, 0, 0, 0x7FF0], math.inf),
        (DataType.FLOAT64, DCBA, [0, 0, 0, 0xF07F], math.inf),
        (DataType.FLOAT64, ABCD, [0x7FF8, 0, 0, 0], math.nan),
        (DataType.FLOAT64, ABCD, [0x8000, 0, 0, 0], -0.0),
    ],
    ids=[
        "f32-inf",
        "f32-neg-inf",
        "f32-inf-CDAB",
        "f32-inf-BADC",
        "f32-neg-inf-DCBA",
        "f32-nan",
        "f32-nan-DCBA",
        "f32-nan-payload",
        "f32-neg-zero",
        "f32-min-subnormal",
        "f32-max",
        "f64-inf",
        "f64-neg-inf",
        "f64-inf-CDAB",
        "f64-inf-DCBA",
        "f64-nan",
        "f64-neg-zero",
    ],
)
def test_float_specials_decode(data_type, order, registers, expected):
    value = decode(registers, codec(data_type, order))
    assert isinstance(value, float)
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == expected
        assert math.copysign(1.0, value) == math.copysign(1.0, expected)


@pytest.mark.parametrize(
    ("data_type", "order", "value", "registers"),
    [
        (DataType.FLOAT32, ABCD, math.inf, [0x7F80, 0x0000]),
        (DataType.FLOAT32, ABCD, -math.inf, [0xFF80, 0x0000]),
        (DataType.FLOAT32, CDAB, math.inf, [0x0000, 0x7F80]),
        (DataType.FLOAT32, DCBA, math.inf, [0x0000, 0x807F]),
        (DataType.FLOAT64, ABCD, math.inf, [0x7FF0, 0, 0, 0]),
        (DataType.FLOAT64, BADC, -math.inf, [0xF0FF, 0, 0, 0]),
        (DataType.FLOAT32, ABCD, -0.0, [0x8000, 0x0000]),
        (DataType.FLOAT32, ABCD, FLOAT32_MAX, [0x7F7F, 0xFFFF]),
        (DataType.FLOAT64, ABCD, 1.7976931348623157e308, [0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF]),
    ],
    ids=[
        "f32-inf",
        "f32-neg-inf",
        "f32-inf-CDAB",
        "f32-inf-DCBA",
        "f64-inf",
        "f64-neg-inf-BADC",
        "f32-neg-zero",
        "f32-max",
        "f64-max",
    ],
)
def test_float_specials_encode_identity(data_type, order, value, registers):
    assert encode(value, codec(data_type, order)) == registers


@pytest.mark.parametrize("data_type", FLOAT_TYPES, ids=str)
def test_float_nan_round_trips_with_identity(data_type):
    c = codec(data_type)
    assert math.isnan(decode(encode(math.nan, c), c))


@pytest.mark.parametrize("data_type", FLOAT_TYPES, ids=str)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_float_non_finite_with_scale_raises(data_type, value):
    with pytest.raises(CodecError, match=str(data_type)):
        encode(value, codec(data_type, scale=0.1))
    with pytest.raises(CodecError, match=str(data_type)):
        encode(value, codec(data_type, offset=1.0))


@pytest.mark.parametrize("data_type", INTEGER_TYPES, ids=str)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_integer_non_finite_raises(data_type, value):
    with pytest.raises(CodecError, match=str(data_type)):
        encode(value, codec(data_type))


@pytest.mark.parametrize("value", [3.5e38, -3.5e38, 1e300], ids=["3.5e38", "-3.5e38", "1e300"])
def test_float32_out_of_range_raises(value):
    with pytest.raises(CodecError, match="float32"):
        encode(value, codec(DataType.FLOAT32))


@pytest.mark.parametrize(
    ("data_type", "value", "kwargs"),
    [
        # the scaled raw value overflows to inf, or the input cannot become a float at all:
        # still a CodecError naming the type, never OverflowError or a silent inf on the wire
        (DataType.UINT16, 1e10, {"scale": 1e-300}),
        (DataType.INT64, -1e10, {"scale": 1e-300}),
        (DataType.UINT32, 1e308, {"offset": -1e308}),
        (DataType.UINT64, 10**400, {"scale": 0.1}),
        (DataType.FLOAT32, 1e10, {"scale": 1e-300}),
        (DataType.FLOAT64, 1e10, {"scale": 1e-300}),
        (DataType.FLOAT64, 1e308, {"offset": -1e308}),
        (DataType.FLOAT64, 10**400, {}),
        (DataType.FLOAT32, 10**400, {}),
        (DataType.FLOAT64, -(10**400), {"scale": 2.0}),
    ],
    ids=[
        "uint16-scale-overflow",
        "int64-scale-overflow",
        "uint32-offset-overflow",
        "uint64-huge-int-scaled",
        "float32-scale-overflow",
        "float64-scale-overflow",
        "float64-offset-overflow",
        "float64-huge-int",
        "float32-huge-int",
        "float64-huge-neg-int-scaled",
    ],
)
def test_overflow_while_scaling_is_codec_error(data_type, value, kwargs):
    with pytest.raises(CodecError, match=str(data_type)):
        encode(value, codec(data_type, **kwargs))


# --------------------------------------------------------------------------------------------
# 3. Scale and offset
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_type", "order", "kwargs", "registers", "expected"),
    [
        (DataType.UINT16, ABCD, {"scale": 0.1}, [123], 12.3),
        (DataType.UINT16, BADC, {"scale": 0.1}, [0x7B00], 12.3),
        (DataType.INT16, ABCD, {"scale": 0.1, "offset": -40.0}, [250], -15.0),
        (DataType.INT16, ABCD, {"scale": 0.5, "offset": 100.0}, [0xFFF6], 95.0),
        (DataType.INT16, ABCD, {"offset": 10.0}, [0xFFFF], 9.0),
        (DataType.UINT32, CDAB, {"scale": 0.001}, [0x86A0, 0x0001], 100.0),
        (DataType.INT32, DCBA, {"scale": 100.0}, [0xFFFF, 0xFFFF], -100.0),
        (DataType.INT64, ABCD, {"scale": 10.0, "offset": 5.0}, [0, 0, 0, 7], 75.0),
        (DataType.FLOAT32, ABCD, {"scale": 2.0}, [0x42F6, 0xE979], 246.91200256347656),
        (DataType.FLOAT32, CDAB, {"offset": -1.5}, [0x0000, 0xBFC0], -3.0),
        (DataType.FLOAT64, ABCD, {"scale": -1.0}, [0x4009, 0x21FB, 0x5444, 0x2D18], -math.pi),
    ],
    ids=[
        "uint16-x0.1",
        "uint16-x0.1-BADC",
        "int16-x0.1-minus40",
        "int16-neg-x0.5-plus100",
        "int16-offset-only",
        "uint32-x0.001-CDAB",
        "int32-x100-DCBA",
        "int64-x10-plus5",
        "float32-x2",
        "float32-offset-CDAB",
        "float64-negative-scale",
    ],
)
def test_scale_offset_decode(data_type, order, kwargs, registers, expected):
    value = decode(registers, codec(data_type, order, **kwargs))
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(
    ("data_type", "order", "kwargs", "value", "registers"),
    [
        (DataType.UINT16, ABCD, {"scale": 0.1}, 12.34, [123]),
        (DataType.UINT16, ABCD, {"scale": 0.1}, 12.36, [124]),
        (DataType.UINT16, ABCD, {"scale": 0.1}, 12.3, [123]),
        (DataType.UINT16, BADC, {"scale": 0.1}, 12.34, [0x7B00]),
        (DataType.UINT16, ABCD, {"scale": 0.1}, 6553.5, [0xFFFF]),
        (DataType.UINT16, ABCD, {"scale": 10.0}, 14, [1]),
        (DataType.UINT16, ABCD, {"scale": 10.0}, 16, [2]),
        (DataType.INT16, ABCD, {"scale": 0.1, "offset": -40.0}, -15.0, [250]),
        (DataType.INT16, ABCD, {"scale": 0.1, "offset": 40.0}, 0, [0xFE70]),
        (DataType.INT16, DCBA, {"scale": 0.1, "offset": 40.0}, 0, [0x70FE]),
        (DataType.INT32, CDAB, {"scale": 0.01}, -1.234, [0xFF85, 0xFFFF]),
        (DataType.UINT64, ABCD, {"offset": 1000.0}, 1001.4, [0, 0, 0, 1]),
        (DataType.FLOAT32, ABCD, {"scale": 2.0}, 246.912, [0x42F6, 0xE979]),
        (DataType.FLOAT32, DCBA, {"offset": -1.5}, -3.0, [0x0000, 0xC0BF]),
        (DataType.FLOAT64, ABCD, {"scale": -1.0}, -math.pi, [0x4009, 0x21FB, 0x5444, 0x2D18]),
    ],
    ids=[
        "uint16-12.34-x0.1",
        "uint16-12.36-x0.1",
        "uint16-12.3-x0.1",
        "uint16-12.34-x0.1-BADC",
        "uint16-max-x0.1",
        "uint16-14-x10",
        "uint16-16-x10",
        "int16-minus15-offset",
        "int16-negative-raw",
        "int16-negative-raw-DCBA",
        "int32-negative-x0.01-CDAB",
        "uint64-offset",
        "float32-x2",
        "float32-offset-DCBA",
        "float64-negative-scale",
    ],
)
def test_scale_offset_encode(data_type, order, kwargs, value, registers):
    assert encode(value, codec(data_type, order, **kwargs)) == registers


@pytest.mark.parametrize("data_type", INTEGER_TYPES, ids=str)
def test_identity_keeps_ints_int(data_type):
    c = codec(data_type, scale=1.0, offset=0.0)
    assert c.is_identity
    registers = [0] * (c.registers - 1) + [7]
    value = decode(registers, c)
    assert value == 7
    assert type(value) is int
    assert type(decode_raw(registers, c)) is int
    # a whole float is accepted and written as the integer
    assert encode(7.0, c) == registers
    assert encode(7, c) == registers


@pytest.mark.parametrize("data_type", INTEGER_TYPES, ids=str)
def test_non_identity_decodes_to_float(data_type):
    c = codec(data_type, scale=2.0)
    value = decode([0] * (c.registers - 1) + [7], c)
    assert value == 14.0
    assert type(value) is float


def test_identity_uint64_max_is_exact():
    # no float detour for identity integers: 2**64-1 is not representable as a float
    c = codec(DataType.UINT64)
    assert encode(2**64 - 1, c) == [0xFFFF] * 4
    assert encode(2**64 - 2, c) == [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]
    assert decode([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], c) == 2**64 - 2


def test_scale_does_not_apply_to_bool_and_string():
    assert decode([0x0001], codec(DataType.BOOL, scale=10.0, offset=1.0)) is True
    assert decode([0x4142], codec(DataType.STRING, scale=10.0, offset=1.0, length=2)) == "AB"
    assert decode([0x0001], codec(DataType.BIT, scale=10.0, bit=0)) is True


@pytest.mark.parametrize(
    ("data_type", "kwargs", "value"),
    [
        (DataType.UINT16, {"scale": 0.1}, 6553.6),
        (DataType.UINT16, {"scale": 0.1}, -0.1),
        (DataType.UINT16, {"offset": 10.0}, 9.0),
        (DataType.INT16, {"scale": 10.0}, 327680),
        (DataType.INT16, {"scale": 0.01}, -327.69),
        (DataType.UINT32, {"scale": 0.001}, 4294967.296),
        (DataType.INT32, {"scale": 0.5}, 1073741824),
        (DataType.UINT64, {"scale": 10.0}, -10.0),
        (DataType.INT64, {"scale": 0.1}, 1e18),
        (DataType.FLOAT32, {"scale": 0.1}, 3.4e38),
    ],
    ids=[
        "uint16-over",
        "uint16-negative",
        "uint16-below-offset",
        "int16-over",
        "int16-under",
        "uint32-over",
        "int32-over",
        "uint64-negative",
        "int64-over",
        "float32-over",
    ],
)
def test_out_of_range_after_scaling_raises_naming_type(data_type, kwargs, value):
    with pytest.raises(CodecError, match=str(data_type)):
        encode(value, codec(data_type, **kwargs))


def test_from_engineering_rounds_to_nearest_raw_step():
    c = codec(DataType.INT16, scale=0.1)
    assert from_engineering(12.34, c) == 123
    assert from_engineering(-12.36, c) == -124
    assert from_engineering(-12.34, c) == -123
    assert isinstance(from_engineering(12.34, c), int)
    assert from_engineering(12.34, codec(DataType.FLOAT32, scale=0.1)) == pytest.approx(123.4)


# --------------------------------------------------------------------------------------------
# 4. Property-based round trips, fuzzing, register counts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("data_type", INTEGER_TYPES, ids=str)
@MEDIUM
@given(data=st.data())
def test_integer_round_trip(data_type, order, data):
    spec = TYPES[data_type]
    c = codec(data_type, order)
    value = data.draw(st.integers(spec.minimum, spec.maximum), label="value")
    registers = encode(value, c)
    assert len(registers) == c.registers
    assert all(0 <= r <= 0xFFFF for r in registers)
    decoded = decode(registers, c)
    assert decoded == value
    assert type(decoded) is int


@pytest.mark.parametrize("order", ORDERS, ids=str)
@MEDIUM
@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_round_trip_exact(order, value):
    c = codec(DataType.FLOAT32, order)
    assert decode(encode(value, c), c) == value


@pytest.mark.parametrize("order", ORDERS, ids=str)
@MEDIUM
@given(
    value=st.floats(
        min_value=-FLOAT32_MAX, max_value=FLOAT32_MAX, allow_nan=False, allow_infinity=False
    )
)
def test_float32_round_trip_any_double_in_range(order, value):
    c = codec(DataType.FLOAT32, order)
    (expected,) = struct.unpack(">f", struct.pack(">f", value))
    assert decode(encode(value, c), c) == expected


@pytest.mark.parametrize("order", ORDERS, ids=str)
@MEDIUM
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_float64_round_trip(order, value):
    c = codec(DataType.FLOAT64, order)
    decoded = decode(encode(value, c), c)
    assert decoded == value
    assert math.copysign(1.0, decoded) == math.copysign(1.0, value)


@pytest.mark.parametrize("order", ORDERS, ids=str)
@FAST
@given(value=st.booleans())
def test_bool_round_trip(order, value):
    c = codec(DataType.BOOL, order)
    assert decode(encode(value, c), c) is value
    assert decode(encode(int(value), c), c) is value


@st.composite
def fitting_text(draw: st.DrawFn, length: int) -> str:
    """Any text whose UTF-8 fits `length` bytes, without NUL and without trailing space."""
    text = draw(
        st.text(
            alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
            max_size=length,
        )
    )
    while len(text.encode("utf-8")) > length:
        text = text[:-1]
    return text.rstrip(" ")


@pytest.mark.parametrize("order", ORDERS, ids=str)
@MEDIUM
@given(data=st.data())
def test_string_round_trip(order, data):
    length = data.draw(
        st.one_of(st.integers(1, 16), st.integers(1, MAX_STRING_LENGTH)), label="length"
    )
    text = data.draw(fitting_text(length), label="text")
    c = codec(DataType.STRING, order, length=length)
    registers = encode(text, c)
    assert len(registers) == (length + 1) // 2
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode(registers, c) == text


@pytest.mark.parametrize("order", ORDERS, ids=str)
@FAST
@given(data=st.data())
def test_string_byte_swap_is_the_only_difference(order, data):
    length = data.draw(st.integers(1, 40), label="length")
    text = data.draw(fitting_text(length), label="text")
    plain = encode(text, codec(DataType.STRING, ABCD, length=length))
    ordered = encode(text, codec(DataType.STRING, order, length=length))
    if order.swaps_bytes:
        assert ordered == [((r & 0xFF) << 8) | (r >> 8) for r in plain]
    else:
        assert ordered == plain


# scale a power of ten; 64-bit raw values are kept within 2**40 so a float can still resolve
# one raw step (a double has 53 bits of mantissa).
SCALES = [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
OFFSETS = [0.0, -40.0, 0.5, 273.15, 1000.0]


def _raw_bounds(data_type: DataType) -> tuple[int, int]:
    spec = TYPES[data_type]
    assert spec.minimum is not None and spec.maximum is not None
    return max(spec.minimum, -(2**40)), min(spec.maximum, 2**40)


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("data_type", INTEGER_TYPES, ids=str)
@FAST
@given(data=st.data())
def test_scaled_integer_round_trip_within_half_step(data_type, order, data):
    scale = data.draw(st.sampled_from(SCALES), label="scale")
    offset = data.draw(st.sampled_from(OFFSETS), label="offset")
    lo, hi = _raw_bounds(data_type)
    # one step inside the raw range so rounding can never leave it
    value = data.draw(
        st.floats(
            min_value=(lo + 1) * scale + offset,
            max_value=(hi - 1) * scale + offset,
            allow_nan=False,
        ),
        label="value",
    )
    c = codec(data_type, order, scale=scale, offset=offset)
    back = decode(encode(value, c), c)
    slack = 16 * math.ulp(max(abs(value), abs(offset), abs(back), 1.0))
    assert abs(back - value) <= scale / 2 + slack


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("data_type", INTEGER_TYPES, ids=str)
@FAST
@given(data=st.data())
def test_scaled_integer_exact_on_raw_steps(data_type, order, data):
    scale = data.draw(st.sampled_from(SCALES), label="scale")
    offset = data.draw(st.sampled_from(OFFSETS), label="offset")
    lo, hi = _raw_bounds(data_type)
    raw = data.draw(st.integers(lo, hi), label="raw")
    c = codec(data_type, order, scale=scale, offset=offset)
    # a value sitting on a raw step encodes to exactly that raw value
    assert decode_raw(encode(raw * scale + offset, c), c) == raw


def _registers(n: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n)


@st.composite
def any_codec(draw: st.DrawFn, data_type: DataType, order: Order) -> PointCodec:
    kwargs: dict[str, object] = {}
    if data_type is DataType.BIT:
        kwargs["bit"] = draw(st.integers(0, 15))
    if data_type is DataType.STRING:
        kwargs["length"] = draw(st.integers(1, MAX_STRING_LENGTH))
    if TYPES[data_type].kind in (Kind.INTEGER, Kind.FLOAT) and draw(st.booleans()):
        kwargs["scale"] = draw(st.sampled_from([0.001, 0.1, -1.0, 10.0, 1e300]))
        kwargs["offset"] = draw(st.sampled_from([0.0, -40.0, 1e300]))
    return codec(data_type, order, **kwargs)


EXPECTED_PY_TYPE = {
    Kind.INTEGER: (int, float),
    Kind.FLOAT: (float,),
    Kind.BOOL: (bool,),
    Kind.STRING: (str,),
}


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("data_type", list(DataType), ids=str)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decode_fuzz_never_raises(data_type, order, data):
    c = data.draw(any_codec(data_type, order), label="codec")
    registers = data.draw(_registers(c.registers), label="registers")
    value = decode(registers, c)
    assert isinstance(value, EXPECTED_PY_TYPE[TYPES[data_type].kind])
    if data_type is DataType.STRING:
        assert "\x00" not in value
        assert not value.endswith(" ")
        assert len(value.encode("utf-8")) <= 3 * c.length  # U+FFFD is 3 bytes per bad byte


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("data_type", INTEGER_TYPES + FLOAT_TYPES, ids=str)
@FAST
@given(data=st.data())
def test_registers_round_trip_through_value(data_type, order, data):
    # every register pattern of a numeric type is some value that encodes back to itself
    # (except NaN, whose payload is not preserved)
    c = codec(data_type, order)
    registers = data.draw(_registers(c.registers), label="registers")
    value = decode(registers, c)
    if isinstance(value, float) and math.isnan(value):
        return
    assert encode(value, c) == registers


@pytest.mark.parametrize("order", ORDERS, ids=str)
@pytest.mark.parametrize("data_type", list(DataType), ids=str)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_wrong_register_count_raises(data_type, order, data):
    c = data.draw(any_codec(data_type, order), label="codec")
    n = c.registers
    wrong = [k for k in (0, n - 1, n + 1, n + 2, 2 * n, 125) if k >= 0 and k != n]
    count = data.draw(st.sampled_from(wrong), label="count")
    registers = data.draw(_registers(count), label="registers")
    with pytest.raises(CodecError, match="register"):
        decode(registers, c)


@pytest.mark.parametrize("data_type", list(DataType), ids=str)
@pytest.mark.parametrize("bad", [-1, 0x10000, 70000], ids=["-1", "0x10000", "70000"])
def test_register_out_of_range_raises(data_type, bad):
    kwargs = {"bit": 3} if data_type is DataType.BIT else {}
    if data_type is DataType.STRING:
        kwargs = {"length": 4}
    c = codec(data_type, **kwargs)
    registers = [0] * c.registers
    registers[-1] = bad
    with pytest.raises(CodecError, match=r"0\.\.65535"):
        decode(registers, c)


@pytest.mark.parametrize(
    ("data_type", "length", "count"),
    [
        (DataType.UINT16, None, 1),
        (DataType.INT16, None, 1),
        (DataType.UINT32, None, 2),
        (DataType.INT32, None, 2),
        (DataType.UINT64, None, 4),
        (DataType.INT64, None, 4),
        (DataType.FLOAT32, None, 2),
        (DataType.FLOAT64, None, 4),
        (DataType.BOOL, None, 1),
        (DataType.BIT, None, 1),
        (DataType.STRING, 1, 1),
        (DataType.STRING, 2, 1),
        (DataType.STRING, 3, 2),
        (DataType.STRING, 250, 125),
    ],
    ids=lambda v: str(v),
)
def test_register_count(data_type, length, count):
    assert register_count(data_type, length) == count


def test_register_count_string_needs_length():
    with pytest.raises(CodecError, match="length"):
        register_count(DataType.STRING)


# --------------------------------------------------------------------------------------------
# 5. Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"data_type": DataType.BIT}, "bit 0..15"),
        ({"data_type": DataType.BIT, "bit": -1}, "bit 0..15"),
        ({"data_type": DataType.BIT, "bit": 16}, "bit 0..15"),
        ({"data_type": DataType.UINT16, "bit": 0}, "bit applies only"),
        ({"data_type": DataType.BOOL, "bit": 3}, "bit applies only"),
        ({"data_type": DataType.STRING}, "string needs length"),
        ({"data_type": DataType.STRING, "length": 0}, "string needs length"),
        ({"data_type": DataType.STRING, "length": MAX_STRING_LENGTH + 1}, "string needs length"),
        ({"data_type": DataType.UINT32, "length": 4}, "length applies only"),
        ({"data_type": DataType.UINT16, "scale": 0}, "scale"),
        ({"data_type": DataType.UINT16, "scale": 0.0}, "scale"),
        ({"data_type": DataType.FLOAT32, "scale": math.nan}, "scale"),
        ({"data_type": DataType.FLOAT32, "scale": math.inf}, "scale"),
        ({"data_type": DataType.INT16, "offset": math.nan}, "offset"),
        ({"data_type": DataType.INT16, "offset": -math.inf}, "offset"),
    ],
    ids=[
        "bit-missing",
        "bit-negative",
        "bit-16",
        "bit-on-uint16",
        "bit-on-bool",
        "string-no-length",
        "string-length-0",
        "string-too-long",
        "length-on-uint32",
        "scale-0",
        "scale-0.0",
        "scale-nan",
        "scale-inf",
        "offset-nan",
        "offset-neg-inf",
    ],
)
def test_point_codec_validation(kwargs, match):
    with pytest.raises(CodecError, match=match):
        PointCodec(**kwargs)


def test_point_codec_valid_edges():
    assert PointCodec(DataType.BIT, bit=0).registers == 1
    assert PointCodec(DataType.BIT, bit=15).registers == 1
    assert PointCodec(DataType.STRING, length=1).registers == 1
    assert PointCodec(DataType.STRING, length=MAX_STRING_LENGTH).registers == 125
    assert PointCodec(DataType.UINT16, scale=-0.1).registers == 1


@pytest.mark.parametrize(
    ("data_type", "value"),
    [
        (DataType.UINT16, "12"),
        (DataType.INT32, "-1"),
        (DataType.FLOAT32, "1.5"),
        (DataType.FLOAT64, None),
        (DataType.UINT64, None),
        (DataType.UINT16, True),
        (DataType.INT16, False),
        (DataType.FLOAT32, True),
        (DataType.FLOAT64, False),
        (DataType.BOOL, 2),
        (DataType.BOOL, -1),
        (DataType.BOOL, 0.5),
        (DataType.BOOL, math.nan),
        (DataType.BOOL, "true"),
        (DataType.BOOL, None),
        (DataType.BIT, 2),
        (DataType.BIT, "1"),
    ],
    ids=[
        "text-for-uint16",
        "text-for-int32",
        "text-for-float32",
        "none-for-float64",
        "none-for-uint64",
        "true-for-uint16",
        "false-for-int16",
        "true-for-float32",
        "false-for-float64",
        "2-for-bool",
        "minus1-for-bool",
        "half-for-bool",
        "nan-for-bool",
        "text-for-bool",
        "none-for-bool",
        "2-for-bit",
        "text-for-bit",
    ],
)
def test_encode_wrong_python_type_raises(data_type, value):
    c = codec(data_type, bit=0) if data_type is DataType.BIT else codec(data_type)
    with pytest.raises(CodecError, match=str(data_type)):
        encode(value, c)


@pytest.mark.parametrize("value", [12, 1.5, True, None, b"AB"], ids=repr)
def test_encode_non_text_for_string_raises(value):
    with pytest.raises(CodecError, match="string needs text"):
        encode(value, codec(DataType.STRING, length=4))


@pytest.mark.parametrize(
    ("length", "text"),
    [(4, "ABCDE"), (1, "AB"), (7, "éééé"), (3, "€A"), (2, "€")],
    ids=["ascii-5-in-4", "ascii-2-in-1", "utf8-8-bytes-in-7", "utf8-4-bytes-in-3", "euro-in-2"],
)
def test_encode_string_too_long_raises(length, text):
    with pytest.raises(CodecError, match="longer than length"):
        encode(text, codec(DataType.STRING, length=length))


def test_encode_string_exactly_fits_in_bytes():
    assert encode("éééé", codec(DataType.STRING, length=8)) == [0xC3A9] * 4
    assert encode("", codec(DataType.STRING, length=3)) == [0x0000, 0x0000]


@pytest.mark.parametrize("data_type", [t for t in DataType if t is not DataType.BIT], ids=str)
def test_set_bit_on_non_bit_codec_raises(data_type):
    c = codec(data_type, length=4) if data_type is DataType.STRING else codec(data_type)
    with pytest.raises(CodecError, match="set_bit"):
        set_bit(0, True, c)


@pytest.mark.parametrize("order", ORDERS, ids=str)
def test_bit_point_cannot_be_encoded_alone(order):
    c = codec(DataType.BIT, order, bit=4)
    with pytest.raises(CodecError, match="set_bit"):
        encode_raw(True, c)
    with pytest.raises(CodecError, match="set_bit"):
        encode(True, c)


def test_decode_bit_only_for_bool():
    c = codec(DataType.BOOL)
    assert decode_bit(True, c) is True
    assert decode_bit(0, c) is False
    assert decode_bit(1, c) is True
    for other in (codec(DataType.UINT16), codec(DataType.BIT, bit=0)):
        with pytest.raises(CodecError, match="bool"):
            decode_bit(True, other)


def test_codec_error_is_value_error():
    assert issubclass(CodecError, ValueError)


# --------------------------------------------------------------------------------------------
# 6. set_bit properties
# --------------------------------------------------------------------------------------------


def _register_mask(order: Order, bit: int) -> int:
    """Where bit N of the ordered word lives in the register as sent on the wire."""
    return 1 << ((bit + 8) % 16 if order.swaps_bytes else bit)


@pytest.mark.parametrize("order", ORDERS, ids=str)
@settings(max_examples=200, deadline=None)
@given(register=st.integers(0, 0xFFFF), bit=st.integers(0, 15), value=st.booleans())
def test_set_bit_touches_only_its_bit(order, register, bit, value):
    c = codec(DataType.BIT, order, bit=bit)
    after = set_bit(register, value, c)
    mask = _register_mask(order, bit)
    assert 0 <= after <= 0xFFFF
    assert after & ~mask == register & ~mask  # every other bit untouched
    assert bool(after & mask) is value
    assert decode([after], c) is value
    for other in range(16):
        if other != bit:
            o = codec(DataType.BIT, order, bit=other)
            assert decode([after], o) is decode([register], o)
    # idempotent, and undoable
    assert set_bit(after, value, c) == after
    assert set_bit(set_bit(after, not value, c), value, c) == after


@pytest.mark.parametrize("order", ORDERS, ids=str)
@FAST
@given(register=st.integers(0, 0xFFFF), bit=st.integers(0, 15))
def test_bit_decode_matches_mask(order, register, bit):
    assert decode([register], codec(DataType.BIT, order, bit=bit)) is bool(
        register & _register_mask(order, bit)
    )
