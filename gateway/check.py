"""The technician's commissioning report: every device and point read once, OK or FAIL
with the reason, and the share of devices online. Runs without the store or the API."""

from __future__ import annotations

import sys
from collections import defaultdict

from drivers.base import ProbeResult
from gateway.configload import LoadedConfig


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


def devices_online(loaded: LoadedConfig, results: list[ProbeResult]) -> tuple[list[str], int]:
    """The enabled devices with at least one point read OK, and how many are enabled."""
    ok_devices = {r.device for r in results if r.ok}
    enabled = [d.id for d in loaded.config.devices if d.enabled]
    return [d for d in enabled if d in ok_devices], len(enabled)


def format_report(loaded: LoadedConfig, results: list[ProbeResult]) -> str:
    by_device: dict[str, list[ProbeResult]] = defaultdict(list)
    for r in results:
        by_device[r.device].append(r)
    enabled = [d for d in loaded.config.devices if d.enabled]
    online, _ = devices_online(loaded, results)
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
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 16 else text[:15] + "…"
