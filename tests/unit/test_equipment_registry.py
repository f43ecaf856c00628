"""The equipment registry on real SQLite files: versions, soft retire, the change history,
clear errors, config seeding (config wins for what it declares), and no blocking of the loop."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.equipment import registry as registry_module
from gateway.equipment.errors import (
    DuplicateMachine,
    EquipmentError,
    InvalidMachine,
    MachineRetired,
    UnknownMachine,
    VersionConflict,
)
from gateway.equipment.model import Machine, parse_machine
from gateway.equipment.registry import EquipmentRegistry


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def machine(mid: str = "tractor-01", **over: Any) -> Machine:
    data: dict[str, Any] = {
        "id": mid,
        "type": "tractor",
        "make": "Kubota",
        "model": "M7060",
        "owner": {"org": "Coop", "contact_name": "Nguyen Van A", "phone": "+84 912 345 678"},
        "device": "coop-broker",
    }
    data.update(over)
    return parse_machine(data)


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[EquipmentRegistry]:
    async with EquipmentRegistry(tmp_path / "equipment.db", clock=FakeClock()) as r:
        yield r


async def test_add_get_list(reg: EquipmentRegistry) -> None:
    rec = await reg.add(machine(), who="cli:alice")
    assert (rec.version, rec.source, rec.retired_at) == (1, "local", None)
    assert rec.machine == machine()
    assert (await reg.get("tractor-01")).machine == machine()
    await reg.add(machine("harvester-01", type="sugarcane_harvester"), who="cli:alice")
    assert [r.machine.id for r in await reg.list()] == ["harvester-01", "tractor-01"]


async def test_duplicate_and_unknown_ids_are_clear(reg: EquipmentRegistry) -> None:
    await reg.add(machine(), who="cli:alice")
    with pytest.raises(
        DuplicateMachine, match="machine tractor-01: the id is already a registered"
    ):
        await reg.add(machine(), who="cli:alice")
    with pytest.raises(UnknownMachine, match="machine nope: not registered"):
        await reg.get("nope")
    with pytest.raises(UnknownMachine):
        await reg.update("nope", {"name": "x"}, version=1, who="cli:alice")


async def test_update_merges_a_patch_and_bumps_the_version(reg: EquipmentRegistry) -> None:
    await reg.add(machine(), who="cli:alice")
    rec = await reg.update(
        "tractor-01",
        {"owner": {"phone": "+84 900 000 000"}, "sharing": {"min_booking_hours": 3}},
        version=1,
        who="api:bob",
    )
    assert rec.version == 2
    assert rec.machine.owner.contact_name == "Nguyen Van A"  # merged, not replaced
    assert rec.machine.owner.phone == "+84 900 000 000"
    assert rec.machine.sharing.min_booking_hours == 3
    # a whole machine replaces it
    rec = await reg.update("tractor-01", machine(name="Blue"), version=2, who="api:bob")
    assert (rec.version, rec.machine.name, rec.machine.sharing.min_booking_hours) == (3, "Blue", 1)


async def test_a_stale_version_is_a_conflict(reg: EquipmentRegistry) -> None:
    await reg.add(machine(), who="cli:alice")
    await reg.update("tractor-01", {"name": "A"}, version=1, who="cli:alice")
    with pytest.raises(VersionConflict) as info:
        await reg.update("tractor-01", {"name": "B"}, version=1, who="api:bob")
    assert info.value.current == 2
    assert "version 1 is not the current one (2)" in str(info.value)
    assert (await reg.get("tractor-01")).machine.name == "A"


async def test_concurrent_updates_one_wins_one_conflicts(reg: EquipmentRegistry) -> None:
    await reg.add(machine(), who="cli:alice")
    results = await asyncio.gather(
        reg.update("tractor-01", {"name": "A"}, version=1, who="cli:alice"),
        reg.update("tractor-01", {"name": "B"}, version=1, who="api:bob"),
        return_exceptions=True,
    )
    assert sum(isinstance(r, VersionConflict) for r in results) == 1
    assert (await reg.get("tractor-01")).version == 2


async def test_an_update_that_changes_nothing_keeps_the_version(reg: EquipmentRegistry) -> None:
    await reg.add(machine(), who="cli:alice")
    rec = await reg.update("tractor-01", {"make": "Kubota"}, version=1, who="cli:alice")
    assert rec.version == 1
    assert len(await reg.changes("tractor-01")) == 1


async def test_an_invalid_patch_lists_its_problems_and_changes_nothing(
    reg: EquipmentRegistry,
) -> None:
    await reg.add(machine(), who="cli:alice")
    patch = {"sharing": {"weekly": [{"days": ["mon"], "start": "08:00", "end": "07:00"}]}}
    with pytest.raises(InvalidMachine) as info:
        await reg.update("tractor-01", patch, version=1, who="cli:alice")
    assert info.value.problems == [
        "sharing.weekly.0.end: must be after start 08:00; split a window across midnight into "
        "two at 24:00 (got 07:00)"
    ]
    with pytest.raises(InvalidMachine, match="id: the id of a machine cannot change"):
        await reg.update("tractor-01", {"id": "other"}, version=1, who="cli:alice")
    assert (await reg.get("tractor-01")).version == 1


async def test_retire_is_soft(reg: EquipmentRegistry) -> None:
    await reg.add(machine(), who="cli:alice")
    rec = await reg.retire("tractor-01", version=1, who="admin:carol")
    assert rec.retired and rec.version == 2
    assert await reg.list() == []
    assert [r.machine.id for r in await reg.list(include_retired=True)] == ["tractor-01"]
    assert (await reg.get("tractor-01")).retired
    with pytest.raises(MachineRetired, match="machine tractor-01: retired"):
        await reg.update("tractor-01", {"name": "x"}, version=2, who="cli:alice")
    with pytest.raises(MachineRetired):
        await reg.retire("tractor-01", version=2, who="cli:alice")
    with pytest.raises(DuplicateMachine, match="already a retired machine"):
        await reg.add(machine(), who="cli:alice")


async def test_every_change_is_recorded_by_field_name_only(reg: EquipmentRegistry) -> None:
    await reg.add(machine(), who="cli:alice")
    await reg.update(
        "tractor-01",
        {"owner": {"phone": "+84 900 000 000"}, "name": "Blue"},
        version=1,
        who="api:bob",
    )
    await reg.retire("tractor-01", version=2, who="admin:carol")
    changes = await reg.changes("tractor-01")
    assert [(c.version, c.action, c.who) for c in changes] == [
        (1, "add", "cli:alice"),
        (2, "update", "api:bob"),
        (3, "retire", "admin:carol"),
    ]
    assert changes[1].fields == ("name", "owner.phone")
    assert changes[2].fields == ("retired_at",)
    assert changes[0].at < changes[1].at < changes[2].at
    assert [c.seq for c in await reg.changes(after=changes[0].seq)] == [
        changes[1].seq,
        changes[2].seq,
    ]
    raw = sqlite3.connect(reg.path).execute("SELECT group_concat(fields) FROM changes").fetchone()
    assert "+84" not in raw[0] and "Nguyen" not in raw[0]  # names of fields, not values
    with pytest.raises(EquipmentError, match="who made the change must be named"):
        await reg.update("x", {}, version=1, who=" ")


async def test_it_persists_in_a_wal_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "equipment.db"
    async with EquipmentRegistry(path) as reg:
        await reg.add(machine(), who="cli:alice")
    async with EquipmentRegistry(path) as reg:
        assert (await reg.get("tractor-01")).machine == machine()
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


async def test_seed_adds_then_config_wins_only_for_what_it_declares(
    reg: EquipmentRegistry,
) -> None:
    config = [
        parse_machine({"id": "pump-1", "type": "pump", "device": "plc", "owner": {"org": "Mill"}}),
        parse_machine({"id": "press-1", "type": "sugarcane_press", "device": "plc"}),
    ]
    report = await reg.seed(config)
    assert (report.added, report.updated) == (["pump-1", "press-1"], [])
    rec = await reg.get("pump-1")
    assert (rec.source, rec.config_fields) == ("config", ("device", "owner.org", "type"))

    # the technician adds a phone and a name by CLI; someone also edits the org
    await reg.update(
        "pump-1",
        {"name": "Booster", "owner": {"phone": "+84 900 000 000", "org": "Other"}},
        version=1,
        who="cli:alice",
    )
    report = await reg.seed(config)  # next start
    assert (report.updated, report.unchanged) == (["pump-1"], ["press-1"])
    m = (await reg.get("pump-1")).machine
    assert m.owner.org == "Mill"  # config declares it: config wins
    assert (m.name, m.owner.phone) == ("Booster", "+84 900 000 000")  # kept
    assert (await reg.changes("pump-1"))[-1].fields == ("owner.org",)
    assert (await reg.changes("pump-1"))[-1].who == "config"

    report = await reg.seed(config)
    assert report.updated == [] and sorted(report.unchanged) == ["press-1", "pump-1"]


async def test_seed_leaves_retired_retired_and_keeps_machines_config_dropped(
    reg: EquipmentRegistry,
) -> None:
    await reg.seed([machine("a-1"), machine("b-1")])
    await reg.retire("a-1", version=1, who="cli:alice")
    await reg.add(machine("local-1"), who="cli:alice")
    report = await reg.seed([machine("a-1")])
    assert report.retired == ["a-1"]
    assert report.not_in_config == ["b-1", "local-1"]
    assert (await reg.get("a-1")).retired
    assert (await reg.get("b-1")).version == 1
    with pytest.raises(EquipmentError, match="declares machine a-1 more than once"):
        await reg.seed([machine("a-1"), machine("a-1")])


async def test_seed_reports_a_config_entry_that_would_make_a_machine_invalid(
    reg: EquipmentRegistry,
) -> None:
    await reg.add(machine("t-1"), who="cli:alice")
    await reg.update(
        "t-1",
        {"location": {"lat": 22.8, "lon": 108.3}, "sharing": {"shared": True}},
        version=1,
        who="cli:alice",
    )
    config = [
        parse_machine({"id": "t-1", "type": "tractor", "device": "d", "make": ""}),
        machine("t-2"),
    ]
    report = await reg.seed(config)
    assert report.added == ["t-2"]
    (line,) = report.invalid["t-1"]
    assert line.startswith("sharing: a shared machine needs what the pool requires")
    assert (await reg.get("t-1")).machine.make == "Kubota"  # left as it was


async def test_sqlite_runs_off_the_event_loop(
    reg: EquipmentRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real = registry_module.EquipmentRegistry._record

    def spy(row: Any) -> Any:
        seen.append(threading.get_ident())
        return real(row)

    monkeypatch.setattr(registry_module.EquipmentRegistry, "_record", staticmethod(spy))
    await reg.add(machine(), who="cli:alice")
    await reg.list()
    assert seen and loop_thread not in seen


async def test_a_registry_must_be_open(tmp_path: Path) -> None:
    reg = EquipmentRegistry(tmp_path / "e.db")
    with pytest.raises(EquipmentError, match="is new, not open"):
        await reg.list()
    await reg.open()
    with pytest.raises(EquipmentError, match="open\\(\\) once"):
        await reg.open()
    await reg.close()
    await reg.close()  # twice is fine
    with pytest.raises(EquipmentError, match="is closed, not open"):
        await reg.get("x")


async def test_stored_documents_are_plain_json(reg: EquipmentRegistry) -> None:
    await reg.add(machine(), who="cli:alice")
    doc = sqlite3.connect(reg.path).execute("SELECT doc FROM machines").fetchone()[0]
    assert json.loads(doc)["owner"]["org"] == "Coop"
