"""Pure MQTT payload and topic parsing: bytes in, values out, no I/O.

Contract: `PayloadParser.parse(payload)` returns a list of `ParsedValue` or raises `ParseError`
— never another exception, whatever the bytes (property-tested). The driver turns a
`ParseError` into a dead letter and a `ParsedValue` with a `problem` into a BAD reading.

Transform order for one message:

1. size: more than `max_bytes` -> `too_large` (before anything is decoded);
2. text: strict UTF-8 (a leading BOM is dropped) -> `not_utf8`;
3. structure, by the profile's `format`:
   * `json`: `json.loads` with NaN/Infinity refused (`not_json`), nesting bounded to
     `MAX_JSON_DEPTH` (`too_deep`), the document an object or array (`wrong_type`); each
     point's field path is looked up (`engine.rpm`, `readings[0].value`); a missing field or
     JSON `null` means "not in this message", as does a timestamp path that runs into a
     scalar;
   * `csv`: one line (after an optional header line), split with the `csv` module; each
     point reads its column; a missing or empty column means "not in this message";
   * `number`: the whole text is the one value (the point comes from the topic);
4. coercion to the point's `data_type` (the rules below); a value that cannot be coerced is
   a `ParsedValue` with `problem` set (the driver emits it BAD with that reason);
5. the source timestamp, when the profile says where it is: epoch seconds, epoch
   milliseconds or ISO 8601 (no zone means UTC) -> float epoch seconds; present but
   unreadable or outside 2000..2100 -> `bad_timestamp` (usually seconds sent as ms);
6. a message with no usable value at all -> `no_values` (nothing matched) or `wrong_type`
   (fields were there, none could be coerced).

Coercion rules (`DataType`):

* `float`: JSON numbers (not booleans) and numeric text (`" 12.5 "`); must be finite.
* `int`: JSON integers, integral floats (`1200.0`), integer text (`"1200"`); within int64.
* `bool`: JSON booleans, the numbers 0 and 1, and text `true/false/1/0/on/off/yes/no`
  (any case).
* `string`: text as sent (at most `MAX_STRING` characters); numbers and booleans are written
  the JSON way (`12.5`, `true`); objects and arrays are refused.

Topic templates (`TopicTemplate`) are topic names whose whole segments may be `{equipment}`
(required, once), `{point}` (optional, once) or `+` (any, ignored). `coop/{equipment}/telemetry`
subscribes to `coop/+/telemetry` and matches `coop/tractor-01/telemetry` back to
`equipment="tractor-01"`. Item templates (`kind="item"`: payloads handed over raw, never
parsed) take `{item}` (optional, once) in place of `{point}`:
`grading/{equipment}/image/{item}` matches `grading/line-1/image/000042` back to
`equipment="line-1", item="000042"`. The item id is the topic level as sent (any text but
`/`, possibly empty); only the equipment is checked against configured names.
"""

from __future__ import annotations

import csv
import enum
import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from gateway.readings import Value

if TYPE_CHECKING:
    from drivers.mqtt.config import MqttPoint, MqttProfile

#: Default bound for one payload (a device's `max_payload_bytes` overrides it, up to 16 MiB).
DEFAULT_MAX_BYTES = 256 * 1024
#: Nesting of JSON objects/arrays a payload may have. Telemetry needs 3-5; a deeper document
#: is either broken or an attack on the parser.
MAX_JSON_DEPTH = 32
#: Longest string value kept for a `string` point.
MAX_STRING = 1024
#: Longest field path, in segments.
MAX_PATH_SEGMENTS = 32

#: Source timestamps outside this window are refused: a seconds/milliseconds mix-up or an
#: unset device clock, either way not a time to file a reading under.
TS_MIN = 946_684_800.0  # 2000-01-01T00:00:00Z
TS_MAX = 4_102_444_800.0  # 2100-01-01T00:00:00Z

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: Every `ParseError.code`, in the order the steps above can raise them.
PARSE_REASONS = (
    "too_large",
    "not_utf8",
    "not_json",
    "too_deep",
    "not_csv",
    "bad_timestamp",
    "no_values",
    "wrong_type",
)


