"""Validation problems travel as data as well as lines: the page shows them in the reader's
language by `code` and `params` (gateway/equipment/problems.py). One bad document per check
the model makes, so a check added without a code (or with a code the page has no message for)
fails here, and personal data stays out of the data as it stays out of the lines."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.equipment.errors import InvalidMachine
from gateway.equipment.model import parse_machine
from gateway.equipment.problems import TRANSLATED_CODES, Problem
from gateway.equipment.registry import EquipmentRegistry
from gateway.equipment.status import compile_status_rules
from tests.unit.test_equipment_model import machine_data


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *head, last = path.split(".")
    node: Any = doc
    for part in head:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


def _without(doc: dict[str, Any], key: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    del doc[key]
    return doc


BASE = machine_data()
#: (document, path of the problem, code). Every own code but the registry's `id_changed` and
#: the status-rule compile against known points (both below) has a case here.
CASES: list[tuple[dict[str, Any], str, str]] = [
    (_without(BASE, "device"), "device", "missing"),
    (_set(BASE, "colour", "red"), "colour", "extra_forbidden"),
    (_set(BASE, "name", 7), "name", "string_type"),
    (_set(BASE, "make", "x" * 65), "make", "string_too_long"),
    (
        _set(BASE, "status_rules", [{"status": "working", "when": ""}]),
        "status_rules.0.when",
        "string_too_short",
    ),
    (_set(BASE, "sharing.blackout_dates", [[1]]), "sharing.blackout_dates.0", "date_type"),
    (_set(BASE, "id", "no spaces allowed"), "id", "string_pattern_mismatch"),
    (_set(BASE, "capabilities.0.capacity", 0), "capabilities.0.capacity", "greater_than"),
    (_set(BASE, "sharing.rate.amount", -1), "sharing.rate.amount", "greater_than_equal"),
    (_set(BASE, "sharing.min_booking_hours", 1000), "sharing.min_booking_hours", "less_than_equal"),
    (_set(BASE, "location.lat", 91), "location.lat", "less_than_equal"),
    (
        _set(BASE, "meters", [{"quantity": "hectares", "point": "a", "reset_fraction": 1}]),
        "meters.0.reset_fraction",
        "less_than",
    ),
    (_set(BASE, "capabilities.0.capacity", "six"), "capabilities.0.capacity", "float_parsing"),
    (_set(BASE, "capabilities.0.capacity", [6]), "capabilities.0.capacity", "float_type"),
    (_set(BASE, "sharing.shared", "perhaps"), "sharing.shared", "bool_parsing"),
    (_set(BASE, "sharing.shared", [True]), "sharing.shared", "bool_type"),
    (_set(BASE, "type", "spaceship"), "type", "enum"),
    (_set(BASE, "sharing.rate.per", "week"), "sharing.rate.per", "literal_error"),
    (_set(BASE, "capabilities", "ploughing"), "capabilities", "list_type"),
    (_set(BASE, "sharing.weekly.0.days", []), "sharing.weekly.0.days", "too_short"),
    (_set(BASE, "capabilities", BASE["capabilities"] * 33), "capabilities", "too_long"),
    (_set(BASE, "data_classes", ["notes"]), "data_classes", "dict_type"),
    (_set(BASE, "owner", "Coop"), "owner", "model_type"),
    (
        _set(BASE, "sharing.blackout_dates", ["tomorrow"]),
        "sharing.blackout_dates.0",
        "date_from_datetime_parsing",
    ),
    (
        _set(BASE, "sharing.blackout_dates", [1.5]),
        "sharing.blackout_dates.0",
        "date_from_datetime_inexact",
    ),
    (_set(BASE, "sharing.weekly.0.start", "7am"), "sharing.weekly.0.start", "time_of_day"),
    (
        _set(BASE, "capabilities.0.capacity", float("inf")),
        "capabilities.0.capacity",
        "not_finite",
    ),
    (_set(BASE, "owner.phone", "call me"), "owner.phone", "phone_format"),
    (_set(BASE, "owner.email", "nobody"), "owner.email", "email_format"),
    (_set(BASE, "location.timezone", "Mars/Olympus"), "location.timezone", "unknown_timezone"),
    (_set(BASE, "location.lon", None), "location", "lat_lon_pair"),
    (_set(BASE, "sharing.weekly.0.days", ["mon", "mon"]), "sharing.weekly.0.days", "day_twice"),
    (_set(BASE, "sharing.weekly.0.start", "24:00"), "sharing.weekly.0.start", "window_start_late"),
    (
        _set(BASE, "sharing.weekly.0.end", "06:00"),
        "sharing.weekly.0.end",
        "window_end_before_start",
    ),
    (
        _set(BASE, "status_rules", [{"status": "working", "when": "rpm >"}]),
        "status_rules.0.when",
        "status_rule",
    ),
    (_set(BASE, "health", {"models": ["m1", "m1"]}), "health.models", "duplicate_model"),
    (_set(BASE, "capabilities", BASE["capabilities"] * 2), "capabilities", "duplicate_capability"),
    (_set(BASE, "points", ["a", "a"]), "points", "duplicate_point"),
    (
        _set(BASE, "meters", [{"quantity": "hectares", "point": "a"}] * 2),
        "meters",
        "duplicate_meter",
    ),
    (_set(BASE, "make", ""), "sharing", "shared_needs"),
    (
        _set(_set(BASE, "point_prefix", "mill1_"), "points", ["x"]),
        "(machine)",
        "point_prefix_mismatch",
    ),
    (_set(BASE, "data_classes", {"id": "public"}), "data_classes", "always_public"),
    (_set(BASE, "data_classes", {"colour": "public"}), "data_classes", "unknown_data_field"),
    (
        _set(BASE, "data_classes", {"owner.phone": "public"}),
        "data_classes",
        "data_class_not_allowed",
    ),
    (_set(BASE, "stale_after", "soon"), "stale_after", "duration_format"),
    (_set(BASE, "stale_after", 0), "stale_after", "not_positive"),
]


def _details(doc: dict[str, Any]) -> tuple[Problem, ...]:
    with pytest.raises(InvalidMachine) as info:
        parse_machine(doc)
    return info.value.details


@pytest.mark.parametrize(("doc", "path", "code"), CASES, ids=[c[2] for c in CASES])
def test_each_check_names_its_code_and_the_params_its_message_needs(
    doc: dict[str, Any], path: str, code: str
) -> None:
    details = _details(doc)
    found = {(p.path, p.code) for p in details}
    assert (path, code) in found, found
    for p in details:
        assert p.code in TRANSLATED_CODES, (p.code, p.line)
        assert set(TRANSLATED_CODES[p.code]) <= set(p.params), (p.code, dict(p.params))
        assert json.loads(json.dumps(p.as_dict())) == p.as_dict()  # what the API sends


def test_every_listed_code_is_exercised() -> None:
    """No code is listed (and translated) that no machine document can produce."""
    covered = {c[2] for c in CASES} | {"id_changed"}
    assert set(TRANSLATED_CODES) <= covered, set(TRANSLATED_CODES) - covered


def test_the_line_is_the_problem_as_before() -> None:
    (p,) = _details(_set(BASE, "sharing.weekly.0.end", "06:00"))
    assert p.line == (
        "sharing.weekly.0.end: must be after start 07:00; split a window across midnight "
        "into two at 24:00 (got 06:00)"
    )
    assert (p.got, dict(p.params)) == ("06:00", {"start": "07:00"})
    (p,) = _details(_without(BASE, "device"))
    assert (p.line, p.got) == ("device: Field required (got nothing)", "nothing")


def test_personal_data_stays_out_of_the_data_too() -> None:
    doc = _set(_set(BASE, "owner.phone", "call 0912 345"), "owner.email", "me at home 0912")
    details = _details(doc)
    assert [p.got for p in details] == ["***", "***"]
    assert "0912" not in json.dumps([p.as_dict() for p in details])


def test_status_rules_against_the_machines_points_carry_the_rule_error() -> None:
    machine = parse_machine(
        _set(
            _set(BASE, "points", ["rpm"]),
            "status_rules",
            [{"status": "working", "when": "speed > 1"}],
        )
    )
    with pytest.raises(InvalidMachine) as info:
        compile_status_rules(machine)
    (p,) = info.value.details
    assert (p.path, p.code, p.got) == ("status_rules.0.when", "status_rule", "speed > 1")
    assert "speed" in str(p.params["error"])


async def test_an_id_cannot_change_on_update(tmp_path: Path) -> None:
    async with EquipmentRegistry(tmp_path / "equipment.db") as registry:
        await registry.add(parse_machine(BASE), who="test")
        with pytest.raises(InvalidMachine) as info:
            await registry.update("tractor-01", {"id": "tractor-02"}, version=1, who="test")
    (p,) = info.value.details
    assert (p.path, p.code, p.got) == ("id", "id_changed", "tractor-02")
