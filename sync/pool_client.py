"""HTTPS client of the central matching pool (sync/pool_api.yaml), with the contract's errors
mapped onto what the sync loops do about them.

* unreachable, timeout, 5xx (but 503)    -> SinkRetry: back off, try again, nothing is lost;
* 429, 503 (Retry-After honoured)        -> SinkThrottle;
* 401, 403                               -> PoolRefused: the token is wrong or lacks the
                                            right; retrying will not help until someone fixes
                                            it, so it is logged loudly and retried slowly;
* 404, 409, 422                          -> PoolRejected, with the pool's problem detail.

The bearer token is never logged: errors carry the URL path and the pool's problem text only.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import httpx

from gateway import __version__
from gateway.errors import MillraceError, SinkRetry, SinkThrottle
from sync.config import PoolSyncConfig

log = logging.getLogger("millrace.pool")

#: The contract's batch limits.
MAX_AVAILABILITY_ITEMS = 500
MAX_USAGE_RECORDS = 100


class PoolRefused(MillraceError):
    """401/403: the token is missing, unknown, or not allowed to do this."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class PoolRejected(MillraceError):
    """404/409/422: the pool understood and refused this request."""

    def __init__(self, message: str, *, status: int, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


def _retry_after(resp: httpx.Response, default: float = 5.0) -> float:
    try:
        return max(0.0, min(600.0, float(resp.headers.get("retry-after", default))))
    except ValueError:
        return default


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict):
        text = str(body.get("detail") or body.get("title") or "")
        errors = body.get("errors") or []
        if errors:
            text += ": " + "; ".join(f"{e.get('location')}: {e.get('message')}" for e in errors[:5])
        return text[:500]
    return str(body)[:200]


class PoolClient:
    def __init__(self, config: PoolSyncConfig, *, base_dir: str | Path = ".") -> None:
        self.config = config
        self.base_url = config.url
        verify: ssl.SSLContext | bool = True
        if config.tls_ca:
            ca = Path(config.tls_ca)
            ca = ca if ca.is_absolute() else Path(base_dir) / ca
            verify = ssl.create_default_context(cafile=str(ca))
        self._client = httpx.AsyncClient(
            base_url=config.url,
            headers={
                "Authorization": f"Bearer {config.token.get_secret_value()}",
                "User-Agent": f"millrace/{__version__}",
            },
            timeout=config.timeout,
            verify=verify,
        )
        self.requests = 0
        self.failures = 0
        self.bytes_out = 0
        self.bytes_in = 0

    async def close(self) -> None:
        await self._client.aclose()

    async def call(self, method: str, path: str, body: Any = None, params: Any = None) -> Any:
        """One request; the JSON answer, or one of the errors in the module docstring."""
        self.requests += 1
        try:
            resp = await self._client.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            self.failures += 1
            raise SinkRetry(f"pool {method} {path}: {type(exc).__name__}: {exc}") from None
        self.bytes_out += len(resp.request.content or b"")
        self.bytes_in += len(resp.content)
        code = resp.status_code
        if code < 300:
            return resp.json() if resp.content else None
        self.failures += 1
        what = f"pool {method} {path}: HTTP {code} {_detail(resp)}"
        if code in (429, 503):
            raise SinkThrottle(what, retry_after=_retry_after(resp))
        if code in (401, 403):
            raise PoolRefused(what, status=code)
        if code in (404, 409, 422):
            raise PoolRejected(what, status=code, body=resp.json() if resp.content else None)
        raise SinkRetry(what)

    # -- the contract's operations ----------------------------------------------------------

    async def put_machine(self, machine_id: str, profile: dict[str, Any]) -> dict[str, Any]:
        return await self.call("PUT", f"/v1/machines/{machine_id}", profile)

    async def retire_machine(self, machine_id: str) -> dict[str, Any]:
        return await self.call("DELETE", f"/v1/machines/{machine_id}")

    async def post_availability(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for i in range(0, len(items), MAX_AVAILABILITY_ITEMS):
            out = await self.call(
                "POST", "/v1/availability", {"items": items[i : i + MAX_AVAILABILITY_ITEMS]}
            )
            results += out["results"]
        return results

    async def put_snapshot(
        self, gateway_id: str, seq: int, ts: str, items: list[dict[str, Any]]
    ) -> dict[str, Any]:
        body = {"seq": seq, "ts": ts, "items": items}
        return await self.call("PUT", f"/v1/gateways/{gateway_id}/snapshot", body)

    async def bookings(self, gateway_id: str, since_version: int) -> dict[str, Any]:
        return await self.call(
            "GET",
            f"/v1/gateways/{gateway_id}/bookings",
            params={"since_version": since_version, "limit": 500},
        )

    async def post_usage(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = await self.call("POST", "/v1/usage", {"records": records})
        return out["results"]

    def stats(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
        }
