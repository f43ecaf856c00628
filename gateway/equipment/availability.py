"""Availability = policy ∩ status ∩ health − bookings, as a pure function.

`availability(machine, status, health, bookings, now)` returns what the pool is told: a level
(`none`, `limited`, `full`), the reasons, and the free windows (UTC, half-open `[start, end)`)
from `now` to the horizon. In order:

1. **Not shared** -> none.
2. **Status** `fault`, `maintenance`, `offline` -> none, with the status reason.
   `working`, `in_transit` -> windows still offered, level `limited` ("in use now"): the
   owner's own use is not a booking, the pool may still plan later work, but should know
   the machine is busy right now. `idle` -> no effect.
3. **Health** -> none when a model's failure risk >= `health.failure_risk_max` ("predicted
   failure risk 0.73 >= 0.5"), when a failure alarm (`failure_predicted`, raised by fallback
   rules too) is active, when a model's manifest health rule (`pool_available_if`) does not
   hold, or when the remaining life is below `health.min_rul_hours`. A remaining life in hours
   (`rul_cycles x cycle_hours`) cuts every window at `now + rul` (floored to the quarter
   hour) and makes the level `limited` with the cut time. Bound models with no result yet, or
   running on fallback rules, make it `limited` ("health unknown").
4. **Policy windows**: the weekly windows in the machine's time zone (`location.timezone`, or
   the `tz` argument), each local day in `blackout_dates` removed whole; touching windows are
   joined (`sat 20:00-24:00` + `sun 00:00-06:00` is one window across midnight). DST is
   handled by building every boundary as a local wall time; a time inside the hour skipped
   in spring reads as an hour later (PEP 495), one repeated in autumn as its first occurrence.
5. **Bookings** (from the pool) are cut out.
6. Windows shorter than `sharing.min_booking_hours` are dropped; at most the first 100 are
   kept (the pool contract's limit).

No window left -> none, with why. The horizon runs from `now` to local midnight at the end of
day `today + horizon_days`, so its end moves once a day, not every call. `fingerprint()` stays
the same while nothing a booker would act on changes (a window in progress starting "now" does
not count as a change), so sync can push on change only.
"""

from __future__ import annotations

import enum
import hashlib
import json
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

from gateway.equipment._time import as_utc, iso
from gateway.equipment.health import NO_MODELS, HealthView
from gateway.equipment.model import WEEKDAYS, Machine, Status, minutes_of

Interval = tuple[datetime, datetime]
_QUARTER = 900
#: The pool contract's limits on one update.
MAX_WINDOWS = 100
MAX_REASON = 200


class Level(enum.StrEnum):
    NONE = "none"
    LIMITED = "limited"
    FULL = "full"


@dataclass(frozen=True)
class Reason:
    """`code` is stable (for the pool and for change detection), `text` is for people."""

    code: str
    text: str


@dataclass(frozen=True)
class Availability:
    available: Level
    reason: str
    windows: tuple[Interval, ...]
    status: Status
    as_of: datetime
    reasons: tuple[Reason, ...] = field(default=())
    health: HealthView = NO_MODELS

    def to_dict(self) -> dict[str, Any]:
        """The pool contract's `AvailabilityUpdate` fields this decides (`status`, `health`,
        `available`, `reason`, `windows`); sync adds machine_id, gateway_id, seq,
        idempotency_key and ts. `reason` is None when full and at most 200 characters."""
        reason = None if self.available is Level.FULL else self.reason
        if reason is not None and len(reason) > MAX_REASON:
            reason = reason[: MAX_REASON - 1] + "…"
        return {
            "status": self.status.value,
            "health": self.health.to_dict(),
            "available": self.available.value,
            "reason": reason,
            "windows": [{"start": iso(s), "end": iso(e)} for s, e in self.windows],
        }

    def fingerprint(self) -> str:
        """Changes only when the level, status, reason codes, windows or the failure risk (to
        0.1) change: a window in progress starting "now" is no change."""
        risk = self.health.failure_risk
        body = {
            "available": self.available.value,
            "status": self.status.value,
            "codes": [r.code for r in self.reasons],
            "windows": [["now" if s <= self.as_of else iso(s), iso(e)] for s, e in self.windows],
            "risk": None if risk is None else round(risk, 1),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _zone(machine: Machine, tz: tzinfo | str | None) -> tzinfo:
    if tz is None:
        return machine.location.zone
    return zoneinfo.ZoneInfo(tz) if isinstance(tz, str) else tz


def _local(day: date, minutes: int, zone: tzinfo) -> datetime:
    if minutes >= 1440:
        day, minutes = day + timedelta(days=1), minutes - 1440
    return datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=zone).astimezone(UTC)


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, overlapping and touching intervals joined."""
    out: list[Interval] = []
    for s, e in sorted(i for i in intervals if i[1] > i[0]):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def subtract(windows: Sequence[Interval], cuts: Iterable[Interval]) -> list[Interval]:
    """`windows` minus every interval in `cuts`."""
    out = list(windows)
    for cs, ce in merge(cuts):
        nxt: list[Interval] = []
        for s, e in out:
            if ce <= s or cs >= e:
                nxt.append((s, e))
                continue
            if s < cs:
                nxt.append((s, cs))
            if ce < e:
                nxt.append((ce, e))
        out = nxt
    return out


def horizon_end(now: datetime, zone: tzinfo, horizon_days: int) -> datetime:
    today = now.astimezone(zone).date()
    return _local(today + timedelta(days=horizon_days + 1), 0, zone)


def policy_windows(
    machine: Machine, start: datetime, end: datetime, *, tz: tzinfo | str | None = None
) -> list[Interval]:
    """The owner's weekly windows between `start` and `end` (UTC), blackout days removed."""
    zone = _zone(machine, tz)
    start, end = as_utc(start, "start"), as_utc(end, "end")
    blackout = set(machine.sharing.blackout_dates)
    found: list[Interval] = []
    day = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date()
    while day <= last:
        if day not in blackout:
            weekday = WEEKDAYS[day.weekday()]
            for w in machine.sharing.weekly:
                if weekday in w.days:
                    s = max(_local(day, minutes_of(w.start), zone), start)
                    e = min(_local(day, minutes_of(w.end), zone), end)
                    if e > s:
                        found.append((s, e))
        day += timedelta(days=1)
    return merge(found)


