"""What a shared machine is: identity, owner, capabilities, location, sharing policy, how its
status and health are read from the gateway's points, and the data class of every field.

A machine is described once, as data (config `equipment:`, `millrace equipment add`, the local
API), and validated here; everything else in `gateway.equipment` is a pure function of it::

    id: tractor-01
    type: tractor
    name: Blue tractor
    make: Kubota
    model: M7060
    owner: {org: Demo Cane Cooperative, contact_name: Nguyen Van A, phone: "+84 912 345 678"}
    capabilities:
      - {name: ploughing, capacity: 6, unit: ha/day}
    location: {lat: 22.81734, lon: 108.36652, description: North barn, timezone: Asia/Ho_Chi_Minh}
    sharing:
      shared: true
      weekly:
        - {days: [mon, tue, wed, thu, fri], start: "07:00", end: "17:00"}
        - {days: [sat], start: "20:00", end: "24:00"}     # across midnight: two windows
        - {days: [sun], start: "00:00", end: "06:00"}
      blackout_dates: [2024-06-15]
      rate: {amount: 45, currency: VND, per: hour}
      min_booking_hours: 2
    device: coop-broker          # the gateway device whose points describe it
    health: {models: [tractor1-pdm], failure_risk_max: 0.5, cycle_hours: 1}

Data classes (`data_classes:` overrides them; `Machine.classes` is the result; README.md in
this folder has the table with where each field goes in the pool contract):

* always public (fixed): id, type -- the pool names and matches machines by them;
* public: make, model, owner.org (an organisation's name), capabilities, sharing,
  location.coarse (lat/lon rounded to 0.01°), name (not sent: the contract has no place);
* restricted (never public): location.exact, location.description, serial_number, notes;
* private (may be made restricted, never public): owner.contact_name, owner.phone,
  owner.email.

Public data also carries `owner_ref`, an HMAC of the owner's org and contact (`disclose.py`).
Gateway wiring (device, point_prefix, points, status_rules, stale_after, health, meters,
data_classes) is configuration, not data about the machine: it never leaves the box.

A shared machine (`sharing.shared: true`) must have what the pool requires: make, model,
owner.org and a location with lat and lon.
"""

from __future__ import annotations

import enum
import math
import re
import zoneinfo
from collections.abc import Mapping
from datetime import date
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.equipment._rules import ANY_NAME, compile_status_expr
from gateway.equipment.errors import InvalidMachine
from gateway.equipment.problems import Problem, as_param, invalid
from gateway.inference.rules import RuleError
from gateway.types import DataClass, Duration, Name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MachineType(enum.StrEnum):
    TRACTOR = "tractor"
    COMBINE_HARVESTER = "combine_harvester"
    SUGARCANE_HARVESTER = "sugarcane_harvester"
    DRONE_SPRAYER = "drone_sprayer"
    FRUIT_GRADING_LINE = "fruit_grading_line"
    CNC_MILL = "cnc_mill"
    PUMP = "pump"
    COGENERATION_TURBINE = "cogeneration_turbine"
    SUGARCANE_PRESS = "sugarcane_press"
    OTHER = "other"


class Status(enum.StrEnum):
    """What a machine is doing now. `offline` and `maintenance` are also set by the gateway
    itself (device down, stale data; a maintenance alarm of its models)."""

    WORKING = "working"
    IDLE = "idle"
    IN_TRANSIT = "in_transit"
    FAULT = "fault"
    MAINTENANCE = "maintenance"
    OFFLINE = "offline"


class Quantity(enum.StrEnum):
    """What usage is metered and billed in."""

    ENGINE_HOURS = "engine_hours"
    HECTARES = "hectares"
    TONNES = "tonnes"
    ENERGY_KWH = "energy_kwh"


WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]

