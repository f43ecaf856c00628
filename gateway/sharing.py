"""The machines this gateway shares, live: registry + status + health + availability + bookings
+ metering, wired to the running gateway.

Every `status_interval` each registered machine's status is derived from its points
(`equipment.status`), its health from its models (`equipment.health`), and its availability
from policy ∩ status ∩ health − bookings (`equipment.availability`). When the availability's
fingerprint or the status changes, the machine gets its next sequence number (committed in the
ledger first) and three readings go on the bus like any telemetry:

* `<machine>.sharing_status`   the status (`working`, `idle`, ..., `offline`), text;
* `<machine>.sharing_available` `full` | `limited` | `none`, text;
* `<machine>.sharing_update`   the pool contract's `AvailabilityUpdate`, JSON text.

They are stored, so they reach the local history, the MQTT and Influx uplinks and, through
the store's outbox, the pool sync (`sync.pool`), which sends only `sharing_update`: offline,
the updates wait on disk and are sent in order when the pool is back.

Bookings come back from the pool (`sync.pool` writes them into the ledger) and block their
windows here at the next evaluation. A confirmed booking that ended is metered from the
stored history of the machine's meter points into the hash-chained metering log, which the
pool sync delivers exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.equipment._time import as_utc, iso
from gateway.equipment.availability import Availability, availability
from gateway.equipment.errors import EquipmentError, UnknownMachine
from gateway.equipment.health import HealthView, health_from_engine
from gateway.equipment.ledger import PoolLedger
from gateway.equipment.metering import MeteringLog, meter_usage, meters_of
from gateway.equipment.model import Machine, Status, from_config_equipment
from gateway.equipment.registry import EquipmentRegistry, Record, SeedReport
from gateway.equipment.status import (
    CompiledStatusRules,
    compile_status_rules,
    derive_status,
    machine_values,
)
from gateway.readings import Quality, Reading

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("millrace.sharing")

#: The points each machine publishes (name suffixes after `<machine>.`).
STATUS_POINT = "sharing_status"
AVAILABLE_POINT = "sharing_available"
UPDATE_POINT = "sharing_update"
SHARING_POINTS = (STATUS_POINT, AVAILABLE_POINT, UPDATE_POINT)
#: History looked at before a booking starts, for the counters' value at its start.
METER_LOOKBACK_S = 6 * 3600.0


@dataclass
class MachineLive:
    """What the gateway currently says about one machine."""

    record: Record
    rules: CompiledStatusRules
    #: Point ids (in the latest cache) whose values the machine's rules and health read.
    point_ids: tuple[str, ...] = ()
    status: Status = Status.OFFLINE
    status_reason: str = "not evaluated yet"
    health: HealthView = field(default_factory=HealthView)
    availability: Availability | None = None
    fingerprint: str | None = None
    #: The last `AvailabilityUpdate` published (None before the first).
    update: dict[str, Any] | None = None
    changed_at: float | None = None

    @property
    def machine(self) -> Machine:
        return self.record.machine

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.machine.id,
            "type": self.machine.type.value,
            "name": self.machine.name,
            "version": self.record.version,
            "retired": self.record.retired,
            "shared": self.machine.sharing.shared,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "health": {
                **self.health.to_dict(),
                "active_alarms": sorted(self.health.active_alarms),
            },
            "available": None if self.availability is None else self.availability.available.value,
            "availability": None if self.availability is None else self.availability.to_dict(),
            "seq": None if self.update is None else self.update["seq"],
            "changed_at": None if self.changed_at is None else iso(as_utc(self.changed_at)),
        }


class SharingService:
    def __init__(
        self,
        gw: Gateway,
        folder: Path,
        *,
        status_interval: float = 1.0,
        horizon_days: int = 7,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gw = gw
        self.folder = folder
        self._owner_key: bytes | None = None
        self.registry = EquipmentRegistry(folder / "equipment.db")
        self.ledger = PoolLedger(folder / "pool-ledger.db", clock=clock)
        self.metering = MeteringLog(folder / "metering.db", clock=clock)
        self.status_interval = status_interval
        self.horizon_days = horizon_days
        self.clock = clock
        self.live: dict[str, MachineLive] = {}
        self.seed_report: SeedReport | None = None
        self.evaluations = 0
        self.updates_published = 0
        self.metered = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the three files, seed the config's machines, load what is registered."""
        await self.registry.open()
        await self.ledger.open()
        await self.metering.open()
        machines = [from_config_equipment(e) for e in self.gw.config.equipment]
        self.seed_report = await self.registry.seed(machines)
        r = self.seed_report
        log.info(
            "equipment registry seeded",
            extra={
                "added": r.added,
                "updated": r.updated,
                "retired": r.retired,
                "not_in_config": r.not_in_config,
                "invalid": sorted(r.invalid),
            },
        )
        for mid, problems in r.invalid.items():
            log.error(
                "config machine left as registered", extra={"machine": mid, "problems": problems}
            )
        await self.reload()

    async def close(self) -> None:
        for f in (self.registry, self.ledger, self.metering):
            with contextlib.suppress(Exception):
                await f.close()

    async def reload(self, machine_id: str | None = None) -> None:
        """Re-read the registry (one machine, or all) after a change."""
        records = (
            await self.registry.list(include_retired=True)
            if machine_id is None
            else [await self.registry.get(machine_id)]
        )
        for rec in records:
            old = self.live.get(rec.machine.id)
            rules = self._rules(rec.machine)
            if old is not None:
                old.record, old.rules = rec, rules
                old.point_ids = self._point_ids(rec.machine)
                old.fingerprint = None  # a policy change is a change: publish
            else:
                self.gw.add_sharing_points([rec.machine.id])
                self.live[rec.machine.id] = MachineLive(rec, rules, self._point_ids(rec.machine))
        self.poke()
        if getattr(self.gw, "pool", None) is not None:
            self.gw.pool.poke()  # register or retire at the pool without waiting

    def _rules(self, machine: Machine) -> CompiledStatusRules:
        names = self._profile_names(machine)
        try:
            return compile_status_rules(machine, names)
        except EquipmentError as exc:
            # registered through CLI/API against another profile: keep it, rules read nothing
            log.error(
                "status rules do not fit the device",
                extra={"machine": machine.id, "error": str(exc)},
            )
            return compile_status_rules(machine, None)

    def _profile_names(self, machine: Machine) -> list[str] | None:
        dev = next((d for d in self.gw.config.devices if d.id == machine.device), None)
        profile = self.gw.loaded.profiles.get(getattr(dev, "profile", "")) if dev else None
        return [p.name for p in profile.points] if profile is not None else None

    def _point_ids(self, machine: Machine) -> tuple[str, ...]:
        heads = {machine.device, machine.id, *machine.health.models}
        return tuple(pid for pid in self.gw.points if pid.partition(".")[0] in heads)

    def owner_key(self) -> bytes:
        """The key of the public `owner_ref` hash (config `pool.owner_ref_key`, else a file)."""
        if self._owner_key is None:
            pool = self.gw.config.pool
            configured = pool.owner_ref_key if pool is not None else None
            key = configured.get_secret_value().encode() if configured is not None else None
            self._owner_key = owner_ref_key(self.folder, key)
        return self._owner_key

    def poke(self) -> None:
        """Evaluate now (a booking arrived, a machine changed)."""
        self._wake.set()

    def on_update(self, listener: Callable[[], None]) -> None:
        """`listener()` runs (on the loop) after updates were published."""
        self._listeners.append(listener)

    async def run(self) -> None:
        """The supervised loop: evaluate every interval (or when poked), meter ended bookings."""
        while True:
            try:
                await self.evaluate()
                await self.meter_ended()
                self.last_error = None
            except EquipmentError as exc:
                self.last_error = str(exc)
                log.error("sharing evaluation failed", extra={"error": str(exc)})
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.status_interval):
                    await self._wake.wait()

    # -- evaluation -------------------------------------------------------------------------

    @staticmethod
    def _device_online(machine: Machine, states: dict[str, str]) -> bool:
        own = states.get(machine.id)  # MQTT: the machine's own entry
        if own is not None:
            return own == "online"
        return states.get(machine.device) == "online"

    async def evaluate(self) -> int:
        """Derive every machine's status and availability; publish those that changed."""
        async with self._lock:
            now = self.clock()
            latest = self.gw.latest
            engine_status = self.gw.engine.status()
            states = {h.device: str(h.state) for h in self.gw.device_health()}
            out: list[Reading] = []
            changed: list[tuple[MachineLive, Status, str]] = []
            for ml in self.live.values():
                if ml.record.retired:
                    continue
                m = ml.machine
                values = machine_values(
                    m, {pid: r for pid in ml.point_ids if (r := latest.get(pid)) is not None}
                )
                status, reason = derive_status(
                    m, values, now, self._device_online(m, states), rules=ml.rules
                )
                health = health_from_engine(m, engine_status)
                avail = availability(
                    m,
                    (status, reason),
                    health,
                    self.ledger.blocked(m.id, now),
                    now,
                    self.horizon_days,
                )
                fp = avail.fingerprint()
                ml.health, ml.availability, ml.status_reason = health, avail, reason
                if fp != ml.fingerprint or status is not ml.status:
                    changed.append((ml, status, fp))
            # one ledger transaction for every machine that changed
            seqs = await self.ledger.next_seqs(ml.machine.id for ml, _, _ in changed)
            for ml, status, fp in changed:
                mid = ml.machine.id
                assert ml.availability is not None
                ml.status, ml.fingerprint, ml.changed_at = status, fp, now
                ml.update = self._update(mid, seqs[mid], now, ml.availability)
                out += self._readings(mid, ml, now)
            self.evaluations += 1
        if out:
            self.gw.bus.publish(out)
            self.updates_published += len(out) // len(SHARING_POINTS)
            for listener in self._listeners:
                listener()
        return len(out) // len(SHARING_POINTS)

    def _update(self, machine_id: str, seq: int, now: float, avail: Availability) -> dict[str, Any]:
        return {
            "machine_id": machine_id,
            "gateway_id": self.gw.config.gateway.id,
            "seq": seq,
            "idempotency_key": f"{machine_id}:{seq}",
            "ts": iso(as_utc(now)),
            **avail.to_dict(),
        }

    @staticmethod
    def _readings(machine_id: str, ml: MachineLive, now: float) -> list[Reading]:
        assert ml.update is not None and ml.availability is not None
        stamp = f"sharing:seq {ml.update['seq']}"
        return [
            Reading(
                f"{machine_id}.{STATUS_POINT}", ml.status.value, Quality.GOOD, now, None, stamp
            ),
            Reading(
                f"{machine_id}.{AVAILABLE_POINT}",
                ml.availability.available.value,
                Quality.GOOD,
                now,
                None,
                stamp,
            ),
            Reading(
                f"{machine_id}.{UPDATE_POINT}",
                json.dumps(ml.update, separators=(",", ":")),
                Quality.GOOD,
                now,
                None,
                stamp,
            ),
        ]

    def current_updates(self, machine_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The last published update of each (shared or once-shared) machine: a snapshot."""
        wanted = None if machine_ids is None else set(machine_ids)
        return [
            ml.update
            for mid, ml in sorted(self.live.items())
            if ml.update is not None and not ml.record.retired and (wanted is None or mid in wanted)
        ]

    def get(self, machine_id: str) -> MachineLive:
        ml = self.live.get(machine_id)
        if ml is None:
            raise UnknownMachine(f"no machine {machine_id!r}")
        return ml

    # -- metering ---------------------------------------------------------------------------

    async def meter_ended(self) -> int:
        """Meter every confirmed booking that ended and was not metered yet."""
        done = 0
        for b in self.ledger.due_for_metering(self.clock()):
            ml = self.live.get(b.machine_id)
            if ml is None:
                await self.ledger.mark_metered(b.booking_id)  # not ours (any more)
                continue
            m = ml.machine
            specs = meters_of(m)
            samples: list[tuple[str, Any, float]] = []
            for spec in specs:
                pid = self._meter_point(m, spec.point)
                rows = await self.gw.store.history(
                    pid, since=b.start - METER_LOOKBACK_S, until=b.end + 0.001, limit=100_000
                )
                samples += [(spec.point, r.value, r.ts_gateway) for r in rows]
            usage = meter_usage(specs, samples, b.start, b.end)
            quantities = {q: v for q, v in usage.quantities.items() if q not in usage.no_data}
            rec, new = await self.metering.append(
                booking_id=b.booking_id,
                machine_id=m.id,
                period=(b.start, b.end),
                quantities=quantities,
            )
            await self.ledger.mark_metered(b.booking_id)
            done += 1
            self.metered += int(new)
            log.info(
                "booking metered",
                extra={
                    "booking": b.booking_id,
                    "machine": m.id,
                    "record_id": rec["record_id"],
                    "quantities": quantities,
                    "no_data": list(usage.no_data),
                    "resets": usage.resets,
                },
            )
        return done

    def _meter_point(self, machine: Machine, name: str) -> str:
        full = f"{machine.point_prefix}{name}"
        for head in (machine.id, machine.device):
            if f"{head}.{full}" in self.gw.points:
                return f"{head}.{full}"
        return f"{machine.device}.{full}"

    # -- registry changes (CLI does its own; API calls these) -------------------------------

    async def add(self, machine: Machine, *, who: str) -> Record:
        rec = await self.registry.add(machine, who=who)
        await self.reload(machine.id)
        return rec

    async def update(
        self, machine_id: str, patch: dict[str, Any], *, version: int, who: str
    ) -> Record:
        rec = await self.registry.update(machine_id, patch, version=version, who=who)
        await self.reload(machine_id)
        return rec

    async def retire(self, machine_id: str, *, version: int, who: str) -> Record:
        rec = await self.registry.retire(machine_id, version=version, who=who)
        await self.reload(machine_id)
        return rec


def owner_ref_key(folder: Path, configured: bytes | None) -> bytes:
    """The key of the public `owner_ref` hash: the configured one, else a random one kept
    beside the store (mode 0600), so the hash is stable across restarts but not guessable."""
    if configured:
        return configured
    path = folder / "owner-ref.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except ValueError as exc:
        raise EquipmentError(f"{path}: not a hex key ({exc}); delete it to make a new one") from exc
    key = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    # created 0600 in one step: never readable by others, not even for a moment
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key.hex())
    return key
