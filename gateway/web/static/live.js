import { apiUrl } from "./api.js";

// The gateway's live stream (GET /events, server-sent events) read with fetch(): EventSource
// cannot send an Authorization header, and a token in the URL would land in access logs.
//
// Contact is any byte from the gateway (events or the heartbeat comment it sends every few
// seconds). No contact for 2.2 heartbeats, an error, or the stream ending counts as lost: the
// page is told at once (it shows the red banner) and the stream is opened again with capped
// exponential backoff and jitter; the `hello` event of a new stream means back.

/** Incremental text/event-stream parser (the WHATWG rules the page needs: event, data,
 * comments, CR/LF/CRLF line ends, multi-line data). */
export class SseParser {
  constructor(onEvent, onComment = () => {}) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.buffer = "";
    this.event = "";
    this.data = [];
  }

  push(chunk) {
    this.buffer += chunk;
    let m;
    const re = /\r\n|\r|\n/g;
    let start = 0;
    while ((m = re.exec(this.buffer)) !== null) {
      // a CR at the very end may be the first half of a CRLF: wait for more
      if (m[0] === "\r" && m.index === this.buffer.length - 1) break;
      this.line(this.buffer.slice(start, m.index));
      start = m.index + m[0].length;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(text) {
    if (text === "") {
      if (this.data.length) this.onEvent(this.event || "message", this.data.join("\n"));
      this.event = "";
      this.data = [];
      return;
    }
    if (text.startsWith(":")) {
      this.onComment(text.slice(1).trim());
      return;
    }
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    // id and retry are not used: every new stream starts with a full snapshot
  }
}

const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 15000;
/** Silence, in heartbeats, after which the gateway counts as lost. */
const SILENT_HEARTBEATS = 2.2;
/** A connection attempt that brings no `hello` within this is given up (a black hole on the
 * network would otherwise hold it for minutes). */
const CONNECT_TIMEOUT_MS = 10000;

/**
 * Keep a stream open until stop(). Callbacks: onEvent(name, data), onUp(), onLost(reason),
 * onUnauthorized(). Returns {stop, lastContact(), isUp(), reconnectNow()}.
 */
export function openLive({ headers, onEvent, onUp, onLost, onUnauthorized }) {
  let stopped = false;
  let controller = null;
  let lastContact = Date.now();
  let heartbeatS = 3;
  let backoff = BACKOFF_MIN_MS;
  let up = false;
  let wake = null;

  const lost = (reason) => {
    up = false;
    onLost(reason);
  };

  const watchdog = setInterval(() => {
    if (!up) return;
    if (Date.now() - lastContact > heartbeatS * SILENT_HEARTBEATS * 1000) {
      lost("silent");
      controller?.abort();
    }
  }, 500);

  const sleep = (ms) =>
    new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  async function once() {
    const attempt = new AbortController();
    controller = attempt;
    const giveUp = setTimeout(() => attempt.abort(), CONNECT_TIMEOUT_MS);
    try {
      await stream(attempt, giveUp);
    } finally {
      clearTimeout(giveUp);
    }
  }

  async function stream(attempt, giveUp) {
    const res = await fetch(apiUrl("events"), {
      headers: { Accept: "text/event-stream", ...headers() },
      cache: "no-store",
      signal: attempt.signal,
    });
    if (res.status === 401) {
      stopped = true;
      onUnauthorized();
      return;
    }
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
    const parser = new SseParser((name, text) => {
      let data;
      try {
        data = JSON.parse(text);
      } catch {
        return;
      }
      if (name === "hello") {
        clearTimeout(giveUp);
        heartbeatS = Number(data.heartbeat_s) || heartbeatS;
        backoff = BACKOFF_MIN_MS;
        up = true;
        onUp(data);
      }
      if (name === "bye") {
        lost("stopping");
        return;
      }
      onEvent(name, data);
    });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      lastContact = Date.now();
      parser.push(value);
    }
    throw new Error("stream ended");
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
      } catch (err) {
        if (stopped) break;
        lost(err?.name === "AbortError" ? "silent" : "error");
        const jitter = 0.5 + Math.random() * 0.5;
        await sleep(backoff * jitter);
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      }
    }
  })();

  return {
    stop() {
      stopped = true;
      clearInterval(watchdog);
      controller?.abort();
      wake?.();
    },
    lastContact: () => lastContact,
    isUp: () => up,
    /** Try again now (the user pressed "reconnect"). */
    reconnectNow() {
      backoff = BACKOFF_MIN_MS;
      if (!up) controller?.abort(); // an attempt hanging on a dead network: start over
      wake?.();
    },
  };
}
