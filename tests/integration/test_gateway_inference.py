"""Models inside the running gateway: real simulator, real OPC UA subscription, real ONNX
session, real SQLite store, the local API over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.runtime import Gateway
from simulators.opcua_machine import OpcuaMachineLine
from tests.integration.gwutil import MILL1, api_client, eventually, plant_config


async def test_failure_model_runs_on_live_opcua_values_and_is_stored(tmp_path: Path) -> None:
    async with OpcuaMachineLine(port=0, tick=0.2, machines=1) as sim:
        loaded = plant_config(
            tmp_path,
            0,
            devices=[
                {
                    "id": "line-1",
                    "protocol": "opcua",
                    "endpoint": sim.endpoint,
                    "profile": "cnc-machine-line",
                    "publishing_interval": 0.1,
                }
            ],
            models=[
                {"id": "mill1-pdm", "model": "pdm-failure", "equipment": "mill-1", "inputs": MILL1}
            ],
        )
        gw = Gateway(loaded)
        await gw.start()
        try:
            base = gw.api_url
            assert base is not None
            async with api_client(gw) as http:

                async def runs() -> int:
                    (m,) = (await http.get("/models")).json()
                    return m["calls"] >= 5 and m

                model = await eventually(runs, timeout=20, what="five model calls")
                assert model["state"] == "ready" and model["version"] == "1.0.0"
                assert model["providers"] == ["CPUExecutionProvider"]
                assert 0 < model["latency_p50_ms"] <= model["latency_p99_ms"]
                assert model["latency_budget_ms"] == 1.0
                assert 0.0 <= model["last_values"]["failure_risk"] <= 1.0

                point = (await http.get("/points/mill1-pdm.failure_risk")).json()
                assert point["reason"] == "model:pdm-failure@1.0.0"
                assert point["quality"] == "good" and point["equipment"] == ["mill-1"]

                async def stored() -> bool:
                    # results reach the store one commit linger after the call
                    url = "/points/mill1-pdm.failure_risk/history"
                    return (await http.get(url)).json()["count"] >= 5

                await eventually(stored, timeout=10, what="five results stored")

                metrics = (await http.get("/metrics")).text
                assert 'millrace_model_up{model="mill1-pdm",state="ready"} 1' in metrics
                assert (
                    'millrace_model_latency_seconds{model="mill1-pdm",quantile="0.99"}' in metrics
                )
                loaded_ev = [
                    json.loads(r.value)
                    for r in await gw.store.history("mill1-pdm.event", limit=100)
                ]
                assert any(e["name"] == "model_loaded" for e in loaded_ev)
        finally:
            problems = await gw.stop()
        assert problems == []
