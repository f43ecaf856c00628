// Overview: the share of devices online, active alarms, the uplinks' backlog and how many
// hours the disk can keep buffering, the shared machines by availability.

import { fill, h, headRow } from "./dom.js";
import { duration, num, t, tv } from "./i18n.js";
import { state } from "./state.js";

let root = null;

export function mount(el) {
  root = el;
  render();
}

export function update(kind) {
  if (kind === "overview" || kind === "connection") render();
}

export function destroy() {
  root = null;
}

function card(key, value, extra, cls) {
  return h(
    "section",
    { class: ["card", "stat", cls], dataset: { card: key.replace("overview.", "") } },
    h("h2", { text: t(key) }),
    h("div", { class: "big" }, value),
    extra,
  );
}

function render() {
  if (!root) return;
  const o = state.overview;
  if (!o) {
    fill(root, h("p", { class: "muted", text: t("common.waiting") }));
    return;
  }
  const share = o.devices_total ? o.devices_online / o.devices_total : 1;
  const online = card(
    "overview.devices_online",
    `${o.devices_online} / ${o.devices_total}`,
    [
      h("meter", { min: 0, max: 1, low: 0.5, high: 0.99, optimum: 1, value: share }),
      h("p", { class: "muted", text: t("overview.share", { p: num(share * 100, 0) }) }),
    ],
    o.status === "ok" ? "good" : "warn",
  );
  const alarms = card(
    "overview.alarms",
    String(o.alarms.length),
    o.alarms.length
      ? h(
          "ul",
          { class: "alarms" },
          o.alarms.map((a) =>
            h("li", {}, h("span", { class: "badge bad", text: tv("alarm.", a.alarm) }), " ", a.equipment || a.model),
          ),
        )
      : h("p", { class: "muted", text: t("overview.no_alarms") }),
    o.alarms.length ? "bad" : "good",
  );
  const hours = o.autonomy_hours;
  const autonomy = card(
    "overview.autonomy",
    hours === null ? "—" : t("overview.hours", { n: num(hours, 1) }),
    h("p", { class: "muted", text: hours === null ? t("overview.autonomy_unknown") : t("overview.autonomy_help") }),
    hours !== null && hours < 24 ? "warn" : "",
  );
  const backlog = card(
    "overview.backlog",
    num(o.backlog, 0),
    o.uplinks.length
      ? h(
          "table",
          { class: "compact" },
          h(
            "thead",
            {},
            headRow("overview.col_uplink", "overview.col_state", "overview.col_pending", "overview.col_oldest", "overview.col_autonomy"),
          ),
          h(
            "tbody",
            {},
            o.uplinks.map((u) =>
              h(
                "tr",
                { title: u.last_error || "" },
                h("td", { text: u.name }),
                h("td", {}, h("span", { class: ["badge", u.connected ? "good" : "warn"], text: tv("uplink.", u.state) })),
                h("td", { class: "num", text: num(u.pending, 0) }),
                h("td", { class: "num", text: u.pending ? duration(u.oldest_pending_age_s) : "—" }),
                h("td", { class: "num", text: u.autonomy_hours === null ? "—" : t("overview.hours", { n: num(u.autonomy_hours, 1) }) }),
              ),
            ),
          ),
        )
      : h("p", { class: "muted", text: t("overview.no_uplinks") }),
    o.backlog > 0 ? "warn" : "",
  );
  const m = o.machines || {};
  const machines = card(
    "overview.machines",
    String(Object.values(m).reduce((a, b) => a + b, 0)),
    h(
      "p",
      { class: "levels" },
      ["full", "limited", "none"].map((level) =>
        h("span", { class: ["badge", levelClass(level)] }, `${tv("available.", level)} ${m[level] || 0}`),
      ),
    ),
  );
  const store = o.store_error
    ? h("p", { class: "error", role: "alert", text: t("overview.store_error", { error: o.store_error }) })
    : null;
  fill(root, h("h1", { class: "view-title", text: t("nav.overview") }), store, h("div", { class: "grid" }, online, alarms, backlog, autonomy, machines));
}

export function levelClass(level) {
  return { full: "good", limited: "warn", none: "bad" }[level] || "";
}
