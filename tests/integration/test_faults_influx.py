"""Issue 10, scenario "InfluxDB-side server slow (5 s responses)": the gateway's InfluxDB
uplink writes to a real VictoriaMetrics (the InfluxDB v2 write API) through the fault proxy
(tests/tools/faultproxy.py), which for 6 s (`MILLRACE_SLOW_S`) delays every chunk by 2.5 s
each way, so each answer comes 5 s after its request, while a Modbus plant keeps producing.

The uplink's `timeout` is 3 s, shorter than the answers, so every write and every `/ping`
times out and is retried, as it would be against a struggling server. A timed-out write is
not lost on the far side: it arrives 2.5 s after it was sent and VictoriaMetrics stores it,
then the runner sends the same batch again. Those are the only duplicates allowed (at most
one batch per failed send, counted by the runner's `retries`); VictoriaMetrics keeps
duplicates, so they are visible and counted here, by reading id.

While the far side is slow, the rest of the gateway must not notice: the uplink waits in a
worker thread, never on the event loop. Measured: how late the loop wakes a 20 ms sleeper
(worst case), how fast readings are committed against before, and how long `/health`
takes to answer. After the slowness ends the uplink catches up by itself.

Accounting: published = committed (no drops), stored ids = ids at VictoriaMetrics (distinct),
duplicates <= retries x batch size, no task left.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

from gateway.runtime import Gateway
from simulators.modbus_plant import ModbusPlant
from tests.integration import victoria as _victoria
from tests.integration.faultutil import LoopLag, leaked_tasks, quiesce, task_snapshot
from tests.integration.gwutil import api_client, eventually, plant_config
from tests.integration.victoria import VictoriaFactory, VictoriaMetrics
from tests.tools.faultproxy import FaultProxy

victoria_factory = _victoria.victoria_factory

SLOW_S = float(os.environ.get("MILLRACE_SLOW_S", "6"))
ANSWER_S = 5.0  # the far side answers this long after a request (half of it each way)
TIMEOUT_S = 3.0
BATCH_MAX = 500


def _ids_at(vm: VictoriaMetrics) -> Counter[int]:
    """Reading id -> how many times VictoriaMetrics holds it (every point's `id` field)."""
    return Counter(int(v) for s in vm.export('{__name__="millrace_id"}') for v in s.values)


async def _rate_and_api(gw: Gateway, api: object, seconds: float) -> tuple[float, float]:
    """Readings committed per second over `seconds`, and the slowest /health answer meanwhile
    (asked every 0.25 s)."""
    c0, t0 = gw.store.stats().committed, time.monotonic()
    slowest = 0.0
    while time.monotonic() - t0 < seconds:
        asked = time.monotonic()
        r = await api.get("/health")  # type: ignore[attr-defined]
        assert r.status_code == 200
        slowest = max(slowest, time.monotonic() - asked)
        await asyncio.sleep(0.25)
    return (gw.store.stats().committed - c0) / (time.monotonic() - t0), slowest


async def test_slow_influx_times_out_retries_and_catches_up_without_stalling(
    victoria_factory: VictoriaFactory, tmp_path: Path
) -> None:
    vm = victoria_factory()
    plant = ModbusPlant.tcp(port=0)
    await plant.start()
    before = task_snapshot()
    try:
        async with FaultProxy("127.0.0.1", vm.port) as proxy:
            loaded = plant_config(
                tmp_path,
                int(plant.port),
                uplinks=[
                    {
                        "type": "influx",
                        "name": "history",
                        "url": f"http://127.0.0.1:{proxy.port}",
                        "org": "plant",
                        "bucket": "telemetry",
                        "timeout": TIMEOUT_S,
                    }
                ],
                outbox={"batch_max": BATCH_MAX, "backoff_initial": 0.2, "backoff_max": 1},
            )
            async with Gateway(loaded) as gw, api_client(gw) as api, LoopLag() as lag:
                (runner,) = gw.uplinks
                await eventually(lambda: runner.sent > 200, what="first writes confirmed")
                lag.reset()
                rate_before, api_before = await _rate_and_api(gw, api, 1.0)
                lag_before = lag.reset()

                proxy.latency(ANSWER_S / 2)
                slow_from = time.monotonic()
                sent_at_slow = runner.sent
                rate_slow, api_slow = await _rate_and_api(gw, api, SLOW_S)
                lag_slow = lag.reset()
                (slow,) = (await api.get("/uplinks")).json()
                proxy.heal()
                healed = time.monotonic()
                await eventually(
                    lambda: runner.status()["pending"] < BATCH_MAX,
                    timeout=30,
                    what="the uplink caught up",
                )
                caught_up = time.monotonic() - healed
                health = (await api.get("/health")).json()

                await quiesce(gw)
                rows = await gw.store.time_range(0, 1e12, limit=10_000_000)
                stats = gw.store.stats()
                published = gw.bus.readings
                (after,) = (await api.get("/uplinks")).json()
            stored = {r.id for r in rows}
            missing: set[int] = set()

            def all_at_vm() -> bool:
                missing.clear()
                missing.update(stored - set(_ids_at(vm)))
                return not missing

            try:
                await eventually(all_at_vm, timeout=30, interval=0.5)
            except AssertionError:
                raise AssertionError(
                    f"{len(missing)} of {len(stored)} ids never reached VictoriaMetrics "
                    f"({min(missing)}..{max(missing)}); uplink after: {after}"
                ) from None
            at_vm = _ids_at(vm)
            connections = proxy.stats.connections
    finally:
        await plant.stop()
    leaked = await leaked_tasks(before)

    dropped = sum(stats.dropped.values())
    duplicates = sum(n - 1 for n in at_vm.values())
    slow_for = healed - slow_from
    print(
        f"\nslow influx ({ANSWER_S:g}s answers for {slow_for:.1f}s, timeout {TIMEOUT_S:g}s): "
        f"sent {slow['sent'] - sent_at_slow} while slow, pending {slow['pending']} at the "
        f"end, {after['retries']} send retries, {after['errors']} errors, "
        f"{int(after['transport']['requests'])} requests over {connections} connections; "
        f"caught up {caught_up:.2f}s after it ended; intake {rate_before:.0f}/s before, "
        f"{rate_slow:.0f}/s while slow; loop lag worst {lag_before * 1000:.0f} ms before, "
        f"{lag_slow * 1000:.0f} ms while slow; /health worst {api_before * 1000:.0f} ms "
        f"before, {api_slow * 1000:.0f} ms while slow; published {published}, committed "
        f"{stats.committed}, dropped {dropped}; stored {len(stored)}, at VictoriaMetrics "
        f"{len(set(at_vm) & stored)} distinct + {duplicates} duplicates; leaked tasks "
        f"{len(leaked)}"
    )
    # the fault was felt: nothing confirmed for a while, the sends timed out and were retried
    assert slow["sent"] - sent_at_slow <= BATCH_MAX  # at most a batch answered before it began
    assert after["retries"] >= 1 and slow["pending"] > 0.5 * rate_slow * (SLOW_S - TIMEOUT_S)
    assert "timeout" in (slow["last_error"] or ""), slow["last_error"]
    # the event loop never waited on the far side: intake at rate, the API quick
    assert rate_slow > 0.7 * rate_before, (rate_slow, rate_before)
    assert lag_slow < 0.5, lag_slow
    assert api_slow < 1.0, api_slow
    # caught up by itself once the answers came quickly again
    assert caught_up < 10.0
    assert after["pending"] == 0 and after["transport"]["failing"] == 0.0
    assert health["status"] == "ok"
    # sent = stored = delivered + counted drops (none); duplicates only from timed-out sends
    assert published == stats.committed + dropped and dropped == 0
    assert set(at_vm) == stored and len(stored) == stats.last_id
    assert duplicates <= after["retries"] * BATCH_MAX, (duplicates, after["retries"])
    assert not leaked, leaked
