"""Availability sync with the central matching pool: the gateway owns status and health, the
pool owns bookings.

Two parts, both supervised:

* `PoolSender`, an outbox uplink (`sync.runner` with `point_suffix=".sharing_update"`):
  every availability change `gateway.sharing` stored is sent in order with its per-machine
  `seq` and `idempotency_key`. The runner moves its cursor only after the pool answered, so
  offline the changes wait on disk and go out when the pool is back; the pool ignores what
  it already has (`duplicate`) or what is older than what it has (`stale`). Within one batch
  only the newest update of each machine is sent.
* `PoolSync`, a loop every `sync_interval`: registers machines whose profile changed
  (`PUT /v1/machines/{id}`, desensitized by `equipment.disclose`), retires those retired
  here, reads bookings back into the ledger (which blocks their windows at the next
  evaluation), delivers metered usage exactly once, and sends a full snapshot every
  `snapshot_interval` and at once after the pool was unreachable, so the pool converges
  within one sync interval of reconnecting whatever was lost in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.equipment._time import as_utc, iso
from gateway.equipment.disclose import disclosure_problems, pool_profile
from gateway.equipment.ledger import booking_from_feed
from gateway.errors import SinkError, SinkRetry, SinkThrottle
from sync.base import OutboxBatch
from sync.config import PoolSyncConfig
from sync.pool_client import PoolClient, PoolRefused, PoolRejected
from sync.pool_mqtt import PoolMqttClient

if TYPE_CHECKING:
    from gateway.sharing import SharingService
    from sync.base import UplinkContext

log = logging.getLogger("millrace.pool")

UPDATE_SUFFIX = ".sharing_update"
USAGE_CONSUMER = "pool"
#: Audit hook: (action, target, detail) -> None.
AuditHook = Callable[[str, str, dict[str, Any]], Any]


def collapse(updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest update of each machine, in the order of their newest (pure)."""
    newest: dict[str, dict[str, Any]] = {}
    for u in updates:
        old = newest.get(u["machine_id"])
        if old is None or u["seq"] > old["seq"]:
            newest.pop(u["machine_id"], None)
            newest[u["machine_id"]] = u
    return list(newest.values())


class PoolSender:
    """The outbox sender of availability updates (see the module docstring)."""

    name = "pool"

    def __init__(self, sync: PoolSync, ctx: UplinkContext | None = None) -> None:
        self.sync = sync
        self.ctx = ctx
        self.items_sent = 0
        self.applied = 0
        self.duplicate = 0
        self.stale = 0
        self.unknown = 0
        self.rejected = 0

    async def connect(self) -> None:
        """httpx connects per request; nothing to prepare."""

    async def send(self, batch: OutboxBatch) -> None:
        updates = []
        for r in batch.readings:
            try:
                updates.append(json.loads(str(r.value)))
            except ValueError as exc:
                self._quarantine(r, f"not an availability update: {exc}")
        items = collapse(updates)
        if not items:
            return
        try:
            results = await self.sync.client.post_availability(items)
            unknown = [r["machine_id"] for r in results if r["result"] == "unknown_machine"]
            if unknown:
                # registered here but not (or no longer) at the pool: register, send again
                await self.sync.register(set(unknown), force=True)
                again = [u for u in items if u["machine_id"] in set(unknown)]
                retry = await self.sync.client.post_availability(again)
                results = [r for r in results if r["result"] != "unknown_machine"] + retry
        except PoolRefused as exc:
            self.sync.note_error(str(exc))
            raise SinkRetry(str(exc)) from None
        except PoolRejected as exc:
            # our own output does not fit the contract: a bug; do not block the queue on it
            self.rejected += len(items)
            log.error("pool refused availability updates", extra={"error": str(exc)})
            for r in batch.readings:
                self._quarantine(r, str(exc))
            return
        self.items_sent += len(items)
        for res in results:
            kind = res["result"]
            if kind == "unknown_machine":
                self.unknown += 1
                log.warning(
                    "pool does not know the machine; the next snapshot carries it",
                    extra={"machine": res["machine_id"]},
                )
            else:
                setattr(self, kind, getattr(self, kind) + 1)
        self.sync.note_ok()
        await self.sync.audit("pool.availability", "pool", {"items": len(items)})

    def _quarantine(self, reading: Any, reason: str) -> None:
        if self.ctx is not None:
            self.ctx.quarantine(self.name, reason, reading)

    async def close(self) -> None:
        """The client belongs to PoolSync, which closes it."""

    def stats(self) -> dict[str, float]:
        return {
            "items_sent": self.items_sent,
            "applied": self.applied,
            "duplicate": self.duplicate,
            "stale": self.stale,
            "unknown_machine": self.unknown,
            "rejected": self.rejected,
            **self.sync.client.stats(),
        }


