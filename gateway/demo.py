"""Embedded defaults for `millrace demo`: the shipped sample config, pointed at the
in-process simulator and a local data folder."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import yaml

from gateway.configload import LoadedConfig, load_config_data

SAMPLE = "demo.yaml"


def sample_text() -> str:
    return (resources.files("gateway") / "samples" / SAMPLE).read_text(encoding="utf-8")


def demo_config(
    *,
    modbus_port: int,
    api_host: str,
    api_port: int,
    data_dir: Path,
    opcua_endpoint: str | None = None,
    mqtt_port: int | None = None,
    turbine_endpoint: str | None = None,
    pool_url: str | None = None,
) -> LoadedConfig:
    """The sample config pointed at the running simulators; a device whose simulator is
    not given is left out (with its equipment and the models bound to it), and the pool
    section when no pool runs."""
    data: dict[str, Any] = yaml.safe_load(sample_text())
    keep = []
    for device in data["devices"]:
        proto = device["protocol"]
        if proto == "modbus-tcp":
            device["port"] = modbus_port
        elif device["id"] == "cogen-1":
            if turbine_endpoint is None:
                continue
            device["endpoint"] = turbine_endpoint
        elif proto == "opcua":
            if opcua_endpoint is None:
                continue
            device["endpoint"] = opcua_endpoint
        elif proto == "mqtt":
            if mqtt_port is None:
                continue
            device["port"] = mqtt_port
        keep.append(device)
    ids = {d["id"] for d in keep}
    data["devices"] = keep
    data["equipment"] = [e for e in data.get("equipment", []) if e["device"] in ids]
    data["models"] = [m for m in data.get("models", []) if _model_devices(m) <= ids]
    if pool_url is None:
        data.pop("pool", None)
    else:
        data["pool"] = {**data["pool"], "url": pool_url}
    data["api"] = {**data.get("api", {}), "host": api_host, "port": api_port}
    data["store"] = {**data.get("store", {}), "path": str(data_dir.resolve() / "millrace-demo.db")}
    return load_config_data(data, base_dir=data_dir.resolve())


def _model_devices(binding: dict[str, Any]) -> set[str]:
    """The devices a model binding reads (point ids are `<device>.<point>`)."""
    if "items" in binding:
        return {binding["items"]["device"]}
    refs = [*binding.get("inputs", {}).values(), binding.get("input_prefix") or ""]
    refs += [binding.get("row_key") or "", binding.get("reset_on") or ""]
    return {r.split(".", 1)[0] for r in refs if r}


#: The demo cooperative's pool token (the reference pool's built-in demo tokens).
COOP_TOKEN = "coop-token"


def demand_window(now: datetime, zone: str = "Asia/Shanghai") -> tuple[datetime, datetime]:
    """Tomorrow 06:00 to 18:00, local time at the farm: a working day of cane harvesting."""
    tz = ZoneInfo(zone)
    day = (now.astimezone(tz) + timedelta(days=1)).date()
    start = datetime.combine(day, time(6, 0), tz)
    return start, start + timedelta(hours=12)


async def cooperative_demand(
    pool_url: str, say: Callable[[str], None], *, timeout: float = 120.0
) -> list[dict[str, Any]]:
    """What a cooperative does at the pool: wait until the demo gateway's harvesters are
    offered, post a demand for 300 t of cane harvesting near the farm tomorrow, and print the
    ranked matches the pool computes from the availability and health the gateway sent."""
    start, end = demand_window(datetime.now(UTC))
    demand = {
        "capability": "harvesting",
        "quantity": 300,
        "unit": "t",
        "location": {"lat": 22.65, "lon": 107.95},
        "max_distance_km": 50,
        "window": {"start": start.isoformat(), "end": end.isoformat()},
    }
    headers = {"Authorization": f"Bearer {COOP_TOKEN}"}
    async with httpx.AsyncClient(base_url=pool_url, headers=headers, timeout=10) as http:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            resp = await http.get("/v1/machines/harvester-01")
            avail = (resp.json().get("availability") or {}) if resp.status_code == 200 else {}
            if avail.get("available") in ("full", "limited") or loop.time() > deadline:
                break
            await asyncio.sleep(1.0)
        created = (await http.post("/v1/demands", json=demand)).json()
        matches = (await http.get(f"/v1/demands/{created['demand_id']}/matches")).json()
    ranked = matches.get("matches", [])
    say(
        f"millrace demo: Demo Fruit Cooperative asks the pool for 300 t of cane harvesting "
        f"near 22.65,107.95 on {start:%Y-%m-%d} 06:00-18:00 (demand {created['demand_id']}); "
        f"ranked matches:"
    )
    for i, m in enumerate(ranked, 1):
        reason = f" ({m['reason']})" if m.get("reason") else ""
        say(
            f"millrace demo:   {i}. {m['machine_id']:<14} score {m['score']:.2f} "
            f"{m['decision']}{reason}"
        )
    return ranked
