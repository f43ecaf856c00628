// Equipment: the registered machines with their live status, health and availability; per
// machine the windows offered to the pool and the bookings that came back. Technicians get
// "register" and "edit" (the form is view_form.js).

import { api } from "./api.js";
import { fill, h, headRow } from "./dom.js";
import { dateTime, num, t, tv } from "./i18n.js";
import { state } from "./state.js";
import { levelClass } from "./view_overview.js";

let root = null;
let listEl = null;
let records = []; // GET /equipment
let expanded = new Set();
let detailEls = new Map(); // machine id -> its detail block, kept across live re-renders
let refetching = null;

const STATUS_CLASS = { working: "good", idle: "good", in_transit: "good", fault: "bad", maintenance: "warn", offline: "bad" };

export function mount(el) {
  root = el;
  const canEdit = Boolean(state.who?.can?.register_equipment);
  fill(
    root,
    h(
      "div",
      { class: "row view-head" },
      h("h1", { class: "view-title", text: t("nav.equipment") }),
      canEdit ? h("a", { class: "button primary", href: "#/equipment/new", id: "register-machine", text: t("equipment.register") }) : null,
    ),
    (listEl = h("div", { class: "machines" }, h("p", { class: "muted", text: t("common.loading") }))),
  );
  load();
}

export function update(kind) {
  if (kind !== "equipment" || !root) return;
  const known = new Set(records.map((r) => r.machine.id));
  if (state.equipment.some((m) => !known.has(m.id) && !m.retired)) load();
  else render();
}

export function destroy() {
  root = null;
  listEl = null;
  detailEls = new Map();
}

async function load() {
  if (refetching) return refetching;
  refetching = api("equipment")
    .then((list) => {
      records = list;
      render();
    })
    .catch((e) => {
      if (listEl) fill(listEl, h("p", { class: "error", text: e.message }));
    })
    .finally(() => {
      refetching = null;
    });
  return refetching;
}

function liveOf(id, rec) {
  return state.equipment.find((m) => m.id === id) || rec.live || null;
}

function render() {
  if (!listEl) return;
  if (!records.length) {
    fill(listEl, h("p", { class: "muted", text: t("equipment.none") }));
    return;
  }
  fill(listEl, records.map(machineCard));
}

function machineCard(rec) {
  const m = rec.machine;
  const live = liveOf(m.id, rec);
  const canEdit = Boolean(state.who?.can?.register_equipment) && !rec.retired;
  const avail = live?.available;
  const health = live?.health || {};
  const risk = health.failure_risk;
  let detail = detailEls.get(m.id);
  if (!detail) {
    detail = h("div", { class: "machine-detail", hidden: !expanded.has(m.id) });
    detailEls.set(m.id, detail);
    if (expanded.has(m.id)) loadDetail(m.id, detail);
  }
  return h(
    "section",
    { class: "card machine", dataset: { machine: m.id } },
    h(
      "header",
      { class: "row" },
      h("h2", {}, m.id, m.name ? h("span", { class: "muted", text: ` · ${m.name}` }) : null),
      h("span", { class: "muted small", text: tv("type.", m.type) }),
    ),
    h(
      "dl",
      { class: "facts" },
      h("dt", { text: t("equipment.status") }),
      h(
        "dd",
        {},
        h("span", { class: ["badge", STATUS_CLASS[live?.status]], dataset: { status: live?.status || "" }, text: tv("status.", live?.status) }),
        live?.status_reason ? h("span", { class: "muted small", text: ` ${live.status_reason}` }) : null,
      ),
      h("dt", { text: t("equipment.available") }),
      h(
        "dd",
        {},
        h("span", { class: ["badge", levelClass(avail)], text: tv("available.", avail) }),
        live?.availability?.reason ? h("span", { class: "muted small", text: ` ${live.availability.reason}` }) : null,
      ),
      h("dt", { text: t("equipment.health") }),
      h(
        "dd",
        {},
        risk === null || risk === undefined ? t("equipment.no_health") : t("equipment.risk", { p: num(risk * 100, 0) }),
        health.rul_hours !== null && health.rul_hours !== undefined ? ` · ${t("equipment.rul", { h: num(health.rul_hours, 1) })}` : "",
      ),
      h("dt", { text: t("equipment.shared") }),
      h("dd", { text: live?.shared ? t("common.yes") : t("common.no") }),
    ),
    h(
      "div",
      { class: "row actions" },
      h("button", {
        type: "button",
        class: "ghost",
        "aria-expanded": String(expanded.has(m.id)),
        text: t("equipment.details"),
        onclick: (e) => {
          const open = !expanded.has(m.id);
          if (open) expanded.add(m.id);
          else expanded.delete(m.id);
          detail.hidden = !open;
          e.target.setAttribute("aria-expanded", String(open));
          if (open) loadDetail(m.id, detail);
        },
      }),
      canEdit ? h("a", { class: "button ghost", href: `#/equipment/edit/${encodeURIComponent(m.id)}`, text: t("equipment.edit") }) : null,
    ),
    detail,
  );
}

async function loadDetail(id, el) {
  fill(el, h("p", { class: "muted small", text: t("common.loading") }));
  try {
    const a = await api(`equipment/${encodeURIComponent(id)}/availability`);
    const windows = a.availability?.windows || [];
    fill(
      el,
      h("h3", { text: t("equipment.windows") }),
      windows.length
        ? h("ul", { class: "windows" }, windows.map((w) => h("li", { text: `${dateTime(w.start)} → ${dateTime(w.end)}` })))
        : h("p", { class: "muted small", text: t("equipment.no_windows") }),
      h("h3", { text: t("equipment.bookings") }),
      a.bookings.length
        ? h(
            "table",
            { class: "compact" },
            h(
              "thead",
              {},
              headRow("equipment.col_start", "equipment.col_end", "equipment.col_customer", "equipment.col_state"),
            ),
            h(
              "tbody",
              {},
              a.bookings.map((b) =>
                h(
                  "tr",
                  {},
                  h("td", { text: dateTime(b.start) }),
                  h("td", { text: dateTime(b.end) }),
                  h("td", { text: b.customer_org }),
                  h("td", { text: tv("booking.", b.status) }),
                ),
              ),
            ),
          )
        : h("p", { class: "muted small", text: t("equipment.no_bookings") }),
    );
  } catch (e) {
    fill(el, h("p", { class: "error small", text: e.message }));
  }
}
