"""MQTT through the whole gateway: a real Mosquitto, the farm simulator, the store and the
API. Malformed payloads are counted and dead-lettered while good ones keep flowing."""

from __future__ import annotations

from pathlib import Path

from gateway.auth import Role
from gateway.runtime import Gateway
from simulators.mqtt_farm import MqttFarm
from tests.integration import mosquitto as _broker
from tests.integration.gwutil import api_client, eventually, farm_broker, plant_config
from tests.integration.mosquitto import Mosquitto

mosquitto = _broker.mosquitto  # fixture: a real broker on a free port
mosquitto_factory = _broker.mosquitto_factory


async def test_farm_fleet_through_the_gateway_with_dead_letters(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    machines = ["tractor-01", "harvester-01", "drone-01"]
    device = farm_broker(mosquitto.port, "millrace-test-gw")
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


async def test_commissioning_judges_mqtt_machines_by_what_they_sent(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """MQTT devices cannot be asked for a value: the check run from the page reports what each
    machine on the broker sent, and a machine that sent nothing fails with why, instead of the
    device being left out of the report (and counted offline)."""
    device = farm_broker(mosquitto.port, "millrace-test-check")
    sending = ["tractor-01", "harvester-01"]
    equipment = [
        {"id": m, "type": "tractor", "device": "coop-broker"} for m in [*sending, "drone-01"]
    ]
    # the harvester declares what it must send, a spray rate among it (harvesters spray nothing)
    equipment[1]["points"] = ["engine_rpm", "fuel_level", "spray_rate"]
    loaded = plant_config(tmp_path, 0, devices=[device], equipment=equipment)
    async with (
        Gateway(loaded) as gw,
        api_client(gw, Role.TECHNICIAN, timeout=30) as api,
        MqttFarm("127.0.0.1", mosquitto.port, machines=sending, interval=0.2),
    ):
        await eventually(
            lambda: all(gw.latest.get(f"{m}.engine_rpm") for m in sending),
            timeout=15,
            what="both machines' values",
        )
        r = await api.post("/commissioning")
        assert r.status_code == 200, r.text
        report = r.json()
    by_machine: dict[str, list[dict]] = {}
    for line in report["results"]:
        assert line["source"] == "coop-broker"
        by_machine.setdefault(line["device"], []).append(line)
    assert set(by_machine) == {"tractor-01", "harvester-01", "drone-01"}
    rpm = next(x for x in by_machine["tractor-01"] if x["point"] == "engine_rpm")
    assert rpm["ok"] and isinstance(rpm["value"], int) and rpm["reason"].startswith("received ")
    # a machine that declares no points is judged by what it sends (a shared profile)
    assert all(x["ok"] for x in by_machine["tractor-01"]) and len(by_machine["tractor-01"]) > 5
    harvester = {x["point"]: x for x in by_machine["harvester-01"]}
    assert set(harvester) == {"engine_rpm", "fuel_level", "spray_rate"}
    assert harvester["engine_rpm"]["ok"] and harvester["fuel_level"]["ok"]
    assert not harvester["spray_rate"]["ok"]
    assert not any(x["ok"] for x in by_machine["drone-01"])
    assert {x["reason"] for x in by_machine["drone-01"]} == {
        "nothing received since the gateway started"
    }
    assert report["devices_online"] == ["coop-broker"] and report["devices_total"] == 1
    assert report["ok"] is False  # the drone's points failed
    assert "devices online: 1/1 (100%)" in report["report"]
    assert "not probed" not in report["report"]
