"""Issue 10, scenario "uplink link flaps, then goes dark": the gateway's MQTT uplink reaches
the central broker through the fault proxy (tests/tools/faultproxy.py). The link is reset
every 2 s for 10 s, then blackholed (packets vanish, sockets stay open) for 10 s, then
healed, while a farm fleet keeps publishing into the gateway. Afterwards every reading is
accounted for end to end:

    stored = delivered (distinct ids at the platform) + counted drops

with the exact numbers asserted and printed, duplicates only re-sends of batches that were
in flight, per-point order kept, no task left behind, and the uplink connected again by
itself. `MILLRACE_FLAP_S` / `MILLRACE_DARK_S` lengthen the phases (shortened for make test).
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from gateway.runtime import Gateway
from simulators.mqtt_farm import MqttFarm
from tests.integration import mosquitto as _broker
from tests.integration.gwutil import api_client, eventually, plant_config
from tests.integration.mosquitto import MosquittoFactory
from tests.integration.platform import PlatformSubscriber
from tests.tools.faultproxy import FaultProxy

mosquitto_factory = _broker.mosquitto_factory

FLAP_S = float(os.environ.get("MILLRACE_FLAP_S", "10"))
DARK_S = float(os.environ.get("MILLRACE_DARK_S", "10"))
MACHINES = [f"tractor-{i:02d}" for i in range(10)]
BATCH_MAX = 500


def _tasks() -> set[asyncio.Task[Any]]:
    return set(asyncio.all_tasks())


async def test_uplink_flaps_and_blackhole_lose_nothing(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    intake = mosquitto_factory()
    central = mosquitto_factory()
    sub = PlatformSubscriber(central, client_id="platform-faults")
    farm = MqttFarm("127.0.0.1", intake.port, machines=MACHINES, interval=0.2)
    before = _tasks()
    try:
        async with FaultProxy("127.0.0.1", central.port) as proxy:
            loaded = plant_config(
                tmp_path,
                0,
                devices=[
                    {
                        "id": "coop-broker",
                        "protocol": "mqtt",
                        "host": "127.0.0.1",
                        "port": intake.port,
                        "profile": "farm-machinery",
                        "topics": ["coop/{equipment}/telemetry"],
                        "client_id": "millrace-faults-test",
                    }
                ],
                equipment=[{"id": m, "type": "tractor", "device": "coop-broker"} for m in MACHINES],
                uplinks=[
                    {
                        "type": "mqtt",
                        "name": "central",
                        "host": "127.0.0.1",
                        "port": proxy.port,
                        "keepalive": 5,
                        "connect_timeout": 2,
                        "ack_timeout": 3,
                    }
                ],
                outbox={"batch_max": BATCH_MAX, "backoff_initial": 0.2, "backoff_max": 1},
            )
            async with Gateway(loaded) as gw, api_client(gw) as api:
                await farm.start()
                try:
                    await eventually(
                        lambda: len(sub.readings()) > 100, timeout=15, what="first deliveries"
                    )
                    proxy.flap(2.0, down_s=0.5)
                    await asyncio.sleep(FLAP_S)
                    proxy.heal()
                    proxy.drop()  # blackhole: nothing passes, nothing is closed
                    await asyncio.sleep(DARK_S)
                    dark = (await api.get("/uplinks")).json()[0]
                    proxy.heal()
                    await asyncio.sleep(1.0)
                finally:
                    await farm.stop()

                async def drained() -> bool:
                    (u,) = (await api.get("/uplinks")).json()
                    return u["pending"] == 0 and u["connected"]

                await eventually(drained, timeout=60, what="the uplink drained and connected")
                (after,) = (await api.get("/uplinks")).json()
                rows = await gw.store.time_range(0, 1e12, limit=10_000_000)
                stats = gw.store.stats()
                resets = proxy.stats.resets
            stored = {r.id: r.point for r in rows}
            await eventually(
                lambda: len({d["id"] for d in sub.readings()} & set(stored)) >= len(stored),
                timeout=30,
                what="every stored reading at the platform",
            )
        got = sub.readings()
        delivered = {d["id"] for d in got} & set(stored)
        dropped = sum(stats.dropped.values())
        duplicates = len(got) - len({d["id"] for d in got})
        print(
            f"\nuplink faults: {resets} resets in {FLAP_S:.0f}s, {DARK_S:.0f}s dark "
            f"(pending {dark['pending']} at the end of it, state {dark['state']}); stored "
            f"{len(stored)}, delivered {len(delivered)}, dropped {dropped}, duplicates "
            f"{duplicates}, retries {after['retries']}"
        )
        # the faults happened and were felt
        assert resets >= FLAP_S // 2 - 1
        assert dark["pending"] > 0 and after["retries"] > 0
        # accounted for: stored = delivered + counted drops (none here: far below the cap)
        assert len(stored) == len(delivered) + dropped
        assert dropped == 0 and len(stored) > 1000
        # duplicates are re-sends of batches in flight when the link broke, at most one
        # batch per break
        assert duplicates <= BATCH_MAX * (after["retries"] + 1)
        last: dict[str, int] = defaultdict(int)
        seen: set[int] = set()
        for d in got:
            if d["id"] in seen:
                continue
            seen.add(d["id"])
            assert d["id"] > last[d["point"]], f"out of order on {d['point']}"
            last[d["point"]] = d["id"]
    finally:
        sub.close()
    # nothing the gateway started is left running
    await asyncio.sleep(0)
    leaked = [t for t in _tasks() - before if not t.done()]
    assert not leaked, [t.get_name() for t in leaked]
