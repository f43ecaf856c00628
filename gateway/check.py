"""The technician's commissioning report: every device and point read once, OK or FAIL
with the reason, and the share of devices online. Runs without the store or the API.

Devices that send on their own (MQTT) cannot be asked for a value. The running gateway
judges them by what they have sent (`heard`): each point by its newest reading and its
machine's health. `millrace check` starts no connection that waits for messages, so it
lists them as not probed rather than as down.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping

from drivers.base import DeviceHealth, DeviceState, PointSpec, ProbeResult
from gateway.configload import LoadedConfig
from gateway.readings import Quality, Reading

#: Device protocols whose devices send on their own: nothing to ask, only what arrived.
LISTENED = frozenset({"mqtt"})


async def commissioning_report(loaded: LoadedConfig) -> tuple[str, bool]:
    from gateway.runtime import Gateway

    gw = Gateway(loaded, api=False)
    total = len([d for d in loaded.config.devices if d.enabled])
    print(f"probing {total} devices on {len(gw.drivers)} connections…", file=sys.stderr)

    def progress(done: int, of: int, key: str) -> None:
        print(f"  [{done}/{of}] {key} done", file=sys.stderr, flush=True)

    try:
        results = await gw.probe(progress)
    finally:
        for drv in gw.drivers:
            await drv.close()
    return format_report(loaded, results), all(r.ok for r in results)


def heard(
    points: Iterable[PointSpec],
    health: Iterable[DeviceHealth],
    latest: Callable[[str], Reading | None],
    now: float,
    declared: Mapping[str, Collection[str]] | None = None,
) -> list[ProbeResult]:
    """The check of a device that sends on its own: a point is OK when its newest reading is
    usable and its machine is not down (stale, broker lost); otherwise FAIL with why.

    Which points a machine should send: those it declares (`declared`, machine id -> point
    names: the machine's `points:`), each FAIL until it arrives. A machine that declares none
    shares a profile written for several kinds of machine (a drone sends no chopper speed),
    so it is judged by the points it does send, and FAILs on all of them only while it has
    sent nothing at all."""
    by_device = {h.device: h for h in health}
    declared = declared or {}
    specs = list(points)
    sent = {s.device for s in specs if latest(s.id) is not None}
    out = []
    for spec in specs:
        names = declared.get(spec.device)
        if names is not None and spec.name not in names:
            continue
        r = latest(spec.id)
        if names is None and r is None and spec.device in sent:
            continue  # not among what this kind of machine sends
        h = by_device.get(spec.device)
        value = None if r is None else r.value
        if h is not None and h.state is DeviceState.DOWN:
            ok, reason = False, h.last_error or "down"
        elif r is None:
            ok, reason = False, "nothing received since the gateway started"
        elif r.quality is Quality.BAD:
            ok, reason = False, r.reason or "bad quality"
        else:
            ok, reason = True, f"received {max(0.0, now - r.ts_gateway):.1f} s ago"
        out.append(ProbeResult(spec.device, spec.name, ok, value, spec.unit, reason, spec.source))
    return out


def devices_online(loaded: LoadedConfig, results: list[ProbeResult]) -> tuple[list[str], int]:
    """The enabled devices with at least one point read OK, and how many were checked
    (enabled ones with results; `millrace check` does not probe devices that send on their
    own). An MQTT device counts as online when any machine on it sent something usable."""
    ok_devices = {r.source or r.device for r in results if r.ok}
    checked = {r.source or r.device for r in results}
    enabled = [d.id for d in loaded.config.devices if d.enabled]
    counted = [d for d in enabled if d in checked or not _listened(loaded, d)]
    return [d for d in counted if d in ok_devices], len(counted)


def _listened(loaded: LoadedConfig, device_id: str) -> bool:
    return any(d.id == device_id and d.protocol in LISTENED for d in loaded.config.devices)


def format_report(loaded: LoadedConfig, results: list[ProbeResult]) -> str:
    by_device: dict[str, list[ProbeResult]] = defaultdict(list)
    for r in results:
        by_device[r.source or r.device].append(r)
    online, _ = devices_online(loaded, results)
    enabled = [d for d in loaded.config.devices if d.enabled]
    skipped = [d for d in enabled if d.protocol in LISTENED and d.id not in by_device]
    enabled = [d for d in enabled if d not in skipped]
    lines = [f"{'DEVICE':<20} {'POINT':<24} {'RESULT':<6} {'VALUE':>16} {'UNIT':<8} REASON"]
    for r in results:
        value = "" if r.value is None else _fmt(r.value)
        lines.append(
            f"{r.device:<20} {r.point:<24} {'OK' if r.ok else 'FAIL':<6} {value:>16} "
            f"{r.unit:<8} {r.reason}"
        )
    ok = sum(1 for r in results if r.ok)
    share = 100.0 * len(online) / len(enabled) if enabled else 100.0
    lines.append("")
    lines.append(f"points OK: {ok}/{len(results)}")
    lines.append(f"devices online: {len(online)}/{len(enabled)} ({share:.0f}%)")
    for d in enabled:
        if d.id not in online:
            first = next((r.reason for r in by_device.get(d.id, []) if r.reason), "no answer")
            lines.append(f"  {d.id}: {first}")
    for d in skipped:
        lines.append(
            f"  {d.id}: not probed ({d.protocol}: it sends on its own; the running gateway's "
            "check, on its page or POST /commissioning, shows what it sent)"
        )
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 16 else text[:15] + "…"
