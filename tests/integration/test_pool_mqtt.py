"""The gateway and the reference central pool over retained MQTT messages (`pool.transport:
mqtt`): a real Mosquitto between them, the Modbus pump simulated on loopback, real store,
ledger and pool SQLite files. The gateway's `pool.url` points at a dead port, so whatever
reaches the pool came over MQTT. Nothing is mocked."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.errors import SinkRetry
from gateway.runtime import Gateway
from simulators.central_pool import CentralPool
from simulators.modbus_plant import ModbusPlant
from sync.config import PoolSyncConfig
from sync.pool_mqtt import PoolMqttClient
from tests.conftest import free_port
from tests.integration import mosquitto as _broker
from tests.integration import poolutil
from tests.integration.gwutil import eventually, plant_config
from tests.integration.mosquitto import Mosquitto, MosquittoFactory
from tests.integration.poolutil import (
    OWNER,
    PUMP,
    TOKENS,
    coop,
    pool_state,
    post_pumping_demand,
    pump_machine,
    status_at_pool,
)

mosquitto_factory = _broker.mosquitto_factory
mosquitto = _broker.mosquitto
plant = poolutil.plant

GATEWAY = "test-gw"  # plant_config's gateway id
PREFIX = "millrace-pool/v1"


def pool_section(broker: Mosquitto, **extra: Any) -> dict[str, Any]:
    return {
        "url": f"http://127.0.0.1:{free_port()}",  # nobody there: MQTT or nothing
        "token": "gw-token",
        "token_org": OWNER,
        "transport": "mqtt",
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker.port,
            "connect_timeout": 2,
            "ack_timeout": 3,
        },
        "sync_interval": 1.0,
        "snapshot_interval": 5.0,
        "status_interval": 0.2,
        **extra,
    }


def mqtt_pool(broker: Mosquitto, db: Path, port: int = 0) -> CentralPool:
    return CentralPool(
        port=port,
        db_path=str(db),
        tokens=TOKENS,
        mqtt=("127.0.0.1", broker.port),
        mqtt_gateway_tokens={GATEWAY: "gw-token"},
    )


async def availability(http: httpx.AsyncClient) -> dict[str, Any]:
    return ((await pool_state(http, PUMP)) or {}).get("availability") or {}


async def status_is(http: httpx.AsyncClient, want: str) -> bool:
    return await status_at_pool(http) == want


async def test_a_status_change_reaches_the_pool_over_mqtt(
    plant: ModbusPlant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with mqtt_pool(mosquitto, tmp_path / "pool.db") as pool:
        loaded = plant_config(
            tmp_path, plant.port, equipment=[pump_machine()], pool=pool_section(mosquitto)
        )
        async with Gateway(loaded) as gw, coop(pool) as them:
            plant.units[1].write_value("pump_enable", True)
            await eventually(
                lambda: status_is(them, "working"), timeout=15, what="working, at the pool"
            )
            t0 = time.monotonic()
            plant.units[1].write_value("pump_enable", False)
            await eventually(lambda: status_is(them, "idle"), timeout=10, what="idle at the pool")
            took = time.monotonic() - t0
            assert took < 5, f"status change took {took:.2f} s to reach the pool"
            live = gw.sharing.get(PUMP)
            assert (await availability(them))["seq"] == live.update["seq"]
            assert gw.pool.config.transport == "mqtt" and gw.pool.state == "synced"
            stats = gw.pool.sender.stats()
            assert stats["applied"] >= 1 and stats["connected"] == 1.0
            # the pool applied it all through its store, and refused nothing
            assert pool.mqtt_bridge.applied > 0 and not pool.mqtt_bridge.rejected
            # duplicate and out-of-order deliveries change nothing, here as over HTTPS
            before = await availability(them)
            sent = [
                json.loads(r.value)
                for r in await gw.store.history(f"{PUMP}.sharing_update", limit=100)
            ]
            results = await gw.pool.client.post_availability(sent[::-1])
            results += await gw.pool.client.post_availability(sent)
            assert {r["result"] for r in results} <= {"duplicate", "stale"}
            await asyncio.sleep(0.5)
            assert await availability(them) == before


async def test_a_pool_started_after_the_gateway_gets_the_current_state_from_retained_messages(
    plant: ModbusPlant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # no periodic snapshot while the test runs: what the pool gets, it gets from retained state
    section = pool_section(mosquitto, snapshot_interval=600.0)
    loaded = plant_config(tmp_path, plant.port, equipment=[pump_machine()], pool=section)
    async with Gateway(loaded) as gw:
        plant.units[1].write_value("pump_enable", True)
        await eventually(
            lambda: gw.sharing.get(PUMP).status.value == "working", timeout=15, what="working"
        )
        plant.units[1].write_value("pump_enable", False)
        await eventually(lambda: gw.sharing.get(PUMP).status.value == "idle", what="idle here")
        want = gw.sharing.get(PUMP).update["seq"]

        def published() -> bool:
            return gw.pool.client._published.get(PUMP) == want and gw.pool.snapshots > 0

        await eventually(published, timeout=10, what="the idle update PUBACKed by the broker")
        # only now does the pool exist, on an empty database
        async with mqtt_pool(mosquitto, tmp_path / "late-pool.db") as pool, coop(pool) as them:

            async def current() -> dict[str, Any]:
                avail = await availability(them)
                return avail if avail.get("seq") == want else {}

            avail = await eventually(current, timeout=10, what="the retained state at the pool")
            assert avail["status"] == "idle" and avail["available"] == "full"
            assert avail["live"] is True
            view = (await them.get(f"/v1/machines/{PUMP}")).json()
            assert view["location"] == {"lat": 22.82, "lon": 108.37, "precision_m": 1113}
            assert "Li Wei" not in json.dumps(view)


async def test_a_booking_made_at_the_pool_reaches_the_gateway_over_mqtt_and_usage_goes_back(
    plant: ModbusPlant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with mqtt_pool(mosquitto, tmp_path / "pool.db") as pool:
        loaded = plant_config(
            tmp_path, plant.port, equipment=[pump_machine()], pool=pool_section(mosquitto)
        )
        async with Gateway(loaded) as gw, coop(pool) as them:
            plant.units[1].write_value("pump_enable", False)  # idle: full availability
            await eventually(lambda: status_is(them, "idle"), timeout=15, what="idle at the pool")
            now = datetime.now(UTC).replace(microsecond=0)
            start, end = now + timedelta(hours=2), now + timedelta(hours=5)
            demand_id = await post_pumping_demand(them, start, end)
            booked = await them.post(
                f"/v1/demands/{demand_id}/bookings",
                json={"machine_id": PUMP, "start": start.isoformat(), "end": end.isoformat()},
            )
            booking = booked.json()
            assert booked.status_code == 201, booking

            def blocked_here() -> bool:
                avail = gw.sharing.get(PUMP).availability
                assert avail is not None
                return bool(avail.windows) and all(e <= start or s >= end for s, e in avail.windows)

            await eventually(blocked_here, timeout=10, what="the booked window blocked locally")
            (held,) = gw.sharing.ledger.bookings(PUMP)
            assert held.booking_id == booking["booking_id"] and held.status == "confirmed"

            # the booking ends (the gateway's clock jumps past it): usage goes back over MQTT
            gw.sharing.clock = lambda: time.time() + 6 * 3600
            gw.sharing.poke()

            async def delivered() -> list[dict[str, Any]]:
                return await pool.usage_records(booking["booking_id"])

            (record,) = await eventually(delivered, timeout=10, what="usage at the pool")
            assert record["machine_id"] == PUMP
            gw.pool.poke()
            await asyncio.sleep(2.0)  # more sync cycles: nothing is sent twice
            assert len(await pool.usage_records(booking["booking_id"])) == 1
            assert gw.pool.usage_delivered == 1
            assert not pool.mqtt_bridge.rejected


async def test_broker_down_then_up_converges(
    plant: ModbusPlant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with mqtt_pool(mosquitto, tmp_path / "pool.db") as pool:
        loaded = plant_config(
            tmp_path, plant.port, equipment=[pump_machine()], pool=pool_section(mosquitto)
        )
        async with Gateway(loaded) as gw, coop(pool) as them:
            plant.units[1].write_value("pump_enable", True)
            await eventually(lambda: status_is(them, "working"), timeout=15, what="first sync")
            mosquitto.stop()  # the broker (or the line to it) is gone
            plant.units[1].write_value("pump_enable", False)
            await eventually(lambda: gw.sharing.get(PUMP).status.value == "idle", what="idle")
            plant.units[1].write_value("pump_enable", True)
            plant.units[1].write_value("speed_setpoint", 2800)  # trips the overload relay
            await eventually(
                lambda: gw.sharing.get(PUMP).status.value == "fault", timeout=15, what="fault"
            )
            await eventually(lambda: gw.pool.state == "unreachable", what="the sync noticing")

            async def waiting() -> bool:  # the store flushes every 50 ms: ask until it did
                pending = await gw.store.pending_matching("uplink:pool", 100, ".sharing_update")
                return len(pending[0]) >= 2

            await eventually(waiting, timeout=5, what="the changes waiting in the outbox")
            assert await status_is(them, "working"), "nothing reached the pool meanwhile"
            mosquitto.start()  # same port, same persistence file

            async def converged() -> bool:
                avail = await availability(them)
                return (
                    avail.get("seq") == gw.sharing.get(PUMP).update["seq"]
                    and avail.get("status") == "fault"
                    and avail.get("available") == "none"
                )

            await eventually(converged, timeout=20, what="convergence after the broker returned")
            await eventually(lambda: gw.pool.state == "synced", timeout=5, what="synced again")


async def test_the_client_speaks_tls_with_a_password_it_never_logs(
    mosquitto_factory: MosquittoFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    password = "s3cret-pool-pass"
    broker = mosquitto_factory(users={GATEWAY: password, "pool": "pool-pass"}, tls=True)
    assert broker.tls is not None and broker.tls_port is not None
    tls = {"ca": str(broker.tls.ca)}
    seen: list[tuple[str, bytes, bool]] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
    watcher.username_pw_set("pool", "pool-pass")
    watcher.tls_set(ca_certs=str(broker.tls.ca))
    watcher.on_message = lambda _c, _u, m: seen.append((m.topic, bytes(m.payload), m.retain))
    watcher.connect("127.0.0.1", broker.tls_port)
    watcher.loop_start()
    watcher.subscribe(f"{PREFIX}/#", qos=1)

    def config(secret: str) -> PoolSyncConfig:
        return PoolSyncConfig.model_validate(
            {
                "url": "http://127.0.0.1:9",
                "token": "gw-token",
                "transport": "mqtt",
                "mqtt": {
                    "host": "127.0.0.1",
                    "port": broker.tls_port,
                    "tls": tls,
                    "username": GATEWAY,
                    "password": secret,
                    "connect_timeout": 2,
                    "ack_timeout": 3,
                },
            }
        )

    caplog.set_level(logging.DEBUG)
    try:
        wrong = PoolMqttClient(config("not-the-password"), gateway_id=GATEWAY)
        with pytest.raises(SinkRetry, match=r"refused|not authori"):
            await wrong.put_machine(PUMP, {"version": 1})
        await wrong.close()

        client = PoolMqttClient(config(password), gateway_id=GATEWAY)
        try:
            assert client.client_id == f"millrace-pool-{GATEWAY}"
            out = await client.put_machine(PUMP, {"gateway_id": GATEWAY, "version": 3})
            assert out["result"] == "published"
            await client.retire_machine(PUMP)
            feed = await client.bookings(GATEWAY, 0)
            assert feed["bookings"] == [] and feed["next_since_version"] == 0
        finally:
            await client.close()

        def arrived() -> list[Any]:
            return [s for s in seen if s[0] == f"{PREFIX}/{GATEWAY}/machines/{PUMP}"]

        got = await eventually(lambda: len(arrived()) == 2 and arrived(), what="both messages")
        assert json.loads(got[0][1]) == {"gateway_id": GATEWAY, "version": 3}
        assert json.loads(got[1][1]) == {"retired": True, "version": 3}
        await eventually(
            lambda: (f"{PREFIX}/{GATEWAY}/status", b"offline", False) in seen, what="offline"
        )
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    text = caplog.text + json.dumps([r.__dict__ for r in caplog.records], default=str)
    assert password not in text and "not-the-password" not in text


async def test_the_pool_applies_mqtt_messages_with_the_topic_gateways_token_only(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with mqtt_pool(mosquitto, tmp_path / "pool.db") as pool:
        bridge = pool.mqtt_bridge
        item = {
            "machine_id": PUMP,
            "gateway_id": GATEWAY,
            "seq": 1,
            "idempotency_key": "k",
            "ts": "2026-01-05T06:00:00Z",
            "status": "idle",
            "health": {"failure_risk": None, "rul_hours": None, "source": None},
            "available": "full",
            "windows": [],
        }
        await bridge._apply(f"{PREFIX}/stranger/snapshot", b'{"seq": 1, "ts": "x", "items": []}')
        await bridge._apply(f"{PREFIX}/{GATEWAY}/availability/other", json.dumps(item).encode())
        await bridge._apply(f"{PREFIX}/{GATEWAY}/snapshot", b"not json")
        reasons = [reason for _, reason in bridge.rejected]
        assert "no known token for gateway stranger" in reasons[0]
        assert "differ from the topic" in reasons[1]
        assert len(reasons) == 3 and bridge.applied == 0
        # a retirement of a machine the pool never saw changes nothing and is no error
        await bridge._apply(f"{PREFIX}/{GATEWAY}/machines/{PUMP}", b'{"retired": true}')
        assert bridge.results[-1][1]["result"] == "unknown" and len(bridge.rejected) == 3
        # a retained message being cleared (empty payload) is ignored
        await bridge._apply(f"{PREFIX}/{GATEWAY}/machines/{PUMP}", b"")
        assert bridge.applied == 1
