"""Moves readings from the store's outbox to one uplink, and nothing leaves before it is confirmed.

One runner per uplink, each with its own cursor in the store, so a slow or dead uplink never
holds back another (they read the same rows independently). The loop:

1. `connect()` the sender; on `SinkRetry`, back off (capped exponential with jitter) and try
   again — the outbox keeps filling on disk meanwhile;
2. read up to `batch_max` readings after the cursor (ascending id = per-point order);
3. hand them to `send()` as an `OutboxBatch` with the next sequence number;
4. on return, `ack(cursor=last id, seq)`: cursor and seq are committed in one transaction.
   On `SinkRetry` the same rows go again with the same seq after a reconnect; on
   `SinkThrottle` after the far side's `retry_after`.

Private data never leaves: readings of points whose data class is `private` advance the
cursor but are not handed to the sender (counted as `withheld`).

The numbers a technician plans with (pending readings, oldest pending age, sent/s, hours of
autonomy at the current rate) are computed on demand by `status()` for `/uplinks` and
`/metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import SinkRetry, SinkThrottle
from gateway.store import Store, StoredReading
from gateway.types import DataClass
from sync.base import OutboxBatch, Sender, UplinkContext

log = logging.getLogger("millrace.uplink")


@dataclass(frozen=True)
class RunnerSettings:
    batch_max: int = 2000
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    #: How long an idle runner waits before looking for new readings again.
    idle_wait: float = 0.1
    #: Only readings of points whose name ends with this go to the sender (the pool sync
    #: takes `.availability`); the cursor still passes over the others.
    point_suffix: str | None = None


@dataclass
class _Rate:
    """Readings per second over the last `window` seconds of `time.monotonic()`: a step of
    the wall clock (NTP at boot) must neither empty the window nor keep it full for as long
    as the step was."""

    window: float = 10.0
    events: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, n: int, now: float) -> None:
        self.events.append((now, n))
        self._trim(now)

    def per_s(self, now: float) -> float:
        self._trim(now)
        return sum(n for _, n in self.events) / self.window

    def _trim(self, now: float) -> None:
        while self.events and self.events[0][0] < now - self.window:
            self.events.popleft()


class UplinkRunner:
    def __init__(
        self,
        sender: Sender,
        store: Store,
        context: UplinkContext,
        settings: RunnerSettings | None = None,
    ) -> None:
        self.name = sender.name
        self.sender = sender
        self.store = store
        self.ctx = context
        self.settings = settings or RunnerSettings()
        self.state = "starting"
        self.sent = 0
        self.batches = 0
        self.withheld = 0
        self.retries = 0
        self.throttled = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_sent: float | None = None
        self.connected = False
        self._rate = _Rate()
        self._wake = asyncio.Event()
        self._ingest: tuple[float, int] | None = None
        self._ingest_rate = 0.0
        #: Replays asked for: [since, until, last id sent]; served between outbox batches.
        self._replays: deque[list[float]] = deque()
        self._private_points: dict[str, bool] = {}
        self._delay = self.settings.backoff_initial
        self.replayed = 0

    def consumer(self) -> str:
        return f"uplink:{self.name}"

    def register(self) -> None:
        """Give the uplink its cursor (before the first reading is read; idempotent)."""
        self.store.register_consumer(self.consumer())

    def poke(self) -> None:
        """New readings were committed (or a replay was asked for): look now."""
        self._wake.set()

    async def run(self) -> None:
        """The supervised loop. Returns only by cancellation."""
        self.register()
        consumer = self.consumer()
        self._delay = self.settings.backoff_initial
        try:
            while True:
                self._sample_ingest(time.monotonic())
                if not self.connected:
                    self.state = "connecting"
                    try:
                        await self.sender.connect()
                    except SinkRetry as exc:
                        await self._retry_wait(str(exc))
                        continue
                    self.connected = True
                    self.state = "connected"
                    self._delay = self.settings.backoff_initial
                    log.info("uplink connected", extra={"uplink": self.name})
                if self._replays:
                    page = await self._replay_page()
                    if page is not None:
                        await self._attempt(page)
                        continue
                rows, upto = await self._next_rows(consumer)
                if not rows:
                    if upto > self.store.cursor(consumer):
                        await self.store.ack(consumer, upto)
                    else:
                        await self._idle()
                    continue
                self.state = "sending"
                seq = self.store.consumer_seq(consumer) + 1
                shown = [r for r in rows if not self._private(r)]
                batch = OutboxBatch(self.name, seq, self.store.cursor(consumer), upto, shown)
                if shown and not await self._attempt(batch):
                    continue  # the same rows go again, with the same seq
                await self.store.ack(consumer, batch.last_id, seq)
                self.sent += len(shown)
                self.withheld += len(rows) - len(shown)
                self.batches += 1
                self.last_sent = time.time()  # shown as a date: wall time
                self.last_error = None
                self._rate.add(len(shown), time.monotonic())
        finally:
            self.state = "stopped"
            self.connected = False

    async def _next_rows(self, consumer: str) -> tuple[list[StoredReading], int]:
        """The next rows for the sender and the id the cursor may move to once they are sent."""
        limit = self.settings.batch_max
        if self.settings.point_suffix:
            return await self.store.pending_matching(consumer, limit, self.settings.point_suffix)
        rows = await self.store.pending(consumer, limit)
        return rows, rows[-1].id if rows else self.store.cursor(consumer)

    async def _attempt(self, batch: OutboxBatch) -> bool:
        """Send one batch (regular or replay page). On SinkThrottle wait what the far side
        asked; on SinkRetry drop the connection and back off. True when it was confirmed."""
        try:
            await self.sender.send(batch)
        except SinkThrottle as exc:
            self.throttled += 1
            self.last_error = str(exc)
            self.state = "throttled"
            log.warning(
                "uplink throttled by the far side",
                extra={"uplink": self.name, "retry_after": exc.retry_after},
            )
            await asyncio.sleep(max(0.0, exc.retry_after))
            return False
        except SinkRetry as exc:
            self.connected = False
            self.retries += 1
            await self._retry_wait(str(exc))
            return False
        if batch.replay:
            self._replays[0][2] = float(batch.last_id)
            self.replayed += len(batch.readings)
        return True

    async def _idle(self) -> None:
        self.state = "idle"
        self._wake.clear()
        try:
            async with asyncio.timeout(self.settings.idle_wait):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def close(self) -> None:
        await self.sender.close()

    def replay(self, since: float, until: float) -> int:
        """Queue a re-send of every stored reading with since <= ts_gateway < until (the far
        side found a gap). Returns the number of replays now queued (bounded at 16)."""
        if len(self._replays) >= 16:
            raise ValueError("16 replays are already queued for this uplink")
        self._replays.append([since, until, 0.0])
        self.poke()
        return len(self._replays)

    async def _replay_page(self) -> OutboxBatch | None:
        """The next page of the oldest queued replay, or None when that replay is done.
        A page whose readings are all private only moves the replay on."""
        while self._replays:
            since, until, after = self._replays[0]
            rows = await self.store.time_range(
                since, until, after_id=int(after), limit=self.settings.batch_max
            )
            if not rows:
                self._replays.popleft()
                log.info("uplink replay finished", extra={"uplink": self.name, "since": since})
                return None
            shown = [r for r in rows if not self._private(r)]
            if shown:
                return OutboxBatch(self.name, 0, rows[0].id - 1, rows[-1].id, shown, replay=True)
            self._replays[0][2] = float(rows[-1].id)
        return None

    async def _retry_wait(self, reason: str) -> None:
        """Capped exponential backoff with jitter; logged once per distinct reason."""
        self.errors += 1
        first = self.last_error != reason
        self.last_error = reason
        self.state = "backing_off"
        wait = self._delay * random.uniform(0.8, 1.2)
        (log.warning if first else log.debug)(
            "uplink unavailable, retrying",
            extra={"uplink": self.name, "error": reason, "retry_in_s": round(wait, 2)},
        )
        await asyncio.sleep(wait)
        self._delay = min(self._delay * 2, self.settings.backoff_max)

    def _sample_ingest(self, now: float) -> None:
        """Readings committed per second, over the last 1-5 s (sampled from the run loop, so
        the rate is known even while the far side is down and nothing is sent). `now` is
        `time.monotonic()`: with wall time a backward step froze the rate for its length."""
        if self._ingest is not None and now - self._ingest[0] < 1.0:
            return
        committed = self.store.stats().committed
        if self._ingest is not None:
            self._ingest_rate = (committed - self._ingest[1]) / (now - self._ingest[0])
        self._ingest = (now, committed)

    def _private(self, r: StoredReading) -> bool:
        """Per point, once: a drain runs this for every reading of every batch."""
        known = self._private_points.get(r.point)
        if known is None:
            meta = self.ctx.point_meta(r.point)
            known = meta is not None and meta.data_class is DataClass.PRIVATE
            if len(self._private_points) < 100_000:
                self._private_points[r.point] = known
        return known

    def status(self) -> dict[str, Any]:
        """What `/uplinks` shows, computed now from the store's counters."""
        st = self.store.stats()
        consumer = self.consumer()
        cursor = st.consumers.get(consumer, st.last_id)
        rate = self._rate.per_s(time.monotonic())
        return {
            "name": self.name,
            "state": self.state,
            "connected": self.connected,
            "cursor": cursor,
            "seq": self.store.consumer_seq(consumer),
            "pending": max(0, st.last_id - cursor),
            "sent": self.sent,
            "sent_per_s": round(rate, 2),
            "batches": self.batches,
            "withheld_private": self.withheld,
            "retries": self.retries,
            "throttled": self.throttled,
            "errors": self.errors,
            "last_error": self.last_error,
            "last_sent": self.last_sent,
            "dropped_unsent": st.dropped.get("oldest_unsent", 0),
            "compacted": st.compacted,
            "replayed": self.replayed,
            "replays_queued": len(self._replays),
            "transport": self.sender.stats(),
            "transport_error": getattr(self.sender, "last_error", None),
        }

    async def details(self) -> dict[str, Any]:
        """`status()` plus what needs a read: the oldest pending reading's age, and how many
        hours the disk can keep buffering at the current ingest rate (the autonomy left if
        this uplink stayed down from now)."""
        out = self.status()
        oldest = await self.store.pending(self.consumer(), 1)
        # An age against the readings' own (wall-clock) stamps; rates on the monotonic clock.
        now = time.time()
        out["oldest_pending_age_s"] = round(now - oldest[0].ts_gateway, 3) if oldest else 0.0
        st = self.store.stats()
        self._sample_ingest(time.monotonic())
        out["ingest_per_s"] = round(self._ingest_rate, 2)
        per_row = st.bytes_used / st.rows if st.rows else 0.0
        free = max(0, st.max_bytes - st.bytes_used)
        if self._ingest_rate > 0 and per_row > 0:
            out["autonomy_hours"] = round(free / (per_row * self._ingest_rate) / 3600, 2)
        else:
            out["autonomy_hours"] = None
        out["bytes_per_reading"] = round(per_row, 1)
        return out


def build_runner(config: Any, store: Store, context: UplinkContext, outbox: Any) -> UplinkRunner:
    """The runner for one uplink config; the transport module is imported only when used."""
    settings = RunnerSettings(
        batch_max=outbox.batch_max,
        backoff_initial=outbox.backoff_initial,
        backoff_max=outbox.backoff_max,
    )
    sender: Sender
    if config.type == "mqtt":
        from sync.mqtt import MqttSender

        sender = MqttSender(config, context)
    elif config.type == "influx":
        from sync.influx import InfluxSender

        sender = InfluxSender(config, context)
    else:  # pragma: no cover - the config union admits nothing else
        raise ValueError(f"unknown uplink type {config.type}")
    return UplinkRunner(sender, store, context, settings)