def _floor_quarter(t: datetime) -> datetime:
    ts = int(t.timestamp())
    return datetime.fromtimestamp(ts - ts % _QUARTER, UTC)


def availability(
    machine: Machine,
    status: Status | tuple[Status, str],
    health: HealthView,
    bookings: Iterable[tuple[datetime, datetime]],
    now: datetime | float,
    horizon_days: int = 7,
    *,
    tz: tzinfo | str | None = None,
) -> Availability:
    """What to tell the pool about `machine` (module docstring for the decisions)."""
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be at least 1 (got {horizon_days})")
    now = as_utc(now, "now")
    st, st_reason = status if isinstance(status, tuple) else (status, "")
    st = Status(st)
    zone = _zone(machine, tz)
    booked = [(as_utc(s, "booking start"), as_utc(e, "booking end")) for s, e in bookings]
    for s, e in booked:
        if e <= s:
            raise ValueError(f"a booking must end after it starts (got {iso(s)} to {iso(e)})")
    hp = machine.health

    def none(code: str, text: str) -> Availability:
        return Availability(Level.NONE, text, (), st, now, (Reason(code, text),), health)

    if not machine.sharing.shared:
        return none("not_shared", "not shared by its owner")
    if st in (Status.FAULT, Status.MAINTENANCE, Status.OFFLINE):
        return none(
            f"status_{st.value}", f"status {st.value}" + (f": {st_reason}" if st_reason else "")
        )

    if health.failure_risk is not None and health.failure_risk >= hp.failure_risk_max:
        return none(
            "failure_risk",
            f"predicted failure risk {health.failure_risk:.2f} >= {hp.failure_risk_max:g}"
            f" (model {health.failure_risk_model})",
        )
    failing = sorted(a for a in health.active_alarms if a.partition(".")[2] in hp.failure_alarms)
    if failing:
        model, _, alarm = failing[0].partition(".")
        return none("failure_alarm", f"model {model} alarm {alarm} is active")
    if health.rule_says_unavailable:
        models = ", ".join(health.rule_says_unavailable)
        return none("health_rule", f"the health rule of model {models} says not to offer it")
    if (
        health.rul_hours is not None
        and hp.min_rul_hours is not None
        and health.rul_hours < hp.min_rul_hours
    ):
        return none(
            "rul_below_min",
            f"remaining useful life {health.rul_hours:.1f} h < minimum {hp.min_rul_hours:g} h"
            f" (model {health.rul_model})",
        )

    limits: list[Reason] = []
    if st in (Status.WORKING, Status.IN_TRANSIT):
        limits.append(Reason("in_use", f"in use now ({st.value})"))
    if health.missing:
        limits.append(
            Reason("health_unknown", f"no health prediction yet from {', '.join(health.missing)}")
        )
    if health.fallback:
        limits.append(
            Reason(
                "health_fallback",
                f"health from the fallback rules of {', '.join(health.fallback)} (model unusable)",
            )
        )

    end = horizon_end(now, zone, horizon_days)
    windows = policy_windows(machine, now, end, tz=zone)
    if not windows:
        return none("no_window", f"no sharing window before {iso(end)}")

    if health.rul_hours is not None:
        cutoff = _floor_quarter(now + timedelta(hours=health.rul_hours))
        if any(e > cutoff for _, e in windows):
            windows = [(s, min(e, cutoff)) for s, e in windows if s < cutoff]
            cycles = f"{health.rul_cycles:g} cycles x {hp.cycle_hours:g} h"
            text = (
                f"remaining useful life ~{health.rul_hours:.1f} h ({cycles}, model "
                f"{health.rul_model}): offered until {iso(cutoff)}"
            )
            if not windows:
                return none("rul_cut", text)
            limits.append(Reason("rul_cut", text))

    if booked:
        windows = subtract(windows, booked)
        if not windows:
            return none("booked", f"fully booked before {iso(end)}")

    min_len = timedelta(hours=machine.sharing.min_booking_hours)
    kept = [(s, e) for s, e in windows if e - s >= min_len]
    if not kept:
        return none(
            "below_min_booking",
            f"no free window as long as the minimum booking "
            f"({machine.sharing.min_booking_hours:g} h) before {iso(end)}",
        )

    level = Level.LIMITED if limits else Level.FULL
    text = "; ".join(r.text for r in limits) or "available"
    return Availability(level, text, tuple(kept[:MAX_WINDOWS]), st, now, tuple(limits), health)
