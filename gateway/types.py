"""Small annotated types shared by every config model: names, durations, sizes, data classes."""

from __future__ import annotations

import enum
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic_core import PydanticCustomError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)

#: Ids of devices, points, equipment, profiles. No dots (they join `<device>.<point>`), no
#: slashes (they are path segments in the API and never file paths).
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class DataClass(enum.StrEnum):
    """Who may see a value. Public leaves the box desensitized; private never leaves."""

    PUBLIC = "public"
    RESTRICTED = "restricted"
    PRIVATE = "private"


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def _duration_error() -> PydanticCustomError:
    """A ValueError with a code (the page translates codes: gateway/equipment/problems.py)."""
    return PydanticCustomError(
        "duration_format", "a duration is a number of seconds or text like '10s', '5m', '7d'"
    )


def parse_duration(value: object) -> object:
    """'250ms', '10s', '5m', '2h', '7d' or a bare number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise _duration_error()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            raise _duration_error()
        return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise PydanticCustomError("not_positive", "must be greater than zero")
    return value


#: Seconds, written as a number or with a unit ('500ms', '10s', '7d'). Always > 0.
Duration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(value: object) -> object:
    """'512MiB', '2GB', '800kB' or a bare number of bytes -> bytes (int)."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or text like '512MiB', '2GB'")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if not match:
            raise ValueError("a size is a number of bytes or text like '512MiB', '2GB'")
        unit = (match.group(2) or "b").lower()
        return int(float(match.group(1)) * _SIZE_UNITS[unit])
    return value


#: Bytes, written as a number or with a unit ('512MiB', '2GB').
ByteSize = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]