_HHMM_RE = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def _once(values: list[str], code: str, what: str, twice: str = "is listed twice") -> None:
    """A `code` error naming every value that appears more than once."""
    dup = sorted({x for x in values if values.count(x) > 1})
    if dup:
        raise invalid(code, f"{what} {twice} (got {{got}})", got=", ".join(dup))


def minutes_of(hhmm: str) -> int:
    """'07:30' -> 450; '24:00' -> 1440."""
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def _clock_time(value: str) -> str:
    match = _HHMM_RE.match(value)
    if not match or (match.group(1) == "24" and match.group(2) != "00"):
        raise invalid(
            "time_of_day", "a time of day is HH:MM, 00:00 to 24:00 (got {got})", got=value
        )
    return value


ClockTime = Annotated[str, AfterValidator(_clock_time)]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise invalid("not_finite", "must be a finite number (got {got})", got=value)
    return value


FiniteFloat = Annotated[float, AfterValidator(_finite)]

_PHONE_RE = re.compile(r"^\+?[0-9][0-9 ().\-]{4,30}$")
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


class Owner(_Strict):
    """Who owns the machine. The org is restricted, the contact private (see the table)."""

    #: An organisation's name (cooperative, company): public, the pool shows it.
    org: str = Field(default="", max_length=128)
    contact_name: str = Field(default="", max_length=128)
    phone: str = Field(default="", max_length=32)
    email: str = Field(default="", max_length=254)

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str) -> str:
        if v and not _PHONE_RE.match(v):
            raise invalid(
                "phone_format", "a phone number is digits, spaces, ( ) . - and an optional +"
            )
        return v

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        if v and not _EMAIL_RE.match(v):
            raise invalid("email_format", "an email address looks like name@example.org")
        return v


