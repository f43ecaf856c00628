"""Who may call what: bearer-token authentication, role checks, data-class visibility and
the failed-login rate limit, for the local API.

`require(role)` is the one FastAPI dependency every endpoint but `/health` uses. It finds the
gateway's `AccessControl` at `request.app.state.gateway.access`, so any router included in the
gateway's app gets the same checks without importing the runtime.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gateway.auth.tokens import Principal, Role, TokenStore
from gateway.types import DataClass

_bearer = HTTPBearer(
    auto_error=False,
    description="A token from `millrace tokens create` (roles viewer < technician < admin).",
)


class FailureLimiter:
    """At most `limit` failed logins per client address within `window` seconds; after that
    every attempt from the address is refused (429, Retry-After) until the oldest failure
    leaves the window — valid tokens too, or guessing would simply go on. Memory is bounded:
    at `max_clients` addresses the stalest are forgotten."""

    def __init__(
        self,
        limit: int = 10,
        window: float = 60.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float] | None:
        q = self._failures.get(client)
        if q is None:
            return None
        cutoff = self._clock() - self.window
        while q and q[0] <= cutoff:
            q.popleft()
        if not q:
            del self._failures[client]
            return None
        return q

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it may now."""
        q = self._recent(client)
        if q is None or len(q) < self.limit:
            return None
        return max(0.0, q[-self.limit] + self.window - self._clock())

    def failed(self, client: str) -> None:
        if client not in self._failures and len(self._failures) >= self.max_clients:
            stalest = min(self._failures, key=lambda c: self._failures[c][-1])
            del self._failures[stalest]
        self._failures.setdefault(client, deque(maxlen=self.limit * 2)).append(self._clock())


class AccessControl:
    """The gateway's access policy: its token store, its identity (org, site) for attribute
    checks, the failure limiter and the counters `/metrics` shows."""

    def __init__(
        self,
        tokens: TokenStore,
        *,
        org: str,
        site: str,
        limiter: FailureLimiter | None = None,
    ) -> None:
        self.tokens = tokens
        self.org = org
        self.site = site
        self.limiter = limiter or FailureLimiter()
        #: reason -> count: missing, invalid (unknown/revoked/malformed), forbidden (role)
        self.failures: dict[str, int] = {"missing": 0, "invalid": 0, "forbidden": 0}
        self.rate_limited = 0
        self.granted = 0

    async def authenticate(self, request: Request, token: str | None, role: Role) -> Principal:
        client = request.client.host if request.client else "unknown"
        wait = self.limiter.retry_after(client)
        if wait is not None:
            self.rate_limited += 1
            raise HTTPException(
                429,
                "too many failed logins from this address; try again later",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        if not token:
            self.failures["missing"] += 1
            raise HTTPException(
                401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        principal = await asyncio.to_thread(self.tokens.check, token)
        if principal is None:
            self.failures["invalid"] += 1
            self.limiter.failed(client)
            raise HTTPException(
                401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"}
            )
        if principal.role < role:
            self.failures["forbidden"] += 1
            if request.method not in ("GET", "HEAD"):
                # a write refused for its role is still a write attempt made with this token
                audit = getattr(request.app.state.gateway, "audit", None)
                if audit is not None:
                    await audit.append(
                        "access.denied",
                        principal.who,
                        f"{request.method} {request.url.path}",
                        {"role": str(principal.role), "needs": str(role)},
                    )
            raise HTTPException(403, f"needs role {role} or higher (token has {principal.role})")
        self.granted += 1
        request.state.principal = principal
        return principal

    def can_see(self, principal: Principal, data_class: DataClass | str) -> bool:
        """The attribute rule for data by class (docs/security.md):

        * public: every authenticated caller;
        * restricted: a caller of this gateway's organisation whose token is for this site
          or for every site of the organisation;
        * private: an admin of this organisation whose token names this very site.
        """
        cls = DataClass(data_class)
        if cls is DataClass.PUBLIC:
            return True
        if principal.org != self.org:
            return False
        if cls is DataClass.RESTRICTED:
            return principal.site in (None, self.site)
        return principal.role >= Role.ADMIN and principal.site == self.site


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: the caller's Principal when its bearer token is valid and has at
    least `role`; 401 without or with an unknown token, 403 with too low a role, 429 after
    too many failures from the address."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        access: AccessControl = request.app.state.gateway.access
        token = credentials.credentials if credentials is not None else None
        return await access.authenticate(request, token, role)

    dependency.__name__ = f"require_{role}"
    return dependency


#: Ready-made annotations: `async def f(who: Viewer) -> ...`.
Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Technician = Annotated[Principal, Depends(require(Role.TECHNICIAN))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
