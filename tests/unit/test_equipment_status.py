"""Status from live points: ordered rules (first match wins), text states, the precedence of
offline, fault and maintenance, and default rules that read the built-in profiles' points."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.equipment.errors import InvalidMachine
from gateway.equipment.model import Machine, MachineType, Status, parse_machine
from gateway.equipment.status import (
    DEFAULT_STATUS_RULES,
    PointValue,
    compile_status_rules,
    derive_status,
    machine_values,
)
from gateway.readings import Quality, Reading

PROFILES = Path(__file__).resolve().parents[2] / "drivers" / "profiles"
NOW = 1_718_000_000.0
G, U, B = Quality.GOOD, Quality.UNCERTAIN, Quality.BAD


def profile_points(name: str) -> list[str]:
    data = yaml.safe_load((PROFILES / f"{name}.yaml").read_text())
    return [p["name"] for p in data["points"]]


def machine(type_: str = "tractor", **over: Any) -> Machine:
    return parse_machine({"id": "m-1", "type": type_, "device": "dev", **over})


def vals(age: float = 1.0, **points: Any) -> dict[str, PointValue]:
    return {k: (v, G, NOW - age) for k, v in points.items()}


FARM = {"fault_active": False, "engine_rpm": 1900, "speed": 7.0}


@pytest.mark.parametrize(
    ("points", "status", "reason"),
    [
        ({**FARM, "work_state": "working"}, Status.WORKING, 'rule 2: work_state == "working"'),
        ({**FARM, "work_state": "transit"}, Status.IN_TRANSIT, 'rule 3: work_state == "transit"'),
        ({**FARM, "work_state": "idle"}, Status.IDLE, 'rule 4: work_state == "idle"'),
        ({**FARM, "work_state": "fault"}, Status.FAULT, 'rule 1: work_state == "fault"'),
        (
            {**FARM, "fault_active": True, "work_state": "working"},
            Status.FAULT,
            "rule 0: fault_active",
        ),
        # telematics without a work state: the speed rules
        ({**FARM}, Status.WORKING, "rule 6: engine_rpm > 1000 and speed > 0.5"),
        ({**FARM, "speed": 22.0}, Status.IN_TRANSIT, "rule 5: speed > 12"),
        ({**FARM, "engine_rpm": 800, "speed": 0.0}, Status.IDLE, "online, no status rule holds"),
    ],
)
def test_tractor_defaults(points: dict[str, Any], status: Status, reason: str) -> None:
    assert derive_status(machine(), vals(**points), NOW, True) == (status, reason)


def test_first_matching_rule_wins_in_configured_order() -> None:
    rules = [
        {"status": "working", "when": "engine_rpm > 800 and speed > 0.5"},
        {"status": "in_transit", "when": "speed > 5"},
    ]
    m = machine(status_rules=rules)
    assert derive_status(m, vals(engine_rpm=1900, speed=20.0), NOW, True)[0] is Status.WORKING
    assert derive_status(m, vals(engine_rpm=600, speed=20.0), NOW, True)[0] is Status.IN_TRANSIT
    m = machine(status_rules=list(reversed(rules)))
    assert derive_status(m, vals(engine_rpm=1900, speed=20.0), NOW, True)[0] is Status.IN_TRANSIT


def test_a_rule_reading_a_missing_or_bad_point_does_not_hold() -> None:
    m = machine(status_rules=[{"status": "working", "when": "speed > 0.5"}])
    v = vals(engine_rpm=1900)
    v["speed"] = (None, B, NOW)
    assert derive_status(m, v, NOW, True) == (Status.IDLE, "online, no status rule holds")
    v["speed"] = (3.0, U, NOW)  # doubtful but present: used
    assert derive_status(m, v, NOW, True)[0] is Status.WORKING


def test_text_comparisons_both_ways_and_negated() -> None:
    m = machine(
        "fruit_grading_line",
        status_rules=[
            {"status": "fault", "when": '"fault" == state'},
            {"status": "working", "when": 'state != "stopped" and belt_speed > 0'},
        ],
    )
    assert derive_status(m, vals(state="fault", belt_speed=0), NOW, True)[0] is Status.FAULT
    assert derive_status(m, vals(state="running", belt_speed=0.5), NOW, True)[0] is Status.WORKING
    assert derive_status(m, vals(state="stopped", belt_speed=0.5), NOW, True)[0] is Status.IDLE


def test_offline_comes_first() -> None:
    m = machine()
    points = {**FARM, "work_state": "working"}
    assert derive_status(m, vals(**points), NOW, False) == (Status.OFFLINE, "device dev is down")
    assert derive_status(m, {}, NOW, True) == (
        Status.OFFLINE,
        "no usable reading from its points yet",
    )
    bad = {k: (None, B, NOW) for k in points}
    assert derive_status(m, bad, NOW, True)[0] is Status.OFFLINE


def test_stale_data_is_offline_with_a_stable_reason() -> None:
    m = machine(stale_after="10m")
    v = vals(age=601, **FARM)
    first = derive_status(m, v, NOW, True)
    assert first == (
        Status.OFFLINE,
        "no reading since 2024-06-10T06:03:19Z (stale after 600 s)",
    )
    assert derive_status(m, v, NOW + 300, True) == first  # the reason does not tick
    assert derive_status(m, vals(age=599, **FARM), NOW, True)[0] is Status.WORKING
    never = machine(stale_after=None)
    assert derive_status(never, vals(age=86_400, **FARM), NOW, True)[0] is Status.WORKING


def test_maintenance_alarm_of_a_bound_model_beats_working_not_fault() -> None:
    m = machine(health={"models": ["t1-pdm"]})
    v = vals(**FARM, work_state="working")
    v["t1-pdm.alarm_maintenance_due"] = (True, G, NOW)
    assert derive_status(m, v, NOW, True) == (
        Status.MAINTENANCE,
        "model t1-pdm alarm maintenance_due is active",
    )
    v["fault_active"] = (True, G, NOW)
    assert derive_status(m, v, NOW, True)[0] is Status.FAULT
    v["fault_active"] = (False, G, NOW)
    v["t1-pdm.alarm_maintenance_due"] = (False, G, NOW)
    assert derive_status(m, v, NOW, True)[0] is Status.WORKING
    # alarms of models not bound to the machine, and other alarm names, do not count
    v["other.alarm_maintenance_due"] = (True, G, NOW)
    v["t1-pdm.alarm_latency_over_budget"] = (True, G, NOW)
    assert derive_status(m, v, NOW, True)[0] is Status.WORKING
    # the engine's view of alarms can be handed in directly
    assert derive_status(m, v, NOW, True, active_alarms={"t1-pdm.maintenance_overdue"})[0] is (
        Status.MAINTENANCE
    )


def test_model_results_alone_do_not_keep_a_machine_online() -> None:
    m = machine(health={"models": ["t1-pdm"]})
    v = {"t1-pdm.failure_risk": (0.1, G, NOW)}
    assert derive_status(m, v, NOW, True)[0] is Status.OFFLINE


@pytest.mark.parametrize(
    ("type_", "profile", "prefix"),
    [
        ("tractor", "farm-machinery", ""),
        ("combine_harvester", "farm-machinery", ""),
        ("sugarcane_harvester", "farm-machinery", ""),
        ("drone_sprayer", "farm-machinery", ""),
        ("pump", "pump-station", ""),
        ("sugarcane_press", "sugarcane-press", ""),
        ("cnc_mill", "cnc-machine-line", "mill2_"),
        ("cogeneration_turbine", "cogen-turbine", ""),
        ("fruit_grading_line", "grading-line", ""),
    ],
)
def test_default_rules_read_real_profile_points(type_: str, profile: str, prefix: str) -> None:
    m = machine(type_, point_prefix=prefix)
    compiled = compile_status_rules(m, profile_points(profile))
    assert compiled.defaults and not compiled.left_out
    assert len(compiled.rules) == len(DEFAULT_STATUS_RULES[MachineType(type_)]) > 0


def test_defaults_narrow_to_the_points_a_machine_lists() -> None:
    m = machine("sugarcane_press", points=["roller_speed", "bearing_vibration"])
    compiled = compile_status_rules(m, profile_points("sugarcane-press"))
    assert [e.text for _, e in compiled.rules] == ["roller_speed > 0.5"]
    assert compiled.left_out == ("choke_alarm", "press_running")


def test_explicit_rules_must_name_known_points() -> None:
    m = machine("pump", status_rules=[{"status": "working", "when": "runing"}])
    with pytest.raises(InvalidMachine) as info:
        compile_status_rules(m, profile_points("pump-station"))
    (line,) = info.value.problems
    assert line.startswith("status_rules.0.when: unknown point 'runing' (known: bearing_temp")
    assert line.endswith("(got runing)")


@pytest.mark.parametrize(
    ("points", "status"),
    [
        ({"running": True, "drive_fault": False, "overload_trip": False}, Status.WORKING),
        ({"running": True, "drive_fault": False, "overload_trip": True}, Status.FAULT),
        ({"running": False, "drive_fault": False, "overload_trip": False}, Status.IDLE),
    ],
)
def test_pump_defaults(points: dict[str, Any], status: Status) -> None:
    assert derive_status(machine("pump"), vals(**points), NOW, True)[0] is status


@pytest.mark.parametrize(
    ("state", "alarm", "status"),
    [
        ("running", False, Status.WORKING),
        ("idle", False, Status.IDLE),
        ("fault", True, Status.FAULT),
    ],
)
def test_cnc_mill_defaults_through_the_prefix(state: str, alarm: bool, status: Status) -> None:
    m = machine("cnc_mill", device="line-1", point_prefix="mill1_")
    latest = {
        "line-1.mill1_state": Reading("line-1.mill1_state", state, ts_gateway=NOW),
        "line-1.mill1_alarm": Reading("line-1.mill1_alarm", alarm, ts_gateway=NOW),
        "line-1.mill2_alarm": Reading("line-1.mill2_alarm", True, ts_gateway=NOW),
    }
    v = machine_values(m, latest)
    assert set(v) == {"state", "alarm"}
    assert derive_status(m, v, NOW, True)[0] is status


def test_machine_values_picks_the_machines_points_and_models() -> None:
    m = machine(device="coop-broker", id="tractor-01", health={"models": ["t1-pdm"]})
    latest = {
        pid: Reading(pid, v, ts_gateway=NOW)
        for pid, v in {
            "tractor-01.speed": 7.0,  # MQTT: the topic names the machine
            "tractor-02.speed": 22.0,
            "pump-1.running": True,
            "t1-pdm.failure_risk": 0.2,
            "t1-pdm.alarm_failure_predicted": False,
            "t2-pdm.failure_risk": 0.9,
        }.items()
    }
    assert machine_values(m, latest) == {
        "speed": (7.0, G, NOW),
        "t1-pdm.failure_risk": (0.2, G, NOW),
        "t1-pdm.alarm_failure_predicted": (False, G, NOW),
    }
    subset = machine(device="pump-1", points=["running"])
    latest["pump-1.flow_rate"] = Reading("pump-1.flow_rate", 3.0, ts_gateway=NOW)
    assert set(machine_values(subset, latest)) == {"running"}
