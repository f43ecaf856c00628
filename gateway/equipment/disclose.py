"""What of a machine leaves the box, by data class (the table in `model.py`), in the shape of
the pool contract's `MachineProfile` (`sync/pool_api.yaml`).

* `public_view(machine, secret)`: the public fields. Location only coarsened (lat/lon rounded
  to whole hundredths of a degree, about 1.1 km; `precision_m` 1113 bounds the error); the
  owner's contact only as `owner_ref`, an HMAC-SHA256 under the gateway's secret of the
  owner's org and contact (stable, so the pool can group one owner's machines; meaningless
  without the secret); restricted and private fields never. A field whose class is not public
  is left out, even where the pool requires it (`disclosure_problems` says so).
* `restricted_view(machine, token_attrs, secret=...)`: the public view plus `restricted`
  (`exact_location`, `serial_number`, `notes`, and contact fields a owner made restricted as
  `operator_name`/`_phone`/`_email`), only when the token's attributes allow it: role
  `operator` (the pool's staff) sees every restricted field; otherwise the token's `org`
  must equal the owner's org exactly (as the pool compares it: a near miss would make the pool
  refuse the whole profile with 403) and, when both the token and the caller name a site, the
  sites must match. Private fields never leave, whoever asks.
* `pool_profile(...)`: the body of `PUT /v1/machines/{id}`: the view a gateway token may
  send, plus `gateway_id` and `version` (the registry's version).

Gateway wiring (device, points, rules, health and meter settings) is in no view.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from gateway.equipment.model import Machine
from gateway.types import DataClass

#: Decimal places public coordinates keep, and the error bound that gives: half a cell's
#: diagonal is at most 0.005° x sqrt(2) (787 m); 1113 m is one cell of latitude.
COARSE_DECIMALS = 2
PRECISION_M = 1113
MIN_SECRET_BYTES = 16

#: classified field -> (block, key) in the contract's MachineProfile; None: not sent.
_PLACES: dict[str, tuple[str, str] | None] = {
    "make": ("", "make"),
    "model": ("", "model"),
    "owner.org": ("", "owner_org"),
    "capabilities": ("", "capabilities"),
    "location.coarse": ("", "location"),
    "sharing": ("", "sharing"),
    "name": None,
    "location.description": None,
    "location.exact": ("restricted", "exact_location"),
    "serial_number": ("restricted", "serial_number"),
    "notes": ("restricted", "notes"),
    "owner.contact_name": ("restricted", "operator_name"),
    "owner.phone": ("restricted", "operator_phone"),
    "owner.email": ("restricted", "operator_email"),
}
#: Public profile fields the pool contract requires.
REQUIRED_PUBLIC = ("make", "model", "owner_org", "capabilities", "location", "sharing")


def owner_ref(machine: Machine, secret: bytes) -> str | None:
    """HMAC-SHA256(secret, JSON [org, contact_name, email, phone]) as hex; None when the
    machine names no owner. Trimmed, email lower-cased, so a retyped contact keeps its ref."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the owner_ref secret must be at least {MIN_SECRET_BYTES} bytes")
    o = machine.owner
    parts = [o.org.strip(), o.contact_name.strip(), o.email.strip().lower(), o.phone.strip()]
    if not any(parts):
        return None
    message = json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def coarse(value: float) -> float:
    """Whole hundredths of a degree; the float's repr never shows more than 2 decimals."""
    return round(value, COARSE_DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def _values(machine: Machine) -> dict[str, Any]:
    """Each classified field's outgoing value (None or empty: nothing to send)."""
    loc = machine.location
    point = loc.lat is not None and loc.lon is not None
    sharing = machine.sharing
    return {
        "name": machine.name,
        "make": machine.make,
        "model": machine.model,
        "owner.org": machine.owner.org,
        "capabilities": [c.model_dump(mode="json") for c in machine.capabilities],
        "sharing": {
            "shared": sharing.shared,
            "timezone": loc.timezone,
            "windows": [w.model_dump(mode="json") for w in sharing.weekly],
            "blackout_dates": [d.isoformat() for d in sharing.blackout_dates],
            "rate": None if sharing.rate is None else sharing.rate.model_dump(mode="json"),
            "min_booking_hours": sharing.min_booking_hours,
        },
        "location.coarse": (
            {"lat": coarse(loc.lat), "lon": coarse(loc.lon), "precision_m": PRECISION_M}  # type: ignore[arg-type]
            if point
            else None
        ),
        "location.exact": {"lat": loc.lat, "lon": loc.lon} if point else None,
        "location.description": loc.description,
        "serial_number": machine.serial_number,
        "notes": machine.notes,
        "owner.contact_name": machine.owner.contact_name,
        "owner.phone": machine.owner.phone,
        "owner.email": machine.owner.email,
    }


def _present(value: Any) -> bool:
    return value is not None and value != ""


def public_view(machine: Machine, secret: bytes) -> dict[str, Any]:
    """The machine as anyone may see it (module docstring)."""
    classes = machine.classes
    view: dict[str, Any] = {"type": machine.type.value}
    for key, value in _values(machine).items():
        place = _PLACES[key]
        if place is None or place[0] or classes[key] is not DataClass.PUBLIC:
            continue
        if _present(value):
            view[place[1]] = value
    ref = owner_ref(machine, secret)
    if ref is not None:
        view["owner_ref"] = ref
    return view


def grants_restricted(
    machine: Machine, token_attrs: Mapping[str, Any], *, site: str | None = None
) -> bool:
    """Whether a token with these attributes (`org`, `site`, `role`) may see restricted data."""
    if token_attrs.get("role") == "operator":
        return True
    org = token_attrs.get("org")
    if not org or org != machine.owner.org:
        return False
    token_site = token_attrs.get("site")
    return not (token_site and site and token_site != site)


def restricted_part(machine: Machine) -> dict[str, Any]:
    """The restricted fields in the contract's `RestrictedProfile` shape (empty: none)."""
    classes = machine.classes
    out: dict[str, Any] = {}
    for key, value in _values(machine).items():
        place = _PLACES[key]
        if place is None or place[0] != "restricted":
            continue
        if classes[key] is DataClass.RESTRICTED and _present(value):
            out[place[1]] = value
    return out


def restricted_view(
    machine: Machine,
    token_attrs: Mapping[str, Any],
    *,
    secret: bytes,
    site: str | None = None,
) -> dict[str, Any]:
    """The public view, plus `restricted` when `token_attrs` allow (`site`: this gateway's)."""
    view = public_view(machine, secret)
    if grants_restricted(machine, token_attrs, site=site):
        extra = restricted_part(machine)
        if extra:
            view["restricted"] = extra
    return view


def pool_profile(
    machine: Machine,
    *,
    gateway_id: str,
    version: int,
    secret: bytes,
    token_attrs: Mapping[str, Any],
    site: str | None = None,
) -> dict[str, Any]:
    """The body of `PUT /v1/machines/{machine.id}`: what this gateway's token may send."""
    return {
        **restricted_view(machine, token_attrs, secret=secret, site=site),
        "gateway_id": gateway_id,
        "version": version,
    }


def disclosure_problems(machine: Machine) -> list[str]:
    """Why the pool would refuse the machine's public profile (fields the contract requires
    that its data classes keep in, or that are empty); [] when it can be registered."""
    view = public_view(machine, b"\0" * MIN_SECRET_BYTES)
    problems = []
    for key in REQUIRED_PUBLIC:
        if key not in view:
            field = next(f for f, p in _PLACES.items() if p == ("", key))
            klass = machine.classes[field]
            why = "empty" if klass is DataClass.PUBLIC else f"its data class is {klass.value}"
            problems.append(f"{field}: the pool requires it in public data ({why})")
    return problems
