// Models: each bound model's state, latest outputs, active alarms, and call latency p50/p99
// against the budget its manifest (or binding) declares.

import { fill, h, svg } from "./dom.js";
import { dateTime, num, t, tv } from "./i18n.js";
import { state } from "./state.js";
import { formatValue } from "./view_devices.js";

let root = null;

export function mount(el) {
  root = el;
  render();
}

export function update(kind) {
  if (kind === "models") render();
}

export function destroy() {
  root = null;
}

const STATE_CLASS = { ready: "good", loading: "warn", fallback: "warn", failed: "bad", disabled: "" };

/** p50 and p99 as bars against the budget (the budget is the full width's 3/4 mark). */
function latencyBars(m) {
  const budget = m.latency_budget_ms;
  const scale = Math.max(budget ? budget / 0.75 : 0, m.latency_p99_ms || 0, 0.001);
  const w = 200;
  const bar = (y, value, cls) =>
    svg("rect", { x: 0, y, height: 8, width: Math.max(1, Math.min(w, (value / scale) * w)).toFixed(1), class: cls });
  const over = budget && m.latency_p99_ms > budget;
  return svg(
    "svg",
    {
      class: "latency",
      viewBox: `0 0 ${w} 24`,
      width: w,
      height: 24,
      preserveAspectRatio: "xMinYMid meet",
      role: "img",
      "aria-label": t("models.latency"),
    },
    m.latency_p50_ms !== null ? bar(2, m.latency_p50_ms, "p50") : null,
    m.latency_p99_ms !== null ? bar(14, m.latency_p99_ms, over ? "p99 over" : "p99") : null,
    budget ? svg("line", { x1: (budget / scale) * w, x2: (budget / scale) * w, y1: 0, y2: 24, class: "budget" }) : null,
  );
}

function render() {
  if (!root) return;
  const models = state.models;
  const body = models.length
    ? h(
        "div",
        { class: "grid models" },
        models.map((m) => {
          const over = m.latency_budget_ms && m.latency_p99_ms > m.latency_budget_ms;
          const outputs = Object.entries(m.last_values || {});
          return h(
            "section",
            { class: "card model", dataset: { model: m.id } },
            h(
              "header",
              { class: "row" },
              h("h2", { text: m.id }),
              h("span", { class: ["badge", STATE_CLASS[m.state]], text: tv("model.", m.state) }),
            ),
            h("p", { class: "muted small" }, `${m.model}${m.version ? ` @ ${m.version}` : ""}${m.equipment ? ` · ${m.equipment}` : ""}`),
            m.error ? h("p", { class: "error small", text: m.error }) : null,
            h(
              "div",
              { class: "latency-block" },
              latencyBars(m),
              h(
                "p",
                { class: ["small", over ? "error" : "muted"] },
                t("models.latency_line", {
                  p50: num(m.latency_p50_ms, 2),
                  p99: num(m.latency_p99_ms, 2),
                  budget: m.latency_budget_ms ? num(m.latency_budget_ms, 0) : "—",
                }),
              ),
            ),
            m.active_alarms?.length
              ? h("p", { class: "alarms" }, m.active_alarms.map((a) => h("span", { class: "badge bad", text: tv("alarm.", a) })))
              : null,
            outputs.length
              ? h(
                  "table",
                  { class: "compact outputs" },
                  h(
                    "tbody",
                    {},
                    outputs.map(([k, v]) => h("tr", {}, h("th", { scope: "row", text: k }), h("td", { class: "num", text: formatValue(v) }))),
                  ),
                )
              : h("p", { class: "muted small", text: t("models.no_outputs") }),
            h(
              "p",
              { class: "muted small" },
              t("models.counts", {
                calls: num(m.calls, 0),
                fallback: num(m.fallback_runs, 0),
                over: num(m.over_budget, 0),
                failures: num(m.failures, 0),
              }),
              m.last_run ? ` · ${t("models.last_run", { at: dateTime(m.last_run) })}` : "",
            ),
          );
        }),
      )
    : h("p", { class: "muted", text: t("models.none") });
  fill(root, h("h1", { class: "view-title", text: t("nav.models") }), body);
}
