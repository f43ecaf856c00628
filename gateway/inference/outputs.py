"""From a model's raw outputs (or its fallback rules) to what the gateway publishes.

`decide` reads one row of the outputs through the manifest: result values by point name
(`rul_cycles`, `failure_risk`, `failure_mode_hdf`, `grade`, `grade_confidence`,
`grade_class`), the state of every alarm the thresholds define, the grade decision, and the
plain events whose condition holds (`failure_mode`, `grade_uncertain`). `decide_fallback`
gives the same shape from the manifest's rules, so everything after it (alarm transitions,
events, readings) does not care which produced it. Pure: numpy arrays in, plain data out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.inference.manifest import LoadedManifest, OutputSpec, Threshold
from gateway.inference.rules import Window
from gateway.readings import Value

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


@dataclass
class AlarmState:
    active: bool
    severity: str = "warning"
    value: float | None = None
    labels: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)


@dataclass
class Decision:
    values: dict[str, Value] = field(default_factory=dict)
    alarms: dict[str, AlarmState] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    grade: str | None = None
    #: Rules that could not be evaluated, with the reason (fallback only).
    problems: list[str] = field(default_factory=list)


def decide(lm: LoadedManifest, outs: Mapping[str, np.ndarray], row: int = 0) -> Decision:
    m = lm.m
    d = Decision()
    for out in m.outputs:
        r = out.reading
        if r is None:
            continue
        vec = _row(outs[out.name], row)
        names = lm.label_points.get(out.name)
        if names is not None:
            for name, v in zip(names, vec.tolist(), strict=False):
                d.values[name] = _num(v)
        elif r.point and out.labels:
            k = int(np.argmax(vec))
            d.values[f"{r.point}_class"] = out.labels[k]
            d.values[f"{r.point}_confidence"] = _num(vec[k])
        elif r.point:
            d.values[r.point] = _num(vec[0])
    grade_rules = [t for t in m.thresholds if t.grade is not None]
    for t in m.thresholds:
        out = lm.outputs[t.output]
        vec = _row(outs[t.output], row)
        if t.label == "any":
            assert out.labels is not None
            hits = [lb for lb, v in zip(out.labels, vec, strict=False) if t.holds(float(v))]
            holds, value, labels = bool(hits), float(np.max(vec)), hits
        else:
            value = _pick(out, vec, t)
            holds, labels = t.holds(value), ([t.label] if t.label not in (None, "max") else [])
        if t.alarm is not None:
            _merge_alarm(d.alarms, t.alarm, holds, t.severity, value, labels)
        elif t.grade is None and holds:
            assert t.event is not None
            d.events.append(_event(t, value, labels))
    if grade_rules:
        d.grade = _grade(grade_rules, outs, lm, row)
        point = next((o.reading.point for o in m.outputs if o.reading and o.reading.point), None)
        if point is not None:
            d.values[point] = d.grade
    return d


def decide_fallback(
    lm: LoadedManifest,
    values: Mapping[str, float] | None,
    window: Window | None = None,
) -> Decision:
    """The manifest's fallback rules on the current inputs (`values` None: no usable input,
    so only the rules without a condition apply)."""
    d = Decision()
    for rule in lm.m.fallback_rules:
        compiled = lm.rules[rule.name]
        if rule.when is None:
            holds = True
        elif values is None:
            d.problems.append(f"{rule.name}: no complete input")
            continue
        else:
            try:
                holds = compiled.holds(values, window)
            except ValueError as exc:
                d.problems.append(f"{rule.name}: {exc}")
                continue
        if rule.alarm is not None:
            _merge_alarm(
                d.alarms,
                rule.alarm,
                holds,
                rule.severity,
                None,
                [rule.label] if rule.label and holds else [],
            )
            if holds:
                d.alarms[rule.alarm].rules.append(rule.name)
        if holds and rule.grade is not None and d.grade is None:
            d.grade = rule.grade
    if d.grade is not None:
        point = next((o.reading.point for o in lm.m.outputs if o.reading and o.reading.point), None)
        if point is not None:
            d.values[point] = d.grade
    return d


def _merge_alarm(
    alarms: dict[str, AlarmState],
    name: str,
    holds: bool,
    severity: str,
    value: float | None,
    labels: list[str],
) -> None:
    """Several thresholds or rules may name one alarm: it is active if any holds, at the
    highest severity among those that hold."""
    cur = alarms.get(name)
    if cur is None:
        cur = alarms[name] = AlarmState(False, severity, value)
    if holds:
        if not cur.active or SEVERITY_RANK[severity] > SEVERITY_RANK[cur.severity]:
            cur.severity = severity
        cur.active = True
        cur.labels += [lb for lb in labels if lb not in cur.labels]
        if value is not None:
            cur.value = value
    elif cur.value is None:
        cur.value = value


def _grade(
    rules: list[Threshold], outs: Mapping[str, np.ndarray], lm: LoadedManifest, row: int
) -> str:
    for t in rules:
        out = lm.outputs[t.output]
        if t.holds(_pick(out, _row(outs[t.output], row), t)):
            assert t.grade is not None
            return t.grade
    fallback = next((t.else_ for t in rules if t.else_ is not None), None)
    return fallback if fallback is not None else "unknown"


def _pick(out: OutputSpec, vec: np.ndarray, t: Threshold) -> float:
    if t.label == "max":
        return float(np.max(vec))
    if t.label is not None:
        return float(vec[out.label_index(t.label)])
    return float(vec[0])


def _row(arr: np.ndarray, row: int) -> np.ndarray:
    if arr.ndim == 0:
        return arr.reshape(1)
    return arr[row].reshape(-1)


def _num(v: Any) -> float:
    """Six decimals: model outputs carry no more meaning, and the store and uplinks carry
    fewer digits."""
    f = float(v)
    return round(f, 6) if math.isfinite(f) else f


def _event(t: Threshold, value: float, labels: list[str]) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "event", "name": t.event, "value": _num(value)}
    if labels:
        ev["labels"] = labels
    if t.action:
        ev["action"] = t.action
    return ev
