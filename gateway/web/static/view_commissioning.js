// Commissioning: run the check (POST /commissioning: every point of every device read once
// through the running drivers) and read the report: OK, or FAIL with the reason.

import { api } from "./api.js";
import { fill, h, headRow } from "./dom.js";
import { dateTime, num, t } from "./i18n.js";
import { formatValue } from "./view_devices.js";

let root = null;
let out = null;
let last = null; // the last report, kept while the page is open

export function mount(el) {
  root = el;
  const button = h("button", { type: "button", class: "primary", id: "run-check", text: t("check.run"), onclick: () => run(button) });
  fill(
    root,
    h("h1", { class: "view-title", text: t("nav.commissioning") }),
    h("p", { class: "muted", text: t("check.help") }),
    h("div", { class: "row" }, button),
    (out = h("div", { class: "report", "aria-live": "polite" })),
  );
  if (last) show(last);
}

export function update() {}

export function destroy() {
  root = null;
  out = null;
}

async function run(button) {
  button.disabled = true;
  fill(out, h("p", { class: "muted", text: t("check.running") }));
  try {
    last = await api("commissioning", { method: "POST" });
    if (out) show(last);
  } catch (e) {
    if (out) fill(out, h("p", { class: "error", text: e.message }));
  } finally {
    button.disabled = false;
  }
}

function show(r) {
  const failed = r.results.filter((x) => !x.ok);
  const byDevice = new Map();
  for (const x of r.results) {
    if (!byDevice.has(x.device)) byDevice.set(x.device, []);
    byDevice.get(x.device).push(x);
  }
  fill(
    out,
    h(
      "section",
      { class: ["card", r.ok ? "good" : "bad"], id: "check-summary", dataset: { ok: String(r.ok) } },
      h("h2", { text: r.ok ? t("check.all_ok") : t("check.failures", { n: failed.length }) }),
      h(
        "p",
        {},
        t("check.summary", {
          ok: r.points_ok,
          total: r.points_total,
          online: r.devices_online.length,
          devices: r.devices_total,
          s: num(r.duration_s, 1),
        }),
      ),
      h("p", { class: "muted small", text: t("check.when", { at: dateTime(r.started) }) }),
    ),
    // one section per device; those with a failure open: they are what needs doing
    [...byDevice.entries()].map(([device, lines]) => {
      const bad = lines.filter((x) => !x.ok);
      return h(
        "details",
        { class: "card device", open: bad.length > 0, dataset: { checkDevice: device } },
        h(
          "summary",
          {},
          h("span", { class: "device-id", text: device }),
          h("span", {
            class: ["badge", bad.length ? "bad" : "good"],
            text: t("check.device_line", { ok: lines.length - bad.length, total: lines.length }),
          }),
        ),
        h(
          "table",
          { class: "check-table" },
          h("thead", {}, headRow("check.col_point", "check.col_result", "check.col_value", "check.col_reason")),
          h(
            "tbody",
            {},
            [...bad, ...lines.filter((x) => x.ok)].map((x) =>
              h(
                "tr",
                { class: x.ok ? "" : "fail" },
                h("td", { text: x.point }),
                h("td", {}, h("span", { class: ["badge", x.ok ? "good" : "bad"], text: x.ok ? "OK" : "FAIL" })),
                h("td", { class: "num", text: x.value === null ? "" : `${formatValue(x.value)} ${x.unit || ""}` }),
                h("td", { class: "small", text: x.reason }),
              ),
            ),
          ),
        ),
      );
    }),
    h("details", { class: "card" }, h("summary", { text: t("check.text") }), h("pre", { class: "report-text", text: r.report })),
  );
}
