// Devices: each device's state, last contact and error; inside, each point's live value,
// unit, quality and a small trend (seeded from the stored history when the device is
// opened, then extended by the live stream).

import { api } from "./api.js";
import { trendSvg } from "./chart.js";
import { fill, h, headRow } from "./dom.js";
import { ago, dateTime, num, t, tv } from "./i18n.js";
import { seedTrend, state } from "./state.js";

/** Points the gateway itself publishes are shown in their own views (models, equipment). */
const OWN_TYPES = new Set(["model", "sharing"]);
/** History asked for when a trend is seeded. */
const SEED_SECONDS = 600;
const SEED_LIMIT = 150;

let root = null;
let list = null;
const open = new Set(); // device ids the user opened (kept across re-renders)
let rows = new Map(); // point id -> {value, quality, trend}
let heads = new Map(); // device id -> {known, badge, ago, error}
let agoTimer = null;

export function mount(el) {
  root = el;
  fill(
    root,
    h("h1", { class: "view-title", text: t("nav.devices") }),
    h("input", {
      type: "search",
      class: "filter",
      placeholder: t("devices.filter"),
      "aria-label": t("devices.filter"),
      oninput: (e) => {
        filter = e.target.value.trim().toLowerCase();
        render();
      },
    }),
    (list = h("div", { class: "devices" })),
  );
  render();
  agoTimer = setInterval(refreshAgo, 1000);
}

let filter = "";

export function update(kind, detail) {
  if (!root) return;
  if (kind === "points") {
    for (const id of detail) paint(id);
    // a point never seen before (first values after start): rebuild once
    if (detail.some((id) => !rows.has(id) && visiblePoint(state.points.get(id)))) render();
  } else if (kind === "trend") paint(detail);
  else if (kind === "devices") {
    // same devices: change their headers in place (a rebuild would lose scroll and focus)
    const ids = state.devices.map((d) => d.id);
    if (ids.every((id) => heads.has(id)) && ids.length === [...heads.values()].filter((x) => x.known).length) {
      for (const d of state.devices) paintHead(d);
    } else render();
  } else if (kind === "meta") render();
}

export function destroy() {
  clearInterval(agoTimer);
  root = null;
  rows = new Map();
  heads = new Map();
}

function visiblePoint(p) {
  return p && !OWN_TYPES.has(p.data_type) && !p.name.startsWith("sharing_");
}

function groups() {
  const byDevice = new Map();
  for (const d of state.devices) byDevice.set(d.id, { device: d, points: [] });
  for (const p of state.points.values()) {
    if (!visiblePoint(p)) continue;
    if (!byDevice.has(p.device)) byDevice.set(p.device, { device: null, points: [] });
    byDevice.get(p.device).points.push(p);
  }
  const out = [...byDevice.entries()].filter(([id, g]) => g.device || g.points.length);
  for (const [, g] of out) g.points.sort((a, b) => a.name.localeCompare(b.name));
  return out.filter(
    ([id, g]) => !filter || id.toLowerCase().includes(filter) || g.points.some((p) => p.name.toLowerCase().includes(filter)),
  );
}

function stateClass(s) {
  return { online: "good", connecting: "warn", degraded: "warn", offline: "bad", down: "bad" }[s] || "";
}

function render() {
  if (!list) return;
  rows = new Map();
  heads = new Map();
  const all = groups();
  if (!all.length) {
    fill(list, h("p", { class: "muted", text: t("common.waiting") }));
    return;
  }
  fill(list, all.map(([id, g]) => deviceCard(id, g)));
  for (const id of rows.keys()) paint(id);
}

