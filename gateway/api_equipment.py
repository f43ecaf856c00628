"""Local API of the shared machinery: the registry, each machine's live status, health and
availability, its bookings, and the pool sync's state.

Reading needs a viewer token; registering, changing, retiring and the dry run of a change
(`POST /equipment/validate`) need a technician (or admin). A change names the version it
was made against in `If-Match` (the registry refuses a stale one with 409, so two
technicians cannot overwrite each other unknowingly), is recorded in the registry's history
as `api:<token subject>` and in the audit log.

What a caller sees of a machine follows the data classes (gateway/equipment/README.md):
everyone the public view (location coarsened to about 1 km, owner as a hash), callers of
this gateway's organisation and site the restricted part too (exact place, serial number),
an admin of this site the whole record (owner contact included).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from gateway.auth import Principal, Technician, Viewer
from gateway.equipment.disclose import public_view, restricted_part
from gateway.equipment.errors import (
    DuplicateMachine,
    EquipmentError,
    InvalidMachine,
    MachineRetired,
    UnknownMachine,
    VersionConflict,
)
from gateway.equipment.model import parse_machine
from gateway.equipment.registry import Record
from gateway.types import DataClass

if TYPE_CHECKING:
    from gateway.runtime import Gateway

router = APIRouter(tags=["equipment"])

#: A machine document is small; anything bigger is not one.
MAX_MACHINE_BYTES = 64 * 1024


def _gw(request: Request) -> Gateway:
    return request.app.state.gateway


def _who(p: Principal) -> str:
    return f"api:{p.subject}"


def _error(exc: EquipmentError) -> HTTPException:
    if isinstance(exc, InvalidMachine):
        return HTTPException(
            422,
            {
                "message": "invalid machine",
                "problems": exc.problems,
                # the same problems as data: the page shows them in the reader's language
                "details": [p.as_dict() for p in exc.details],
            },
        )
    if isinstance(exc, UnknownMachine):
        return HTTPException(404, str(exc))
    if isinstance(exc, VersionConflict):
        return HTTPException(409, {"message": str(exc), "current_version": exc.current})
    if isinstance(exc, DuplicateMachine | MachineRetired):
        return HTTPException(409, str(exc))
    return HTTPException(500, str(exc))


def _version(if_match: str | None) -> int:
    if if_match is None:
        raise HTTPException(428, "send If-Match: <version> (the version you read)")
    try:
        return int(if_match.strip().strip('"').removeprefix("W/").strip('"'))
    except ValueError:
        raise HTTPException(400, f"If-Match must be a version number (got {if_match!r})") from None


def machine_view(gw: Gateway, rec: Record, who: Principal) -> dict[str, Any]:
    """The record as this caller may see it, with its live state."""
    m = rec.machine
    if gw.access.can_see(who, DataClass.PRIVATE):
        doc: dict[str, Any] = m.model_dump(mode="json")
        view = "full"
    else:
        doc = public_view(m, gw.sharing.owner_key())
        doc["id"], doc["name"] = m.id, m.name
        view = "public"
        if gw.access.can_see(who, DataClass.RESTRICTED):
            doc["restricted"] = restricted_part(m)
            view = "restricted"
    live = gw.sharing.live.get(m.id)
    return {
        "machine": doc,
        "view": view,
        "version": rec.version,
        "source": rec.source,
        "retired": rec.retired,
        "config_fields": list(rec.config_fields),
        "live": live.to_dict() if live is not None else None,
    }


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_MACHINE_BYTES:
        raise HTTPException(413, f"a machine document is at most {MAX_MACHINE_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise HTTPException(400, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HTTPException(422, "a machine document is a JSON object")
    return doc


@router.get("/equipment")
async def list_equipment(
    request: Request, who: Viewer, retired: bool = False
) -> list[dict[str, Any]]:
    """Every registered machine (retired ones with `retired=true`), with live status."""
    gw = _gw(request)
    records = await gw.sharing.registry.list(include_retired=retired)
    return [machine_view(gw, r, who) for r in records]


@router.get("/equipment/{machine_id}")
async def get_equipment(request: Request, who: Viewer, machine_id: str) -> JSONResponse:
    gw = _gw(request)
    try:
        rec = await gw.sharing.registry.get(machine_id)
    except EquipmentError as exc:
        raise _error(exc) from None
    return JSONResponse(machine_view(gw, rec, who), headers={"ETag": str(rec.version)})


@router.get("/equipment/{machine_id}/history")
async def equipment_history(
    request: Request,
    who: Viewer,
    machine_id: str,
    after: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Who changed the machine, when, and which fields (values are not repeated here)."""
    gw = _gw(request)
    if machine_id not in gw.sharing.live:
        raise HTTPException(404, f"no machine {machine_id!r}")
    changes = await gw.sharing.registry.changes(machine_id, after=after, limit=limit)
    return [c.__dict__ | {"fields": list(c.fields)} for c in changes]


