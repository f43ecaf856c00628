"""The machines registered on this box, in their own small SQLite file.

    async with EquipmentRegistry("equipment.db") as reg:
        rec = await reg.add(machine, who="technician:alice")
        rec = await reg.update("tractor-01", {"sharing": {"shared": True}},
                               version=rec.version, who="technician:alice")
        await reg.retire("tractor-01", version=rec.version, who="admin:bob")

* **Versions.** Every machine has a version, 1 when added, +1 with every change. `update`
  and `retire` take the version the caller read; a different one is a `VersionConflict`
  (someone else changed it meanwhile: read again, re-apply). A change that changes nothing
  does not bump it.
* **Retire is soft.** A retired machine keeps its row and id (`retired_at` set); `list()`
  leaves it out unless asked; it can be read, not updated; its id cannot be added again.
* **Every change is recorded** in `changes`: machine, new version, action (`add`, `update`,
  `retire`, `seed`), who (given by the caller: `cli:<user>`, `api:<token subject>`,
  `config`), when, and which fields changed (paths like `sharing.weekly`, `owner.phone` --
  names only, never values, so no personal data is copied into the history).
* **Config seeding.** `seed(machines)` runs at start with the config's `equipment:` entries.
  A machine not yet registered is added. For one already registered, config wins for the
  fields the config entry declares (set explicitly, at any depth: `owner: {org: X}` sets
  `owner.org` only) and the registry keeps everything else, so what was edited by CLI or API
  and is not in the config survives restarts; edits to config-declared fields do not (they
  are listed in `Record.config_fields` so CLI/API can warn). A retired machine stays retired
  (reported, so the technician removes it from the config). A registered machine the config
  no longer names is kept (reported): the registry, not the config, decides what exists.
  A config entry that would make the registered machine invalid together with what the
  registry holds (config `make: ""` on a shared machine) leaves it unchanged and is reported
  in `SeedReport.invalid`; the others are still applied.

Blocking SQLite work runs in a worker thread (`_db.SqliteFile`), never on the event loop.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.equipment._db import SqliteFile
from gateway.equipment.errors import (
    DuplicateMachine,
    EquipmentError,
    InvalidMachine,
    MachineRetired,
    UnknownMachine,
    VersionConflict,
)
from gateway.equipment.model import Machine, problems_of
from gateway.equipment.problems import Problem

SCHEMA = """
CREATE TABLE IF NOT EXISTS machines (
    id            TEXT PRIMARY KEY,
    version       INTEGER NOT NULL,
    doc           TEXT NOT NULL,
    source        TEXT NOT NULL,
    config_fields TEXT NOT NULL DEFAULT '[]',
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    retired_at    REAL
);
CREATE TABLE IF NOT EXISTS changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id TEXT NOT NULL,
    version    INTEGER NOT NULL,
    action     TEXT NOT NULL,
    who        TEXT NOT NULL,
    at         REAL NOT NULL,
    fields     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_machine ON changes (machine_id, seq);
