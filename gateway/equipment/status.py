"""A machine's status from its live points: ordered rules, first match wins.

`derive_status(machine, values, now, device_online)` is pure. `values` maps the machine's
point names (profile names without its `point_prefix`) to `(value, quality, ts)`, and may also
hold its models' results under their full ids (`turbine1-rul.alarm_maintenance_due`);
`machine_values` builds it from the latest-value cache. Precedence:

1. `offline` when the device is down, when no usable reading exists, or when the newest is
   older than `machine.stale_after`;
2. the first rule that holds, when its status is `fault` (or `maintenance`);
3. `maintenance` when one of `machine.health.maintenance_alarms` of a bound model is active;
4. the first rule that holds;
5. `idle` (online, no rule holds).

A rule that reads a point with no usable value (missing, BAD) does not hold; the next is
tried. Rules are the manifest rule language (`gateway.inference.rules`) plus `==`/`!=` with
text (`work_state == "working"`).

Default rules by machine type (`status_rules: null`; `DEFAULT_STATUS_RULES`, tabled in
README.md) read the built-in profiles' points: farm-machinery (`fault_active`, `work_state`,
`speed`, `engine_rpm`, `chopper_rpm`, `spray_flow`), pump-station (`drive_fault`,
`overload_trip`, `running`, `motor_speed`), sugarcane-press (`choke_alarm`, `press_running`,
`roller_speed`), cnc-machine-line with `point_prefix: millN_` (`alarm`, `state`,
`state_code`), cogen-turbine (`nc_core_speed`), grading-line (`state`, `belt_speed`); `other`
has none (online means idle). A default rule naming a point the machine does not have is
left out, so a `points:` subset just narrows them. Explicit `status_rules` replace the
defaults and must name known points.

Speeds are km/h: farm work runs at 5-10 km/h, road transit above 12 (the farm simulator's
tractors work at 7 and travel at 22; harvesters 5 and 15).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.equipment._rules import ANY_NAME, StatusExpr, compile_status_expr
from gateway.equipment.errors import InvalidMachine
from gateway.equipment.model import Machine, MachineType, Status
from gateway.equipment.problems import Problem
from gateway.inference.rules import RuleError
from gateway.readings import Quality, Reading, Value

#: (value, quality, ts) of one point, ts in epoch seconds (the gateway's receive time).
PointValue = tuple[Value, Quality, float]

S = Status
_FARM_STATE = (
    (S.FAULT, "fault_active"),
    (S.FAULT, 'work_state == "fault"'),
    (S.WORKING, 'work_state == "working"'),
    (S.IN_TRANSIT, 'work_state == "transit"'),
    (S.IDLE, 'work_state == "idle"'),
)
_FARM_MOTION = (
    (S.IN_TRANSIT, "speed > 12"),
    (S.WORKING, "engine_rpm > 1000 and speed > 0.5"),
)

#: The defaults of each machine type (module docstring table).
DEFAULT_STATUS_RULES: dict[MachineType, tuple[tuple[Status, str], ...]] = {
    MachineType.TRACTOR: _FARM_STATE + _FARM_MOTION,
    MachineType.COMBINE_HARVESTER: _FARM_STATE + _FARM_MOTION,
    MachineType.SUGARCANE_HARVESTER: (
        *_FARM_STATE,
        (S.WORKING, "chopper_rpm > 300"),
        *_FARM_MOTION,
    ),
    MachineType.DRONE_SPRAYER: (
        *_FARM_STATE,
        (S.WORKING, "spray_flow > 0.5"),
        (S.IN_TRANSIT, "speed > 1"),
    ),
    MachineType.PUMP: (
        (S.FAULT, "drive_fault"),
        (S.FAULT, "overload_trip"),
        (S.WORKING, "running"),
        (S.WORKING, "motor_speed > 100"),
    ),
    MachineType.SUGARCANE_PRESS: (
        (S.FAULT, "choke_alarm"),
        (S.WORKING, "press_running"),
        (S.WORKING, "roller_speed > 0.5"),
    ),
    MachineType.CNC_MILL: (
        (S.FAULT, "alarm"),
        (S.FAULT, 'state == "fault"'),
        (S.WORKING, 'state == "running"'),
        (S.IDLE, 'state == "idle"'),
        (S.FAULT, "state_code == 2"),
        (S.WORKING, "state_code == 1"),
    ),
    MachineType.COGENERATION_TURBINE: ((S.WORKING, "nc_core_speed > 1000"),),
    MachineType.FRUIT_GRADING_LINE: (
        (S.FAULT, 'state == "fault"'),
        (S.WORKING, 'state == "running"'),
        (S.IDLE, 'state == "stopped"'),
        (S.WORKING, "belt_speed > 0.05"),
    ),
    MachineType.OTHER: (),
}


@dataclass(frozen=True)
class CompiledStatusRules:
    """A machine's rules, checked against its point names once."""

    rules: tuple[tuple[Status, StatusExpr], ...]
    #: True when these are the type's defaults.
    defaults: bool
    #: Default rules left out because the machine has no such point.
    left_out: tuple[str, ...] = ()