class Capability(_Strict):
    """Something the machine does, with how much of it: `{name: harvesting, capacity: 40,
    unit: t/h}`."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    capacity: FiniteFloat = Field(gt=0)
    #: Per hour or per day of work: `t/h`, `ha/day`.
    unit: str = Field(pattern=r"^[A-Za-z0-9%]{1,16}/(h|day)$")


class Location(_Strict):
    lat: FiniteFloat | None = Field(default=None, ge=-90, le=90)
    lon: FiniteFloat | None = Field(default=None, ge=-180, le=180)
    description: str = Field(default="", max_length=200)
    #: IANA zone the weekly windows and blackout dates are written in.
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise invalid(
                "unknown_timezone",
                "not an IANA time zone such as Asia/Ho_Chi_Minh (got {got})",
                got=v,
            ) from None
        return v

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.lat is None) != (self.lon is None):
            raise invalid("lat_lon_pair", "give both lat and lon, or neither")
        return self

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


class WeeklyWindow(_Strict):
    """A time of the week the owner offers the machine, in the machine's time zone. It ends
    the day it starts: a window across midnight is two (`sat 20:00-24:00`, `sun 00:00-06:00`),
    and availability joins them again."""

    days: list[Weekday] = Field(min_length=1)
    start: ClockTime
    end: ClockTime

    @field_validator("days")
    @classmethod
    def _days(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise invalid("day_twice", "a day is listed twice (got {got})", got=", ".join(v))
        return sorted(v, key=WEEKDAYS.index)

    @field_validator("start")
    @classmethod
    def _start(cls, v: str) -> str:
        if v == "24:00":
            raise invalid(
                "window_start_late", "a window starts at 23:59 at the latest (got {got})", got=v
            )
        return v

    @field_validator("end")
    @classmethod
    def _end(cls, v: str, info: ValidationInfo) -> str:
        start = info.data.get("start")
        if start is not None and minutes_of(v) <= minutes_of(start):
            raise invalid(
                "window_end_before_start",
                "must be after start {start}; split a window across midnight into two "
                "at 24:00 (got {got})",
                start=start,
                got=v,
            )
        return v


class Rate(_Strict):
    amount: FiniteFloat = Field(ge=0)
    #: ISO 4217 code (three capital letters; the list itself is not checked).
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    per: Literal["hour", "hectare", "tonne", "day"]


class Sharing(_Strict):
    """Whether and when the owner offers the machine to the pool. Off unless switched on."""

    shared: bool = False
    weekly: list[WeeklyWindow] = Field(default_factory=list, max_length=28)
    #: Whole days (in the machine's time zone) never offered, whatever the weekly windows say.
    blackout_dates: list[date] = Field(default_factory=list, max_length=366)
    rate: Rate | None = None
    #: Shorter free windows are not offered.
    min_booking_hours: FiniteFloat = Field(default=1.0, gt=0, le=24 * 30)

    @field_validator("blackout_dates")
    @classmethod
    def _dates(cls, v: list[date]) -> list[date]:
        return sorted(set(v))


class StatusRule(_Strict):
    """`{status: working, when: "engine_rpm > 800 and speed > 0.5"}`. Names are the machine's
    point names (without its point_prefix); text compares with == and != only."""

    status: Status
    when: str = Field(min_length=1, max_length=500)

    @field_validator("when")
    @classmethod
    def _syntax(cls, v: str) -> str:
        try:
            compile_status_expr(v, ANY_NAME)
        except RuleError as exc:
            raise invalid("status_rule", "{error} (got {got})", error=str(exc), got=v) from None
        return v


class HealthPolicy(_Strict):
    """How the predictive-maintenance models bound to the machine limit its sharing."""

    #: Model binding ids (config `models:` ids); their results are `<id>.failure_risk`,
    #: `<id>.rul_cycles` and alarms `<id>.alarm_<name>`.
    models: list[Name] = Field(default_factory=list)
    #: Not offered when a model's failure risk is at or above this.
    failure_risk_max: FiniteFloat = Field(default=0.5, gt=0, le=1)
    #: Not offered when the remaining useful life is shorter than this (needs cycle_hours).
    min_rul_hours: FiniteFloat | None = Field(default=None, gt=0)
    #: Hours of operation one RUL cycle stands for (turns `rul_cycles` into hours).
    cycle_hours: FiniteFloat | None = Field(default=None, gt=0)
    #: Model alarms that put the machine in `maintenance` status.
    maintenance_alarms: list[Name] = Field(
        default_factory=lambda: ["maintenance_due", "maintenance_overdue", "tool_change_due"]
    )
    #: Model alarms that withdraw the machine like a high failure risk (fallback rules raise
    #: these when the model itself cannot run).
    failure_alarms: list[Name] = Field(default_factory=lambda: ["failure_predicted"])

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        _once(v, "duplicate_model", "a model")
        return v


class MeterSpec(_Strict):
    """One usage counter: `{quantity: hectares, point: area_done}`. Counters only go up; a
    drop to at most `reset_fraction` of the last value is a reset (the counter restarted at
    zero), a smaller drop a glitch (ignored); `rollover` is where a wrapping counter wraps."""

    quantity: Quantity
    point: Name
    scale: FiniteFloat = Field(default=1.0, gt=0)
    rollover: FiniteFloat | None = Field(default=None, gt=0)
    reset_fraction: FiniteFloat = Field(default=0.5, gt=0, lt=1)


_PUBLIC, _RESTRICTED, _PRIVATE = DataClass.PUBLIC, DataClass.RESTRICTED, DataClass.PRIVATE
_ANY = frozenset(DataClass)
_NOT_PUBLIC = frozenset({_RESTRICTED, _PRIVATE})

#: field -> (default data class, the classes it may be given) (module docstring table).
FIELD_CLASSES: dict[str, tuple[DataClass, frozenset[DataClass]]] = {
    "name": (_PUBLIC, _ANY),
    "make": (_PUBLIC, _ANY),
    "model": (_PUBLIC, _ANY),
    "owner.org": (_PUBLIC, _ANY),
    "capabilities": (_PUBLIC, _ANY),
    "sharing": (_PUBLIC, _ANY),
    "location.coarse": (_PUBLIC, _ANY),
    "location.exact": (_RESTRICTED, _NOT_PUBLIC),
    "location.description": (_RESTRICTED, _NOT_PUBLIC),
    "serial_number": (_RESTRICTED, _NOT_PUBLIC),
    "notes": (_RESTRICTED, _NOT_PUBLIC),
    "owner.contact_name": (_PRIVATE, _NOT_PUBLIC),
    "owner.phone": (_PRIVATE, _NOT_PUBLIC),
    "owner.email": (_PRIVATE, _NOT_PUBLIC),
}
DEFAULT_DATA_CLASSES: dict[str, DataClass] = {k: v[0] for k, v in FIELD_CLASSES.items()}
#: Always public (not in data_classes): without them the pool cannot name or match a machine.
ALWAYS_PUBLIC = ("id", "type")
#: Paths whose values are personal data: validation messages show them as ***.
PERSONAL_PATHS = frozenset({"owner.contact_name", "owner.phone", "owner.email"})

_PREFIX_RE = r"^[A-Za-z0-9_\-]{0,63}$"


class Machine(_Strict):
    """A machine as its owner registers it. See the module docstring for the field table."""

    id: Name
    type: MachineType
    name: str = Field(default="", max_length=200)
    make: str = Field(default="", max_length=64)
    model: str = Field(default="", max_length=64)
    serial_number: str = Field(default="", max_length=64)
    notes: str = Field(default="", max_length=1000)
    owner: Owner = Owner()
    capabilities: list[Capability] = Field(default_factory=list, max_length=32)
    location: Location = Location()
    sharing: Sharing = Sharing()
    #: The gateway device whose points describe the machine. For transports where the topic
    #: names the machine (MQTT: `coop/{equipment}/telemetry`) the points are `<id>.<point>`.
    device: Name
    #: Points named `<prefix><name>` on the device are the machine's, read as `<name>`
    #: (`mill1_` on a CNC line: `mill1_state` -> `state`).
    point_prefix: str = Field(default="", pattern=_PREFIX_RE)
    #: Profile point names (with the prefix) the machine uses; empty: all of the device's.
    points: list[Name] = Field(default_factory=list)
    #: Ordered, first match wins; None: the defaults of the machine's type (status.py).
    status_rules: list[StatusRule] | None = None
    #: `offline` when the newest reading of its points is older (None: never stale). Points
    #: that report on change only (OPC UA subscriptions) may be quiet for long: raise it.
    stale_after: Duration | None = 900.0
    health: HealthPolicy = HealthPolicy()
    #: Usage counters; None: the defaults of the machine's type (metering.py).
    meters: list[MeterSpec] | None = None
    #: Overrides of DEFAULT_DATA_CLASSES, by field (`location.exact: private`).
    data_classes: dict[str, DataClass] = Field(default_factory=dict)

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, v: list[Capability]) -> list[Capability]:
        _once([c.name for c in v], "duplicate_capability", "a capability")
        return v

    @field_validator("sharing")
    @classmethod
    def _shareable(cls, v: Sharing, info: ValidationInfo) -> Sharing:
        if not v.shared:
            return v
        d = info.data
        missing: list[str] = [k for k in ("make", "model") if k in d and not d[k]]
        if "owner" in d and not d["owner"].org:
            missing.append("owner.org")
        if "location" in d and d["location"].lat is None:
            missing.append("location")
        if missing:
            raise invalid(
                "shared_needs",
                "a shared machine needs what the pool requires: make, model, owner.org and "
                "a location; missing {missing} (got {got})",
                missing=", ".join(f"{m} (lat, lon)" if m == "location" else m for m in missing),
                fields=",".join(missing),  # the paths, for the page to name by its labels
                got="shared: true",
            )
        return v

    @field_validator("points")
    @classmethod
    def _points(cls, v: list[str]) -> list[str]:
        _once(v, "duplicate_point", "a point")
        return v

    @field_validator("meters")
    @classmethod
    def _meters(cls, v: list[MeterSpec] | None) -> list[MeterSpec] | None:
        if v is not None:
            _once(
                [m.quantity.value for m in v], "duplicate_meter", "a quantity", "is metered twice"
            )
        return v

    @field_validator("data_classes")
    @classmethod
    def _classes(cls, v: dict[str, DataClass]) -> dict[str, DataClass]:
        for key, klass in v.items():
            if key in ALWAYS_PUBLIC:
                raise invalid(
                    "always_public",
                    "{field} is always public: the pool matches by it (got {got})",
                    field=key,
                    got=key,
                )
            if key not in FIELD_CLASSES:
                known = ", ".join(FIELD_CLASSES)
                raise invalid(
                    "unknown_data_field",
                    "unknown field {field}; fields are {known} (got {got})",
                    field=repr(key),
                    known=known,
                    got=key,
                )
            if klass not in FIELD_CLASSES[key][1]:
                raise invalid(
                    "data_class_not_allowed",
                    "{field} is an exact place, personal or unpublishable data and cannot be "
                    "{klass} (got {got})",
                    field=key,
                    klass=klass.value,
                    got=f"{key}: {klass.value}",
                )
        return v

    @model_validator(mode="after")
    def _prefix(self) -> Self:
        if self.point_prefix and self.points:
            bad = [p for p in self.points if not p.startswith(self.point_prefix)]
            if bad:
                raise invalid(
                    "point_prefix_mismatch",
                    "points must start with point_prefix {prefix} (got {got})",
                    prefix=self.point_prefix,
                    got=", ".join(bad),
                )
        return self

    @property
    def classes(self) -> dict[str, DataClass]:
        """Every field's data class: the defaults with this machine's overrides."""
        return {**DEFAULT_DATA_CLASSES, **self.data_classes}

    def point_names(self) -> list[str]:
        """The names rules read (configured points without the prefix); empty: unknown."""
        n = len(self.point_prefix)
        return [p[n:] for p in self.points]


# -- validation with clear messages ---------------------------------------------------------

_OWN_GOT = re.compile(r"^(.*) \(got (.*)\)$", re.S)


def problems_of(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[Problem]:
    """Each error as a Problem whose line reads `path: reason (got VALUE)`, like the config
    loader's; personal data shows as *** in the line and is left out of the params."""
    found = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *err["loc"])
        dotted = ".".join(str(p) for p in loc) or "(machine)"
        message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        own = _OWN_GOT.match(message)
        value = err.get("input")
        if err["type"] == "missing":
            got = "nothing"
        elif any(dotted.endswith(p) for p in PERSONAL_PATHS):
            got = "***"
            message = own.group(1) if own else message
        elif own:
            message, got = own.group(1), own.group(2)
        elif isinstance(value, dict):
            got = _show(value.get("id", value.get("name", "{...}")))
        else:
            got = _show(value)
        params = {k: as_param(v) for k, v in (err.get("ctx") or {}).items() if k != "got"}
        found.append(Problem(dotted, err["type"], message, got, params))
    return found


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_machine(data: Mapping[str, Any]) -> Machine:
    """Validate one machine; InvalidMachine lists every problem."""
    try:
        return Machine.model_validate(data)
    except ValidationError as exc:
        mid = data.get("id") if isinstance(data, Mapping) else None
        problems = problems_of(exc)
        raise InvalidMachine(problems, machine_id=mid if isinstance(mid, str) else None) from None


def from_config_equipment(eq: Machine) -> Machine:
    """A config `equipment:` entry (`gateway.config.Equipment`, a Machine that also reads
    older spellings) as a plain Machine with the same fields set, so
    `EquipmentRegistry.seed` lets config win for exactly the fields the entry declares."""
    return parse_machine(eq.model_dump(mode="json", exclude_unset=True))
