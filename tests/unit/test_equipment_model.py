"""The machine model: what it accepts, the defaults it fills in, and messages that name the
field and the bad value (never a person's contact details)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Equipment
from gateway.equipment.errors import InvalidMachine
from gateway.equipment.model import (
    DEFAULT_DATA_CLASSES,
    Machine,
    MachineType,
    from_config_equipment,
    parse_machine,
)
from gateway.types import DataClass

ROOT = Path(__file__).resolve().parents[2]


def machine_data(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "tractor-01",
        "type": "tractor",
        "name": "Blue tractor",
        "make": "Kubota",
        "model": "M7060",
        "owner": {
            "org": "Demo Cane Cooperative",
            "contact_name": "Nguyen Van A",
            "phone": "+84 912 345 678",
            "email": "a@coop.example",
        },
        "capabilities": [{"name": "ploughing", "capacity": 6, "unit": "ha/day"}],
        "location": {"lat": 22.81734, "lon": 108.36652, "timezone": "Asia/Ho_Chi_Minh"},
        "sharing": {
            "shared": True,
            "weekly": [{"days": ["mon", "tue"], "start": "07:00", "end": "17:00"}],
            "rate": {"amount": 45, "currency": "VND", "per": "hour"},
        },
        "device": "coop-broker",
    }
    data.update(over)
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidMachine) as info:
        parse_machine(data)
    return info.value.problems


def test_a_full_machine_parses_with_documented_defaults() -> None:
    m = parse_machine(machine_data())
    assert m.type is MachineType.TRACTOR
    assert m.sharing.min_booking_hours == 1.0
    assert m.health.failure_risk_max == 0.5
    assert m.health.maintenance_alarms == [
        "maintenance_due",
        "maintenance_overdue",
        "tool_change_due",
    ]
    assert m.health.failure_alarms == ["failure_predicted"]
    assert m.stale_after == 900.0
    assert m.status_rules is None and m.meters is None
    assert m.classes == DEFAULT_DATA_CLASSES
    assert m.classes["owner.org"] is DataClass.PUBLIC
    assert m.classes["location.exact"] is DataClass.RESTRICTED
    assert m.classes["owner.phone"] is DataClass.PRIVATE


def test_data_class_overrides_merge_with_the_defaults() -> None:
    m = parse_machine(machine_data(data_classes={"owner.phone": "restricted", "make": "private"}))
    assert m.classes["owner.phone"] is DataClass.RESTRICTED
    assert m.classes["make"] is DataClass.PRIVATE
    assert m.classes["owner.email"] is DataClass.PRIVATE


def test_window_ending_before_it_starts_names_field_and_value() -> None:
    data = machine_data()
    data["sharing"]["weekly"] = [{"days": ["sat"], "start": "20:00", "end": "06:00"}]
    assert problems(data) == [
        "sharing.weekly.0.end: must be after start 20:00; split a window across midnight into "
        "two at 24:00 (got 06:00)"
    ]


def test_window_to_midnight_is_written_24_00() -> None:
    data = machine_data()
    data["sharing"]["weekly"] = [{"days": ["sat"], "start": "20:00", "end": "24:00"}]
    assert parse_machine(data).sharing.weekly[0].end == "24:00"
    data["sharing"]["weekly"] = [{"days": ["sat"], "start": "24:00", "end": "24:00"}]
    assert problems(data)[0].startswith("sharing.weekly.0.start: a window starts at 23:59")
    data["sharing"]["weekly"] = [{"days": ["sat"], "start": "07:00", "end": "24:30"}]
    assert problems(data) == [
        "sharing.weekly.0.end: a time of day is HH:MM, 00:00 to 24:00 (got 24:30)"
    ]


def test_days_are_checked_and_sorted() -> None:
    data = machine_data()
    data["sharing"]["weekly"] = [{"days": ["fri", "mon"], "start": "07:00", "end": "09:00"}]
    assert parse_machine(data).sharing.weekly[0].days == ["mon", "fri"]
    data["sharing"]["weekly"] = [{"days": ["mon", "mon"], "start": "07:00", "end": "09:00"}]
    assert problems(data) == ["sharing.weekly.0.days: a day is listed twice (got mon, mon)"]


def test_personal_data_never_appears_in_messages() -> None:
    data = machine_data()
    data["owner"] = {"org": "Coop", "phone": "call me 0912", "email": "not-an-address"}
    lines = problems(data)
    assert lines == [
        "owner.phone: a phone number is digits, spaces, ( ) . - and an optional + (got ***)",
        "owner.email: an email address looks like name@example.org (got ***)",
    ]
    assert "0912" not in "\n".join(lines)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (
            {"owner.phone": "public"},
            "data_classes: owner.phone is an exact place, personal or unpublishable data and "
            "cannot be public (got owner.phone: public)",
        ),
        (
            {"location.exact": "public"},
            "data_classes: location.exact is an exact place, personal or unpublishable data "
            "and cannot be public (got location.exact: public)",
        ),
        ({"id": "private"}, "data_classes: id is always public: the pool matches by it (got id)"),
    ],
)
def test_data_classes_refuse_what_may_not_be_public(classes: dict[str, str], message: str) -> None:
    assert problems(machine_data(data_classes=classes)) == [message]


def test_unknown_data_class_field_lists_the_known_ones() -> None:
    (line,) = problems(machine_data(data_classes={"owner.address": "private"}))
    assert line.startswith("data_classes: unknown field 'owner.address'; fields are name, make")
    assert line.endswith("(got owner.address)")


def test_a_shared_machine_needs_what_the_pool_requires() -> None:
    data = machine_data(make="", location={"timezone": "UTC"})
    data["owner"] = {"org": ""}
    assert problems(data) == [
        "sharing: a shared machine needs what the pool requires: make, model, owner.org and a "
        "location; missing make, owner.org, location (lat, lon) (got shared: true)"
    ]
    data["sharing"]["shared"] = False
    assert parse_machine(data).sharing.shared is False


@pytest.mark.parametrize(
    ("capability", "path"),
    [
        ({"name": "Ploughing", "capacity": 6, "unit": "ha/day"}, "capabilities.0.name"),
        ({"name": "ploughing", "capacity": 0, "unit": "ha/day"}, "capabilities.0.capacity"),
        ({"name": "ploughing", "capacity": 6, "unit": "hectares"}, "capabilities.0.unit"),
        ({"name": "ploughing", "capacity": float("nan"), "unit": "t/h"}, "capabilities.0.capacity"),
    ],
)
def test_capabilities_follow_the_pool_contract(capability: dict[str, Any], path: str) -> None:
    (line,) = problems(machine_data(capabilities=[capability]))
    assert line.startswith(path + ":")


def test_duplicate_capability_is_refused() -> None:
    cap = {"name": "ploughing", "capacity": 6, "unit": "ha/day"}
    assert problems(machine_data(capabilities=[cap, cap])) == [
        "capabilities: a capability is listed twice (got ploughing)"
    ]


def test_location_needs_both_coordinates_and_a_real_zone() -> None:
    lines = problems(machine_data(location={"lat": 22.8, "timezone": "Mars/Olympus"}))
    assert lines[0] == (
        "location.timezone: not an IANA time zone such as Asia/Ho_Chi_Minh (got Mars/Olympus)"
    )
    lines = problems(machine_data(location={"lat": 22.8}))
    assert lines[0].startswith("location: give both lat and lon, or neither")


def test_rate_currency_is_three_capitals() -> None:
    data = machine_data()
    data["sharing"]["rate"] = {"amount": 10, "currency": "usd", "per": "hour"}
    (line,) = problems(data)
    assert line.startswith("sharing.rate.currency:") and line.endswith("(got usd)")


def test_status_rules_are_checked_when_the_machine_is() -> None:
    rules = [
        {"status": "working", "when": "speed >"},
        {"status": "working", "when": '__import__("os")'},
        {"status": "idle", "when": 'work_state < "idle"'},
        {"status": "sleeping", "when": "speed > 1"},
    ]
    lines = problems(machine_data(status_rules=rules))
    assert lines[0].startswith("status_rules.0.when: not an expression")
    assert lines[1].startswith("status_rules.1.when: unknown function __import__()")
    assert lines[2] == (
        "status_rules.2.when: only numbers may appear as constants: 'idle' "
        '(got work_state < "idle")'
    )
    assert lines[3].startswith("status_rules.3.status: Input should be 'working'")


def test_points_must_carry_the_prefix() -> None:
    lines = problems(machine_data(point_prefix="mill1_", points=["mill1_state", "mill2_state"]))
    assert lines == ["(machine): points must start with point_prefix mill1_ (got mill2_state)"]
    m = parse_machine(machine_data(point_prefix="mill1_", points=["mill1_state", "mill1_alarm"]))
    assert m.point_names() == ["state", "alarm"]


def test_unknown_fields_are_refused() -> None:
    (line,) = problems(machine_data(colour="blue"))
    assert line == "colour: Extra inputs are not permitted (got blue)"


def test_the_demo_configs_equipment_converts() -> None:
    demo = yaml.safe_load((ROOT / "gateway/samples/demo.yaml").read_text())
    machines = [from_config_equipment(Equipment.model_validate(e)) for e in demo["equipment"]]
    by_id = {m.id: m for m in machines}
    assert by_id["booster-pump-1"].type is MachineType.PUMP
    assert by_id["booster-pump-1"].owner.org == "Demo Cane Cooperative"
    assert by_id["booster-pump-1"].location.lat == 22.8170
    assert by_id["cane-press-1"].type is MachineType.SUGARCANE_PRESS
    assert by_id["cane-press-1"].points[0] == "roller_speed"
    # sharing is opt-in: the demo shares two harvesters and a tractor, nothing else
    assert sorted(m.id for m in machines if m.sharing.shared) == [
        "harvester-01",
        "harvester-02",
        "tractor-01",
    ]
    # only what the entry declares is set, so seeding lets config win for exactly that
    assert by_id["tractor-02"].model_fields_set == {"id", "device", "type", "owner"}


def test_an_unknown_config_type_is_refused_and_data_class_moves_fields() -> None:
    with pytest.raises(ValueError, match="type"):
        Equipment.model_validate({"id": "x-1", "type": "windmill", "device": "d"})
    eq = Equipment.model_validate(
        {"id": "x-1", "type": "other", "device": "d", "data_class": "restricted"}
    )
    m = from_config_equipment(eq)
    assert m.type is MachineType.OTHER
    assert m.classes["make"] is DataClass.RESTRICTED
    assert m.classes["owner.phone"] is DataClass.PRIVATE
    with pytest.raises(ValueError, match="data_class must be public, restricted or private"):
        Equipment.model_validate({"id": "x-1", "type": "other", "device": "d", "data_class": "x"})


def test_the_config_takes_the_full_machine_shape() -> None:
    eq = Equipment.model_validate(
        {
            **machine_data(),
            "sharing": {
                "shared": True,
                "weekly": [{"days": ["mon"], "start": "06:00", "end": "18:00"}],
            },
        }
    )
    m = from_config_equipment(eq)
    assert m.sharing.shared and m.sharing.weekly[0].start == "06:00"
    assert m.model_fields_set == eq.model_fields_set


def test_machines_are_frozen() -> None:
    m = parse_machine(machine_data())
    with pytest.raises(ValueError, match="frozen"):
        m.name = "x"  # type: ignore[misc]
    assert isinstance(m, Machine)


def test_the_docstring_example_is_a_valid_machine() -> None:
    import textwrap

    import gateway.equipment.model as module

    doc = module.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    m = parse_machine(yaml.safe_load(textwrap.dedent(block)))
    assert m.sharing.shared and m.sharing.weekly[1].end == "24:00"
