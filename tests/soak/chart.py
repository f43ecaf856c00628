"""A small self-written SVG line chart for the soak's time series (no plotting dependency:
the gateway's own dependencies stay what a Pi needs, and an SVG opens in any browser)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


@dataclass
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    dashed: bool = False


@dataclass
class Panel:
    title: str
    unit: str
    series: list[Series] = field(default_factory=list)


def _nice_max(v: float) -> float:
    """A round axis top at or above `v` (1, 2, 2.5, 5 x 10^k)."""
    if v <= 0 or not math.isfinite(v):
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def _nice_min(lo: float, hi: float) -> float:
    """Start the axis at 0 unless the data sit in a narrow band far above it (RSS): then
    just below the band, so a slow drift is visible instead of a flat line."""
    if lo <= 0 or lo < 0.5 * hi:
        return 0.0
    span = hi - lo
    step = 10 ** math.floor(math.log10(span)) if span > 0 else 1.0
    return math.floor((lo - span * 0.5) / step) * step


def render(
    panels: list[Panel],
    *,
    title: str,
    x_label: str = "minutes",
    marker_x: float | None = None,
    marker_label: str = "",
    width: int = 960,
    panel_h: int = 140,
) -> str:
    """Panels stacked vertically, sharing the x axis; `marker_x` draws a vertical line
    (the end of the warm-up) in every panel."""
    left, right, top, gap = 70, 180, 40, 42
    plot_w = width - left - right
    height = top + len(panels) * (panel_h + gap) + 20
    xs_all = [x for p in panels for s in p.series for x in s.xs]
    x_max = max(xs_all) if xs_all else 1.0
    x_max = x_max if x_max > 0 else 1.0
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for i, panel in enumerate(panels):
        y0 = top + i * (panel_h + gap)
        ys_all = [y for s in panel.series for y in s.ys if y is not None and math.isfinite(y)]
        hi = _nice_max(max(ys_all)) if ys_all else 1.0
        lo = _nice_min(min(ys_all), hi) if ys_all else 0.0
        if hi <= lo:
            hi = lo + 1.0

        def px(x: float) -> float:
            return left + x / x_max * plot_w

        def py(y: float, y0: int = y0, lo: float = lo, hi: float = hi) -> float:
            return y0 + panel_h - (y - lo) / (hi - lo) * panel_h

        out.append(
            f'<text x="{left}" y="{y0 - 6}" font-weight="bold">{escape(panel.title)}'
            f" ({escape(panel.unit)})</text>"
        )
        out.append(
            f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" '
            'stroke="#999"/>'
        )
        for k in range(5):
            v = lo + (hi - lo) * k / 4
            yy = py(v)
            out.append(
                f'<line x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" '
                'stroke="#eee"/>'
            )
            out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{v:g}</text>')
        for k in range(6):
            xv = x_max * k / 5
            label = f"{xv:.0f}" if x_max >= 10 else f"{xv:.1f}"
            out.append(
                f'<text x="{px(xv):.1f}" y="{y0 + panel_h + 14}" text-anchor="middle">'
                f"{label}</text>"
            )
        if marker_x is not None:
            mx = px(marker_x)
            out.append(
                f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{y0}" y2="{y0 + panel_h}" '
                'stroke="#888" stroke-dasharray="4,3"/>'
            )
            if i == 0 and marker_label:
                out.append(f'<text x="{mx + 3:.1f}" y="{y0 + 12}">{escape(marker_label)}</text>')
        for j, s in enumerate(panel.series):
            color = COLORS[j % len(COLORS)]
            pts = [
                f"{px(x):.1f},{py(y):.1f}"
                for x, y in zip(s.xs, s.ys, strict=True)
                if y is not None and math.isfinite(y)
            ]
            if pts:
                dash = ' stroke-dasharray="6,4"' if s.dashed else ""
                out.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="1.5"{dash} '
                    f'points="{" ".join(pts)}"/>'
                )
            ly = y0 + 14 + j * 15
            out.append(
                f'<line x1="{left + plot_w + 10}" x2="{left + plot_w + 28}" y1="{ly - 4}" '
                f'y2="{ly - 4}" stroke="{color}" stroke-width="2"/>'
            )
            out.append(f'<text x="{left + plot_w + 32}" y="{ly}">{escape(s.label)}</text>')
    out.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"
