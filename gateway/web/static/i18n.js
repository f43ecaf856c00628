// Languages of the page: Simplified Chinese by default, English as a switch. The catalogue
// is messages.json (one object per language, the same keys in both: a test checks it and
// that every key the page uses is there). The choice is kept in localStorage.

export const LANGS = ["zh-CN", "en"];
const DEFAULT = "zh-CN";
const KEY = "millrace.lang";

let catalogue = {};
let lang = DEFAULT;
const listeners = [];

export async function loadMessages() {
  const res = await fetch("messages.json", { cache: "no-cache" });
  catalogue = await res.json();
  let saved = null;
  try {
    saved = localStorage.getItem(KEY);
  } catch {
    saved = null; // storage disabled: the default for this visit
  }
  setLang(LANGS.includes(saved) ? saved : DEFAULT, { save: false });
}

export function currentLang() {
  return lang;
}

/** The message for `key` in the current language, `{name}` filled from `vars`. */
export function t(key, vars) {
  const text = catalogue[lang]?.[key] ?? catalogue[DEFAULT]?.[key] ?? key;
  return vars ? text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m)) : text;
}

/** Whether the catalogue has `key` (in the current language or the default). */
export function known(key) {
  return key in (catalogue[lang] ?? {}) || key in (catalogue[DEFAULT] ?? {});
}

/** A message for a value the server names (a device state, a status): the text when the
 * catalogue has `prefix + value`, the value itself otherwise (a state added later). */
export function tv(prefix, value) {
  if (value === null || value === undefined || value === "") return "—";
  const key = prefix + value;
  return catalogue[lang]?.[key] ?? String(value);
}

export function setLang(next, { save = true } = {}) {
  lang = LANGS.includes(next) ? next : DEFAULT;
  document.documentElement.lang = lang;
  if (save) {
    try {
      localStorage.setItem(KEY, lang);
    } catch {
      // not remembered; still switched
    }
  }
  applyStatic(document);
  document.title = t("app.title");
  for (const fn of listeners) fn(lang);
}

export function onLangChange(fn) {
  listeners.push(fn);
}

/** Fill elements marked data-i18n (text), data-i18n-placeholder, -title, -aria-label. */
export function applyStatic(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]"))
    el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll("[data-i18n-aria-label]"))
    el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
}

/** Numbers and times in the current language. */
export function num(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value !== "number") return String(value);
  return new Intl.NumberFormat(lang, { maximumFractionDigits: digits }).format(value);
}

export function dateTime(value) {
  if (value === null || value === undefined || value === "") return "—";
  const d = typeof value === "number" ? new Date(value) : new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return new Intl.DateTimeFormat(lang, { dateStyle: "short", timeStyle: "medium" }).format(d);
}

/** "12 s ago" / "12 秒前" from a time (ms or ISO) to now. */
export function ago(value, now = Date.now()) {
  if (value === null || value === undefined || value === "") return t("time.never");
  const ms = typeof value === "number" ? value : Date.parse(value);
  if (Number.isNaN(ms)) return String(value);
  return duration(Math.max(0, now - ms) / 1000, "time.ago");
}

/** "3 min" style duration; with `key` the message wraps it ("{d} ago"). */
export function duration(seconds, key) {
  let text;
  if (seconds < 60) text = t("time.seconds", { n: Math.round(seconds) });
  else if (seconds < 3600) text = t("time.minutes", { n: Math.floor(seconds / 60) });
  else if (seconds < 86400) text = t("time.hours", { n: num(seconds / 3600, 1) });
  else text = t("time.days", { n: num(seconds / 86400, 1) });
  return key ? t(key, { d: text }) : text;
}
