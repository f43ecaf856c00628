// A small trend chart as inline SVG (no chart library: the page must work offline and stay
// small). Numbers only; a bad-quality sample breaks the line so a gap looks like a gap.

import { svg } from "./dom.js";

/** Points kept per trend: ~2 minutes at one value a second. */
export const TREND_MAX = 150;

/**
 * Draw samples [{t: ms, v: number|null}] into a `width` x `height` SVG: a polyline per run
 * of good values, the newest value as a dot, min and max in the title for screen readers.
 */
export function trendSvg(samples, { width = 160, height = 36, label = "" } = {}) {
  const pad = 2;
  const good = samples.filter((s) => typeof s.v === "number" && Number.isFinite(s.v));
  const root = svg("svg", {
    class: "trend",
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: "img",
    "aria-label": label,
    preserveAspectRatio: "none",
  });
  if (good.length < 2) {
    root.append(svg("line", { x1: 0, y1: height / 2, x2: width, y2: height / 2, class: "trend-empty" }));
    return root;
  }
  const t0 = samples[0].t;
  const t1 = samples[samples.length - 1].t;
  let lo = Math.min(...good.map((s) => s.v));
  let hi = Math.max(...good.map((s) => s.v));
  if (hi === lo) {
    hi += 1;
    lo -= 1;
  }
  const x = (t) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (width - 2 * pad);
  const y = (v) => height - pad - ((v - lo) / (hi - lo)) * (height - 2 * pad);
  let run = [];
  const flush = () => {
    if (run.length > 1) root.append(svg("polyline", { points: run.join(" "), class: "trend-line" }));
    run = [];
  };
  for (const s of samples) {
    if (typeof s.v === "number" && Number.isFinite(s.v)) run.push(`${x(s.t).toFixed(1)},${y(s.v).toFixed(1)}`);
    else flush();
  }
  flush();
  const last = good[good.length - 1];
  root.append(svg("circle", { cx: x(last.t).toFixed(1), cy: y(last.v).toFixed(1), r: 2, class: "trend-dot" }));
  root.append(svg("title", {}, `${label} ${lo} … ${hi}`));
  return root;
}

/** Append a sample, dropping the oldest past TREND_MAX. Bools plot as 0/1. */
export function pushSample(samples, t, value, quality) {
  let v = null;
  if (quality === "good" || quality === "uncertain") {
    if (typeof value === "number") v = value;
    else if (typeof value === "boolean") v = value ? 1 : 0;
  }
  if (samples.length && samples[samples.length - 1].t === t) return samples;
  samples.push({ t, v });
  if (samples.length > TREND_MAX) samples.splice(0, samples.length - TREND_MAX);
  return samples;
}