@router.get("/equipment/{machine_id}/availability")
async def equipment_availability(request: Request, who: Viewer, machine_id: str) -> dict[str, Any]:
    """What the pool is told now (the contract's AvailabilityUpdate) and the bookings."""
    gw = _gw(request)
    try:
        live = gw.sharing.get(machine_id)
    except EquipmentError as exc:
        raise _error(exc) from None
    return {
        **live.to_dict(),
        "update": live.update,
        "bookings": [b.to_dict() for b in gw.sharing.ledger.bookings(machine_id)],
    }


@router.post("/equipment", status_code=201)
async def add_equipment(request: Request, who: Technician) -> JSONResponse:
    """Register a machine (the registry's shape; see gateway/equipment/README.md)."""
    gw = _gw(request)
    doc = await _body(request)
    try:
        rec = await gw.sharing.add(parse_machine(doc), who=_who(who))
    except EquipmentError as exc:
        await gw.audit.append(
            "equipment.add.refused", who.who, str(doc.get("id")), {"error": str(exc)[:500]}
        )
        raise _error(exc) from None
    await gw.audit.append("equipment.add", who.who, rec.machine.id, {"version": rec.version})
    return JSONResponse(
        machine_view(gw, rec, who), status_code=201, headers={"ETag": str(rec.version)}
    )


@router.post("/equipment/validate")
async def validate_equipment(
    request: Request,
    who: Technician,
    replaces: Annotated[str | None, Query(max_length=64)] = None,
    if_match: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Check a machine document as `POST /equipment` would, or with `replaces=<id>` as
    `PATCH /equipment/{id}` would merge it (with `If-Match` the version too), and save
    nothing: the same 400, 413, 422 (every problem, by field path), 404 and 409 answers, or
    200 with the machine as it would be stored. The page calls it while a form is typed in,
    so a technician sees the API's own verdict before submitting. Not audited: it changes
    nothing."""
    gw = _gw(request)
    doc = await _body(request)
    try:
        if replaces is None:
            machine = parse_machine(doc)
            await gw.sharing.registry.check_add(machine)
        else:
            version = None if if_match is None else _version(if_match)
            machine = await gw.sharing.registry.check_update(replaces, doc, version=version)
    except EquipmentError as exc:
        raise _error(exc) from None
    return JSONResponse({"valid": True, "machine": machine.model_dump(mode="json")})


@router.patch("/equipment/{machine_id}")
async def update_equipment(
    request: Request,
    who: Technician,
    machine_id: str,
    if_match: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Merge a partial JSON document into the machine (mappings key by key, lists replaced).
    The body is read after the token is checked, so a caller without one learns nothing."""
    gw = _gw(request)
    version = _version(if_match)
    patch = await _body(request)
    try:
        rec = await gw.sharing.update(machine_id, patch, version=version, who=_who(who))
    except EquipmentError as exc:
        raise _error(exc) from None
    fields = sorted(patch)
    await gw.audit.append(
        "equipment.update", who.who, machine_id, {"version": rec.version, "fields": fields}
    )
    return JSONResponse(machine_view(gw, rec, who), headers={"ETag": str(rec.version)})


@router.delete("/equipment/{machine_id}")
async def retire_equipment(
    request: Request,
    who: Technician,
    machine_id: str,
    if_match: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Retire a machine: kept with its history, withdrawn from the pool."""
    gw = _gw(request)
    version = _version(if_match)
    try:
        rec = await gw.sharing.retire(machine_id, version=version, who=_who(who))
    except EquipmentError as exc:
        raise _error(exc) from None
    await gw.audit.append("equipment.retire", who.who, machine_id, {"version": rec.version})
    if gw.pool is not None:
        gw.pool.poke()
    return JSONResponse(machine_view(gw, rec, who), headers={"ETag": str(rec.version)})


@router.get("/pool")
async def pool_state(request: Request, who: Viewer) -> dict[str, Any]:
    """The pool sync: reachable or not, last snapshot, counters (null when no pool is set)."""
    gw = _gw(request)
    return {
        "configured": gw.pool is not None,
        "sync": gw.pool.details() if gw.pool is not None else None,
        "machines": len(gw.sharing.live),
        "evaluations": gw.sharing.evaluations,
        "updates_published": gw.sharing.updates_published,
        "usage_metered": gw.sharing.metered,
        "last_error": gw.sharing.last_error,
    }
