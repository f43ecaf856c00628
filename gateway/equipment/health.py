"""A machine's predicted health, gathered from the models bound to it.

Each model binding `<id>` publishes `<id>.failure_risk` (pdm-failure), `<id>.rul_cycles`
(pdm-rul), alarm points `<id>.alarm_<name>`, and the engine evaluates the manifest's
`health.pool_available_if` rule (`GET /models` `pool_available`). With several models the worst
counts: the highest failure risk, the shortest remaining life. Two pure builders make the same
`HealthView`: `health_from_engine(machine, engine.status())` (alarms and the manifest rule
included) and `health_from_values(machine, values)` (from the latest readings only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.equipment.model import Machine
from gateway.readings import Quality, Value


@dataclass(frozen=True)
class HealthView:
    failure_risk: float | None = None
    failure_risk_model: str | None = None
    rul_cycles: float | None = None
    rul_model: str | None = None
    #: rul_cycles x machine.health.cycle_hours; None without either.
    rul_hours: float | None = None
    #: `<model>.<alarm>` of every active alarm of the machine's models.
    active_alarms: frozenset[str] = frozenset()
    #: Models whose manifest health rule (`pool_available_if`) does not hold.
    rule_says_unavailable: tuple[str, ...] = ()
    #: Bound models with no result yet.
    missing: tuple[str, ...] = ()
    #: Bound models running on their fallback rules (no failure risk or RUL from them).
    fallback: tuple[str, ...] = ()
    #: Where the numbers come from, as the pool contract's `MachineHealth.source`
    #: (`model:pdm-rul@1.0.0`; the binding id when only readings were seen).
    source: str | None = None

    def to_dict(self) -> dict[str, float | str | None]:
        """The pool contract's `MachineHealth`: failure_risk in 0..1, rul_hours >= 0."""
        risk = self.failure_risk
        return {
            "failure_risk": None if risk is None else min(1.0, max(0.0, risk)),
            "rul_hours": None if self.rul_hours is None else round(self.rul_hours, 3),
            "source": None if self.source is None else self.source[:128],
        }


NO_MODELS = HealthView()


def _number(v: Value) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


class _Acc:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.risk: tuple[float, str] | None = None
        self.rul: tuple[float, str] | None = None
        self.alarms: set[str] = set()
        self.no: list[str] = []
        self.missing: list[str] = []
        self.fallback: list[str] = []
        self.sources: dict[str, str] = {}

    def add(self, model: str, *, risk: Value, rul: Value) -> None:
        r = _number(risk)
        if r is not None and (self.risk is None or r > self.risk[0]):
            self.risk = (r, model)
        c = _number(rul)
        if c is not None and (self.rul is None or c < self.rul[0]):
            self.rul = (c, model)

    def view(self) -> HealthView:
        cycle_h = self.machine.health.cycle_hours
        rul_hours = None
        if self.rul is not None and cycle_h is not None:
            rul_hours = max(0.0, self.rul[0]) * cycle_h
        lead = self.risk[1] if self.risk else self.rul[1] if self.rul else None
        if lead is None and self.sources:
            lead = next(iter(self.sources))
        return HealthView(
            failure_risk=None if self.risk is None else self.risk[0],
            failure_risk_model=None if self.risk is None else self.risk[1],
            rul_cycles=None if self.rul is None else self.rul[0],
            rul_model=None if self.rul is None else self.rul[1],
            rul_hours=rul_hours,
            active_alarms=frozenset(self.alarms),
            rule_says_unavailable=tuple(self.no),
            missing=tuple(self.missing),
            fallback=tuple(self.fallback),
            source=None if lead is None else self.sources.get(lead, lead),
        )


def health_from_engine(machine: Machine, engine_status: Iterable[Mapping[str, Any]]) -> HealthView:
    """From `InferenceEngine.status()` entries (`id`, `state`, `last_values`, `active_alarms`,
    `pool_available`, `last_run`)."""
    acc = _Acc(machine)
    by_id = {s.get("id"): s for s in engine_status}
    for model in machine.health.models:
        s = by_id.get(model)
        last = dict((s or {}).get("last_values") or {})
        alarms = list((s or {}).get("active_alarms") or [])
        if s is None or (not last and not alarms and s.get("last_run") is None):
            acc.missing.append(model)
            continue
        fallback = s.get("state") == "fallback"
        if fallback:
            acc.fallback.append(model)
        name, version = s.get("model"), s.get("version")
        if name:
            origin = "fallback" if fallback else "model"
            acc.sources[model] = f"{origin}:{name}" + (f"@{version}" if version else "")
        acc.add(model, risk=last.get("failure_risk"), rul=last.get("rul_cycles"))
        acc.alarms.update(f"{model}.{a}" for a in alarms)
        if s.get("pool_available") is False:
            acc.no.append(model)
    return acc.view()


def health_from_values(
    machine: Machine,
    values: Mapping[str, tuple[Value, Quality, float]],
    *,
    pool_available: Mapping[str, bool | None] | None = None,
) -> HealthView:
    """From readings keyed by full id (`machine_values` output, or the latest cache).
    BAD readings are ignored; `pool_available` maps model ids to their manifest rule's
    verdict when the caller has it."""
    acc = _Acc(machine)
    verdicts = pool_available or {}
    for model in machine.health.models:
        mine = {
            k.partition(".")[2]: (v, q)
            for k, (v, q, _) in values.items()
            if k.partition(".")[0] == model and q != Quality.BAD
        }
        if not mine:
            acc.missing.append(model)
            continue
        if any(q == Quality.UNCERTAIN for _, q in mine.values()):
            acc.fallback.append(model)
        acc.sources[model] = model
        acc.add(
            model,
            risk=mine.get("failure_risk", (None, None))[0],
            rul=mine.get("rul_cycles", (None, None))[0],
        )
        acc.alarms.update(
            f"{model}.{name.removeprefix('alarm_')}"
            for name, (v, _) in mine.items()
            if name.startswith("alarm_") and v is True
        )
        if verdicts.get(model) is False:
            acc.no.append(model)
    return acc.view()
