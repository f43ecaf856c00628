"""Availability = policy ∩ status ∩ health − bookings, at its edges: windows across midnight,
blackout days, bookings that touch or split windows, the minimum booking, the RUL cut, DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.equipment.availability import Level, availability, horizon_end, policy_windows
from gateway.equipment.health import NO_MODELS, HealthView
from gateway.equipment.model import Machine, Status, parse_machine
from tests import pool_contract

HCM = ZoneInfo("Asia/Ho_Chi_Minh")  # UTC+7, no DST
IDLE = (Status.IDLE, "online, no status rule holds")


def local(day: int, hh: int, mm: int = 0, *, month: int = 6, zone: ZoneInfo = HCM) -> datetime:
    """A wall time in June 2024 (the 10th is a Monday) as UTC."""
    return datetime(2024, month, day, hh, mm, tzinfo=zone).astimezone(UTC)


def machine(weekly: list[dict[str, Any]] | None = None, **over: Any) -> Machine:
    sharing = {
        "shared": True,
        "weekly": weekly
        if weekly is not None
        else [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "07:00", "end": "17:00"}],
        "min_booking_hours": 1,
        **over.pop("sharing", {}),
    }
    return parse_machine(
        {
            "id": "tractor-01",
            "type": "tractor",
            "make": "Kubota",
            "model": "M7060",
            "owner": {"org": "Coop"},
            "location": {"lat": 22.8, "lon": 108.3, "timezone": "Asia/Ho_Chi_Minh"},
            "device": "coop-broker",
            "sharing": sharing,
            **over,
        }
    )


NOW = local(10, 5)  # Monday 05:00 local, before the day's window


def test_weekly_windows_over_the_horizon() -> None:
    av = availability(machine(), IDLE, NO_MODELS, [], NOW)
    assert av.available is Level.FULL and av.reason == "available"
    days = [10, 11, 12, 13, 14, 17]  # today plus 7 days: Mon-Fri, then next Monday
    assert list(av.windows) == [(local(d, 7), local(d, 17)) for d in days]
    assert av.windows[-1][1] <= horizon_end(NOW, HCM, 7) == local(18, 0)


def test_a_window_in_progress_starts_now() -> None:
    now = local(10, 10, 30)
    av = availability(machine(), IDLE, NO_MODELS, [], now)
    assert av.windows[0] == (now, local(10, 17))


def test_windows_split_at_midnight_join_again() -> None:
    m = machine(
        [
            {"days": ["sat"], "start": "20:00", "end": "24:00"},
            {"days": ["sun"], "start": "00:00", "end": "06:00"},
        ]
    )
    av = availability(m, IDLE, NO_MODELS, [], NOW)
    assert av.windows == ((local(15, 20), local(16, 6)),)


def test_a_blackout_day_is_removed_whole_in_local_time() -> None:
    weekly = [
        {"days": ["sat"], "start": "20:00", "end": "24:00"},
        {"days": ["sun"], "start": "00:00", "end": "06:00"},
    ]
    m = machine(weekly, sharing={"blackout_dates": ["2024-06-16"]})
    assert availability(m, IDLE, NO_MODELS, [], NOW).windows == ((local(15, 20), local(16, 0)),)
    m = machine(weekly, sharing={"blackout_dates": ["2024-06-15"]})
    assert availability(m, IDLE, NO_MODELS, [], NOW).windows == ((local(16, 0), local(16, 6)),)
    m = machine(sharing={"blackout_dates": ["2024-06-12"]})
    assert local(12, 7) not in [s for s, _ in availability(m, IDLE, NO_MODELS, [], NOW).windows]


def monday(av: Any) -> list[tuple[datetime, datetime]]:
    return [w for w in av.windows if w[0] < local(11, 0)]


@pytest.mark.parametrize(
    ("booking", "expected"),
    [
        ((local(10, 5), local(10, 7)), [(local(10, 7), local(10, 17))]),  # ends at the start
        ((local(10, 17), local(10, 19)), [(local(10, 7), local(10, 17))]),  # starts at the end
        ((local(10, 7), local(10, 9)), [(local(10, 9), local(10, 17))]),  # covers the start
        ((local(10, 15), local(10, 18)), [(local(10, 7), local(10, 15))]),  # covers the end
        (
            (local(10, 10), local(10, 12)),
            [(local(10, 7), local(10, 10)), (local(10, 12), local(10, 17))],
        ),
        ((local(10, 6), local(10, 18)), []),  # the whole day
    ],
)
def test_bookings_are_cut_out_at_their_exact_edges(
    booking: tuple[datetime, datetime], expected: list[tuple[datetime, datetime]]
) -> None:
    av = availability(machine(), IDLE, NO_MODELS, [booking], NOW)
    assert monday(av) == expected


def test_windows_shorter_than_the_minimum_booking_are_dropped() -> None:
    m = machine(sharing={"min_booking_hours": 3})
    exactly = (local(10, 10), local(10, 12))  # leaves 07-10: exactly 3 h, kept
    assert monday(availability(m, IDLE, NO_MODELS, [exactly], NOW)) == [
        (local(10, 7), local(10, 10)),
        (local(10, 12), local(10, 17)),
    ]
    one_second_short = (local(10, 10) - timedelta(seconds=1), local(10, 12))
    assert monday(availability(m, IDLE, NO_MODELS, [one_second_short], NOW)) == [
        (local(10, 12), local(10, 17))
    ]


def test_nothing_long_enough_is_none_with_the_reason() -> None:
    m = machine(
        [{"days": ["mon"], "start": "07:00", "end": "08:00"}], sharing={"min_booking_hours": 2}
    )
    av = availability(m, IDLE, NO_MODELS, [], NOW)
    assert av.available is Level.NONE and av.windows == ()
    assert av.reason == (
        "no free window as long as the minimum booking (2 h) before 2024-06-17T17:00:00Z"
    )


def test_fully_booked_is_none() -> None:
    av = availability(machine(), IDLE, NO_MODELS, [(NOW, NOW + timedelta(days=9))], NOW)
    assert (av.available, av.reasons[0].code) == (Level.NONE, "booked")


def health(**kw: Any) -> HealthView:
    return HealthView(**kw)


RUL_MACHINE = {"health": {"models": ["t1-rul"], "cycle_hours": 0.5}}


def test_remaining_life_cuts_windows_and_limits() -> None:
    m = machine(**RUL_MACHINE)
    h = health(rul_cycles=30, rul_model="t1-rul", rul_hours=15.0)  # now + 15 h = Mon 20:00
    av = availability(m, IDLE, h, [], NOW)
    assert av.available is Level.LIMITED
    assert av.windows == ((local(10, 7), local(10, 17)),)
    assert av.reason == (
        "remaining useful life ~15.0 h (30 cycles x 0.5 h, model t1-rul): "
        "offered until 2024-06-10T13:00:00Z"
    )
    h = health(rul_cycles=20, rul_model="t1-rul", rul_hours=10.1)  # 15:06 -> 15:00
    assert availability(m, IDLE, h, [], NOW).windows == ((local(10, 7), local(10, 15)),)


def test_remaining_life_ending_before_any_window_is_none() -> None:
    m = machine(**RUL_MACHINE)
    av = availability(m, IDLE, health(rul_cycles=2, rul_model="t1-rul", rul_hours=1.0), [], NOW)
    assert (av.available, av.reasons[0].code) == (Level.NONE, "rul_cut")


def test_remaining_life_below_the_minimum_is_none() -> None:
    m = machine(health={"models": ["t1-rul"], "cycle_hours": 0.5, "min_rul_hours": 24})
    av = availability(m, IDLE, health(rul_cycles=30, rul_model="t1-rul", rul_hours=15.0), [], NOW)
    assert av.available is Level.NONE
    assert av.reason == "remaining useful life 15.0 h < minimum 24 h (model t1-rul)"


def test_remaining_life_beyond_the_horizon_changes_nothing() -> None:
    m = machine(**RUL_MACHINE)
    h = health(rul_cycles=500, rul_model="t1-rul", rul_hours=250.0)
    assert availability(m, IDLE, h, [], NOW).available is Level.FULL


@pytest.mark.parametrize(
    ("risk", "level"), [(0.73, Level.NONE), (0.5, Level.NONE), (0.49, Level.FULL)]
)
def test_failure_risk_at_or_above_the_maximum_withdraws(risk: float, level: Level) -> None:
    m = machine(health={"models": ["m1-pdm"]})
    av = availability(m, IDLE, health(failure_risk=risk, failure_risk_model="m1-pdm"), [], NOW)
    assert av.available is level
    if level is Level.NONE:
        assert av.reason == f"predicted failure risk {risk:.2f} >= 0.5 (model m1-pdm)"
        assert av.windows == ()


def test_failure_alarm_and_manifest_health_rule_withdraw() -> None:
    m = machine(health={"models": ["m1-pdm"]})
    av = availability(
        m, IDLE, health(active_alarms=frozenset({"m1-pdm.failure_predicted"})), [], NOW
    )
    assert (av.available, av.reason) == (
        Level.NONE,
        "model m1-pdm alarm failure_predicted is active",
    )
    av = availability(m, IDLE, health(rule_says_unavailable=("m1-pdm",)), [], NOW)
    assert (av.available, av.reasons[0].code) == (Level.NONE, "health_rule")


def test_unknown_or_fallback_health_is_limited() -> None:
    m = machine(health={"models": ["m1-pdm"]})
    av = availability(m, IDLE, health(missing=("m1-pdm",)), [], NOW)
    assert (av.available, av.reason) == (Level.LIMITED, "no health prediction yet from m1-pdm")
    av = availability(m, IDLE, health(fallback=("m1-pdm",)), [], NOW)
    assert (av.available, av.reasons[0].code) == (Level.LIMITED, "health_fallback")


@pytest.mark.parametrize("status", [Status.FAULT, Status.MAINTENANCE, Status.OFFLINE])
def test_fault_maintenance_and_offline_are_none(status: Status) -> None:
    av = availability(machine(), (status, "rule 0: fault_active"), NO_MODELS, [], NOW)
    assert av.available is Level.NONE and av.windows == ()
    assert av.reason == f"status {status.value}: rule 0: fault_active"


@pytest.mark.parametrize("status", [Status.WORKING, Status.IN_TRANSIT])
def test_in_use_is_still_offered_but_limited(status: Status) -> None:
    av = availability(machine(), status, NO_MODELS, [], NOW)
    assert av.available is Level.LIMITED and len(av.windows) == 6
    assert av.reason == f"in use now ({status.value})"


def test_not_shared_is_none() -> None:
    m = machine(sharing={"shared": False})
    assert availability(m, IDLE, NO_MODELS, [], NOW).reason == "not shared by its owner"


def test_dst_boundaries_are_local_wall_times() -> None:
    berlin = ZoneInfo("Europe/Berlin")  # DST starts Sunday 2024-03-31 at 02:00
    m = machine(
        [
            {"days": ["fri", "sun"], "start": "08:00", "end": "12:00"},
            {"days": ["sun"], "start": "01:00", "end": "03:00"},  # across the skipped hour
        ]
    )
    now = datetime(2024, 3, 29, 0, 0, tzinfo=UTC)
    wins = policy_windows(m, now, now + timedelta(days=3), tz="Europe/Berlin")
    assert wins == [
        (local(29, 8, month=3, zone=berlin), local(29, 12, month=3, zone=berlin)),
        (datetime(2024, 3, 31, 0, tzinfo=UTC), datetime(2024, 3, 31, 1, tzinfo=UTC)),  # 1 h long
        (local(31, 8, month=3, zone=berlin), local(31, 12, month=3, zone=berlin)),
    ]
    assert wins[0][0].hour == 7 and wins[2][0].hour == 6  # UTC+1, then UTC+2
    # a wall time inside the skipped hour reads as an hour later (PEP 495, fold=0)
    gap = machine([{"days": ["sun"], "start": "02:00", "end": "02:30"}])
    assert policy_windows(gap, now, now + timedelta(days=3), tz=berlin) == [
        (local(31, 3, month=3, zone=berlin), local(31, 3, 30, month=3, zone=berlin))
    ]


def test_the_tz_argument_overrides_the_machines_zone() -> None:
    av = availability(machine(), IDLE, NO_MODELS, [], NOW, tz="UTC")
    assert av.windows[0] == (
        datetime(2024, 6, 10, 7, tzinfo=UTC),
        datetime(2024, 6, 10, 17, tzinfo=UTC),
    )


def test_naive_times_and_inverted_bookings_are_refused() -> None:
    with pytest.raises(ValueError, match="must carry a time zone"):
        availability(machine(), IDLE, NO_MODELS, [], datetime(2024, 6, 10, 5))
    with pytest.raises(ValueError, match="must end after it starts"):
        availability(machine(), IDLE, NO_MODELS, [(local(10, 9), local(10, 8))], NOW)


def test_fingerprint_ignores_time_passing_inside_a_window() -> None:
    m = machine()
    a = availability(m, IDLE, NO_MODELS, [], local(10, 9))
    b = availability(m, IDLE, NO_MODELS, [], local(10, 9, 45))
    assert a.windows != b.windows and a.fingerprint() == b.fingerprint()
    booked = availability(m, IDLE, NO_MODELS, [(local(11, 8), local(11, 9))], local(10, 9))
    assert booked.fingerprint() != a.fingerprint()
    working = availability(m, Status.WORKING, NO_MODELS, [], local(10, 9))
    assert working.fingerprint() != a.fingerprint()


def contract_validator(name: str) -> Any:
    return pool_contract.validator(name)


@pytest.mark.parametrize(
    "h",
    [
        NO_MODELS,
        HealthView(failure_risk=0.73, failure_risk_model="m", source="model:pdm-failure@1.0.0"),
        HealthView(rul_cycles=30, rul_model="t1-rul", rul_hours=15.0, source="t1-rul"),
    ],
)
def test_to_dict_is_the_contracts_availability_update(h: HealthView) -> None:
    m = machine(**RUL_MACHINE)
    av = availability(m, IDLE, h, [], NOW)
    update = {
        "machine_id": m.id,
        "gateway_id": "gw-1",
        "seq": 1,
        "idempotency_key": f"{m.id}:1",
        "ts": "2024-06-10T00:00:00Z",
        **av.to_dict(),
    }
    contract_validator("AvailabilityUpdate").validate(update)
    if av.available is Level.FULL:
        assert update["reason"] is None
