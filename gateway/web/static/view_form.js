// Register or edit a machine. The form checks nothing itself: while it is typed in, the
// document goes to POST /equipment/validate, which runs exactly the API's validation without
// saving, and each problem is shown at its field, in the reader's language (the API sends a
// code and params with each; an unknown code shows the API's English message). Submitting
// uses POST /equipment, or PATCH /equipment/{id} with If-Match for an edit (only the fields
// that changed are sent, so what this role cannot see is kept as it is).

import { api, ApiError, lineProblem } from "./api.js";
import { $$, fill, h } from "./dom.js";
import { known, t, tv } from "./i18n.js";
import { state } from "./state.js";

const TYPES = [
  "tractor",
  "combine_harvester",
  "sugarcane_harvester",
  "drone_sprayer",
  "fruit_grading_line",
  "cnc_mill",
  "pump",
  "cogeneration_turbine",
  "sugarcane_press",
  "other",
];
const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const RATE_PER = ["hour", "hectare", "tonne", "day"];
const ZONES = ["Asia/Shanghai", "Asia/Ho_Chi_Minh", "Asia/Bangkok", "Asia/Jakarta", "Asia/Manila", "Asia/Kolkata", "UTC"];
const VALIDATE_DELAY_MS = 350;

let root = null;
let form = null;
let mode = "new";
let machineId = null;
let version = null;
let initial = null; // the document the form was filled with (edit: to send only changes)
let touched = new Set();
let showAll = false;
let seq = 0;
let timer = null;
let caps = []; // capability rows: {name, capacity, unit}
let windows = []; // weekly rows: {days: [], start, end}

