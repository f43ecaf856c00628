"""Access to the local API: tokens with roles, attribute checks on data classes.

Interface for code that adds endpoints (routers included in `gateway.api.create_app`):

    from gateway.auth import Role, Principal, require, Technician
    @router.post("/equipment/{id}")
    async def change(id: str, request: Request,
                     who: Annotated[Principal, Depends(require(Role.TECHNICIAN))]) -> ...:
        gw = request.app.state.gateway            # the running Gateway
        if not gw.access.can_see(who, data_class): raise HTTPException(403, ...)
        await gw.audit.append("equipment.update", who.who, id, {"version": 3})
`Role` is ordered (VIEWER < TECHNICIAN < ADMIN); `Principal(subject, role, org, site,
token_id)` is frozen, `.who` names subject and token for the audit log. `require(role)` →
401 without/unknown token, 403 below `role`, 429 after 10 failures a minute per address.

Tokens: `gateway.auth.tokens.TokenStore` (SHA-256 digests in `tokens.db` beside the store);
policy and rate limit: `gateway.auth.access.AccessControl` (`gw.access`); rules in
docs/security.md.
"""

from gateway.auth.access import AccessControl, Admin, FailureLimiter, Technician, Viewer, require
from gateway.auth.tokens import Principal, Role, TokenError, TokenInfo, TokenStore

__all__ = [
    "AccessControl",
    "Admin",
    "FailureLimiter",
    "Principal",
    "Role",
    "Technician",
    "TokenError",
    "TokenInfo",
    "TokenStore",
    "Viewer",
    "require",
]