function deviceCard(id, g) {
  const head = {
    known: Boolean(g.device),
    badge: h("span", { class: "badge" }),
    ago: h("span", { class: "muted small ago" }),
    error: h("p", { class: "error small", hidden: true }),
  };
  heads.set(id, head);
  const details = h(
    "details",
    {
      class: "card device",
      dataset: { device: id },
      open: open.has(id) || Boolean(filter),
      ontoggle: (e) => {
        if (e.target.open) {
          open.add(id);
          seed(g.points);
          for (const p of g.points) paint(p.id);
        } else open.delete(id);
      },
    },
    h(
      "summary",
      {},
      h("span", { class: "device-id", text: id }),
      g.device ? head.badge : null,
      g.device ? h("span", { class: "muted small", text: g.device.protocol }) : null,
      g.device ? head.ago : null,
      h("span", { class: "muted small", text: t("devices.points", { n: g.points.length }) }),
    ),
    head.error,
    g.points.length
      ? h(
          "table",
          { class: "points" },
          h(
            "thead",
            {},
            headRow("devices.col_point", "devices.col_value", "devices.col_quality", "devices.col_trend"),
          ),
          h("tbody", {}, g.points.map(pointRow)),
        )
      : h("p", { class: "muted small", text: t("devices.no_points") }),
  );
  if (g.device) paintHead(g.device);
  if (details.open) seed(g.points);
  return details;
}

function paintHead(d) {
  const head = heads.get(d.id);
  if (!head) return;
  head.badge.className = `badge ${stateClass(d.state)}`;
  head.badge.textContent = tv("device.", d.state);
  head.ago.dataset.since = d.last_contact || "";
  head.ago.textContent = t("devices.contact", { d: ago(d.last_contact) });
  head.error.hidden = !d.last_error;
  head.error.textContent = d.last_error || "";
}

function pointRow(p) {
  const value = h("td", { class: "num value", dataset: { point: p.id } });
  const quality = h("td", {});
  const trend = h("td", { class: "trend-cell" });
  rows.set(p.id, { value, quality, trend });
  paint(p.id);
  return h("tr", { dataset: { pointRow: p.id } }, h("th", { scope: "row", class: "point-name", title: p.id, text: p.name }), value, quality, trend);
}

export function formatValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? t("value.on") : t("value.off");
  if (typeof v === "number") return num(v, 3);
  const s = String(v);
  return s.length > 48 ? `${s.slice(0, 47)}…` : s;
}

function paint(id) {
  const row = rows.get(id);
  const p = state.points.get(id);
  if (!row || !p) return;
  row.value.textContent = `${formatValue(p.value)}${p.unit && p.value !== null ? ` ${p.unit}` : ""}`;
  row.value.title = p.ts ? dateTime(p.ts) : "";
  const qcls = { good: "good", uncertain: "warn", bad: "bad" }[p.quality] || "";
  fill(row.quality, h("span", { class: ["badge", qcls], title: p.reason || "", text: tv("quality.", p.quality) }));
  if (row.trend.isConnected && row.trend.closest("details")?.open) {
    fill(row.trend, trendSvg(p.trend, { label: `${p.name} ${p.unit}` }));
  }
}

function refreshAgo() {
  if (!list) return;
  for (const el of list.querySelectorAll(".ago")) {
    if (el.dataset.since) el.textContent = t("devices.contact", { d: ago(el.dataset.since) });
  }
}

/** Seed the trends of these points from history (numeric ones, a few requests at a time). */
async function seed(points) {
  const todo = points.filter((p) => !p.seeded && !p.seeding && (typeof p.value === "number" || typeof p.value === "boolean"));
  for (const p of todo) p.seeding = true;
  const since = new Date(Date.now() - SEED_SECONDS * 1000).toISOString();
  const worker = async () => {
    while (todo.length) {
      const p = todo.shift();
      try {
        const hist = await api(`points/${encodeURIComponent(p.id)}/history?since=${encodeURIComponent(since)}&limit=${SEED_LIMIT}`);
        seedTrend(p.id, hist.items);
      } catch {
        p.seeding = false; // try again next time the device is opened
      }
    }
  };
  await Promise.all([worker(), worker(), worker()]);
}
