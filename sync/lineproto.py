"""Stored readings -> InfluxDB line protocol. Pure: no I/O, no clock, no logging.

The mapping (public contract: the central platform queries by these names)::

    <measurement>,device=<d>,equipment=<e>,gateway=<g>,point=<p>,site=<s>,unit=<u> \\
        value=<v>,quality=<q>i,id=<id>i <ns>

* **measurement**: configurable, default ``millrace``. It may not be empty or start with
  ``#`` (a line starting with ``#`` is a comment to InfluxDB).
* **tags**, written in key order (what InfluxDB prefers), each left out when empty:
  ``device`` (the point's device; from the point id ``<device>.<point>`` when the point is no
  longer configured), ``equipment`` (when the point describes one), ``gateway`` and ``site``
  (the uplink context), ``point`` (the full point id ``<device>.<point>``), ``unit`` (when
  the point has one).
* **fields**:

  - ``value``: a float as Python's shortest round-trip text (``21.5``, ``1e-05``); an int as
    an integer (``42i``) when it fits int64, otherwise as a float (lossy: line protocol has no
    bigger integer, and ``u`` would clash with the ``i`` values of the same point); a bool as
    ``true``/``false``; a str as a string field. Left out when the value is None (a BAD
    reading) and when it is NaN or +/-infinity, which line protocol cannot carry.
  - ``nonfinite``: only for a NaN or infinite value, the string ``"NaN"``, ``"+Inf"`` or
    ``"-Inf"``, so a reader can tell "no number" from "no value" and which one it was.
  - ``quality``: integer 0 (GOOD), 1 (UNCERTAIN), 2 (BAD).
  - ``id``: integer, the reading's outbox id: at-least-once delivery may repeat a reading,
    and the id (with the identical timestamp and tags) lets the far side de-duplicate.

  A BAD reading without a value therefore carries ``quality`` and ``id`` only: still visible.
* **timestamp**: ``ts_source`` when the device gave one, else ``ts_gateway``, in integer
  nanoseconds (write precision ``ns``). Epoch seconds are floats, whose resolution near
  today's epoch is about 0.24 µs, so the conversion rounds the float's exact binary value to
  the nearest microsecond in integer arithmetic (never ``ts * 1e9``, whose rounding lands on
  arbitrary nanoseconds): ``1700000000.123456`` becomes ``1700000000123456000``. A timestamp
  that is not finite or lies outside InfluxDB's range (years 1677-2262) cannot be written:
  `UnencodableReading`.

Escaping (line protocol spec): measurement: backslash, comma, space; tag keys and values:
backslash, comma, equals sign, space; string field values: backslash and double quote. A
backslash is always written doubled, so a value ending in a backslash cannot swallow the
separator after it. Line protocol has no way to carry a raw line break anywhere, so a newline,
carriage return or (in names) tab is written as the two characters ``\\n``, ``\\r``, ``\\t``
(as influxdb-client's own Point does): the text survives, but the far side sees a backslash
and a letter, which reads the same as those two characters written literally.

Servers differ on the doubled backslash in names: the spec and VictoriaMetrics (tested) read
``\\\\`` as one backslash; InfluxDB 1.x/2.x OSS, whose parser unescapes only the comma, space
and equals sign in names, may keep both. Gateway names (``[A-Za-z0-9_-]``) never contain a
backslash; free-text units or sites might.

Every line is one reading and contains no raw newline, so a sender may split a batch between
any two lines (bisection, size limits) and join them with ``\\n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from gateway.readings import Value
from gateway.store import StoredReading
from sync.base import PointMeta
from sync.config import DEFAULT_MEASUREMENT

#: InfluxDB's representable time range in nanoseconds (models.MinNanoTime / MaxNanoTime).
MIN_NS = -9_223_372_036_854_775_806
MAX_NS = 9_223_372_036_854_775_806

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# Backslash first in each table: str.translate maps every character once, so order only
# matters for readers of this file.
_MEASUREMENT_ESCAPES = str.maketrans(
    {"\\": "\\\\", ",": "\\,", " ": "\\ ", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
)
_TAG_ESCAPES = str.maketrans(
    {"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
)
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


class UnencodableReading(ValueError):
    """A reading line protocol cannot represent (its timestamp); the sender quarantines it."""


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_tag(text: str) -> str:
    """A tag key or value (field keys follow the same rules)."""
    return text.translate(_TAG_ESCAPES)


def escape_string(text: str) -> str:
    """The inside of a string field value (without the surrounding quotes)."""
    return text.translate(_STRING_ESCAPES)


def timestamp_ns(ts: float) -> int:
    """Epoch seconds (float) -> integer nanoseconds, rounded to the microsecond.

    `as_integer_ratio` gives the float's exact value n/d (d a power of two), so the rounding
    (half up) is exact integer arithmetic: no second rounding error on top of the float's own.
    """
    if not math.isfinite(ts):
        raise UnencodableReading(f"timestamp is not a finite number (got {ts!r})")
    n, d = ts.as_integer_ratio()
    ns = ((n * 2_000_000 + d) // (2 * d)) * 1000
    if not MIN_NS <= ns <= MAX_NS:
        raise UnencodableReading(f"timestamp outside InfluxDB's range (got {ts!r} s)")
    return ns


_NONFINITE = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}


def format_value(value: Value) -> str | None:
    """The field text of `value=`; None when there is no finite value to write."""
    if value is None:
        return None
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return f"{int(value)}i"
        return float.__repr__(float(value))
    if isinstance(value, float):  # float.__repr__: shortest round-trip text, even for subclasses
        return float.__repr__(value) if math.isfinite(value) else None
    return '"' + escape_string(str(value)) + '"'


def nonfinite_name(value: Value) -> str | None:
    """'NaN', '+Inf' or '-Inf' for a non-finite float, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return _NONFINITE[float.__repr__(value)]
    return None


