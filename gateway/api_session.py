"""`GET /whoami`: who the presented token is, so a client (the technician's page) offers only
what the role can do. It grants nothing: every endpoint still checks the token itself."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from gateway.auth import Role, Viewer
from gateway.types import DataClass

router = APIRouter(tags=["session"])


class Abilities(BaseModel):
    """What the role allows here (the API's access table, for display only)."""

    register_equipment: bool
    commissioning: bool
    write_points: bool
    dead_letters: bool
    audit: bool
    #: Of this gateway's org and site: sees restricted data; private needs an admin of it.
    restricted_data: bool
    private_data: bool


class WhoAmI(BaseModel):
    subject: str
    role: str
    org: str
    #: null: a token for every site of the organisation
    site: str | None
    token_id: str
    gateway: str
    gateway_site: str
    can: Abilities


@router.get("/whoami", response_model=WhoAmI)
async def whoami(request: Request, who: Viewer) -> WhoAmI:
    """The token's subject, role, organisation and site, and what that role may do here."""
    gw = request.app.state.gateway
    tech = who.role >= Role.TECHNICIAN
    return WhoAmI(
        subject=who.subject,
        role=str(who.role),
        org=who.org,
        site=who.site,
        token_id=who.token_id,
        gateway=gw.config.gateway.id,
        gateway_site=gw.config.gateway.site,
        can=Abilities(
            register_equipment=tech,
            commissioning=tech,
            write_points=tech,
            dead_letters=tech,
            audit=who.role >= Role.ADMIN,
            restricted_data=gw.access.can_see(who, DataClass.RESTRICTED),
            private_data=gw.access.can_see(who, DataClass.PRIVATE),
        ),
    )
