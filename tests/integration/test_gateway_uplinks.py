"""Store-and-forward end to end: a farm fleet publishing ~1,000 readings/s into the gateway,
the gateway forwarding to a central Mosquitto (mutual TLS) and to VictoriaMetrics (the
InfluxDB v2 write API), one far side stopped for `MILLRACE_OUTAGE_S` seconds (60 by default,
as the issue asks) while the other keeps flowing. Everything is real: brokers, TLS, HTTP,
SQLite, the simulator. Afterwards every stored reading id must have arrived, per-point order
must hold, and duplicates may only be re-sends of batches that were in flight.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime import Gateway
from simulators.mqtt_farm import MqttFarm
from tests.integration import mosquitto as _broker
from tests.integration import victoria as _victoria
from tests.integration.gwutil import api_client, eventually, plant_config
from tests.integration.mosquitto import Mosquitto, MosquittoFactory
from tests.integration.platform import PlatformSubscriber
from tests.integration.victoria import VictoriaFactory

mosquitto_factory = _broker.mosquitto_factory
victoria_factory = _victoria.victoria_factory

OUTAGE_S = float(os.environ.get("MILLRACE_OUTAGE_S", "60"))
MACHINES = [f"tractor-{i:02d}" for i in range(60)]  # ~16 readings each per second
USERS = {"gw-01": "uplink-pass", "platform": "reader-pass"}


def _config(tmp_path: Path, intake: Mosquitto, central: Mosquitto, vm_url: str) -> Any:
    tls = central.tls
    assert tls is not None
    device = {
        "id": "coop-broker",
        "protocol": "mqtt",
        "host": "127.0.0.1",
        "port": intake.port,
        "profile": "farm-machinery",
        "topics": ["coop/{equipment}/telemetry"],
        "client_id": "millrace-uplink-test",
    }
    equipment = [{"id": m, "type": "tractor", "device": "coop-broker"} for m in MACHINES]
    uplinks = [
        {
            "type": "mqtt",
            "name": "central",
            "host": "127.0.0.1",
            "port": central.tls_port,
            "tls": {"ca": str(tls.ca), "cert": str(tls.client_cert), "key": str(tls.client_key)},
            "username": "gw-01",
            "password": USERS["gw-01"],
        },
        {"type": "influx", "name": "history", "url": vm_url, "org": "coop", "bucket": "farm"},
    ]
    return plant_config(
        tmp_path,
        0,
        devices=[device],
        equipment=equipment,
        uplinks=uplinks,
        outbox={"batch_max": 2000, "backoff_initial": 0.2, "backoff_max": 2},
    )


async def _stored_ids(gw: Gateway) -> dict[int, str]:
    rows = await gw.store.time_range(0, 1e12, limit=10_000_000)
    return {r.id: r.point for r in rows}


def _check_delivery(stored: dict[int, str], got: list[dict[str, Any]], window: int) -> int:
    """Every stored id arrived; per point the first arrivals are in id order; each id came
    at most twice (a batch re-sent after the outage); returns the duplicate count."""
    ids = [d["id"] for d in got]
    missing = set(stored) - set(ids)
    assert not missing, f"{len(missing)} readings never arrived, e.g. {sorted(missing)[:5]}"
    seen: set[int] = set()
    last: dict[str, int] = defaultdict(int)
    dups = 0
    for d in got:
        if d["id"] in seen:
            dups += 1
            continue
        seen.add(d["id"])
        assert d["id"] > last[d["point"]], f"out of order on {d['point']}"
        last[d["point"]] = d["id"]
    assert dups <= window, f"{dups} duplicates, more than one in-flight window ({window})"
    return dups


@pytest.mark.parametrize("down", ["central", "history"])
async def test_a_far_side_down_for_a_minute_loses_nothing_and_the_other_keeps_flowing(
    mosquitto_factory: MosquittoFactory,
    victoria_factory: VictoriaFactory,
    tmp_path: Path,
    down: str,
) -> None:
    intake = mosquitto_factory()
    central = mosquitto_factory(users=USERS, tls=True, require_certificate=True)
    vm = victoria_factory()
    sub = PlatformSubscriber(central, username="platform", password=USERS["platform"], tls=True)
    loaded = _config(tmp_path, intake, central, vm.url)
    farm = MqttFarm("127.0.0.1", intake.port, machines=MACHINES, interval=1.0)
    far: Any = central if down == "central" else vm
    up = "history" if down == "central" else "central"
    try:
        async with Gateway(loaded) as gw, api_client(gw) as api:
            await farm.__aenter__()
            try:
                await asyncio.sleep(5)
                far.stop()
                outage_start = gw.store.stats().last_id
                await asyncio.sleep(OUTAGE_S)
                ups = {u["name"]: u for u in (await api.get("/uplinks")).json()}
                assert ups[down]["state"] in ("backing_off", "connecting")
                assert ups[down]["pending"] > 500  # buffered on disk meanwhile
                assert ups[up]["pending"] < 5000  # the other uplink kept flowing
                assert ups[down]["autonomy_hours"] is not None
                assert ups[down]["oldest_pending_age_s"] > OUTAGE_S * 0.5
                far.start()
            finally:
                await farm.__aexit__(None, None, None)

            async def drained() -> bool:
                ups = (await api.get("/uplinks")).json()
                return all(u["pending"] == 0 for u in ups)

            await eventually(drained, timeout=120, what="both uplinks drained")
            stored = await _stored_ids(gw)
            assert len(stored) > 1000 * (OUTAGE_S + 5) * 0.7
            assert max(stored) > outage_start
            metrics = (await api.get("/metrics")).text
            assert 'millrace_uplink_connected{uplink="central"} 1' in metrics
        await eventually(
            lambda: len({d["id"] for d in sub.readings()}) >= len(stored),
            timeout=30,
            what="every stored reading at the central subscriber",
        )
        _check_delivery(stored, sub.readings(), window=2 * 2000)
        vm_ids = {int(v) for s in vm.export('{__name__="millrace_id"}') for v in s.values}
        assert vm_ids >= set(stored)
    finally:
        sub.close()