class DataType(enum.StrEnum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"
    STRING = "string"


class PayloadFormat(enum.StrEnum):
    JSON = "json"
    NUMBER = "number"
    CSV = "csv"


class TimestampForm(enum.StrEnum):
    EPOCH_S = "epoch_s"
    EPOCH_MS = "epoch_ms"
    ISO8601 = "iso8601"


class ParseError(ValueError):
    """A payload the profile cannot read at all. `code` is one of `PARSE_REASONS` (it keys
    the driver's counters), `detail` says what exactly, for the dead letter and the log."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class ParsedValue(NamedTuple):
    """One point's value from one message. `problem` is set (and `value` None) when the field
    was there but could not be coerced; the driver emits that as a BAD reading."""

    point: str
    value: Value
    ts_source: float | None
    problem: str | None = None


# -- field paths ---------------------------------------------------------------------------

PathSegment = str | int


def compile_path(path: str) -> tuple[PathSegment, ...]:
    """`engine.rpm` -> ("engine", "rpm"); `readings[0].value` -> ("readings", 0, "value");
    `[2]` -> (2,). Keys are any text without `.`, `[` or `]`. Raises ValueError."""
    if not isinstance(path, str) or not path:
        raise ValueError("a field path must be non-empty text")
    out: list[PathSegment] = []
    i, n = 0, len(path)
    expect_key = path[0] != "["
    while i < n:
        ch = path[i]
        if ch == "[":
            end = path.find("]", i)
            digits = path[i + 1 : end] if end > 0 else ""
            if not digits.isascii() or not digits.isdigit() or len(digits) > 6:
                raise ValueError(f"bad index at character {i + 1} of {path!r} (use [0], [1], ...)")
            out.append(int(digits))
            i = end + 1
            expect_key = False
        elif ch == ".":
            if expect_key or i + 1 >= n or path[i + 1] in ".[]":
                raise ValueError(f"empty key at character {i + 1} of {path!r}")
            i += 1
            expect_key = True
        elif ch == "]":
            raise ValueError(f"unmatched ] at character {i + 1} of {path!r}")
        else:
            if not expect_key:
                raise ValueError(f"expected . or [ at character {i + 1} of {path!r}")
            j = i
            while j < n and path[j] not in ".[]":
                j += 1
            out.append(path[i:j])
            i = j
            expect_key = False
        if len(out) > MAX_PATH_SEGMENTS:
            raise ValueError(f"{path!r} is deeper than {MAX_PATH_SEGMENTS} segments")
    return tuple(out)


_MISSING: Any = object()


def _lookup(doc: Any, path: tuple[PathSegment, ...]) -> Any:
    """The value at `path`, `_MISSING` when a key or index is absent, or a `_Mismatch` when the
    document has another shape than the path expects (a scalar where an object should be)."""
    node = doc
    for seg in path:
        if isinstance(seg, str):
            if type(node) is not dict:
                return _Mismatch(seg, node)
            node = node.get(seg, _MISSING)
        else:
            if type(node) is not list:
                return _Mismatch(seg, node)
            node = node[seg] if seg < len(node) else _MISSING
        if node is _MISSING:
            return _MISSING
    return node


class _Mismatch:
    __slots__ = ("found", "segment")

    def __init__(self, segment: PathSegment, found: Any) -> None:
        self.segment = segment
        self.found = found

    def describe(self) -> str:
        want = "an object" if isinstance(self.segment, str) else "an array"
        return f"expected {want} before {self.segment!r}, found {_kind(self.found)}"


# -- coercion -----------------------------------------------------------------------------

_TRUE = frozenset({"true", "1", "on", "yes"})
_FALSE = frozenset({"false", "0", "off", "no"})


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, dict | list) else _kind(value)
    return text if len(text) <= 40 else text[:39] + "…"


def coerce(value: Any, data_type: DataType) -> tuple[Value, str | None]:
    """(value, None) or (None, why not) — see the module docstring for the rules."""
    t = type(value)
    if data_type is DataType.FLOAT:
        if t is float or t is int:
            f = float(value) if t is float or abs(value) < 2**1023 else math.inf
            if math.isfinite(f):
                return f, None
            return None, f"not a finite number ({_show(value)})"
        if t is str:
            try:
                f = float(value.strip()) if len(value) <= 64 else math.nan
            except ValueError:
                return None, f"expected a number, got text {_show(value)}"
            if math.isfinite(f):
                return f, None
            return None, f"not a finite number ({_show(value)})"
        return None, f"expected a number, got {_kind(value)}"
    if data_type is DataType.INT:
        if t is int:
            if _INT64_MIN <= value <= _INT64_MAX:
                return value, None
            return None, "integer outside 64 bits"
        if t is float:
            if math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
                return int(value), None
            return None, f"expected an integer, got {_show(value)}"
        if t is str:
            text = value.strip()
            if len(text) <= 20 and re.fullmatch(r"[+-]?\d+", text):
                i = int(text)
                if _INT64_MIN <= i <= _INT64_MAX:
                    return i, None
            try:
                f = float(text) if len(text) <= 64 else math.nan
            except ValueError:
                return None, f"expected an integer, got text {_show(value)}"
            if math.isfinite(f) and f.is_integer() and abs(f) < 2**63:
                return int(f), None
            return None, f"expected an integer, got text {_show(value)}"
        return None, f"expected an integer, got {_kind(value)}"
    if data_type is DataType.BOOL:
        if t is bool:
            return value, None
        if (t is int or t is float) and value in (0, 1):
            return bool(value), None
        if t is str:
            low = value.strip().lower()
            if low in _TRUE:
                return True, None
            if low in _FALSE:
                return False, None
            return None, f"expected a boolean, got text {_show(value)}"
        return None, f"expected a boolean, got {_kind(value) if t is not int else _show(value)}"
    # STRING
    if t is str:
        if len(value) > MAX_STRING:
            return None, f"text longer than {MAX_STRING} characters"
        return value, None
    if t is bool:
        return ("true" if value else "false"), None
    if t is int or t is float:
        if t is float and not math.isfinite(value):
            return None, f"not a finite number ({_show(value)})"
        return json.dumps(value), None
    return None, f"expected text, got {_kind(value)}"


# -- timestamps ----------------------------------------------------------------------------


def parse_timestamp(raw: Any, form: TimestampForm) -> float:
    """Epoch seconds from a payload's timestamp field; ParseError("bad_timestamp") when it is
    not a time in the accepted window."""
    if form is TimestampForm.ISO8601:
        if type(raw) is not str or len(raw) > 64:
            raise ParseError("bad_timestamp", f"expected ISO 8601 text, got {_show(raw)}")
        text = raw.strip()
        try:
            # fromisoformat (3.11) reads 'Z', offsets, fractions and the date-only forms.
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ParseError("bad_timestamp", f"not ISO 8601: {_show(raw)}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        try:
            ts = dt.timestamp()
        except (OverflowError, ValueError, OSError):
            raise ParseError("bad_timestamp", f"not a usable time: {_show(raw)}") from None
    else:
        value, problem = coerce(raw, DataType.FLOAT)
        if problem is not None or not isinstance(value, float):
            raise ParseError("bad_timestamp", f"expected an epoch number: {problem}")
        ts = value / 1000.0 if form is TimestampForm.EPOCH_MS else value
    if not TS_MIN <= ts <= TS_MAX:
        raise ParseError(
            "bad_timestamp",
            f"{_show(raw)} as {form.value} is outside 2000..2100 (seconds vs milliseconds?)",
        )
    return ts


# -- payloads ------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_json_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def _depth_ok(doc: Any, limit: int) -> bool:
    """Iterative nesting check (a recursive one could be the very thing that overflows)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        if type(node) is dict:
            stack.extend((v, depth + 1) for v in node.values() if type(v) in (dict, list))
        elif type(node) is list:
            stack.extend((v, depth + 1) for v in node if type(v) in (dict, list))
    return True


def decode_text(payload: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """Steps 1 and 2: size, then strict UTF-8."""
    if len(payload) > max_bytes:
        raise ParseError("too_large", f"{len(payload)} bytes, more than {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError("not_utf8", f"byte {exc.start} is not UTF-8") from None
    return text[1:] if text.startswith("\ufeff") else text


def decode_json(text: str) -> Any:
    """Step 3 for JSON: the document, with NaN/Infinity refused and nesting bounded."""
    try:
        doc = _json_decoder.decode(text)
    except RecursionError:
        raise ParseError("too_deep", f"nested deeper than {MAX_JSON_DEPTH}") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, over-long integers
        raise ParseError("not_json", str(exc)[:200]) from None
    # Counting brackets is C-speed; only a document that could be deep gets walked.
    if (text.count("{") + text.count("[")) > MAX_JSON_DEPTH and not _depth_ok(doc, MAX_JSON_DEPTH):
        raise ParseError("too_deep", f"nested deeper than {MAX_JSON_DEPTH}")
    return doc


class _Field(NamedTuple):
    name: str
    data_type: DataType
    path: tuple[PathSegment, ...]
    column: int
    exact: type  # the Python type that needs no coercion (float for FLOAT, ...)


_EXACT: dict[DataType, type] = {
    DataType.FLOAT: float,
    DataType.INT: int,
    DataType.BOOL: bool,
    DataType.STRING: str,
}


class PayloadParser:
    """A profile compiled once (paths split, types resolved) and applied to many payloads.

    Immutable and free of I/O; safe to share between threads.
    """

    __slots__ = (
        "_by_name",
        "_csv_header",
        "_delimiter",
        "_fields",
        "_format",
        "_ts_column",
        "_ts_form",
        "_ts_path",
        "max_bytes",
    )

    def __init__(self, profile: MqttProfile, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._format = PayloadFormat(profile.format)
        self._delimiter = profile.csv_delimiter
        self._csv_header = profile.csv_header
        self._fields = tuple(_field(p) for p in profile.points)
        self._by_name = {f.name: f for f in self._fields}
        ts = profile.timestamp
        self._ts_form = TimestampForm(ts.form) if ts is not None else None
        self._ts_path = compile_path(ts.path) if ts is not None and ts.path else None
        self._ts_column = ts.column if ts is not None and ts.column is not None else None

    @property
    def format(self) -> PayloadFormat:
        return self._format

    def has_point(self, name: str) -> bool:
        return name in self._by_name

    def parse(self, payload: bytes, *, point: str | None = None) -> list[ParsedValue]:
        """Values of one message. For the `number` format, `point` names the point (from the
        topic); it may be omitted when the profile has exactly one point. Raises ParseError
        only — any other exception escaping here is a bug (and the driver still survives it)."""
        text = decode_text(payload, self.max_bytes)
        if self._format is PayloadFormat.JSON:
            return self._finish(self._from_json(decode_json(text)))
        if self._format is PayloadFormat.CSV:
            return self._finish(self._from_csv(text))
        return self._finish(self._from_number(text, point))

    # -- formats -----------------------------------------------------------------------

    def _from_json(self, doc: Any) -> list[ParsedValue]:
        if type(doc) is not dict and type(doc) is not list:
            raise ParseError("wrong_type", f"expected a JSON object, got {_kind(doc)}")
        ts: float | None = None
        if self._ts_path is not None:
            raw = _lookup(doc, self._ts_path)
            # A path through a scalar finds no timestamp, like a missing field does.
            if raw is not _MISSING and raw is not None and not isinstance(raw, _Mismatch):
                ts = parse_timestamp(raw, self._ts_form or TimestampForm.EPOCH_S)
        out: list[ParsedValue] = []
        append = out.append
        new = tuple.__new__  # NamedTuple's own __new__ costs a Python-level call per value
        isfinite = math.isfinite
        for f in self._fields:
            # Hot path (every field of every message): the lookup inlined, and the exact
            # type each data type expects accepted without going through `coerce`.
            node: Any = doc
            for seg in f.path:
                if isinstance(seg, str):
                    if type(node) is not dict:
                        node = _Mismatch(seg, node)
                        break
                    node = node.get(seg, _MISSING)
                else:
                    if type(node) is not list:
                        node = _Mismatch(seg, node)
                        break
                    node = node[seg] if seg < len(node) else _MISSING
                if node is _MISSING:
                    break
            if node is _MISSING or node is None:
                continue
            t = type(node)
            if t is f.exact and (
                (t is float and isfinite(node))
                or (t is int and _INT64_MIN <= node <= _INT64_MAX)
                or (t is str and len(node) <= MAX_STRING)
                or t is bool
            ):
                append(new(ParsedValue, (f.name, node, ts, None)))
                continue
            if t is _Mismatch:
                append(ParsedValue(f.name, None, ts, f"field {f.name}: {node.describe()}"))
                continue
            value, problem = coerce(node, f.data_type)
            append(ParsedValue(f.name, value, ts, problem and f"field {f.name}: {problem}"))
        return out

    def _from_csv(self, text: str) -> list[ParsedValue]:
        lines = text.splitlines()
        if self._csv_header and lines:
            lines = lines[1:]
        lines = [ln for ln in lines if ln.strip()]
        if len(lines) != 1:
            raise ParseError("not_csv", f"expected one data line, got {len(lines)}")
        try:
            row = next(csv.reader(lines, delimiter=self._delimiter, strict=True))
        except (csv.Error, StopIteration) as exc:
            raise ParseError("not_csv", str(exc)[:200]) from None
        ts: float | None = None
        if self._ts_column is not None and self._ts_column < len(row):
            cell = row[self._ts_column].strip()
            if cell:
                ts = parse_timestamp(cell, self._ts_form or TimestampForm.EPOCH_S)
        out: list[ParsedValue] = []
        for f in self._fields:
            if f.column >= len(row) or not (cell := row[f.column].strip()):
                continue
            value, problem = coerce(cell, f.data_type)
            out.append(ParsedValue(f.name, value, ts, problem and f"column {f.column}: {problem}"))
        return out

    def _from_number(self, text: str, point: str | None) -> list[ParsedValue]:
        if point is None:
            if len(self._fields) != 1:
                raise ParseError("no_values", "the topic names no point and the profile has many")
            f = self._fields[0]
        else:
            f = self._by_name.get(point)  # type: ignore[assignment]
            if f is None:
                raise ParseError("no_values", f"the profile has no point {point!r}")
        cell = text.strip()
        if not cell:
            raise ParseError("no_values", "empty payload")
        value, problem = coerce(cell, f.data_type)
        return [ParsedValue(f.name, value, None, problem)]

    @staticmethod
    def _finish(values: list[ParsedValue]) -> list[ParsedValue]:
        if not values:
            raise ParseError("no_values", "none of the profile's fields is in the payload")
        if all(v.problem is not None for v in values):
            raise ParseError("wrong_type", values[0].problem or "no field could be read")
        return values


def _field(point: MqttPoint) -> _Field:
    return _Field(
        name=point.name,
        data_type=DataType(point.data_type),
        path=compile_path(point.path) if point.path else (),
        column=point.column if point.column is not None else -1,
        exact=_EXACT[DataType(point.data_type)],
    )


def parse_payload(
    payload: bytes,
    profile: MqttProfile,
    *,
    point: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[ParsedValue]:
    """One-off convenience: compile `profile` and parse `payload` (the driver keeps a
    `PayloadParser` instead)."""
    return PayloadParser(profile, max_bytes=max_bytes).parse(payload, point=point)


# -- topics ---------------------------------------------------------------------------------

EQUIPMENT = "{equipment}"
POINT = "{point}"
ITEM = "{item}"
_PLACEHOLDER = re.compile(r"\{[^}]*\}")

#: What a template routes: `telemetry` (parsed into readings; may name `{point}`) or `item`
#: (handed over raw; may name `{item}`). One placeholder set per kind, so a template can never
#: be read both ways.
TopicKind = Literal["telemetry", "item"]
_OPTIONAL: dict[str, str] = {"telemetry": POINT, "item": ITEM}


class TopicMatch(NamedTuple):
    """What a topic says: the equipment, and the `{point}` (telemetry) or `{item}` (item
    topics) level when the template has one. `item` comes last and defaults to None, so
    code written before item topics (attribute access, `TopicMatch(eq, point)`) still works."""

    equipment: str
    point: str | None
    item: str | None = None


class TopicTemplate:
    """A topic template compiled: its subscription filter and a matcher back to names.

    `kind="telemetry"` (the default) admits `{point}`; `kind="item"` admits `{item}` instead.
    """

    __slots__ = (
        "_equipment_at",
        "_item_at",
        "_literals",
        "_point_at",
        "filter",
        "kind",
        "segments",
        "template",
    )

    def __init__(self, template: str, *, kind: TopicKind = "telemetry") -> None:
        problem = check_topic_template(template, kind=kind)
        if problem:
            raise ValueError(problem)
        self.template = template
        self.kind = kind
        self.segments = tuple(template.split("/"))
        self._equipment_at = self.segments.index(EQUIPMENT)
        self._point_at = self.segments.index(POINT) if POINT in self.segments else -1
        self._item_at = self.segments.index(ITEM) if ITEM in self.segments else -1
        self._literals = tuple(
            (i, s) for i, s in enumerate(self.segments) if s not in (EQUIPMENT, POINT, ITEM, "+")
        )
        self.filter = "/".join("+" if s in (EQUIPMENT, POINT, ITEM) else s for s in self.segments)

    @property
    def has_point(self) -> bool:
        return self._point_at >= 0

    @property
    def has_item(self) -> bool:
        return self._item_at >= 0

    def match(self, topic: str) -> TopicMatch | None:
        parts = topic.split("/")
        if len(parts) != len(self.segments):
            return None
        for i, literal in self._literals:
            if parts[i] != literal:
                return None
        equipment = parts[self._equipment_at]
        point = parts[self._point_at] if self._point_at >= 0 else None
        item = parts[self._item_at] if self._item_at >= 0 else None
        return TopicMatch(equipment, point, item)

    def topic_for(
        self, equipment: str, *, point: str | None = None, item: str | None = None
    ) -> str:
        """The concrete topic for one equipment (and point or item, when given); a level not
        given (`{point}`, `{item}`, `+`) stays `+`, which makes it a filter rather than a
        topic. `match(topic_for(e, item=i))` gives back `e` and `i` (property-tested) as long
        as neither contains `/`."""
        out = []
        for s in self.segments:
            if s == EQUIPMENT:
                out.append(equipment)
            elif s == POINT:
                out.append("+" if point is None else point)
            elif s == ITEM:
                out.append("+" if item is None else item)
            else:
                out.append(s)
        return "/".join(out)


def check_topic_template(template: str, *, kind: TopicKind = "telemetry") -> str | None:
    """Why `template` is not a usable topic template of this kind, or None."""
    if not isinstance(template, str) or not template:
        return "a topic template must be non-empty text"
    if len(template.encode("utf-8", "surrogatepass")) > 65535:
        return "a topic is at most 65535 bytes"
    if "\x00" in template:
        return "a topic cannot contain NUL"
    segments = template.split("/")
    if "#" in template:
        return "'#' is not allowed: name each level, with + for a level to ignore"
    optional = _OPTIONAL[kind]
    for seg in segments:
        if "+" in seg and seg != "+":
            return f"'+' must be a whole level (got level {seg!r})"
        for ph in _PLACEHOLDER.findall(seg):
            if ph == ITEM and kind == "telemetry":
                return "{item} is only for item topics (a device's items:), not telemetry topics"
            if ph == POINT and kind == "item":
                return (
                    "{point} is only for telemetry topics; an item topic names {equipment} "
                    "and optionally {item}"
                )
            if ph not in (EQUIPMENT, optional):
                return f"unknown placeholder {ph}; use {{equipment}} and {optional}"
            if seg != ph:
                return f"{ph} must be a whole level (got level {seg!r})"
        if ("{" in seg or "}" in seg) and seg not in (EQUIPMENT, optional):
            return f"stray brace in level {seg!r}"
    if segments.count(EQUIPMENT) != 1:
        return "a topic template needs {equipment} exactly once"
    if segments.count(optional) > 1:
        return f"{optional} may appear at most once"
    return None


def match_topic(templates: Sequence[TopicTemplate], topic: str) -> TopicMatch | None:
    """The first template that matches `topic` (templates are tried in config order)."""
    for t in templates:
        m = t.match(topic)
        if m is not None:
            return m
    return None


__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_STRING",
    "PARSE_REASONS",
    "DataType",
    "ParseError",
    "ParsedValue",
    "PayloadFormat",
    "PayloadParser",
    "TimestampForm",
    "TopicKind",
    "TopicMatch",
    "TopicTemplate",
    "check_topic_template",
    "coerce",
    "compile_path",
    "decode_json",
    "decode_text",
    "match_topic",
    "parse_payload",
    "parse_timestamp",
]