class PoolSync:
    def __init__(
        self,
        config: PoolSyncConfig,
        sharing: SharingService,
        *,
        gateway_id: str,
        site: str,
        owner_ref_key: bytes,
        base_dir: str = ".",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.sharing = sharing
        self.gateway_id = gateway_id
        self.site = site
        self.client: PoolClient | PoolMqttClient
        if config.transport == "mqtt":  # same methods and errors (sync/pool_mqtt.py)
            self.client = PoolMqttClient(
                config, gateway_id=gateway_id, base_dir=base_dir, on_booking=self.poke
            )
        else:
            self.client = PoolClient(config, base_dir=base_dir)
        self.sender = PoolSender(self)
        self._key = owner_ref_key
        self._clock = clock
        self._token_attrs = {
            "org": config.token_org,
            "site": config.token_site,
            "role": "gateway",
        }
        self._wake = asyncio.Event()
        self._unreachable = True  # a first snapshot at start
        self._last_snapshot: float | None = None
        self.state = "starting"
        self.last_error: str | None = None
        self.last_ok: float | None = None
        self.snapshots = 0
        self.bookings_seen = 0
        self.profiles_sent = 0
        self.usage_delivered = 0
        self.usage_failed = 0
        self.audit_hook: AuditHook | None = None
        self._problems_logged: dict[str, int] = {}

    # -- state ------------------------------------------------------------------------------

    def note_ok(self) -> None:
        self.last_ok = self._clock()

    def note_error(self, text: str) -> None:
        self.last_error = text

    async def audit(self, action: str, target: str, detail: dict[str, Any]) -> None:
        if self.audit_hook is None:
            return
        try:
            result = self.audit_hook(action, target, detail)
            if asyncio.iscoroutine(result):
                await result
        except Exception as exc:  # the audit trail must not stop the sync
            log.error("audit append failed", extra={"action": action, "error": str(exc)})

    def poke(self) -> None:
        self._wake.set()

    def details(self) -> dict[str, Any]:
        return {
            "url": self.config.url,
            "transport": self.config.transport,
            "state": self.state,
            "last_error": self.last_error,
            "last_ok": self.last_ok,
            "last_snapshot": self._last_snapshot,
            "snapshots": self.snapshots,
            "profiles_sent": self.profiles_sent,
            "bookings_seen": self.bookings_seen,
            "usage_delivered": self.usage_delivered,
            "usage_failed": self.usage_failed,
            "sender": self.sender.stats(),
        }

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Supervised: one cycle every sync_interval (sooner when poked)."""
        try:
            while True:
                await self.cycle()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.sync_interval):
                        await self._wake.wait()
        finally:
            self.state = "stopped"

    async def cycle(self) -> bool:
        """Register, read bookings, deliver usage, snapshot when due. True when all went."""
        try:
            await self.register(set())
            await self.pull_bookings()
            await self.deliver_usage()
            now = self._clock()
            # A wall clock set back (NTP after a cold boot) must not postpone the snapshot by
            # the size of the jump: a snapshot is due then too.
            due = (
                self._last_snapshot is None
                or now - self._last_snapshot >= self.config.snapshot_interval
                or now < self._last_snapshot
            )
            if self._unreachable or due:
                await self.snapshot()
        except (SinkRetry, SinkThrottle) as exc:
            if not self._unreachable:
                log.warning("pool unreachable", extra={"error": str(exc)})
            self._unreachable = True
            self.state = "unreachable"
            self.last_error = str(exc)
            return False
        except (PoolRefused, PoolRejected) as exc:
            self.state = "refused"
            self.last_error = str(exc)
            log.error("pool refused the gateway", extra={"error": str(exc)})
            return False
        if self._unreachable and self.last_ok is not None:
            log.info("pool reachable again; snapshot sent", extra={"url": self.config.url})
        self._unreachable = False
        self.state = "synced"
        self.last_error = None
        self.note_ok()
        return True

    # -- registration -----------------------------------------------------------------------

    async def register(self, machine_ids: set[str], *, force: bool = False) -> int:
        """Send the profile of every machine whose registry version the pool has not got
        (or of `machine_ids` with `force`), retire at the pool what was retired here."""
        sent = 0
        for mid, ml in sorted(self.sharing.live.items()):
            rec = ml.record
            pushed = self.sharing.ledger.get(f"profile:{mid}")
            if rec.retired:
                if pushed > 0:
                    with contextlib.suppress(PoolRejected):  # 404: never got there
                        await self.client.retire_machine(mid)
                    await self.sharing.ledger.put(f"profile:{mid}", -rec.version)
                    await self.audit("pool.retire", mid, {"version": rec.version})
                continue
            if not ml.machine.sharing.shared and pushed == 0:
                continue  # never shared: the pool need not know it
            if pushed == rec.version and not (force and mid in machine_ids):
                continue
            problems = disclosure_problems(ml.machine)
            if problems:
                if self._problems_logged.get(mid) != rec.version:
                    self._problems_logged[mid] = rec.version
                    log.error(
                        "machine cannot be registered at the pool",
                        extra={"machine": mid, "problems": problems},
                    )
                continue
            profile = pool_profile(
                ml.machine,
                gateway_id=self.gateway_id,
                version=rec.version,
                secret=self._key,
                token_attrs=self._token_attrs,
                site=self.site,
            )
            try:
                await self.client.put_machine(mid, profile)
            except PoolRejected as exc:
                if exc.status == 409:  # the pool has a newer version (another gateway's?)
                    log.error(
                        "pool holds a newer profile", extra={"machine": mid, "error": str(exc)}
                    )
                    await self.sharing.ledger.put(f"profile:{mid}", rec.version)
                    continue
                raise
            await self.sharing.ledger.put(f"profile:{mid}", rec.version)
            await self.audit(
                "pool.register",
                mid,
                {"version": rec.version, "restricted": "restricted" in profile},
            )
            self.profiles_sent += 1
            sent += 1
        return sent

    # -- bookings ---------------------------------------------------------------------------

    async def pull_bookings(self) -> int:
        """Read the booking feed from where we left off; apply it to the ledger."""
        changed = 0
        while True:
            since = self.sharing.ledger.get("booking_feed")
            feed = await self.client.bookings(self.gateway_id, since)
            items = []
            for raw in feed.get("bookings", []):
                try:
                    items.append(booking_from_feed(raw))
                except ValueError as exc:
                    log.error("pool sent a booking we cannot read", extra={"error": str(exc)})
            n = await self.sharing.ledger.apply_feed(items, int(feed["next_since_version"]))
            self.bookings_seen += len(items)
            changed += n
            for b in items:
                log.info(
                    "booking from the pool",
                    extra={
                        "booking": b.booking_id,
                        "machine": b.machine_id,
                        "status": b.status,
                        "start": iso(as_utc(b.start)),
                        "end": iso(as_utc(b.end)),
                    },
                )
            if not feed.get("has_more"):
                break
        if changed:
            await self.audit("pool.bookings", "pool", {"changed": changed})
            self.sharing.poke()
        return changed

    # -- usage ------------------------------------------------------------------------------

    async def deliver_usage(self) -> int:
        """Send metered usage records not yet acknowledged; ack those the pool recorded."""
        delivered = 0
        while True:
            pending = await self.sharing.metering.pending(USAGE_CONSUMER, limit=100)
            if not pending:
                return delivered
            results = await self.client.post_usage([p.record for p in pending])
            by_id = {r["record_id"]: r for r in results}
            for p in pending:
                res = by_id.get(p.record["record_id"], {})
                if res.get("result") in ("applied", "duplicate"):
                    self.usage_delivered += 1
                else:
                    # unknown_booking / invalid cannot succeed later: say so, move on
                    self.usage_failed += 1
                    log.error(
                        "pool refused a usage record",
                        extra={"record_id": p.record["record_id"], "result": res},
                    )
            await self.sharing.metering.ack(USAGE_CONSUMER, pending[-1].seq)
            await self.audit("pool.usage", "pool", {"records": len(pending)})
            delivered += len(pending)

    # -- snapshot ---------------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        """The current availability of every machine the pool knows from us."""
        registered = {
            mid for mid in self.sharing.live if self.sharing.ledger.get(f"profile:{mid}") > 0
        }
        items = self.sharing.current_updates(registered)
        now = self._clock()
        prev = self.sharing.ledger.get("snapshot_seq")
        seq = max(prev + 1, int(now * 1000))
        await self.sharing.ledger.put("snapshot_seq", seq)
        out = await self.client.put_snapshot(self.gateway_id, seq, iso(as_utc(now)), items)
        self._last_snapshot = now
        self.snapshots += 1
        await self.audit(
            "pool.snapshot",
            "pool",
            {"seq": seq, "items": len(items), "marked_offline": out.get("marked_offline", [])},
        )
        return out

    async def close(self) -> None:
        with contextlib.suppress(SinkError, Exception):
            await self.client.close()
