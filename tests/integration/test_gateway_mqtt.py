"""MQTT through the whole gateway: a real Mosquitto, the farm simulator, the store and the
API. Malformed payloads are counted and dead-lettered while good ones keep flowing."""

from __future__ import annotations

from pathlib import Path

from gateway.runtime import Gateway
from simulators.mqtt_farm import MqttFarm
from tests.integration import mosquitto as _broker
from tests.integration.gwutil import api_client, eventually, plant_config
from tests.integration.mosquitto import Mosquitto

mosquitto = _broker.mosquitto  # fixture: a real broker on a free port
mosquitto_factory = _broker.mosquitto_factory


async def test_farm_fleet_through_the_gateway_with_dead_letters(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    machines = ["tractor-01", "harvester-01", "drone-01"]
    device = {
        "id": "coop-broker",
        "protocol": "mqtt",
        "host": "127.0.0.1",
        "port": mosquitto.port,
        "profile": "farm-machinery",
        "topics": ["coop/{equipment}/telemetry"],
        "client_id": "millrace-test-gw",
    }
    equipment = [{"id": m, "type": "tractor", "device": "coop-broker"} for m in machines]
    loaded = plant_config(tmp_path, 0, devices=[device], equipment=equipment)
    async with (
        Gateway(loaded) as gw,
        api_client(gw) as api,
        MqttFarm("127.0.0.1", mosquitto.port, machines=machines, interval=0.2) as farm,
    ):

        async def fleet_online() -> bool:
            devices = (await api.get("/devices")).json()
            return {d["id"] for d in devices if d["state"] == "online"} == set(machines)

        await eventually(fleet_online, timeout=15, what="three machines online over MQTT")
        for kind in ("not_json", "not_utf8", "deep", "unknown_equipment"):
            farm.inject(kind, "tractor-01")
        seq_before = gw.latest.get("tractor-01.seq").value

        async def four_dead_letters() -> list[dict]:
            rows = (await api.get("/dead-letters")).json()
            return rows if len(rows) >= 4 else []

        rows = await eventually(four_dead_letters, timeout=10, what="dead letters")
        assert {r["source"] for r in rows} == {"coop-broker"}
        topics = {r["topic"] for r in rows}
        assert "coop/ghost-99/telemetry" in topics and "coop/tractor-01/telemetry" in topics
        assert all(r["reason"] for r in rows)
        # Good messages keep flowing after the bad ones.
        await eventually(
            lambda: gw.latest.get("tractor-01.seq").value > seq_before, what="fleet still flowing"
        )
        point = (await api.get("/points/harvester-01.engine_rpm")).json()
        assert point["quality"] == "good" and isinstance(point["value"], int)
        assert point["ts_source"] is not None  # the payload's own timestamp
        assert point["equipment"] == ["harvester-01"]
        metrics = (await api.get("/metrics")).text
        assert 'millrace_device_up{device="drone-01",protocol="mqtt"} 1' in metrics
        assert "millrace_device_stat{" in metrics
