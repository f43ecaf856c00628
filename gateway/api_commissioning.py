"""`POST /commissioning` (technician): the commissioning check of `millrace check`, run by the
running gateway from the page, with its report.

It probes through the gateway's own drivers (`Gateway.probe`): the connections already open
are used, so a serial line is never opened twice, a PLC that allows one Modbus connection is
not refused, and an OPC UA session is reused. The probe is asynchronous I/O on the gateway's
loop (each driver serialises it with its polling); building the text report runs in a worker
thread. One run at a time; each run is in the audit log with its outcome. Devices that send
on their own (MQTT) are judged by what they sent (`gateway.check.heard`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel

from gateway.api import iso
from gateway.auth import Technician
from gateway.check import devices_online, format_report
from gateway.readings import Value
from gateway.runtime import GatewayState

if TYPE_CHECKING:
    from gateway.runtime import Gateway

router = APIRouter(tags=["commissioning"])

#: A device that does not answer costs its timeouts per request; past this the run is refused.
TIMEOUT_S = 120.0


class ProbeLine(BaseModel):
    device: str
    point: str
    ok: bool
    value: Value
    unit: str
    reason: str
    #: The configured device it came through when that is not `device` (an MQTT device's
    #: points belong to the machines publishing on it); empty otherwise.
    source: str


class CommissioningOut(BaseModel):
    #: Every probed point read OK.
    ok: bool
    points_ok: int
    points_total: int
    devices_online: list[str]
    devices_total: int
    started: str
    duration_s: float
    results: list[ProbeLine]
    #: The same table `millrace check` prints.
    report: str


def _lock(request: Request) -> asyncio.Lock:
    state = request.app.state
    if getattr(state, "commissioning_lock", None) is None:
        state.commissioning_lock = asyncio.Lock()
    return state.commissioning_lock


@router.post("/commissioning", response_model=CommissioningOut)
async def commissioning(request: Request, who: Technician) -> CommissioningOut:
    """Read every point of every device once and report OK, or FAIL with the reason, and the
    devices online. 409 while another run is going on; 503 while the gateway is not running;
    504 past the time limit."""
    gw: Gateway = request.app.state.gateway
    if gw.state is not GatewayState.RUNNING:
        raise HTTPException(503, f"the gateway is {gw.state}")
    lock = _lock(request)
    if lock.locked():
        raise HTTPException(409, "a commissioning check is already running")
    async with lock:
        started, t0 = time.time(), time.monotonic()
        try:
            async with asyncio.timeout(TIMEOUT_S):
                results = await gw.probe()
        except TimeoutError:
            await gw.audit.append(
                "commissioning.run", who.who, gw.config.gateway.id, {"result": "timeout"}
            )
            raise HTTPException(504, f"the check did not finish within {TIMEOUT_S:.0f}s") from None
        report = await asyncio.to_thread(format_report, gw.loaded, results)
    online, total = devices_online(gw.loaded, results)
    points_ok = sum(1 for r in results if r.ok)
    ok = points_ok == len(results)
    await gw.audit.append(
        "commissioning.run",
        who.who,
        gw.config.gateway.id,
        {
            "result": "ok" if ok else "failures",
            "points_ok": points_ok,
            "points": len(results),
            "devices_online": len(online),
            "devices": total,
            "role": str(who.role),
        },
    )
    return CommissioningOut(
        ok=ok,
        points_ok=points_ok,
        points_total=len(results),
        devices_online=online,
        devices_total=total,
        started=iso(started) or "",
        duration_s=round(time.monotonic() - t0, 3),
        results=[
            ProbeLine(
                device=r.device,
                point=r.point,
                ok=r.ok,
                value=r.value,
                unit=r.unit,
                reason=r.reason,
                source=r.source,
            )
            for r in results
        ],
        report=report,
    )