def compile_status_rules(
    machine: Machine, point_names: Collection[str] | None = None
) -> CompiledStatusRules:
    """Compile `machine`'s rules. `point_names` are the device profile's point names (with
    the prefix, as in the profile); without them the machine's `points` are used, and with
    neither any name is accepted (a rule reading a point that never reports never holds).
    InvalidMachine when an explicit rule is not in the language or names an unknown point."""
    known = _known(machine, point_names)
    if machine.status_rules is None:
        spec = tuple((s, t) for s, t in DEFAULT_STATUS_RULES[machine.type])
        return _compile(spec, known, True, machine.id)
    spec = tuple((r.status, r.when) for r in machine.status_rules)
    return _compile(spec, known, False, machine.id)


def _known(machine: Machine, point_names: Collection[str] | None) -> frozenset[str] | None:
    prefix = machine.point_prefix
    if point_names is not None:
        names = {p for p in point_names if p.startswith(prefix)}
        if machine.points:
            names &= set(machine.points)
        return frozenset(p[len(prefix) :] for p in names)
    if machine.points:
        return frozenset(machine.point_names())
    return None


@functools.lru_cache(maxsize=256)
def _compile(
    spec: tuple[tuple[Status, str], ...],
    known: frozenset[str] | None,
    defaults: bool,
    machine_id: str,
) -> CompiledStatusRules:
    names: Collection[str] = ANY_NAME if known is None else known
    rules: list[tuple[Status, StatusExpr]] = []
    left_out: list[str] = []
    problems: list[Problem] = []
    for i, (status, text) in enumerate(spec):
        try:
            rules.append((status, compile_status_expr(text, names)))
        except RuleError as exc:
            if defaults:
                left_out.append(text)
            else:
                where = f"status_rules.{i}.when"
                problems.append(Problem(where, "status_rule", str(exc), text, {"error": str(exc)}))
    if problems:
        raise InvalidMachine(problems, machine_id=machine_id)
    return CompiledStatusRules(tuple(rules), defaults, tuple(left_out))


def machine_values(machine: Machine, latest: Mapping[str, Reading]) -> dict[str, PointValue]:
    """The machine's slice of the latest values (`LatestCache.all()`): its own points by
    rule name, and its models' results by full id. A point is the machine's when its id is
    `<device>.<name>` or `<machine id>.<name>` (MQTT names the machine in the topic), the name
    starts with `point_prefix` and, if `points` is set, is one of them."""
    heads = {machine.device, machine.id}
    models = set(machine.health.models)
    wanted = set(machine.points)
    prefix = machine.point_prefix
    out: dict[str, PointValue] = {}
    for pid, r in latest.items():
        head, _, name = pid.partition(".")
        if head in models:
            out[pid] = (r.value, r.quality, r.ts_gateway)
        elif head in heads and name.startswith(prefix) and (not wanted or name in wanted):
            out[name[len(prefix) :]] = (r.value, r.quality, r.ts_gateway)
    return out


def active_model_alarms(machine: Machine, values: Mapping[str, PointValue]) -> set[str]:
    """`<model>.<alarm>` of every alarm point of the machine's models that is on."""
    active = set()
    for key, (value, quality, _) in values.items():
        model, dot, rest = key.partition(".")
        if (
            dot
            and model in machine.health.models
            and rest.startswith("alarm_")
            and quality != Quality.BAD
            and value is True
        ):
            active.add(f"{model}.{rest.removeprefix('alarm_')}")
    return active


def derive_status(
    machine: Machine,
    values: Mapping[str, PointValue],
    now: float,
    device_online: bool,
    *,
    rules: CompiledStatusRules | None = None,
    active_alarms: Iterable[str] = (),
) -> tuple[Status, str]:
    """(status, reason). `now` in epoch seconds; `rules` from `compile_status_rules` (compiled
    here, cached, when not given); `active_alarms` (`<model>.<alarm>`) add to those found in
    `values` (e.g. `HealthView.active_alarms` from the engine's status)."""
    if not device_online:
        return Status.OFFLINE, f"device {machine.device} is down"
    usable: dict[str, Value] = {}
    newest: float | None = None
    for name, (value, quality, ts) in values.items():
        if "." in name or quality == Quality.BAD or value is None:
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        usable[name] = value
        newest = ts if newest is None else max(newest, ts)
    if newest is None:
        return Status.OFFLINE, "no usable reading from its points yet"
    age = now - newest
    if machine.stale_after is not None and age > machine.stale_after:
        # the reason names the newest reading's time, not its age, so it stays the same
        # while nothing arrives (sync pushes on change)
        when = datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (
            Status.OFFLINE,
            f"no reading since {when} (stale after {machine.stale_after:.0f} s)",
        )

    compiled = rules if rules is not None else compile_status_rules(machine)
    matched: tuple[Status, str] | None = None
    for i, (status, expr) in enumerate(compiled.rules):
        try:
            holds = expr.holds(usable)
        except ValueError:
            continue
        if holds:
            matched = (status, f"rule {i}: {expr.text}")
            break
    if matched is not None and matched[0] in (Status.FAULT, Status.MAINTENANCE, Status.OFFLINE):
        return matched

    alarms = active_model_alarms(machine, values) | set(active_alarms)
    wanted = set(machine.health.maintenance_alarms)
    maintenance = sorted(a for a in alarms if a.partition(".")[2] in wanted)
    if maintenance:
        model, _, alarm = maintenance[0].partition(".")
        return Status.MAINTENANCE, f"model {model} alarm {alarm} is active"
    if matched is not None:
        return matched
    return Status.IDLE, "online, no status rule holds"
