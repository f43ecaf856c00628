"""Several Modbus plant simulators in one process, for benchmarks.

python -m tests.bench.sim_farm --ports 15020,15021 --units bench-30:1-50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from simulators._cli import stop_event
from simulators.modbus_plant import ModbusPlant

PROFILES = Path(__file__).parent / "profiles"


async def serve(ports: list[int], units: str) -> None:
    stop = stop_event()
    async with contextlib.AsyncExitStack() as stack:
        for port in ports:
            await stack.enter_async_context(
                ModbusPlant.tcp(units=[units], host="127.0.0.1", port=port, profile_dirs=[PROFILES])
            )
        print(f"ready {len(ports)} endpoints", flush=True)
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ports", required=True)
    p.add_argument("--units", default="bench-30:1-50")
    args = p.parse_args()
    asyncio.run(serve([int(x) for x in args.ports.split(",")], args.units))


if __name__ == "__main__":
    main()
