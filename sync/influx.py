"""The InfluxDB v2 write-API uplink: outbox batches -> `POST /api/v2/write` (line protocol, ns).

Works with InfluxDB 2.x/3.x, InfluxDB Cloud and anything that speaks the v2 write API
(VictoriaMetrics, Telegraf's http listener). The line format is `sync.lineproto`.

How a batch travels. The runner hands `send` an `OutboxBatch`; the sender looks up each
point's metadata (on the event loop, where the context lives), encodes the readings (in a
worker thread for large batches), and posts them in requests of at most
`max_lines_per_request` lines with influxdb-client's synchronous write API, one request at a
time in a worker thread (`asyncio.to_thread`): the event loop never waits on the network.
`send` returns only when every line was confirmed with a 2xx or quarantined.

What each answer means (see `sync.base` for what the runner does with each error):

==========================  ===============================================================
2xx                         confirmed
429, 503                    `SinkThrottle`, `retry_after` from Retry-After (seconds or an
                            HTTP date), `DEFAULT_THROTTLE_S` when absent, capped at
                            `MAX_RETRY_AFTER_S`
400, 422                    some line is malformed or refused (type conflict, partial
                            write): the request's lines are bisected, good halves delivered,
                            each refused reading handed to `UplinkContext.quarantine` with
                            the server's message; `send` returns normally
413                         too large: split in halves and retried; a single line the server
                            still refuses is quarantined
401, 403                    `SinkRetry("token refused")` (the token itself is never logged)
404                         `SinkRetry`: the bucket or organization does not exist
other 5xx, other codes      `SinkRetry` with the status and the server's message
refused, reset, timeout,    `SinkRetry` with the reason
TLS failure
==========================  ===============================================================

Resending. A batch the runner sends again (after `SinkRetry`/`SinkThrottle`) is recognised by
its (seq, prev_id, replay): the runner re-reads the outbox from the same cursor, so the batch
may have grown (a larger last_id) but starts where it did. The readings this process already
had confirmed or quarantined for it (by id) are not sent again, so a throttle in the middle of
a bisection neither duplicates the delivered halves nor quarantines a reading twice. Progress
of the last `PROGRESS_KEEP` unfinished batches is kept (a replay page may come between);
a batch that completes forgets its own. Lines in flight when a timeout struck may
arrive twice; they are identical (same tags, timestamp, `id`), which InfluxDB stores once.

The outcome of a 400 is per request, not per line (InfluxDB answers with the first failing
line only), which is why bisection is needed: k bad lines among n cost about 2·k·log2(n)
extra requests, and the queue never waits on one bad reading.

Counters (`stats()`): requests (HTTP requests that reached the server or were attempted),
lines_sent (lines confirmed by a 2xx), bytes_sent (request bodies as put on the wire:
gzip-compressed when `gzip` is on, for every request that got an answer), throttled, retries,
quarantined, splits (413 halvings), failing (1 while the last attempt failed) and
last_error_ts; the reason itself is `last_error`.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS, WriteApi
from influxdb_client.rest import ApiException
from influxdb_client.service.ping_service import PingService

from gateway.errors import SinkRetry, SinkThrottle
from gateway.store import StoredReading
from sync.base import OutboxBatch, PointMeta, UplinkContext
from sync.config import InfluxUplinkConfig
from sync.lineproto import LineEncoder

log = logging.getLogger("millrace.uplink.influx")

#: Pause asked for by a 429/503 that carries no (readable) Retry-After.
DEFAULT_THROTTLE_S = 5.0
#: A Retry-After beyond this is capped: a misconfigured proxy must not park the uplink for days.
MAX_RETRY_AFTER_S = 3600.0
#: Batches at least this large are encoded in a worker thread rather than on the loop.
ENCODE_IN_THREAD_FROM = 256
#: Unfinished batches whose progress is remembered (see "Resending").
PROGRESS_KEEP = 4
_REASON_MAX = 300
_WRITE_PATH = "/api/v2/write"


def parse_retry_after(
    value: str | None, *, now: float | None = None, default: float = DEFAULT_THROTTLE_S
) -> float:
    """Retry-After (delay-seconds or an HTTP-date) -> seconds to wait, within
    [0, MAX_RETRY_AFTER_S]; `default` when absent or unreadable."""
    if value is None or not value.strip():
        return default
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return default
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return default
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _one_line(text: object, limit: int = _REASON_MAX) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _os_reason(exc: BaseException) -> str:
    """The innermost OS error's text ('Connection refused'), else the exception's own."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.strerror:
            return cur.strerror
        cur = cur.__cause__ or cur.__context__
    text = str(exc)
    # urllib3: "<HTTPConnection(host='h', port=1)>: Failed to establish ...": drop the repr
    return _one_line(text.split(">: ", 1)[-1] if ">: " in text else text)


