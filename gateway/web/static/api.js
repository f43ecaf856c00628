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

  /** The problem lines of a 422 from the equipment API ("path: reason (got x)"). */
  get problems() {
    const detail = this.body?.detail;
    if (detail && Array.isArray(detail.problems)) return detail.problems;
    if (Array.isArray(detail)) {
      // FastAPI's own request validation
      return detail.map((d) => `${(d.loc || []).slice(1).join(".") || "(machine)"}: ${d.msg}`);
    }
    return [];
  }
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