@dataclass(frozen=True, slots=True)
class EncodeFailure:
    reading: StoredReading
    reason: str


class LineEncoder:
    """Encodes readings for one uplink: the measurement, site and gateway are fixed.

    The measurement and tag set of a point never change while its metadata does not, so the
    escaped prefix is built once per (point, metadata) and reused.
    """

    #: Prefixes kept before the cache starts over (points are finite; metadata may change).
    CACHE_MAX = 50_000

    def __init__(
        self, *, measurement: str = DEFAULT_MEASUREMENT, site: str = "", gateway: str = ""
    ) -> None:
        if not measurement:
            raise ValueError("the measurement may not be empty")
        if measurement.startswith("#"):
            raise ValueError("the measurement may not start with '#' (a line protocol comment)")
        self.measurement = measurement
        self.site = site
        self.gateway = gateway
        self._measurement = escape_measurement(measurement)
        self._prefixes: dict[tuple[str, PointMeta | None], str] = {}

    def prefix(self, point: str, meta: PointMeta | None) -> str:
        """`<measurement>,<tags>` for a point, tags in key order, empty ones left out."""
        key = (point, meta)
        cached = self._prefixes.get(key)
        if cached is not None:
            return cached
        if meta is not None:
            device, equipment, unit = meta.device, meta.equipment or "", meta.unit
        else:
            device = point.split(".", 1)[0] if "." in point else ""
            equipment, unit = "", ""
        tags = (
            ("device", device),
            ("equipment", equipment),
            ("gateway", self.gateway),
            ("point", point),
            ("site", self.site),
            ("unit", unit),
        )
        text = self._measurement + "".join(
            f",{k}={escape_tag(v)}" for k, v in tags if v
        )  # keys are fixed ASCII words: already sorted, nothing to escape
        if len(self._prefixes) >= self.CACHE_MAX:
            self._prefixes.clear()
        self._prefixes[key] = text
        return text

    def line(self, reading: StoredReading, meta: PointMeta | None) -> str:
        """One reading as one line; raises `UnencodableReading`."""
        ts = reading.ts_source if reading.ts_source is not None else reading.ts_gateway
        ns = timestamp_ns(ts)
        fields: list[str] = []
        value = format_value(reading.value)
        if value is not None:
            fields.append(f"value={value}")
        else:
            special = nonfinite_name(reading.value)
            if special is not None:
                fields.append(f'nonfinite="{special}"')
        fields.append(f"quality={int(reading.quality)}i")
        fields.append(f"id={int(reading.id)}i")
        return f"{self.prefix(reading.point, meta)} {','.join(fields)} {ns}"

    def lines(
        self,
        readings: Iterable[StoredReading],
        meta: Mapping[str, PointMeta | None] | Callable[[str], PointMeta | None],
    ) -> tuple[list[tuple[StoredReading, str]], list[EncodeFailure]]:
        """Encode many readings: (reading, line) pairs in input order, and the readings that
        cannot be written with the reason. One bad reading never costs the others."""
        lookup = meta.get if isinstance(meta, Mapping) else meta
        done: list[tuple[StoredReading, str]] = []
        failed: list[EncodeFailure] = []
        for r in readings:
            try:
                done.append((r, self.line(r, lookup(r.point))))
            except UnencodableReading as exc:
                failed.append(EncodeFailure(r, str(exc)))
        return done, failed


def encode(
    readings: Iterable[StoredReading],
    meta: Mapping[str, PointMeta | None] | Callable[[str], PointMeta | None],
    *,
    measurement: str = DEFAULT_MEASUREMENT,
    site: str = "",
    gateway: str = "",
) -> list[str]:
    """One line per reading, in order; raises `UnencodableReading` for the first reading that
    cannot be written (use `LineEncoder.lines` to keep going past it)."""
    encoder = LineEncoder(measurement=measurement, site=site, gateway=gateway)
    lookup = meta.get if isinstance(meta, Mapping) else meta
    return [encoder.line(r, lookup(r.point)) for r in readings]