def _header(exc: ApiException, name: str) -> str | None:
    headers = getattr(exc, "headers", None)
    if headers is None:
        return None
    try:
        value = headers.get(name)
    except AttributeError:
        return None
    return None if value is None else str(value)


def _server_message(exc: ApiException) -> str:
    """InfluxDB answers errors as JSON {"code", "message"}; influxdb-client extracts `message`
    (else the body, an error header or the reason phrase)."""
    message = getattr(exc, "message", None) or getattr(exc, "body", None) or exc.reason
    return _one_line(message or "no message")


class _Closed(Exception):
    """The sender was closed while a call was on its way to the worker thread."""


class _Refused:
    """A request the server refused because of its content (400/422) or size (413)."""

    __slots__ = ("reason", "too_large")

    def __init__(self, reason: str, *, too_large: bool) -> None:
        self.reason = reason
        self.too_large = too_large


_Item = tuple[StoredReading, str]


class InfluxSender:
    """`Sender` for the InfluxDB v2 write API; see the module docstring for the contract."""

    def __init__(self, config: InfluxUplinkConfig, context: UplinkContext) -> None:
        self.name = config.name
        self.config = config
        self._ctx = context
        self._encoder = LineEncoder(
            measurement=config.measurement, site=context.site, gateway=context.gateway_id
        )
        self._client: InfluxDBClient | None = None
        self._write_api: WriteApi | None = None
        # Held by the worker thread for every HTTP call; close() takes it so it never pulls
        # the connection pool from under a request a cancelled send left running.
        self._io = threading.Lock()
        self._body_size = 0  # set by the request-body hook (the worker thread)
        # Unfinished batches -> ids confirmed or quarantined already (see "Resending").
        self._progress: OrderedDict[tuple[int, int, bool], set[int]] = OrderedDict()
        self._done: set[int] = set()  # the entry of the batch being sent
        self._requests = 0
        self._lines_sent = 0
        self._bytes_sent = 0
        self._throttled = 0
        self._retries = 0
        self._quarantined = 0
        self._splits = 0
        self._failing = False
        self._last_error_ts = 0.0
        #: Why the last attempt failed (None once a request succeeds again).
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def _tls_ca_path(self) -> str | None:
        if self.config.tls_ca is None:
            return None
        path = Path(self.config.tls_ca)
        if not path.is_absolute():
            path = Path(self._ctx.base_dir) / path
        return str(path)

    def _ensure_client(self) -> None:
        if self._client is not None:
            return
        cfg = self.config
        client = InfluxDBClient(
            url=cfg.url,
            token=cfg.token.get_secret_value() if cfg.token is not None else None,
            org=cfg.org,
            timeout=max(1, round(cfg.timeout * 1000)),  # milliseconds, whole request
            enable_gzip=cfg.gzip,
            verify_ssl=cfg.verify_tls,
            ssl_ca_cert=self._tls_ca_path(),
            retries=False,  # the runner owns retries and backoff; urllib3 must not re-post
        )
        # The client gzips inside `update_request_body`; wrapping it is the one place that
        # sees the body as it goes on the wire, so bytes_sent counts compressed bytes.
        conf = client.api_client.configuration
        original: Callable[[str, Any], Any] = conf.update_request_body

        def measured(path: str, body: Any) -> Any:
            out = original(path, body)
            if path == _WRITE_PATH and isinstance(out, bytes | str):
                self._body_size = len(out) if isinstance(out, bytes) else len(out.encode())
            return out

        conf.update_request_body = measured
        self._client = client
        self._write_api = client.write_api(write_options=SYNCHRONOUS)

    async def connect(self) -> None:
        """Create the client and check the server answers `GET /ping`. Any HTTP answer
        counts as reachable (a proxy without /ping included); the token and bucket are
        checked by the first write, whose answer says exactly what is wrong."""
        self._ensure_client()
        try:
            await asyncio.to_thread(self._blocking_ping)
        except ApiException as exc:
            if exc.status in (0, None):
                raise self._retry(f"TLS or request failure: {_one_line(exc.reason)}") from exc
        except Exception as exc:
            raise self._transport_error(exc) from exc

    async def close(self) -> None:
        """Release the connection pool; waits (up to the timeout) for a request still running
        in a worker thread. Nothing is lost: unconfirmed readings stay in the outbox."""
        if self._client is None:
            return
        await asyncio.to_thread(self._blocking_close)

    def _blocking_ping(self) -> None:
        with self._io:
            client = self._client
            if client is None:
                raise _Closed
            PingService(client.api_client).get_ping()

    def _blocking_close(self) -> None:
        acquired = self._io.acquire(timeout=self.config.timeout + 5.0)
        try:
            client, self._client, self._write_api = self._client, None, None
            if client is not None:
                client.close()
        finally:
            if acquired:
                self._io.release()

    # -- sending -----------------------------------------------------------------------------

    async def send(self, batch: OutboxBatch) -> None:
        key = (batch.seq, batch.prev_id, batch.replay)
        self._done = self._progress.pop(key, set())
        self._progress[key] = self._done  # newest last
        while len(self._progress) > PROGRESS_KEEP:
            self._progress.popitem(last=False)
        todo = [r for r in batch.readings if r.id not in self._done]
        if todo:
            self._ensure_client()
            metas: dict[str, PointMeta | None] = {}
            for r in todo:
                if r.point not in metas:
                    metas[r.point] = self._ctx.point_meta(r.point)
            if len(todo) >= ENCODE_IN_THREAD_FROM:
                items, failed = await asyncio.to_thread(self._encoder.lines, todo, metas)
            else:
                items, failed = self._encoder.lines(todo, metas)
            for f in failed:
                self._quarantine(f.reading, f"cannot encode: {f.reason}")
            step = self.config.max_lines_per_request
            for start in range(0, len(items), step):
                await self._deliver(items[start : start + step])
        self._progress.pop(key, None)

    async def _deliver(self, items: Sequence[_Item]) -> None:
        """Post `items`; on a content or size refusal split in halves until each refused
        reading stands alone, then quarantine it."""
        refused = await self._post(items)
        if refused is None:
            self._done.update(r.id for r, _ in items)
            return
        if len(items) == 1:
            self._quarantine(items[0][0], refused.reason)
            return
        if refused.too_large:
            self._splits += 1
        mid = len(items) // 2
        await self._deliver(items[:mid])
        await self._deliver(items[mid:])

    async def _post(self, items: Sequence[_Item]) -> _Refused | None:
        # Store values are valid text; "replace" only guards against a lone surrogate.
        payload = "\n".join(line for _, line in items).encode("utf-8", "replace")
        self._requests += 1
        try:
            await asyncio.to_thread(self._blocking_write, payload)
        except ApiException as exc:
            self._bytes_sent += self._body_size
            refused = self._http_error(exc)  # raises for everything but 400/413/422
            log.debug(
                "influx write refused",
                extra={"uplink": self.name, "lines": len(items), "reason": refused.reason},
            )
            return refused
        except Exception as exc:
            raise self._transport_error(exc) from exc
        self._bytes_sent += self._body_size
        self._lines_sent += len(items)
        self._succeeded()
        return None

    def _blocking_write(self, payload: bytes) -> None:
        with self._io:
            api = self._write_api
            if api is None:
                raise _Closed
            self._body_size = len(payload)  # the hook overwrites it with the gzipped size
            api.write(
                bucket=self.config.bucket,
                org=self.config.org,
                record=payload,
                write_precision=WritePrecision.NS,
            )

    # -- outcomes ----------------------------------------------------------------------------

    def _http_error(self, exc: ApiException) -> _Refused:
        status = int(exc.status or 0)
        if status == 0:  # influxdb-client wraps TLS failures as status 0
            raise self._retry(f"TLS or request failure: {_one_line(exc.reason)}") from exc
        message = _server_message(exc)
        if status in (400, 422):
            return _Refused(f"refused by the server (HTTP {status}): {message}", too_large=False)
        if status == 413:
            return _Refused(f"too large for the server (HTTP 413): {message}", too_large=True)
        if status in (429, 503):
            retry_after = parse_retry_after(_header(exc, "Retry-After"))
            raise self._throttle(f"HTTP {status}: {message}", retry_after) from exc
        if status in (401, 403):
            raise self._retry(f"token refused (HTTP {status})") from exc
        if status == 404:
            raise self._retry(f"bucket or organization not found (HTTP 404): {message}") from exc
        if status >= 500:
            raise self._retry(f"server error (HTTP {status}): {message}") from exc
        raise self._retry(f"unexpected answer (HTTP {status}): {message}") from exc

    def _transport_error(self, exc: BaseException) -> SinkRetry:
        if isinstance(exc, _Closed):
            return self._retry("closed while sending")
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            exc = exc.reason
        if isinstance(exc, urllib3.exceptions.NameResolutionError):
            reason = f"cannot resolve {urlsplit(self.config.url).hostname}"
        elif isinstance(exc, urllib3.exceptions.NewConnectionError):
            reason = f"cannot connect ({_os_reason(exc)})"
        elif isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
            reason = f"timeout after {self.config.timeout:g} s"
        elif isinstance(exc, urllib3.exceptions.ProtocolError):
            reason = f"connection lost ({_os_reason(exc)})"
        elif isinstance(exc, urllib3.exceptions.SSLError):
            reason = f"TLS failure ({_one_line(exc)})"
        elif isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            reason = f"transport error ({_os_reason(exc)})"
        else:
            log.error(
                "influx uplink: unexpected error",
                extra={"uplink": self.name},
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            reason = f"unexpected error: {type(exc).__name__}: {_one_line(exc)}"
        return self._retry(reason)

    def _retry(self, reason: str) -> SinkRetry:
        self._retries += 1
        self._failed(reason)
        return SinkRetry(f"uplink {self.name}: {reason}")

    def _throttle(self, reason: str, retry_after: float) -> SinkThrottle:
        self._throttled += 1
        self._failed(f"throttled ({reason}), retry after {retry_after:g} s")
        return SinkThrottle(f"uplink {self.name}: throttled ({reason})", retry_after=retry_after)

    def _failed(self, reason: str) -> None:
        if not self._failing or reason != self.last_error:
            log.warning(
                "influx uplink cannot deliver",
                extra={"uplink": self.name, "url": self.config.url, "reason": reason},
            )
        self._failing = True
        self.last_error = reason
        self._last_error_ts = time.time()

    def _succeeded(self) -> None:
        if self._failing:
            log.info("influx uplink recovered", extra={"uplink": self.name})
        self._failing = False
        self.last_error = None

    def _quarantine(self, reading: StoredReading, reason: str) -> None:
        try:
            self._ctx.quarantine(self.name, reason, reading)
        except Exception as exc:  # it must be kept somewhere before the batch may be acked
            raise self._retry(f"quarantine failed: {_one_line(exc)}") from exc
        self._quarantined += 1
        self._done.add(reading.id)
        log.warning(
            "influx uplink quarantined a reading",
            extra={
                "uplink": self.name,
                "reading_id": reading.id,
                "point": reading.point,
                "reason": reason,
            },
        )

    def stats(self) -> dict[str, float]:
        return {
            "requests": float(self._requests),
            "lines_sent": float(self._lines_sent),
            "bytes_sent": float(self._bytes_sent),
            "throttled": float(self._throttled),
            "retries": float(self._retries),
            "quarantined": float(self._quarantined),
            "splits": float(self._splits),
            "failing": 1.0 if self._failing else 0.0,
            "last_error_ts": self._last_error_ts,
        }