export function mount(el, args) {
  root = el;
  mode = args.mode === "edit" ? "edit" : "new";
  machineId = args.id;
  touched = new Set();
  showAll = false;
  version = null;
  initial = null;
  fill(root, h("p", { class: "muted", text: t("common.loading") }));
  if (mode === "edit") {
    api(`equipment/${encodeURIComponent(machineId)}`)
      .then((rec) => {
        version = rec.version;
        initial = fromView(rec);
        build(initial, rec.view);
      })
      .catch((e) => fill(root, h("p", { class: "error", text: e.message })));
  } else {
    initial = {
      location: { timezone: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC" },
      sharing: { shared: false, weekly: [], min_booking_hours: 1 },
    };
    build(initial, "full");
  }
}

export function update() {}

export function destroy() {
  clearTimeout(timer);
  root = null;
  form = null;
}

// -- the document <-> the form ----------------------------------------------------------

/** The machine as GET /equipment/{id} shows it to this caller, in the registry's shape. */
function fromView(rec) {
  const m = rec.machine;
  if (rec.view === "full") return structuredClone(m);
  const r = m.restricted || {};
  const s = m.sharing || {};
  return {
    id: m.id,
    type: m.type,
    name: m.name || "",
    make: m.make || "",
    model: m.model || "",
    serial_number: r.serial_number || "",
    notes: r.notes || "",
    owner: { org: m.owner_org || "" },
    capabilities: m.capabilities || [],
    location: {
      lat: r.exact_location?.lat ?? null,
      lon: r.exact_location?.lon ?? null,
      timezone: s.timezone || "UTC",
    },
    sharing: {
      shared: Boolean(s.shared),
      weekly: s.windows || [],
      blackout_dates: s.blackout_dates || [],
      rate: s.rate || null,
      min_booking_hours: s.min_booking_hours ?? 1,
    },
  };
}

const get = (obj, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);

function field(path, labelKey, input, { hint, required } = {}) {
  input.name = path;
  input.id = `f-${path.replace(/\./g, "-")}`;
  input.dataset.path = path;
  return h(
    "div",
    { class: "field", dataset: { field: path } },
    h("label", { for: input.id }, t(labelKey), required ? h("span", { class: "req", "aria-hidden": "true", text: " *" }) : null),
    input,
    hint ? h("p", { class: "hint", text: hint }) : null,
    h("p", { class: "field-error", role: "alert", hidden: true, id: `${input.id}-err` }),
  );
}

function text(path, value, attrs = {}) {
  return h("input", { type: "text", value: value ?? "", autocomplete: "off", ...attrs });
}

function select(options, value, labelPrefix, allowEmpty) {
  return h(
    "select",
    {},
    allowEmpty ? h("option", { value: "", text: "—" }) : null,
    options.map((o) => h("option", { value: o, selected: o === value, text: labelPrefix ? tv(labelPrefix, o) : o })),
  );
}

function build(doc, view) {
  const devices = [...new Set([...state.devices.map((d) => d.id), ...[...state.points.values()].map((p) => p.device)])].sort();
  const models = state.models.map((m) => m.id);
  caps = (doc.capabilities || []).map((c) => ({ ...c }));
  windows = (doc.sharing?.weekly || []).map((w) => ({ ...w, days: [...w.days] }));
  const partial = view !== "full";
  const hidden = partial ? t("form.hidden_keep") : null;
  const modelsBox = h(
    "div",
    { class: "checks", id: "f-health-models", dataset: { path: "health.models" }, role: "group" },
    models.length
      ? models.map((id) =>
          h(
            "label",
            { class: "check" },
            h("input", { type: "checkbox", name: "health.models", value: id, checked: (doc.health?.models || []).includes(id) }),
            ` ${id}`,
          ),
        )
      : h("span", { class: "muted small", text: t("form.no_models") }),
  );
  const geo =
    navigator.geolocation && window.isSecureContext
      ? h("button", { type: "button", class: "ghost", text: t("form.use_location"), onclick: useLocation })
      : null;
  form = h(
    "form",
    { class: "card machine-form", novalidate: true, id: "machine-form", oninput: changed, onchange: changed, onsubmit: submit },
    h("h1", { class: "view-title", text: mode === "edit" ? t("form.edit_title", { id: machineId }) : t("form.new_title") }),
    h("div", { class: "problems error", role: "alert", id: "form-problems", hidden: true }),
    h(
      "fieldset",
      {},
      h("legend", { text: t("form.identity") }),
      field("id", "form.id", text("id", doc.id, { readonly: mode === "edit", pattern: "[A-Za-z0-9][A-Za-z0-9_-]*" }), {
        required: true,
        hint: t("form.id_hint"),
      }),
      field("type", "form.type", select(TYPES, doc.type, "type.", mode === "new"), { required: true }),
      field("name", "form.name", text("name", doc.name)),
      field("make", "form.make", text("make", doc.make)),
      field("model", "form.model", text("model", doc.model)),
      field("serial_number", "form.serial", text("serial_number", doc.serial_number), { hint: partial ? hidden : null }),
    ),
    h(
      "fieldset",
      { dataset: { field: "owner" } },
      h("legend", { text: t("form.owner") }),
      h("p", { class: "field-error", role: "alert", hidden: true }),
      field("owner.org", "form.owner_org", text("owner.org", doc.owner?.org), { hint: t("form.owner_org_hint") }),
      field("owner.contact_name", "form.contact_name", text("owner.contact_name", doc.owner?.contact_name), { hint: partial ? hidden : t("form.private_hint") }),
      field("owner.phone", "form.phone", text("owner.phone", doc.owner?.phone, { type: "tel" }), { hint: partial ? hidden : null }),
      field("owner.email", "form.email", text("owner.email", doc.owner?.email, { type: "email" }), { hint: partial ? hidden : null }),
    ),
    h(
      "fieldset",
      { class: "field-group", dataset: { field: "location" } },
      h("legend", { text: t("form.location") }),
      h(
        "div",
        { class: "pair" },
        field("location.lat", "form.lat", text("location.lat", doc.location?.lat, { inputmode: "decimal" })),
        field("location.lon", "form.lon", text("location.lon", doc.location?.lon, { inputmode: "decimal" })),
      ),
      geo,
      partial ? h("p", { class: "hint", text: hidden }) : null,
      h("p", { class: "field-error", role: "alert", hidden: true }),
      field("location.description", "form.place", text("location.description", doc.location?.description)),
      field("location.timezone", "form.timezone", text("location.timezone", doc.location?.timezone, { list: "zones" })),
      h("datalist", { id: "zones" }, ZONES.map((z) => h("option", { value: z }))),
    ),
    h(
      "fieldset",
      {},
      h("legend", { text: t("form.wiring") }),
      field("device", "form.device", text("device", doc.device, { list: "device-list" }), {
        required: mode === "new",
        hint: partial ? hidden : t("form.device_hint"),
      }),
      h("datalist", { id: "device-list" }, devices.map((d) => h("option", { value: d }))),
      field("point_prefix", "form.point_prefix", text("point_prefix", doc.point_prefix), { hint: partial ? hidden : t("form.prefix_hint") }),
      h(
        "div",
        { class: "field", dataset: { field: "health.models" } },
        h("span", { class: "label", text: t("form.health_models") }),
        modelsBox,
        h("p", { class: "field-error", role: "alert", hidden: true }),
      ),
    ),
    h(
      "fieldset",
      { dataset: { field: "capabilities" } },
      h("legend", { text: t("form.capabilities") }),
      h("div", { id: "caps" }),
      h("button", { type: "button", class: "ghost", text: t("form.add_capability"), onclick: () => { caps.push({ name: "", capacity: "", unit: "" }); drawCaps(); changed(); } }),
      h("p", { class: "field-error", role: "alert", hidden: true }),
    ),
    h(
      "fieldset",
      { dataset: { field: "sharing" } },
      h("legend", { text: t("form.sharing") }),
      h("p", { class: "field-error", role: "alert", hidden: true }),
      h(
        "div",
        { class: "field", dataset: { field: "sharing.shared" } },
        h(
          "label",
          { class: "check" },
          h("input", { type: "checkbox", name: "sharing.shared", id: "f-sharing-shared", dataset: { path: "sharing.shared" }, checked: Boolean(doc.sharing?.shared) }),
          " ",
          t("form.shared"),
        ),
        h("p", { class: "hint", text: t("form.shared_hint") }),
        h("p", { class: "field-error", role: "alert", hidden: true }),
      ),
      h("div", { id: "windows", dataset: { field: "sharing.weekly" } }),
      h("button", { type: "button", class: "ghost", text: t("form.add_window"), onclick: () => { windows.push({ days: ["mon", "tue", "wed", "thu", "fri"], start: "08:00", end: "17:00" }); drawWindows(); changed(); } }),
      field("sharing.min_booking_hours", "form.min_booking", text("sharing.min_booking_hours", doc.sharing?.min_booking_hours, { inputmode: "decimal" })),
      h(
        "div",
        { class: "pair", dataset: { field: "sharing.rate" } },
        field("sharing.rate.amount", "form.rate_amount", text("sharing.rate.amount", doc.sharing?.rate?.amount, { inputmode: "decimal" })),
        field("sharing.rate.currency", "form.rate_currency", text("sharing.rate.currency", doc.sharing?.rate?.currency ?? "", { maxlength: 3, placeholder: "CNY" })),
        field("sharing.rate.per", "form.rate_per", select(RATE_PER, doc.sharing?.rate?.per || "hour", "per.", false)),
        h("p", { class: "field-error", role: "alert", hidden: true }),
      ),
      field("sharing.blackout_dates", "form.blackout", text("sharing.blackout_dates", (doc.sharing?.blackout_dates || []).join(", "), { placeholder: "2025-06-15, 2025-10-01" }), {
        hint: t("form.blackout_hint"),
      }),
    ),
    h(
      "fieldset",
      {},
      h("legend", { text: t("form.more") }),
      field("notes", "form.notes", h("textarea", { rows: 3, text: doc.notes || "" }), { hint: partial ? hidden : null }),
    ),
    h(
      "div",
      { class: "row form-actions" },
      h("span", { class: "muted small", id: "form-status", role: "status", "aria-live": "polite" }),
      h("a", { class: "button ghost", href: "#/equipment", text: t("common.cancel") }),
      h("button", { type: "submit", class: "primary", id: "form-submit", text: mode === "edit" ? t("form.save") : t("form.submit") }),
    ),
  );
  fill(root, form);
  drawCaps();
  drawWindows();
  for (const el of $$("input, select, textarea", form)) el.addEventListener("blur", () => markTouched(el));
  if (mode === "edit") validateSoon();
}

function drawCaps() {
  const box = form.querySelector("#caps");
  fill(
    box,
    caps.map((c, i) =>
      h(
        "div",
        { class: "repeat", dataset: { field: `capabilities.${i}` } },
        field(`capabilities.${i}.name`, "form.cap_name", text("", c.name, { placeholder: "harvesting", oninput: (e) => (caps[i].name = e.target.value) })),
        field(`capabilities.${i}.capacity`, "form.cap_capacity", text("", c.capacity, { inputmode: "decimal", oninput: (e) => (caps[i].capacity = e.target.value) })),
        field(`capabilities.${i}.unit`, "form.cap_unit", text("", c.unit, { placeholder: "t/h", oninput: (e) => (caps[i].unit = e.target.value) })),
        h("button", { type: "button", class: "ghost remove", "aria-label": t("form.remove"), text: "✕", onclick: () => { caps.splice(i, 1); drawCaps(); changed(); } }),
        h("p", { class: "field-error", role: "alert", hidden: true }),
      ),
    ),
  );
}

function drawWindows() {
  const box = form.querySelector("#windows");
  fill(
    box,
    windows.map((w, i) =>
      h(
        "div",
        { class: "repeat window", dataset: { field: `sharing.weekly.${i}` } },
        h(
          "div",
          { class: "field days", dataset: { field: `sharing.weekly.${i}.days` } },
          h("span", { class: "label", text: t("form.days") }),
          h(
            "div",
            { class: "checks", role: "group", dataset: { path: `sharing.weekly.${i}.days` } },
            DAYS.map((d) =>
              h(
                "label",
                { class: "check day" },
                h("input", {
                  type: "checkbox",
                  value: d,
                  checked: w.days.includes(d),
                  onchange: (e) => {
                    const set = new Set(windows[i].days);
                    if (e.target.checked) set.add(d);
                    else set.delete(d);
                    windows[i].days = DAYS.filter((x) => set.has(x));
                  },
                }),
                ` ${tv("day.", d)}`,
              ),
            ),
          ),
          h("p", { class: "field-error", role: "alert", hidden: true }),
        ),
        field(`sharing.weekly.${i}.start`, "form.start", h("input", { type: "time", value: w.start, oninput: (e) => (windows[i].start = e.target.value) })),
        field(`sharing.weekly.${i}.end`, "form.end", text("", w.end, { placeholder: "17:00", oninput: (e) => (windows[i].end = e.target.value) }), { hint: t("form.end_hint") }),
        h("button", { type: "button", class: "ghost remove", "aria-label": t("form.remove"), text: "✕", onclick: () => { windows.splice(i, 1); drawWindows(); changed(); } }),
        h("p", { class: "field-error", role: "alert", hidden: true }),
      ),
    ),
  );
}

const val = (path) => form.elements.namedItem(path)?.value?.trim() ?? "";

/** A number when the text is one; the text itself otherwise, so the API names the problem. */
function number(textValue) {
  if (textValue === "") return undefined;
  const n = Number(textValue.replace(",", "."));
  return Number.isFinite(n) ? n : textValue;
}

/** The whole document as the form says it (empty optional fields left out). */
function collect() {
  const doc = {};
  const put = (path, value, empty = "") => {
    if (value === undefined || value === "") {
      // an edit that clears a field says so; a new machine just leaves it out
      const before = get(initial, path);
      if (mode !== "edit" || before === undefined || before === null || before === "") return;
      value = empty;
    }
    const keys = path.split(".");
    let o = doc;
    for (const k of keys.slice(0, -1)) o = o[k] ??= {};
    o[keys[keys.length - 1]] = value;
  };
  for (const p of ["id", "type", "name", "make", "model", "serial_number", "device", "point_prefix", "notes"]) put(p, val(p));
  for (const p of ["owner.org", "owner.contact_name", "owner.phone", "owner.email", "location.description", "location.timezone"]) put(p, val(p));
  put("location.lat", number(val("location.lat")), null);
  put("location.lon", number(val("location.lon")), null);
  const models = $$('input[name="health.models"]:checked', form).map((el) => el.value);
  if (models.length || (initial?.health?.models || []).length) put("health.models", models);
  if (caps.length || (initial?.capabilities || []).length)
    doc.capabilities = caps.map((c) => ({ name: String(c.name).trim(), capacity: number(String(c.capacity).trim()) ?? null, unit: String(c.unit).trim() }));
  doc.sharing = { shared: form.elements.namedItem("sharing.shared").checked };
  if (windows.length || (initial?.sharing?.weekly || []).length) doc.sharing.weekly = windows.map((w) => ({ days: [...w.days], start: w.start, end: w.end }));
  put("sharing.min_booking_hours", number(val("sharing.min_booking_hours")));
  const amount = val("sharing.rate.amount");
  const currency = val("sharing.rate.currency");
  if (amount !== "" || currency !== "") doc.sharing.rate = { amount: number(amount) ?? null, currency, per: val("sharing.rate.per") };
  else if (initial?.sharing?.rate) doc.sharing.rate = null;
  const dates = val("sharing.blackout_dates").split(/[\s,;，、]+/).filter(Boolean);
  if (dates.length || (initial?.sharing?.blackout_dates || []).length) doc.sharing.blackout_dates = dates;
  return doc;
}

/** What changed against the document the form started from (mappings key by key). */
function diff(now, before) {
  const out = {};
  for (const [k, v] of Object.entries(now)) {
    const b = before?.[k];
    if (v && typeof v === "object" && !Array.isArray(v) && b && typeof b === "object" && !Array.isArray(b)) {
      const sub = diff(v, b);
      if (Object.keys(sub).length) out[k] = sub;
    } else if (JSON.stringify(v) !== JSON.stringify(b ?? (Array.isArray(v) ? [] : undefined))) {
      out[k] = v;
    }
  }
  return out;
}

function body() {
  const doc = collect();
  if (mode === "new") return doc;
  const patch = diff(doc, initial);
  patch.id = machineId;
  return patch;
}

// -- validation through the API ---------------------------------------------------------

function markTouched(el) {
  const path = el.dataset.path || el.closest("[data-path]")?.dataset.path || el.name;
  if (path) touched.add(path);
}

function changed(e) {
  if (e?.target) markTouched(e.target);
  validateSoon();
}

function validateSoon() {
  clearTimeout(timer);
  timer = setTimeout(() => validate(), VALIDATE_DELAY_MS);
}

function validatePath() {
  return mode === "edit" ? `equipment/validate?replaces=${encodeURIComponent(machineId)}` : "equipment/validate";
}

/** Ask the API; show its problems. Resolves to true when the document is valid. */
async function validate() {
  if (!form) return false;
  const mine = ++seq;
  const status = form.querySelector("#form-status");
  status.textContent = t("form.checking");
  try {
    await api(validatePath(), {
      method: "POST",
      body: body(),
      headers: mode === "edit" && version !== null ? { "If-Match": String(version) } : {},
    });
    if (mine !== seq || !form) return true;
    showProblems([]);
    status.textContent = t("form.valid");
    return true;
  } catch (e) {
    if (mine !== seq || !form) return false;
    status.textContent = "";
    if (e instanceof ApiError && e.status === 422) showProblems(e.problems.length ? e.problems : [lineProblem(e.message)]);
    else if (e instanceof ApiError && e.status === 409 && mode === "new") showProblems([{ ...lineProblem(e.message), path: "id" }]);
    else showProblems([lineProblem(e.message)]);
    return false;
  }
}

const NO_GOT = new Set(["missing", "shared_needs"]);

// What a shared machine lacks, named as the form labels those fields.
const FIELD_LABELS = {
  make: "form.make",
  model: "form.model",
  "owner.org": "form.owner_org",
  location: "form.location",
};

function paramsFor(problem) {
  const params = { ...(problem.params || {}) };
  if (problem.code === "shared_needs" && typeof params.fields === "string") {
    params.missing = params.fields
      .split(",")
      .map((f) => (FIELD_LABELS[f] ? t(FIELD_LABELS[f]) : f))
      .join(t("problem.list_sep"));
  }
  return params;
}

/** A problem in the reader's language: its code's message with its params, and the value
 * it was given; the API's English message for a code the catalogue does not have. */
export function problemText(problem) {
  const key = `problem.${problem.code}`;
  const text = problem.code && known(key) ? t(key, paramsFor(problem)) : problem.message;
  const got = problem.got;
  // nothing to show for a missing field or a whole group ("{...}", "[...]"), nor where the
  // message already says it (a shared machine's missing fields)
  if (got === null || got === undefined || /^[[{]/.test(got) || NO_GOT.has(problem.code)) return text;
  return t("problem.got", { text, got });
}

function fieldFor(path) {
  const parts = path.split(".");
  while (parts.length) {
    const el = form.querySelector(`[data-field="${CSS.escape(parts.join("."))}"]`);
    if (el) return el;
    parts.pop();
  }
  return null;
}

function showProblems(problems) {
  for (const el of $$(".field-error", form)) {
    el.hidden = true;
    el.textContent = "";
  }
  for (const el of $$("[aria-invalid]", form)) el.removeAttribute("aria-invalid");
  for (const el of $$(".invalid", form)) el.classList.remove("invalid");
  const general = [];
  for (const problem of problems) {
    const path = problem.path || "(machine)";
    const message = problemText(problem);
    const line = path === "(machine)" ? message : `${path}: ${message}`;
    const target = path === "(machine)" ? null : fieldFor(path);
    const shown = showAll || [...touched].some((p) => path === p || path.startsWith(`${p}.`) || p.startsWith(`${path}.`));
    if (!shown) continue;
    if (!target) {
      general.push(line);
      continue;
    }
    target.classList.add("invalid");
    const err = [...target.children].find((c) => c.classList?.contains("field-error"));
    if (err) {
      err.hidden = false;
      err.textContent = err.textContent ? `${err.textContent}\n${message}` : message;
    } else general.push(line);
    // only the field's own controls: a problem of a whole section marks no single input
    for (const input of $$("input, select, textarea", target)) {
      if (input.closest("[data-field]") === target) input.setAttribute("aria-invalid", "true");
    }
  }
  const box = form.querySelector("#form-problems");
  fill(box, general.length ? h("ul", {}, general.map((g) => h("li", { text: g }))) : null);
  box.hidden = !general.length;
}

async function submit(e) {
  e.preventDefault();
  showAll = true;
  clearTimeout(timer);
  const button = form.querySelector("#form-submit");
  button.disabled = true;
  try {
    if (!(await validate())) {
      form.querySelector(".invalid input, .invalid select, .invalid textarea")?.focus();
      return;
    }
    const status = form.querySelector("#form-status");
    status.textContent = t("form.saving");
    if (mode === "new") {
      await api("equipment", { method: "POST", body: body() });
    } else {
      await api(`equipment/${encodeURIComponent(machineId)}`, {
        method: "PATCH",
        body: body(),
        headers: { "If-Match": String(version) },
      });
    }
    location.hash = "#/equipment";
  } catch (err) {
    if (!form) return;
    form.querySelector("#form-status").textContent = "";
    if (err instanceof ApiError && err.status === 422) showProblems(err.problems);
    else if (err instanceof ApiError && err.status === 409 && mode === "edit") showProblems([lineProblem(t("form.conflict"))]);
    else showProblems([lineProblem(err.message)]);
  } finally {
    if (form) button.disabled = false;
  }
}

function useLocation() {
  navigator.geolocation.getCurrentPosition(
    (pos) => {
      form.elements.namedItem("location.lat").value = pos.coords.latitude.toFixed(5);
      form.elements.namedItem("location.lon").value = pos.coords.longitude.toFixed(5);
      touched.add("location");
      validateSoon();
    },
    () => showProblems([`location: ${t("form.no_location")}`]),
    { enableHighAccuracy: true, timeout: 10000 },
  );
}
