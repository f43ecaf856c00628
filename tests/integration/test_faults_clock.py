"""Issue 10, scenario "clock jump": the gateway's wall clock steps forward by an hour, then
back by ten minutes, while a Modbus plant is polled and the MQTT uplink forwards to a real
Mosquitto, as when NTP corrects a box that booted without a real-time clock.

How the jump is made: the gateway reads wall time through `time.time()` (readings'
`ts_gateway`, the uplink runner, the API) and through the `clock` seam of the store and the
drivers (bound to `time.time` when they are built). The test replaces `time.time` with a
clock that adds an offset and hands the same clock to those seams, then moves the offset.
Monotonic time (the event loop's timers, the supervisor, poll schedules, backoff, the store's
linger and housekeeping) is not touched, exactly as on a real box: a wall-clock step does
not move CLOCK_MONOTONIC. The simulated PLC keeps its own, unjumped clock.

What must hold, per 1.2 s phase (`MILLRACE_CLOCK_PHASE_S`), before, after +1 h, after -10 min:

* timers keep their pace: polls per second and readings committed per second stay at the
  first phase's rate, the devices never go down;
* order is by id, not by time: ids keep increasing while `ts_gateway` jumps +3600 s and then
  -600 s within each point's series; the platform receives every reading once, in id order
  per point, with the batch chain unbroken (no batch lost or duplicated);
* nothing is trimmed or dropped because time moved (retention looks at age, and an hour is
  far below `history_retention`);
* the rates on `/uplinks` (sent/s, ingest/s) follow what really happens: they are measured
  against the monotonic clock, so a step neither zeroes them nor freezes them;
* healthy throughout, no task left.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

# Every module whose functions take `clock=time.time` as a default is imported here, before
# the test replaces time.time: a default is bound when its module is first imported, and a
# module first imported by a gateway built under the patch (runtime imports drivers lazily)
# would keep the jumped clock for every later test in this process.
import drivers.modbus.driver
import drivers.mqtt.driver
import drivers.opcua.driver
import gateway.equipment.ledger
import gateway.equipment.metering
import gateway.equipment.registry
import gateway.sharing
import gateway.store
import sync.pool
from gateway.runtime import Gateway
from simulators.modbus_plant import ModbusPlant
from tests.integration import mosquitto as _broker
from tests.integration.faultutil import (
    FAST_OUTBOX,
    leaked_tasks,
    mqtt_uplink,
    platform_accounting,
    quiesce,
    task_snapshot,
)
from tests.integration.gwutil import api_client, eventually, plant_config
from tests.integration.mosquitto import MosquittoFactory
from tests.integration.platform import PlatformSubscriber

#: The modules above, imported for their `clock=time.time` defaults (see the comment there).
BOUND_BEFORE_THE_PATCH = (
    drivers.modbus.driver,
    drivers.mqtt.driver,
    drivers.opcua.driver,
    gateway.equipment.ledger,
    gateway.equipment.metering,
    gateway.equipment.registry,
    gateway.sharing,
    gateway.store,
    sync.pool,
)

mosquitto_factory = _broker.mosquitto_factory

PHASE_S = float(os.environ.get("MILLRACE_CLOCK_PHASE_S", "1.2"))
FORWARD_S = 3600.0
BACKWARD_S = -600.0


class JumpClock:
    """Wall time plus an offset the test moves: a stepped system clock."""

    def __init__(self, real: Callable[[], float]) -> None:
        self._real = real
        self.offset = 0.0

    def __call__(self) -> float:
        return self._real() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


async def _phase(gw: Gateway, seconds: float) -> tuple[float, float]:
    """Readings committed per second and polls per second (both devices) over `seconds`,
    measured on the monotonic clock."""
    c0 = gw.store.stats().committed
    p0 = sum(h.polls_ok for h in gw.device_health())
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    dt = time.monotonic() - t0
    polls = sum(h.polls_ok for h in gw.device_health()) - p0
    return (gw.store.stats().committed - c0) / dt, polls / dt


async def test_clock_jumps_keep_storing_delivering_and_ordering_by_id(
    mosquitto_factory: MosquittoFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    central = mosquitto_factory()
    sub = PlatformSubscriber(central, client_id="platform-clock-jump")
    plant = ModbusPlant.tcp(port=0)  # its clock is bound to the real time.time already
    await plant.start()
    clock = JumpClock(time.time)
    monkeypatch.setattr(time, "time", clock)
    before = task_snapshot()
    states: set[str] = set()
    sent_log: list[tuple[float, int]] = []  # (monotonic, runner.sent)
    try:
        loaded = plant_config(
            tmp_path, int(plant.port), uplinks=[mqtt_uplink(central)], outbox=FAST_OUTBOX
        )
        gw = Gateway(loaded)
        gw.store._clock = clock  # the seams bound to time.time before the patch
        for drv in gw.drivers:
            drv._clock = clock  # type: ignore[attr-defined]
        async with gw, api_client(gw) as api:
            (runner,) = gw.uplinks
            stop = asyncio.Event()

            async def watch() -> None:
                """Device states, and the runner's sent counter from its first send on."""
                while not stop.is_set():
                    sent_log.append((time.monotonic(), runner.sent))
                    if runner.sent > 100:
                        states.update(h.state.value for h in gw.device_health())
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            try:
                await eventually(lambda: gw.online_share() == (2, 2), what="both online")
                await eventually(lambda: runner.sent > 100, what="first deliveries")
                rates = [await _phase(gw, PHASE_S)]
                clock.jump(FORWARD_S)
                rates.append(await _phase(gw, PHASE_S))
                # sent/s over the last 10 s, as the runner should report it, from our log
                now = time.monotonic()
                old = next(n for t, n in sent_log if t >= now - 10.0)
                expected_sent_rate = (runner.sent - old) / 10.0
                shown_sent_rate = runner.status()["sent_per_s"]
                health_fwd = (await api.get("/health")).json()
                clock.jump(BACKWARD_S)
                rates.append(await _phase(gw, PHASE_S))
                health_back = (await api.get("/health")).json()
            finally:
                stop.set()
                await watcher
            await quiesce(gw)
            stopped = time.monotonic()
            rows = await gw.store.time_range(-1e12, 1e13, limit=10_000_000)
            stats = gw.store.stats()
            published = gw.bus.readings

            async def ingest_zero() -> dict[str, float] | None:
                """ingest/s once intake has stopped: 0 after a sample interval (1 s) or
                two; a rate sampled on the wall clock stayed frozen after the -10 min step."""
                (u,) = (await api.get("/uplinks")).json()
                return u if u["ingest_per_s"] == 0.0 else None

            try:
                quiet = await eventually(ingest_zero, timeout=6, interval=0.1, what="ingest 0")
            except AssertionError:
                (quiet,) = (await api.get("/uplinks")).json()
            quiet_after = time.monotonic() - stopped
            commit_max = gw.store.commit_latency.quantiles(1.0)[0]
            restarts = {s.name: s.restarts for s in gw.supervisor.status()}
        delivery = await platform_accounting(sub.batches, {r.id for r in rows})
    finally:
        sub.close()
        await plant.stop()
    leaked = await leaked_tasks(before)

    # ts_gateway steps, per point in id order
    series: dict[str, list[float]] = defaultdict(list)
    for r in rows:  # ascending id
        series[r.point].append(r.ts_gateway)
    forward = sum(1 for ts in series.values() for a, b in itertools.pairwise(ts) if b - a > 3000)
    backward = sum(1 for ts in series.values() for a, b in itertools.pairwise(ts) if b - a < -500)
    ids = [r.id for r in rows]
    dropped = sum(stats.dropped.values())
    print(
        f"\nclock jump {FORWARD_S:+.0f}s then {BACKWARD_S:+.0f}s: commits/s "
        f"{' / '.join(f'{c:.0f}' for c, _ in rates)}, polls/s "
        f"{' / '.join(f'{p:.1f}' for _, p in rates)} (before / after +1h / after -10min); "
        f"device states seen {sorted(states)}; points stepping forward {forward}, back "
        f"{backward}; published {published}, committed {stats.committed}, dropped {dropped}, "
        f"trimmed {stats.trimmed}; {delivery.line()}; /uplinks sent/s after +1h "
        f"{shown_sent_rate} (expected {expected_sent_rate:.1f}), ingest/s "
        f"{quiet['ingest_per_s']} {quiet_after:.1f}s after intake stopped; uptime_s shown "
        f"after +1h {health_fwd['uptime_s']}; "
        f"commit latency max {commit_max:.1f}s; leaked tasks {len(leaked)}"
    )
    # timers kept their pace through both steps; the devices never went down
    base_commits, base_polls = rates[0]
    for commits, polls in rates[1:]:
        assert 0.6 * base_commits < commits < 1.6 * base_commits, rates
        assert 0.6 * base_polls < polls < 1.6 * base_polls, rates
    assert states == {"online"}, states
    # ids keep increasing while time steps forward and back in every series
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == stats.last_id
    assert forward >= 30 and backward >= 30, (forward, backward)  # 37 points polled
    # sent = stored = delivered + counted drops (none); no batch lost or duplicated
    assert published == stats.committed + dropped and dropped == 0 and stats.trimmed == 0
    assert delivery.delivered == delivery.stored == len(rows) and delivery.extra == 0
    assert delivery.duplicates == 0 and delivery.resent_seqs == 0
    # /uplinks rates follow the monotonic clock, not the stepped wall clock
    assert abs(shown_sent_rate - expected_sent_rate) <= max(0.15 * expected_sent_rate, 5.0), (
        shown_sent_rate,
        expected_sent_rate,
    )
    assert quiet["ingest_per_s"] == 0.0, quiet["ingest_per_s"]
    # healthy by itself throughout
    assert health_fwd["status"] == "ok" and health_back["status"] == "ok"
    # uptime runs on the monotonic clock: the +1 h jump does not make the box look an hour old
    assert 0 < health_fwd["uptime_s"] < 600, health_fwd["uptime_s"]
    assert all(n == 0 for n in restarts.values()), restarts
    assert not leaked, leaked
