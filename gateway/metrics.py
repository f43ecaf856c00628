"""`/metrics` in the Prometheus text exposition format (version 0.0.4), rendered on scrape
from the counters the components already keep: no second bookkeeping, no extra dependency.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import __version__

if TYPE_CHECKING:
    from gateway.runtime import Gateway

Labels = dict[str, str]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self, name: str, kind: str, help_text: str, samples: list[tuple[Labels, float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                self.lines.append(f"{name}{{{inner}}} {_num(value)}")
            else:
                self.lines.append(f"{name} {_num(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _num(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if value != value:  # NaN
        return "NaN"
    return repr(float(value))


def render(gw: Gateway) -> str:
    out = _Exposition()
    ident = gw.config.gateway
    out.family(
        "millrace_info",
        "gauge",
        "Gateway identity and version.",
        [({"gateway": ident.id, "site": ident.site, "version": __version__}, 1)],
    )
    out.family(
        "millrace_uptime_seconds",
        "gauge",
        "Seconds since the gateway started.",
        [({}, gw.uptime_s)],
    )
    _security(out, gw)

    health = gw.device_health()
    online, total = gw.online_share()
    out.family(
        "millrace_devices_online_ratio",
        "gauge",
        "Share of enabled devices that are online.",
        [({}, online / total if total else 1.0)],
    )
    dev = [({"device": h.device, "protocol": h.protocol}, h) for h in health]
    out.family(
        "millrace_device_up",
        "gauge",
        "1 when the device answers.",
        [(lb, 1 if h.state == "online" else 0) for lb, h in dev],
    )
    out.family(
        "millrace_device_polls_total",
        "counter",
        "Polls by result.",
        [({**lb, "result": "ok"}, h.polls_ok) for lb, h in dev]
        + [({**lb, "result": "failed"}, h.polls_failed) for lb, h in dev],
    )
    out.family(
        "millrace_device_requests_total",
        "counter",
        "Protocol requests sent.",
        [(lb, h.requests) for lb, h in dev],
    )
    out.family(
        "millrace_device_points_read_total",
        "counter",
        "Readings produced (any quality).",
        [(lb, h.points_read) for lb, h in dev],
    )
    out.family(
        "millrace_device_poll_overruns_total",
        "counter",
        "Polls that started more than one interval late.",
        [(lb, h.overruns) for lb, h in dev],
    )
    out.family(
        "millrace_device_reconnects_total",
        "counter",
        "Connection re-establishments.",
        [(lb, h.reconnects) for lb, h in dev],
    )

    out.family(
        "millrace_device_stat",
        "gauge",
        "Protocol-specific per-device figures (MQTT messages, parse errors by reason, ...).",
        [({**lb, "stat": k}, v) for lb, h in dev for k, v in sorted(h.extra.items())],
    )
    out.family(
        "millrace_bus_batches_total", "counter", "Batches published.", [({}, gw.bus.batches)]
    )
    out.family(
        "millrace_bus_readings_total", "counter", "Readings published.", [({}, gw.bus.readings)]
    )
    out.family(
        "millrace_bus_sink_errors_total",
        "counter",
        "Exceptions raised by bus subscribers.",
        [({"sink": k}, v) for k, v in gw.bus.sink_errors().items()],
    )

    st = gw.store.stats()
    out.family(
        "millrace_store_submitted_total",
        "counter",
        "Readings handed to the store.",
        [({}, st.submitted)],
    )
    out.family(
        "millrace_store_committed_total",
        "counter",
        "Readings committed to disk.",
        [({}, st.committed)],
    )
    out.family(
        "millrace_store_queued", "gauge", "Readings waiting for the writer.", [({}, st.queued)]
    )
    out.family("millrace_store_commits_total", "counter", "Transactions.", [({}, st.commits)])
    out.family(
        "millrace_store_rows", "gauge", "Readings held (outbox and history).", [({}, st.rows)]
    )
    out.family("millrace_store_bytes_used", "gauge", "Bytes in use.", [({}, st.bytes_used)])
    out.family("millrace_store_max_bytes", "gauge", "Configured size cap.", [({}, st.max_bytes)])
    out.family(
        "millrace_store_dropped_total",
        "counter",
        "Readings not kept, by reason. Every loss is here.",
        [({"reason": k}, v) for k, v in sorted(st.dropped.items())],
    )
    out.family(
        "millrace_store_trimmed_total",
        "counter",
        "Readings removed from history after every uplink had them (not a loss).",
        [({}, st.trimmed)],
    )
    p50, p99 = gw.store.commit_latency.quantiles(0.5, 0.99)
    out.family(
        "millrace_store_commit_latency_seconds",
        "gauge",
        "From a reading's arrival at the gateway to its commit (recent window).",
        [
            ({"quantile": q}, v if v is not None else float("nan"))
            for q, v in (("0.5", p50), ("0.99", p99))
        ],
    )
    _models(out, gw)
    _uplinks(out, gw)
    out.family(
        "millrace_component_restarts_total",
        "counter",
        "Restarts of supervised components after a failure.",
        [({"component": s.name}, s.restarts) for s in gw.supervisor.status()],
    )
    return out.text()


_MODEL_COUNTERS = (
    ("calls", "millrace_model_calls_total", "Model calls (one call may carry several rows)."),
    ("rows_run", "millrace_model_rows_total", "Rows or items run through the model."),
    ("failures", "millrace_model_failures_total", "Calls that failed (fallback rules ran)."),
    ("fallback_runs", "millrace_model_fallback_runs_total", "Runs answered by fallback rules."),
    ("over_budget", "millrace_model_over_budget_total", "Calls slower than the budget."),
    ("rows_incomplete", "millrace_model_rows_incomplete_total", "Runs skipped: input missing."),
    ("items_refused", "millrace_model_items_refused_total", "Items refused: queue full."),
    ("items_bad", "millrace_model_items_bad_total", "Items that could not be decoded."),
)


def _models(out: _Exposition, gw: Gateway) -> None:
    status = gw.engine.status()
    if not status:
        return
    out.family(
        "millrace_model_up",
        "gauge",
        "1 when the model itself answers (0: fallback rules, failed or disabled).",
        [({"model": m["id"], "state": m["state"]}, int(m["state"] == "ready")) for m in status],
    )
    for key, name, help_text in _MODEL_COUNTERS:
        out.family(name, "counter", help_text, [({"model": m["id"]}, m[key]) for m in status])
    samples: list[tuple[Labels, float]] = []
    for m in status:
        for q, key in (("0.5", "latency_p50_ms"), ("0.99", "latency_p99_ms")):
            v = m[key]
            samples.append(({"model": m["id"], "quantile": q}, v / 1000 if v else float("nan")))
    out.family(
        "millrace_model_latency_seconds",
        "gauge",
        "Duration of one model call (recent window).",
        samples,
    )
    out.family(
        "millrace_model_latency_budget_seconds",
        "gauge",
        "The latency budget a call is held to.",
        [({"model": m["id"]}, (m["latency_budget_ms"] or 0) / 1000) for m in status],
    )
    out.family(
        "millrace_model_alarms_active",
        "gauge",
        "Alarms the model holds active.",
        [({"model": m["id"]}, len(m["active_alarms"])) for m in status],
    )
    out.family(
        "millrace_inference_queue_dropped_readings_total",
        "counter",
        "Readings the engine's queue refused (full).",
        [({}, gw.engine.queue_dropped())],
    )


def _uplinks(out: _Exposition, gw: Gateway) -> None:
    if not gw.uplinks:
        return
    status = [u.status() for u in gw.uplinks]
    out.family(
        "millrace_uplink_connected",
        "gauge",
        "1 while the uplink is connected to its far side.",
        [({"uplink": s["name"]}, int(s["connected"])) for s in status],
    )
    for key, name, kind, help_text in (
        ("pending", "millrace_uplink_pending_readings", "gauge", "Readings not confirmed yet."),
        ("sent", "millrace_uplink_sent_total", "counter", "Readings confirmed by the far side."),
        ("sent_per_s", "millrace_uplink_sent_per_second", "gauge", "Sent over the last 10 s."),
        ("batches", "millrace_uplink_batches_total", "counter", "Batches confirmed."),
        ("retries", "millrace_uplink_retries_total", "counter", "Batches sent again."),
        (
            "throttled",
            "millrace_uplink_throttled_total",
            "counter",
            "Pauses asked by the far side.",
        ),
        ("errors", "millrace_uplink_errors_total", "counter", "Connect or send failures."),
        ("withheld_private", "millrace_uplink_withheld_total", "counter", "Private readings kept."),
        ("replayed", "millrace_uplink_replayed_total", "counter", "Readings re-sent on request."),
    ):
        out.family(name, kind, help_text, [({"uplink": s["name"]}, s[key]) for s in status])


def _security(out: _Exposition, gw: Gateway) -> None:
    """API authentication outcomes and audit appends (gateway.auth, gateway.audit)."""
    access, audit = gw.access, gw.audit
    out.family(
        "millrace_api_auth_failures_total",
        "counter",
        "API requests refused: missing or invalid token, or too low a role.",
        [({"reason": k}, v) for k, v in sorted(access.failures.items())],
    )
    out.family(
        "millrace_api_auth_rate_limited_total",
        "counter",
        "API requests refused (429) after too many failed logins from the address.",
        [({}, access.rate_limited)],
    )
    out.family(
        "millrace_audit_entries_total",
        "counter",
        "Audit log entries appended by this process, and appends that failed.",
        [({"result": "appended"}, audit.appended), ({"result": "failed"}, audit.failures)],
    )
