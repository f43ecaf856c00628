"""A machine's health from its models: the engine's status or the latest readings, worst of
several models, RUL in hours, fallback and missing models, the pool contract's shape."""

from __future__ import annotations

from typing import Any

from gateway.equipment.health import NO_MODELS, health_from_engine, health_from_values
from gateway.equipment.model import Machine, parse_machine
from gateway.readings import Quality

NOW = 1_718_000_000.0


def machine(**health: Any) -> Machine:
    return parse_machine(
        {"id": "turbine-1", "type": "cogeneration_turbine", "device": "cogen-1", "health": health}
    )


def status(mid: str, **kw: Any) -> dict[str, Any]:
    base = {
        "id": mid,
        "model": "pdm-rul",
        "version": "1.0.0",
        "state": "ready",
        "last_values": {},
        "active_alarms": [],
        "pool_available": None,
        "last_run": NOW,
    }
    return {**base, **kw}


def test_from_engine_takes_the_worst_of_several_models() -> None:
    m = machine(models=["t1-rul", "t1-pdm"], cycle_hours=0.5)
    view = health_from_engine(
        m,
        [
            status(
                "t1-rul",
                last_values={"rul_cycles": 40.0},
                active_alarms=["maintenance_due"],
                pool_available=True,
            ),
            status("t1-pdm", model="pdm-failure", last_values={"failure_risk": 0.3}),
            status("other", last_values={"failure_risk": 0.99}),  # not this machine's
        ],
    )
    assert (view.failure_risk, view.failure_risk_model) == (0.3, "t1-pdm")
    assert (view.rul_cycles, view.rul_hours, view.rul_model) == (40.0, 20.0, "t1-rul")
    assert view.active_alarms == frozenset({"t1-rul.maintenance_due"})
    assert view.rule_says_unavailable == () and view.missing == ()
    assert view.source == "model:pdm-failure@1.0.0"
    assert view.to_dict() == {
        "failure_risk": 0.3,
        "rul_hours": 20.0,
        "source": "model:pdm-failure@1.0.0",
    }


def test_from_engine_missing_fallback_and_the_manifest_rule() -> None:
    m = machine(models=["t1-rul", "t1-pdm"])
    view = health_from_engine(
        m,
        [
            status(
                "t1-rul",
                state="fallback",
                last_values={},
                active_alarms=["maintenance_due"],
                pool_available=False,
            ),
            status("t1-pdm", last_values={}, last_run=None),  # loaded, never ran
        ],
    )
    assert view.missing == ("t1-pdm",)
    assert view.fallback == ("t1-rul",)
    assert view.rule_says_unavailable == ("t1-rul",)
    assert view.rul_hours is None and view.source == "fallback:pdm-rul@1.0.0"
    assert health_from_engine(m, []).missing == ("t1-rul", "t1-pdm")


def test_rul_hours_need_cycle_hours() -> None:
    view = health_from_engine(
        machine(models=["t1-rul"]), [status("t1-rul", last_values={"rul_cycles": 40.0})]
    )
    assert (view.rul_cycles, view.rul_hours) == (40.0, None)


def test_from_values_reads_results_and_alarm_points() -> None:
    m = machine(models=["t1-rul"], cycle_hours=2)
    values = {
        "t1-rul.rul_cycles": (12.0, Quality.GOOD, NOW),
        "t1-rul.alarm_maintenance_due": (True, Quality.GOOD, NOW),
        "t1-rul.alarm_maintenance_overdue": (False, Quality.GOOD, NOW),
        "t1-rul.failure_risk": (None, Quality.BAD, NOW),
        "speed": (3.0, Quality.GOOD, NOW),
    }
    view = health_from_values(m, values, pool_available={"t1-rul": False})
    assert (view.rul_cycles, view.rul_hours) == (12.0, 24.0)
    assert view.failure_risk is None
    assert view.active_alarms == frozenset({"t1-rul.maintenance_due"})
    assert view.rule_says_unavailable == ("t1-rul",)
    assert view.source == "t1-rul"


def test_from_values_fallback_results_are_uncertain() -> None:
    m = machine(models=["t1-pdm"])
    values = {"t1-pdm.alarm_failure_predicted": (True, Quality.UNCERTAIN, NOW)}
    view = health_from_values(m, values)
    assert view.fallback == ("t1-pdm",)
    assert view.active_alarms == frozenset({"t1-pdm.failure_predicted"})
    assert health_from_values(m, {}).missing == ("t1-pdm",)


def test_no_models_is_all_null_for_the_pool() -> None:
    assert health_from_engine(machine(), []) == NO_MODELS
    assert NO_MODELS.to_dict() == {"failure_risk": None, "rul_hours": None, "source": None}
