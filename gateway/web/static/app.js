// The technician's page: sign-in, the live stream, hash routes and the shell around the
// views. What a role cannot do is not offered (GET /whoami says what it can); the API
// still checks every call.

import { api, ApiError, apiUrl, authHeader, getToken, setToken, setUnauthorizedHandler } from "./api.js";
import { $, $$ } from "./dom.js";
import { ago, currentLang, loadMessages, onLangChange, setLang, t, tv } from "./i18n.js";
import { openLive } from "./live.js";
import { applyEvent, notify, reset, setPointMeta, state, subscribe } from "./state.js";
import * as auditView from "./view_audit.js";
import * as commissioningView from "./view_commissioning.js";
import * as devicesView from "./view_devices.js";
import * as equipmentView from "./view_equipment.js";
import * as formView from "./view_form.js";
import * as modelsView from "./view_models.js";
import * as overviewView from "./view_overview.js";

/** route name -> [view module, ability needed (GET /whoami `can`) or null] */
const ROUTES = {
  overview: [overviewView, null],
  devices: [devicesView, null],
  models: [modelsView, null],
  equipment: [equipmentView, null],
  "equipment-form": [formView, "register_equipment"],
  commissioning: [commissioningView, "commissioning"],
  audit: [auditView, "audit"],
};

let live = null;
let current = null; // {name, module, args}
let unsubscribe = null;
let bannerTimer = null;

function allowed(ability) {
  return !ability || Boolean(state.who?.can?.[ability]);
}

function parseHash() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "equipment" && (parts[1] === "new" || parts[1] === "edit"))
    return { name: "equipment-form", args: { mode: parts[1], id: parts[2] || null } };
  return { name: parts[0] || "overview", args: { id: parts[1] || null } };
}

function route() {
  if (!state.who) return;
  let { name, args } = parseHash();
  if (!ROUTES[name] || !allowed(ROUTES[name][1])) {
    name = "overview";
    args = {};
    if (location.hash !== "#/overview") history.replaceState(null, "", "#/overview");
  }
  const [module] = ROUTES[name];
  current?.module.destroy?.();
  unsubscribe?.();
  const root = $("#view");
  root.replaceChildren();
  root.dataset.view = name;
  current = { name, module, args };
  module.mount(root, args);
  unsubscribe = subscribe((kind, detail) => current?.module.update?.(kind, detail));
  const tab = name === "equipment-form" ? "equipment" : name;
  for (const a of $$("#tabs a")) a.classList.toggle("active", a.dataset.view === tab);
  for (const a of $$("#tabs a")) a.setAttribute("aria-current", a.dataset.view === tab ? "page" : "false");
}

// -- connection banner ------------------------------------------------------------------

function showLost() {
  const banner = $("#banner");
  banner.hidden = false;
  $("#conn-dot").className = "dot down";
  const tick = () => {
    $("#banner-since").textContent = t("conn.since", { d: ago(live?.lastContact()) });
  };
  tick();
  clearInterval(bannerTimer);
  bannerTimer = setInterval(tick, 1000);
  notify("connection", false);
}

function showUp() {
  $("#banner").hidden = true;
  clearInterval(bannerTimer);
  $("#conn-dot").className = "dot up";
  notify("connection", true);
}

// -- session ------------------------------------------------------------------------------

async function start() {
  const who = await api("whoami");
  state.who = who;
  $("#signin").hidden = true;
  $("#view").hidden = false;
  $("#tabs").hidden = false;
  $("#sign-out").hidden = false;
  const chip = $("#who");
  chip.hidden = false;
  chip.dataset.role = who.role;
  renderWho();
  for (const a of $$("#tabs a")) a.hidden = !allowed(a.dataset.needs);
  live = openLive({
    headers: authHeader,
    onEvent: applyEvent,
    onUp: showUp,
    onLost: showLost,
    onUnauthorized: () => signOut("signin.expired"),
  });
  api("points")
    .then(setPointMeta)
    .catch(() => {});
  if (!location.hash) history.replaceState(null, "", "#/overview");
  route();
}

function renderWho() {
  const who = state.who;
  if (!who) return;
  $("#who").textContent = `${tv("role.", who.role)} · ${who.subject}`;
  $("#gw-name").textContent = who.gateway ? `${who.gateway} · ${who.gateway_site}` : "";
}

function signOut(messageKey) {
  live?.stop();
  live = null;
  current?.module.destroy?.();
  unsubscribe?.();
  current = null;
  setToken(null);
  reset();
  $("#banner").hidden = true;
  clearInterval(bannerTimer);
  $("#conn-dot").className = "dot";
  $("#view").hidden = true;
  $("#view").replaceChildren();
  $("#tabs").hidden = true;
  $("#who").hidden = true;
  $("#sign-out").hidden = true;
  $("#signin").hidden = false;
  const err = $("#signin-error");
  err.hidden = !messageKey;
  err.textContent = messageKey ? t(messageKey) : "";
  $("#token").value = "";
  $("#token").focus();
}

async function onSignIn(ev) {
  ev.preventDefault();
  const token = $("#token").value.trim();
  const err = $("#signin-error");
  err.hidden = true;
  if (!token) return;
  setToken(token);
  try {
    await start();
  } catch (e) {
    setToken(null);
    state.who = null;
    let key = "signin.unreachable";
    if (e instanceof ApiError) key = e.status === 429 ? "signin.ratelimited" : "signin.rejected";
    err.textContent = t(key);
    err.hidden = false;
  }
}

// -- boot ---------------------------------------------------------------------------------

function renderLangButton() {
  const button = $("#lang-toggle");
  button.textContent = t("lang.switch");
  button.setAttribute("aria-label", t("lang.switch_label"));
}

async function boot() {
  await loadMessages();
  renderLangButton();
  $("#lang-toggle").addEventListener("click", () => setLang(currentLang() === "zh-CN" ? "en" : "zh-CN"));
  onLangChange(() => {
    renderLangButton();
    renderWho();
    if (current) route();
  });
  $("#signin-form").addEventListener("submit", onSignIn);
  $("#sign-out").addEventListener("click", () => signOut(null));
  $("#banner-retry").addEventListener("click", () => live?.reconnectNow());
  window.addEventListener("hashchange", route);
  setUnauthorizedHandler(() => {
    if (state.who) signOut("signin.expired");
  });
  fetch(apiUrl("health"), { cache: "no-store" })
    .then((r) => r.json())
    .then((hl) => {
      $("#signin-gateway").textContent = t("signin.gateway", { gateway: hl.gateway, site: hl.site });
      $("#foot-version").textContent = `Millrace ${hl.version}`;
    })
    .catch(() => {});
  if (getToken()) {
    try {
      await start();
      return;
    } catch (e) {
      signOut(e instanceof ApiError && e.status === 401 ? "signin.expired" : "signin.unreachable");
      return;
    }
  }
  signOut(null);
}

boot();

