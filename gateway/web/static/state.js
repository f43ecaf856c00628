// What the page knows about the gateway, filled from the live stream (and a few API reads),
// and who wants to hear when it changes. Views read it; only this module writes it.

import { pushSample } from "./chart.js";

export const state = {
  who: null,
  /** id -> {id, device, name, unit, data_type, data_class, writable, value, quality, ts, reason, trend} */
  points: new Map(),
  devices: [],
  models: [],
  equipment: [],
  overview: null,
  hello: null,
};

const listeners = new Set();

export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function emit(kind, detail) {
  for (const fn of [...listeners]) fn(kind, detail);
}

export function reset() {
  state.who = null;
  state.points = new Map();
  state.devices = [];
  state.models = [];
  state.equipment = [];
  state.overview = null;
  state.hello = null;
}

function pointEntry(id) {
  let p = state.points.get(id);
  if (!p) {
    const dot = id.indexOf(".");
    p = {
      id,
      device: dot < 0 ? id : id.slice(0, dot),
      name: dot < 0 ? id : id.slice(dot + 1),
      unit: "",
      data_type: "",
      value: null,
      quality: null,
      ts: null,
      reason: null,
      trend: [],
      known: false,
    };
    state.points.set(id, p);
  }
  return p;
}

/** Point descriptions from GET /points (unit, type, class); values come with them. */
export function setPointMeta(list) {
  for (const m of list) {
    const p = pointEntry(m.id);
    Object.assign(p, {
      device: m.device,
      name: m.name,
      unit: m.unit,
      data_type: m.data_type,
      data_class: m.data_class,
      writable: m.writable,
      equipment: m.equipment,
      known: true,
    });
    if (p.ts === null && m.ts_gateway) {
      p.value = m.value;
      p.quality = m.quality;
      p.reason = m.reason;
      p.ts = Date.parse(m.ts_gateway);
    }
  }
  emit("meta");
}

/** Older values of a point (GET /points/{id}/history) in front of the live ones. */
export function seedTrend(id, items) {
  const p = pointEntry(id);
  const seeded = [];
  for (const it of items) pushSample(seeded, Date.parse(it.ts_gateway), it.value, it.quality);
  const newest = seeded.length ? seeded[seeded.length - 1].t : -Infinity;
  p.trend = [...seeded, ...p.trend.filter((s) => s.t > newest)];
  p.seeded = true;
  emit("trend", id);
}

/** One event of the live stream. */
export function applyEvent(name, data) {
  switch (name) {
    case "hello":
      state.hello = data;
      break;
    case "points": {
      const ids = [];
      for (const [id, row] of Object.entries(data)) {
        const [value, quality, ts, reason] = row;
        const p = pointEntry(id);
        p.value = value;
        p.quality = quality;
        p.ts = ts;
        p.reason = reason ?? null;
        pushSample(p.trend, ts, value, quality);
        ids.push(id);
      }
      emit("points", ids);
      return;
    }
    case "devices":
      state.devices = data;
      break;
    case "models":
      state.models = data;
      break;
    case "equipment":
      state.equipment = data;
      break;
    case "overview":
      state.overview = data;
      break;
    default:
      return;
  }
  emit(name, data);
}

/** Let views hear about connection changes and language switches too. */
export function notify(kind, detail) {
  emit(kind, detail);
}
