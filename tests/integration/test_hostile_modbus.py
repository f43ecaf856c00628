"""A gateway polling a Modbus server that answers badly on purpose (issue 8, hostile input).

The plant's unit 1 (pump) is switched through every way of breaking an answer while unit 2
(press) on the same TCP connection keeps answering correctly. For each mode: the pump's
`last_error` says what was wrong, the bad frame is counted (`bad_frames`, on /metrics too), the
gateway keeps running, the press keeps delivering GOOD readings, and every reading stored
before the attack is still in the store, unchanged, at the end.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from drivers.base import DeviceState
from gateway.runtime import Gateway, GatewayState
from simulators.hostile_modbus import BROKEN_MODES, HostileMode
from simulators.modbus_plant import ModbusPlant
from tests.fuzz._hostile import assert_nothing_lost, stored
from tests.integration.gwutil import api_client, eventually, plant_config

#: What the pump's last_error must say for each mode (a malformed exception code is a valid
#: frame: the unit is alive and refuses, so its points go BAD but the unit stays online).
EXPECTED = {
    HostileMode.SHORT: "bad frame from unit 1: short answer",
    HostileMode.BAD_EXCEPTION: "modbus exception 127 (unknown)",
}
DEFAULT = "bad frame from unit 1: no valid answer in what it sent ("


def health(gw: Gateway, device: str):
    return next(h for h in gw.device_health() if h.device == device)


def good_count(gw: Gateway, prefix: str) -> int:
    return sum(
        1
        for pid in gw.points
        if pid.startswith(prefix)
        and (r := gw.latest.get(pid)) is not None
        and r.quality.name == "GOOD"
    )


@pytest.mark.slow
async def test_gateway_survives_every_broken_answer(tmp_path: Path) -> None:
    async with ModbusPlant.tcp(port=0, hostile=HostileMode.NORMAL, seed=8) as plant:
        loaded = plant_config(tmp_path, plant.port)
        async with Gateway(loaded) as gw, api_client(gw) as api:
            await eventually(
                lambda: good_count(gw, "pump-1.") >= 15 and good_count(gw, "press-1.") >= 12,
                what="both units read GOOD before the attack",
            )
            before = await stored(gw.store)
            assert len(before) > 30
            press_polls = health(gw, "press-1").polls_ok
            seen: dict[str, str] = {}

            for mode in BROKEN_MODES:
                pump = health(gw, "pump-1")
                frames, failed = pump.extra.get("bad_frames", 0.0), pump.polls_failed
                answered = plant.hostile.answers[mode]  # type: ignore[union-attr]
                plant.set_hostile(mode, unit=1)
                want = EXPECTED.get(mode, DEFAULT)

                def hit(
                    want: str = want,
                    frames: float = frames,
                    failed: int = failed,
                    mode: HostileMode = mode,
                ) -> bool:
                    h = health(gw, "pump-1")
                    if not (h.last_error or "").startswith(want):
                        return False
                    if mode is HostileMode.BAD_EXCEPTION:  # refused, not garbled: alive
                        return h.state is DeviceState.ONLINE
                    return h.extra.get("bad_frames", 0.0) > frames and h.polls_failed > failed

                await eventually(hit, timeout=8, what=f"pump-1 to report {mode}")
                assert plant.hostile.answers[mode] > answered  # type: ignore[union-attr]
                seen[mode] = health(gw, "pump-1").last_error or ""
                assert gw.state is GatewayState.RUNNING

                plant.set_hostile(HostileMode.NORMAL, unit=1)
                await eventually(
                    lambda: (
                        health(gw, "pump-1").state is DeviceState.ONLINE
                        and health(gw, "pump-1").last_error is None
                    ),
                    timeout=8,
                    what=f"pump-1 to recover after {mode}",
                )

            # A garbled frame never passes for data: the hex of what arrived is in the error.
            assert re.search(r"\(([0-9a-f]{2} ?)+\)$", seen[HostileMode.GARBAGE])
            # The press shared the connection the whole time and kept being read.
            assert health(gw, "press-1").state is DeviceState.ONLINE
            assert health(gw, "press-1").polls_ok > press_polls + len(BROKEN_MODES)
            assert health(gw, "press-1").extra.get("bad_frames", 0.0) == 0

            frames = health(gw, "pump-1").extra["bad_frames"]
            assert frames >= len(BROKEN_MODES) - 1  # every mode but bad_exception
            metrics = (await api.get("/metrics")).text
            line = re.search(
                r'millrace_device_stat\{device="pump-1"[^}]*stat="bad_frames"\} (\S+)', metrics
            )
            assert line is not None and float(line.group(1)) >= frames
            async with httpx.AsyncClient(base_url=gw.api_url) as open_api:
                assert (await open_api.get("/health")).status_code == 200

            after = await stored(gw.store)
            assert_nothing_lost(before, after, gw.store)
            assert len(after) > len(before)


async def test_mixed_garbage_for_every_unit_then_recovery(tmp_path: Path) -> None:
    """Both units answer with a random broken frame per request for a while: both go DOWN
    with the reason, the gateway stays up, and both recover when the server heals."""
    async with (
        ModbusPlant.tcp(port=0, hostile=HostileMode.NORMAL, seed=3) as plant,
        Gateway(plant_config(tmp_path, plant.port)) as gw,
    ):
        await eventually(lambda: good_count(gw, "press-1.") >= 12, what="first GOOD reads")
        before = await stored(gw.store)
        plant.set_hostile(HostileMode.MIXED)
        await eventually(
            lambda: all(h.state is DeviceState.DOWN for h in gw.device_health()),
            timeout=10,
            what="both units DOWN under mixed garbage",
        )
        for h in gw.device_health():
            assert (h.last_error or "").startswith("bad frame from unit"), h.last_error
        # DOWN points are BAD with the reason, never a value made up from garbage.
        bad = gw.latest.get("press-1.roller_load")
        assert bad is not None and bad.quality.name == "BAD" and bad.value is None
        assert "bad frame" in (bad.reason or "")
        broken = sum(plant.hostile.answers[m] for m in BROKEN_MODES)  # type: ignore[union-attr]
        assert broken >= 4

        plant.set_hostile(HostileMode.NORMAL)
        await eventually(
            lambda: all(h.state is DeviceState.ONLINE for h in gw.device_health()),
            timeout=10,
            what="both units back ONLINE",
        )
        assert gw.state is GatewayState.RUNNING
        assert_nothing_lost(before, await stored(gw.store), gw.store)
