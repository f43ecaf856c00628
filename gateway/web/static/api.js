// Talking to the gateway's API. The token lives in sessionStorage: it is gone when the tab
// closes, it is never put in a URL (URLs end up in logs and history), and it is sent only to
// this gateway (the page's CSP allows no other host).

const TOKEN_KEY = "millrace.token";

/** The API's root: the folder above the page's /ui/ (so a proxy's path prefix still works). */
const BASE = new URL("../", document.baseURI);

export function apiUrl(path) {
  return new URL(path.replace(/^\//, ""), BASE);
}

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // private mode without storage: the token lives as long as this page
  }
  memoryToken = token || null;
}

let memoryToken = null;
let onUnauthorized = () => {};

/** Called when the API answers 401 (token revoked or wrong): back to sign-in. */
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export function authHeader() {
  const token = getToken() || memoryToken;
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** An API answer that was not 2xx: its status, the parsed body and a readable message. */
export class ApiError extends Error {
  constructor(status, body) {
    super(ApiError.describe(status, body));
    this.status = status;
    this.body = body;
  }

  static describe(status, body) {
    const detail = body && typeof body === "object" ? body.detail : body;
    if (detail && typeof detail === "object") return detail.message || JSON.stringify(detail);
    return detail ? String(detail) : `HTTP ${status}`;
  }

  /** The problems of a 422 from the equipment API, each {path, code, params, got, message}:
   * the code and params let the page say it in the reader's language, the English message
   * is for a code it does not know. */
  get problems() {
    const detail = this.body?.detail;
    if (detail && Array.isArray(detail.details)) return detail.details;
    if (detail && Array.isArray(detail.problems)) return detail.problems.map(lineProblem);
    if (Array.isArray(detail)) {
      // FastAPI's own request validation (pydantic's codes)
      return detail.map((d) => ({
        path: (d.loc || []).slice(1).join(".") || "(machine)",
        code: d.type,
        params: d.ctx || {},
        got: null,
        message: d.msg,
      }));
    }
    return [];
  }
}

/** A problem known only as its English line ("path: reason"). */
export function lineProblem(line) {
  const cut = line.indexOf(": ");
  return cut > 0
    ? { path: line.slice(0, cut), message: line.slice(cut + 2), got: null, params: {} }
    : { path: "(machine)", message: line, got: null, params: {} };
}

/** fetch() with the token; JSON in and out; ApiError for anything but 2xx. */
export async function api(path, { method = "GET", body, headers = {}, signal, raw = false } = {}) {
  const init = {
    method,
    headers: { Accept: "application/json", ...authHeader(), ...headers },
    cache: "no-store",
    signal,
  };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await fetch(apiUrl(path), init);
  if (raw) return res;
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!res.ok) {
    if (res.status === 401) onUnauthorized();
    throw new ApiError(res.status, data);
  }
  return data;
}
