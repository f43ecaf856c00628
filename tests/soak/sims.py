"""The demo site's devices in one process, for the soak and the capacity bench.

    python -m tests.soak.sims --mqtt-port 1883 [--bench-units 10] [--farm-machines 6]

Serves what `millrace demo` serves in-process (Modbus pump and press, OPC UA machine line,
OPC UA cogeneration turbine, farm fleet and grading line publishing into the broker given),
plus optional `bench-30` Modbus units (30 points each) on the same Modbus endpoint to scale the
load. They run in their own process so the gateway under test is measured alone. Prints one
JSON line (`{"ready": true, "modbus_port": ..., "opcua": ..., "turbine": ...}`) when every
simulator is up, then runs until SIGTERM/SIGINT. The farm publishes no malformed payloads:
the soak counts every reading, and a deliberate dead letter would read as a loss.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from pathlib import Path

from simulators._cli import stop_event

BENCH_PROFILES = Path(__file__).resolve().parents[1] / "bench" / "profiles"


async def serve(args: argparse.Namespace) -> None:
    """Start every simulator, print where they listen, wait for a stop signal."""
    from simulators.cogen_turbine import CogenTurbinePlant
    from simulators.grading_line import GradingLine
    from simulators.modbus_plant import ModbusPlant
    from simulators.mqtt_farm import MqttFarm
    from simulators.opcua_machine import OpcuaMachineLine

    stop = stop_event()
    units = ["pump-station:1", "sugarcane-press:2"]
    if args.bench_units:
        units.append(f"bench-30:3-{2 + args.bench_units}")
    async with contextlib.AsyncExitStack() as stack:
        plant = await stack.enter_async_context(
            ModbusPlant.tcp(units=units, port=args.modbus_port, profile_dirs=[BENCH_PROFILES])
        )
        line = await stack.enter_async_context(OpcuaMachineLine(port=0, tick=1.0))
        turbine = await stack.enter_async_context(
            CogenTurbinePlant(port=0, cycle_period=0.5, start_fraction=0.6)
        )
        await stack.enter_async_context(
            MqttFarm(
                "127.0.0.1",
                args.mqtt_port,
                machines=args.farm_machines,
                interval=1.0,
                mqtt_version="3.1.1",
                client_id="soak-farm",
            )
        )
        await stack.enter_async_context(
            GradingLine(
                "127.0.0.1",
                args.mqtt_port,
                line="grader-1",
                fruit_rate=args.fruit_rate,
                image_rate=args.image_rate,
                client_id="soak-grading",
            )
        )
        ready = {
            "ready": True,
            "modbus_port": plant.port,
            "opcua": line.endpoint,
            "turbine": turbine.endpoint,
        }
        print(json.dumps(ready), flush=True)
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.soak.sims")
    p.add_argument("--mqtt-port", type=int, required=True, help="the intake broker's port")
    p.add_argument("--modbus-port", type=int, default=0)
    p.add_argument("--bench-units", type=int, default=0, help="extra bench-30 Modbus units")
    p.add_argument("--farm-machines", type=int, default=6)
    p.add_argument("--fruit-rate", type=float, default=2.0)
    p.add_argument("--image-rate", type=float, default=1.0)
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