"""


@dataclass(frozen=True)
class Record:
    machine: Machine
    version: int
    #: `local` (CLI/API) or `config` (seeded).
    source: str
    created_at: float
    updated_at: float
    retired_at: float | None = None
    #: Field paths the config declares; config overwrites them at every start.
    config_fields: tuple[str, ...] = ()

    @property
    def retired(self) -> bool:
        return self.retired_at is not None


@dataclass(frozen=True)
class Change:
    seq: int
    machine_id: str
    version: int
    action: str
    who: str
    at: float
    fields: tuple[str, ...]


@dataclass
class SeedReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: In the config but retired in the registry: left retired.
    retired: list[str] = field(default_factory=list)
    #: Registered (not retired) but no longer in the config: kept.
    not_in_config: list[str] = field(default_factory=list)
    #: Config fields that would make the registered machine invalid (left as it was):
    #: machine id -> problems.
    invalid: dict[str, list[str]] = field(default_factory=dict)


def changed_fields(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths where two JSON-like documents differ (lists compared whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                out.append(sub)
            else:
                out += changed_fields(old[key], new[key], sub)
        return out
    return [] if old == new else [path or "(machine)"]


def _leaf_paths(doc: Any, path: str = "") -> list[str]:
    if isinstance(doc, dict) and doc:
        out: list[str] = []
        for key, value in doc.items():
            out += _leaf_paths(value, f"{path}.{key}" if path else str(key))
        return out
    return [path] if path else []


def deep_merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`patch` over `base`: mappings merged key by key, anything else (lists too) replaced."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _validate(doc: Mapping[str, Any], machine_id: str) -> Machine:
    try:
        return Machine.model_validate(doc)
    except ValidationError as exc:
        raise InvalidMachine(problems_of(exc), machine_id=machine_id) from None


def _dump(machine: Machine) -> dict[str, Any]:
    return machine.model_dump(mode="json")


class EquipmentRegistry:
    """Add, update, retire, read and list machines; see the module docstring."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self._db = SqliteFile(path, SCHEMA, what="equipment registry")
        self._clock = clock

    @property
    def path(self) -> Path:
        return self._db.path

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> EquipmentRegistry:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reads -------------------------------------------------------------------------------

    async def get(self, machine_id: str) -> Record:
        """The machine, retired or not; UnknownMachine if it was never registered."""
        return await self._db.read(lambda c: self._get(c, machine_id))

    async def list(self, *, include_retired: bool = False) -> builtins.list[Record]:
        """Machines by id; retired ones only when asked."""

        def run(conn: sqlite3.Connection) -> builtins.list[Record]:
            where = "" if include_retired else " WHERE retired_at IS NULL"
            rows = conn.execute(f"SELECT * FROM machines{where} ORDER BY id").fetchall()
            return [self._record(r) for r in rows]

        return await self._db.read(run)

    async def changes(
        self, machine_id: str | None = None, *, after: int = 0, limit: int = 100
    ) -> builtins.list[Change]:
        """The change history, oldest first, after change `after` (for paging)."""

        def run(conn: sqlite3.Connection) -> builtins.list[Change]:
            sql = "SELECT seq, machine_id, version, action, who, at, fields FROM changes"
            sql += " WHERE seq > ?" + (" AND machine_id = ?" if machine_id else "")
            args: tuple[Any, ...] = (after, machine_id) if machine_id else (after,)
            rows = conn.execute(sql + " ORDER BY seq LIMIT ?", (*args, limit)).fetchall()
            return [
                Change(r[0], r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6]))) for r in rows
            ]

        return await self._db.read(run)

    # -- changes -----------------------------------------------------------------------------

    async def add(self, machine: Machine, *, who: str) -> Record:
        """Register a new machine (version 1). DuplicateMachine if the id is taken."""
        _who(who)
        doc = _dump(machine)

        def run(conn: sqlite3.Connection) -> Record:
            self._check_new(conn, machine.id)
            self._insert(conn, machine.id, doc, "local", (), "add", who)
            return self._get(conn, machine.id)

        return await self._db.write(run)

    async def check_add(self, machine: Machine) -> None:
        """What `add` would refuse (DuplicateMachine), without adding: the API's dry run."""
        await self._db.read(lambda conn: self._check_new(conn, machine.id))

    async def update(
        self,
        machine_id: str,
        patch: Machine | Mapping[str, Any],
        *,
        version: int,
        who: str,
    ) -> Record:
        """Change a machine. `patch` is a whole Machine (replaces it) or a partial document
        merged into the stored one (mappings key by key, lists replaced). `version` must be the
        current one. The result is validated as a whole (InvalidMachine lists every problem)."""
        _who(who)

        def run(conn: sqlite3.Connection) -> Record:
            rec, merged = self._merge(conn, machine_id, patch, version)
            old, new = _dump(rec.machine), _dump(merged)
            fields = changed_fields(old, new)
            if not fields:
                return rec
            self._save(conn, rec, new, "update", who, fields)
            return self._get(conn, machine_id)

        return await self._db.write(run)

    async def check_update(
        self, machine_id: str, patch: Mapping[str, Any], *, version: int | None = None
    ) -> Machine:
        """The machine `update` would store for this partial document (the same refusals:
        UnknownMachine, MachineRetired, VersionConflict when `version` is given and stale,
        InvalidMachine), without storing it: the API's dry run."""
        return await self._db.read(lambda conn: self._merge(conn, machine_id, patch, version)[1])

    def _merge(
        self,
        conn: sqlite3.Connection,
        machine_id: str,
        patch: Machine | Mapping[str, Any],
        version: int | None,
    ) -> tuple[Record, Machine]:
        """The current record and the validated result of applying `patch` to it."""
        rec = self._get(conn, machine_id)
        if version is None:
            if rec.retired:
                raise MachineRetired(f"machine {machine_id}: retired, it can no longer be changed")
        else:
            self._check(rec, version)
        old = _dump(rec.machine)
        doc = _dump(patch) if isinstance(patch, Machine) else deep_merge(old, patch)
        if doc.get("id") != machine_id:
            changed = Problem(
                "id", "id_changed", "the id of a machine cannot change", str(doc.get("id"))
            )
            raise InvalidMachine([changed], machine_id=machine_id)
        return rec, _validate(doc, machine_id)

    @staticmethod
    def _check_new(conn: sqlite3.Connection, machine_id: str) -> None:
        row = conn.execute("SELECT retired_at FROM machines WHERE id = ?", (machine_id,)).fetchone()
        if row is not None:
            state = "a retired machine" if row[0] is not None else "a registered machine"
            raise DuplicateMachine(f"machine {machine_id}: the id is already {state}")

    async def retire(self, machine_id: str, *, version: int, who: str) -> Record:
        """Retire (soft delete) a machine; it stays readable with `retired_at` set."""
        _who(who)

        def run(conn: sqlite3.Connection) -> Record:
            rec = self._get(conn, machine_id)
            self._check(rec, version)
            now = self._clock()
            conn.execute(
                "UPDATE machines SET version = ?, updated_at = ?, retired_at = ? WHERE id = ?",
                (rec.version + 1, now, now, machine_id),
            )
            self._log(conn, machine_id, rec.version + 1, "retire", who, ["retired_at"], now)
            return self._get(conn, machine_id)

        return await self._db.write(run)

    async def seed(self, machines: Iterable[Machine], *, who: str = "config") -> SeedReport:
        """Apply the config's machines (module docstring: config wins for declared fields)."""
        _who(who)
        entries = [
            (m.id, m.model_dump(mode="json", exclude_unset=True), _dump(m)) for m in machines
        ]
        ids = [e[0] for e in entries]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise EquipmentError(f"config declares machine {', '.join(dup)} more than once")

        def run(conn: sqlite3.Connection) -> SeedReport:
            report = SeedReport()
            for mid, declared, full in entries:
                declared = {**declared, "id": mid}
                paths = tuple(sorted(p for p in _leaf_paths(declared) if p != "id"))
                row = conn.execute("SELECT * FROM machines WHERE id = ?", (mid,)).fetchone()
                if row is None:
                    self._insert(conn, mid, full, "config", paths, "seed", who)
                    report.added.append(mid)
                    continue
                rec = self._record(row)
                if rec.retired:
                    report.retired.append(mid)
                    continue
                old = _dump(rec.machine)
                try:
                    new = _dump(_validate(deep_merge(old, declared), mid))
                except InvalidMachine as exc:
                    report.invalid[mid] = exc.problems
                    continue
                fields = changed_fields(old, new)
                if fields:
                    self._save(conn, rec, new, "seed", who, fields, config_fields=paths)
                    report.updated.append(mid)
                else:
                    if paths != rec.config_fields:
                        conn.execute(
                            "UPDATE machines SET config_fields = ? WHERE id = ?",
                            (json.dumps(paths), mid),
                        )
                    report.unchanged.append(mid)
            known = set(ids)
            for (other,) in conn.execute(
                "SELECT id FROM machines WHERE retired_at IS NULL ORDER BY id"
            ):
                if other not in known:
                    report.not_in_config.append(other)
            return report

        return await self._db.write(run)

    # -- in the worker thread ----------------------------------------------------------------

    def _get(self, conn: sqlite3.Connection, machine_id: str) -> Record:
        row = conn.execute("SELECT * FROM machines WHERE id = ?", (machine_id,)).fetchone()
        if row is None:
            raise UnknownMachine(f"machine {machine_id}: not registered")
        return self._record(row)

    @staticmethod
    def _record(row: Sequence[Any]) -> Record:
        mid, version, doc, source, config_fields, created, updated, retired = row
        try:
            machine = Machine.model_validate_json(doc)
        except ValidationError as exc:  # written by an older version with other rules
            raise InvalidMachine(problems_of(exc), machine_id=mid) from None
        return Record(
            machine, version, source, created, updated, retired, tuple(json.loads(config_fields))
        )

    @staticmethod
    def _check(rec: Record, version: int) -> None:
        mid = rec.machine.id
        if rec.retired:
            raise MachineRetired(f"machine {mid}: retired, it can no longer be changed")
        if version != rec.version:
            raise VersionConflict(
                f"machine {mid}: version {version} is not the current one ({rec.version}); "
                f"it was changed meanwhile: read it again and re-apply the change",
                current=rec.version,
            )

    def _insert(
        self,
        conn: sqlite3.Connection,
        mid: str,
        doc: dict[str, Any],
        source: str,
        config_fields: tuple[str, ...],
        action: str,
        who: str,
    ) -> None:
        now = self._clock()
        conn.execute(
            "INSERT INTO machines (id, version, doc, source, config_fields, created_at,"
            " updated_at) VALUES (?, 1, ?, ?, ?, ?, ?)",
            (mid, json.dumps(doc, sort_keys=True), source, json.dumps(config_fields), now, now),
        )
        self._log(conn, mid, 1, action, who, sorted(_leaf_paths(doc)), now)

    def _save(
        self,
        conn: sqlite3.Connection,
        rec: Record,
        doc: dict[str, Any],
        action: str,
        who: str,
        fields: builtins.list[str],
        *,
        config_fields: tuple[str, ...] | None = None,
    ) -> None:
        now = self._clock()
        cf = rec.config_fields if config_fields is None else config_fields
        conn.execute(
            "UPDATE machines SET version = ?, doc = ?, updated_at = ?, config_fields = ?"
            " WHERE id = ?",
            (rec.version + 1, json.dumps(doc, sort_keys=True), now, json.dumps(cf), rec.machine.id),
        )
        self._log(conn, rec.machine.id, rec.version + 1, action, who, fields, now)

    @staticmethod
    def _log(
        conn: sqlite3.Connection,
        mid: str,
        version: int,
        action: str,
        who: str,
        fields: builtins.list[str],
        at: float,
    ) -> None:
        conn.execute(
            "INSERT INTO changes (machine_id, version, action, who, at, fields)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (mid, version, action, who, at, json.dumps(fields)),
        )


def _who(who: str) -> None:
    if not isinstance(who, str) or not who.strip():
        raise EquipmentError("who made the change must be named (got nothing)")
