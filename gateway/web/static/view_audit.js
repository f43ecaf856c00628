// Audit (admin): the hash-chained audit log (GET /audit), oldest first, a page at a time,
// optionally one action only.

import { api } from "./api.js";
import { fill, h, headRow } from "./dom.js";
import { dateTime, t } from "./i18n.js";

const PAGE = 100;
/** Suggestions for the filter (audit action names, not message keys). */
// prettier-ignore
const AUDIT_ACTIONS = ["device.write", "equipment.add", "equipment.update", "commissioning.run", "data.export", "access.denied", "config.applied"];
let root = null;
let body = null;
let more = null;
let after = 0;
let action = "";

export function mount(el) {
  root = el;
  after = 0;
  const filter = h("input", {
    type: "search",
    class: "filter",
    placeholder: t("audit.filter"),
    "aria-label": t("audit.filter"),
    list: "audit-actions",
    onchange: (e) => {
      action = e.target.value.trim();
      after = 0;
      fill(body);
      load();
    },
  });
  fill(
    root,
    h("h1", { class: "view-title", text: t("nav.audit") }),
    h("p", { class: "muted", text: t("audit.help") }),
    filter,
    h(
      "datalist",
      { id: "audit-actions" },
      AUDIT_ACTIONS.map((a) => h("option", { value: a })),
    ),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "audit" },
        h("thead", {}, headRow("audit.col_seq", "audit.col_time", "audit.col_who", "audit.col_action", "audit.col_target", "audit.col_detail")),
        (body = h("tbody", {})),
      ),
    ),
    (more = h("button", { type: "button", class: "ghost", hidden: true, text: t("audit.more"), onclick: load })),
  );
  load();
}

export function update() {}

export function destroy() {
  root = null;
}

async function load() {
  const params = new URLSearchParams({ after: String(after), limit: String(PAGE) });
  if (action) params.set("action", action);
  try {
    const page = await api(`audit?${params}`);
    if (!root) return;
    body.append(
      ...page.entries.map((e) =>
        h(
          "tr",
          { dataset: { seq: e.seq } },
          h("td", { class: "num", text: String(e.seq) }),
          h("td", { text: dateTime(e.ts) }),
          h("td", { text: e.who }),
          h("td", {}, h("code", { text: e.action })),
          h("td", { text: e.target }),
          detailCell(e.detail),
        ),
      ),
    );
    after = page.next_after ?? after;
    more.hidden = page.next_after === null;
    if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted", text: t("audit.none") })));
  } catch (e) {
    if (root) body.append(h("tr", {}, h("td", { colspan: 6, class: "error", text: e.message })));
  }
}

/** The detail as compact JSON, cut to a readable length (all of it in the tooltip). */
function detailCell(detail) {
  const text = JSON.stringify(detail);
  return h("td", { class: "small detail", title: text, text: text.length > 240 ? `${text.slice(0, 239)}…` : text });
}
