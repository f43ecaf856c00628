"""What leaves the box: public data is desensitized for any machine (a property test), the
restricted block goes only to matching tokens, private fields never leave, and the result is
the pool contract's MachineProfile."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.equipment.disclose import (
    PRECISION_M,
    coarse,
    disclosure_problems,
    owner_ref,
    pool_profile,
    public_view,
    restricted_view,
)
from gateway.equipment.model import Machine, MachineType, parse_machine
from tests import pool_contract

SECRET = b"k" * 32


@functools.cache
def contract_validator(name: str) -> Any:
    return pool_contract.validator(name)


# Free text that may be public is lower case; what must never be public is upper case and at
# least 6 letters long, so it cannot turn up by chance inside the public JSON (whose only
# capitals are time zone names and 3-letter currency codes).
LOWER = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ", min_size=1, max_size=20).map(
    lambda s: s.strip() or "x"
)
SECRET_TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=6, max_size=24)
PHONE = st.from_regex(r"\+[0-9]{8,14}", fullmatch=True)
EMAIL = st.tuples(SECRET_TEXT, SECRET_TEXT).map(lambda t: f"{t[0]}@{t[1]}.ORG")
COORD_LAT = st.floats(min_value=-90, max_value=90, allow_nan=False)
COORD_LON = st.floats(min_value=-180, max_value=180, allow_nan=False)
CAPABILITY = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True),
        "capacity": st.integers(min_value=1, max_value=5000),
        "unit": st.sampled_from(["ha/day", "t/h", "L/h", "%/day"]),
    }
)
WINDOW = st.sampled_from(
    [
        {"days": ["mon", "tue"], "start": "07:00", "end": "17:00"},
        {"days": ["sat"], "start": "20:00", "end": "24:00"},
        {"days": ["sun"], "start": "00:00", "end": "06:00"},
    ]
)
NOT_PUBLIC = st.sampled_from(["restricted", "private"])


@st.composite
def machines(draw: st.DrawFn) -> tuple[Machine, list[str], tuple[float, float]]:
    secrets = {
        "contact": draw(SECRET_TEXT),
        "phone": draw(PHONE),
        "email": draw(EMAIL),
        "description": draw(SECRET_TEXT),
        "serial": draw(SECRET_TEXT),
        "notes": draw(SECRET_TEXT),
    }
    lat, lon = draw(COORD_LAT), draw(COORD_LON)
    classes = draw(
        st.dictionaries(
            st.sampled_from(
                ["owner.contact_name", "owner.phone", "owner.email", "location.exact", "notes"]
            ),
            NOT_PUBLIC,
        )
    )
    caps = draw(st.lists(CAPABILITY, max_size=4, unique_by=lambda c: c["name"]))
    m = parse_machine(
        {
            "id": draw(st.from_regex(r"[a-z][a-z0-9\-]{0,15}", fullmatch=True)),
            "type": draw(st.sampled_from(list(MachineType))),
            "name": draw(LOWER),
            "make": draw(LOWER),
            "model": draw(LOWER),
            "serial_number": secrets["serial"],
            "notes": secrets["notes"],
            "owner": {
                "org": draw(LOWER),
                "contact_name": secrets["contact"],
                "phone": secrets["phone"],
                "email": secrets["email"],
            },
            "capabilities": caps,
            "location": {
                "lat": lat,
                "lon": lon,
                "description": secrets["description"],
                "timezone": draw(st.sampled_from(["UTC", "Asia/Ho_Chi_Minh", "America/Sao_Paulo"])),
            },
            "sharing": {
                "shared": True,
                "weekly": draw(st.lists(WINDOW, max_size=3)),
                "blackout_dates": ["2024-06-15"],
                "rate": {"amount": draw(st.integers(0, 10_000)), "currency": "VND", "per": "hour"},
                "min_booking_hours": draw(st.integers(1, 24)),
            },
            "device": "dev",
            "data_classes": classes,
        }
    )
    return m, list(secrets.values()), (lat, lon)


def numbers(node: Any) -> list[float]:
    if isinstance(node, dict):
        return [n for v in node.values() for n in numbers(v)]
    if isinstance(node, list):
        return [n for v in node for n in numbers(v)]
    if isinstance(node, float):
        return [node]
    return []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(machines())
def test_public_json_never_carries_an_exact_coordinate_or_a_contact(
    case: tuple[Machine, list[str], tuple[float, float]],
) -> None:
    m, secrets, (lat, lon) = case
    view = public_view(m, SECRET)
    text = json.dumps(view, ensure_ascii=False)
    for s in secrets:
        assert s not in text
    assert "restricted" not in view
    loc = view["location"]
    assert loc["precision_m"] == PRECISION_M
    for v in (loc["lat"], loc["lon"]):
        assert round(v, 2) == v
        assert re.fullmatch(r"-?\d+(\.\d{1,2})?", repr(v)), repr(v)
    for exact in (lat, lon):
        if round(exact, 2) != exact:  # more than 2 decimals: must not be anywhere
            assert repr(exact) not in text
            assert exact not in numbers(view)
    contract_validator("MachineProfile").validate({**view, "gateway_id": "gw-1", "version": 1})


def full_machine(**over: Any) -> Machine:
    data: dict[str, Any] = {
        "id": "harvester-3",
        "type": "sugarcane_harvester",
        "make": "Case IH",
        "model": "Austoft 8810",
        "serial_number": "CH570-0042",
        "owner": {
            "org": "Demo Cane Cooperative",
            "contact_name": "Li Wei",
            "phone": "+86 138 0000 0000",
            "email": "li.wei@coop.example",
        },
        "capabilities": [{"name": "harvesting", "capacity": 12, "unit": "ha/day"}],
        "location": {
            "lat": 22.8213,
            "lon": 108.3177,
            "description": "North barn, 12 Le Loi",
            "timezone": "Asia/Shanghai",
        },
        "sharing": {
            "shared": True,
            "weekly": [{"days": ["mon", "sat"], "start": "06:00", "end": "18:00"}],
            "blackout_dates": ["2026-02-17"],
            "rate": {"amount": 180, "currency": "CNY", "per": "hectare"},
            "min_booking_hours": 4,
        },
        "device": "coop-broker",
    }
    data.update(over)
    return parse_machine(data)


def test_public_view_is_the_contract_profile_shape() -> None:
    view = public_view(full_machine(), SECRET)
    assert view == {
        "type": "sugarcane_harvester",
        "make": "Case IH",
        "model": "Austoft 8810",
        "owner_org": "Demo Cane Cooperative",
        "capabilities": [{"name": "harvesting", "capacity": 12.0, "unit": "ha/day"}],
        "sharing": {
            "shared": True,
            "timezone": "Asia/Shanghai",
            "windows": [{"days": ["mon", "sat"], "start": "06:00", "end": "18:00"}],
            "blackout_dates": ["2026-02-17"],
            "rate": {"amount": 180.0, "currency": "CNY", "per": "hectare"},
            "min_booking_hours": 4.0,
        },
        "location": {"lat": 22.82, "lon": 108.32, "precision_m": 1113},
        "owner_ref": owner_ref(full_machine(), SECRET),
    }


OWNER = {"org": "Demo Cane Cooperative", "role": "gateway", "site": "mill-1"}


def test_restricted_block_goes_to_the_owner_org_only() -> None:
    m = full_machine()
    view = restricted_view(m, OWNER, secret=SECRET, site="mill-1")
    assert view["restricted"] == {
        "exact_location": {"lat": 22.8213, "lon": 108.3177},
        "serial_number": "CH570-0042",
    }
    # personal contact stays private; the location's free text has no place in the contract
    text = json.dumps(view)
    for s in ("Li Wei", "+86 138", "li.wei@", "Le Loi"):
        assert s not in text
    for attrs in (
        {"org": "Other Coop", "role": "gateway"},
        {"org": "demo cane cooperative", "role": "gateway"},  # the pool compares exactly
        {"org": "Demo Cane Cooperative", "role": "gateway", "site": "mill-2"},
        {"role": "cooperative"},
        {},
    ):
        assert "restricted" not in restricted_view(m, attrs, secret=SECRET, site="mill-1")
    no_site = {"org": "Demo Cane Cooperative", "role": "cooperative"}
    assert "restricted" in restricted_view(m, no_site, secret=SECRET, site="mill-1")


def test_operator_sees_restricted_but_never_private() -> None:
    m = full_machine(data_classes={"owner.phone": "restricted"})
    view = restricted_view(m, {"role": "operator", "org": "Pool Ltd"}, secret=SECRET)
    assert view["restricted"]["operator_phone"] == "+86 138 0000 0000"
    assert "operator_name" not in view["restricted"]  # still private
    assert "Li Wei" not in json.dumps(view)


def test_fields_made_private_leave_nowhere() -> None:
    m = full_machine(data_classes={"location.exact": "private", "serial_number": "private"})
    view = restricted_view(m, {"role": "operator"}, secret=SECRET)
    assert "restricted" not in view
    assert "22.8213" not in json.dumps(view)


def test_pool_profile_is_the_contract_body() -> None:
    m = full_machine(data_classes={"owner.phone": "restricted"})
    body = pool_profile(m, gateway_id="gw-cane-1", version=3, secret=SECRET, token_attrs=OWNER)
    contract_validator("MachineProfile").validate(body)
    assert body["restricted"]["operator_phone"] == "+86 138 0000 0000"
    assert (body["gateway_id"], body["version"]) == ("gw-cane-1", 3)


def test_owner_ref_is_stable_keyed_and_normalized() -> None:
    m = full_machine()
    ref = owner_ref(m, SECRET)
    assert ref is not None and re.fullmatch(r"[0-9a-f]{64}", ref)
    assert owner_ref(m, b"other-secret-0123456789") != ref
    retyped = full_machine(
        owner={
            "org": " Demo Cane Cooperative ",
            "contact_name": "Li Wei",
            "phone": "+86 138 0000 0000",
            "email": "LI.WEI@coop.example",
        }
    )
    assert owner_ref(retyped, SECRET) == ref
    other = full_machine(owner={"org": "Demo Cane Cooperative", "contact_name": "Wang Fang"})
    assert owner_ref(other, SECRET) != ref
    with pytest.raises(ValueError, match="at least 16 bytes"):
        owner_ref(m, b"short")
    nobody = parse_machine({"id": "x", "type": "pump", "device": "d"})
    assert owner_ref(nobody, SECRET) is None
    assert "owner_ref" not in public_view(nobody, SECRET)


def test_disclosure_problems_name_what_the_pool_would_refuse() -> None:
    assert disclosure_problems(full_machine()) == []
    m = full_machine(data_classes={"owner.org": "restricted", "location.coarse": "private"})
    assert disclosure_problems(m) == [
        "owner.org: the pool requires it in public data (its data class is restricted)",
        "location.coarse: the pool requires it in public data (its data class is private)",
    ]


@pytest.mark.parametrize(
    ("value", "expected"), [(22.8213, 22.82), (-0.001, 0.0), (108.315, 108.31), (-33.8688, -33.87)]
)
def test_coarse_is_whole_hundredths(value: float, expected: float) -> None:
    assert coarse(value) == expected and repr(coarse(value)) == repr(expected)
