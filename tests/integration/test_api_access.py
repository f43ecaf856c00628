"""The local API's access control over real HTTP (uvicorn inside the gateway, real SQLite
token store and audit log, a real Modbus simulator): every endpoint for every role, the
data-class rule, revocation, the failed-login limit, secrets never echoed, HTTPS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.routing import APIRoute

from gateway.auth import FailureLimiter, Role
from gateway.cli import main
from gateway.configload import load_config
from gateway.metrics import render
from gateway.runtime import Gateway
from simulators.modbus_plant import ModbusPlant
from tests.conftest import free_port
from tests.integration.gwutil import eventually, make_token, plant_config

OPEN = {"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"}
#: The technician's page: static files and redirects, no data (test_page_api.py checks them).
OPEN |= {"/", "/ui", "/ui/", "/ui/{name}"}
#: Endpoints that answer with a stream: the matrix reads the status, then hangs up.
STREAMING = {"/events"}
UPLINK_PASSWORD = "uplink-pw-7f3a9c"
INLINE_SECRET = "inline-secret-41bd2e"

#: (method, path, json body, the least role that may call it)
MATRIX: list[tuple[str, str, Any, Role]] = [
    ("GET", "/devices", None, Role.VIEWER),
    ("GET", "/points", None, Role.VIEWER),
    ("GET", "/points/pump-1.flow_rate", None, Role.VIEWER),
    ("GET", "/points/pump-1.flow_rate/history", None, Role.VIEWER),
    ("GET", "/models", None, Role.VIEWER),
    ("GET", "/uplinks", None, Role.VIEWER),
    ("GET", "/metrics", None, Role.VIEWER),
    ("GET", "/dead-letters", None, Role.TECHNICIAN),
    ("POST", "/uplinks/central/replay?since=2020-01-01T00:00:00Z", None, Role.TECHNICIAN),
    ("POST", "/points/pump-1.speed_setpoint/write", {"value": 1000}, Role.TECHNICIAN),
    ("GET", "/audit", None, Role.ADMIN),
    # the technician's page
    ("GET", "/whoami", None, Role.VIEWER),
    ("GET", "/events", None, Role.VIEWER),
    ("GET", "/equipment", None, Role.VIEWER),
    ("GET", "/pool", None, Role.VIEWER),
    (
        "POST",
        "/equipment/validate",
        {"id": "pump-9", "type": "pump", "device": "pump-1"},
        Role.TECHNICIAN,
    ),
    ("POST", "/commissioning", None, Role.TECHNICIAN),
]


@pytest.fixture
async def plant() -> AsyncIterator[ModbusPlant]:
    async with ModbusPlant.tcp(port=0) as p:
        yield p


def _config(tmp_path: Path, plant: ModbusPlant, **api: Any) -> Any:
    """The plant with `run_hours` made private (a local profile), an MQTT uplink to a closed
    port whose password comes from the environment, and an inline secret."""
    builtin = Path(__file__).parents[2] / "drivers" / "profiles" / "pump-station.yaml"
    profile = yaml.safe_load(builtin.read_text())
    profile["name"] = "pump-station-private"
    for p in profile["points"]:
        if p["name"] == "run_hours":
            p["data_class"] = "private"
    (tmp_path / "profiles").mkdir(exist_ok=True)
    (tmp_path / "profiles" / "pump-station-private.yaml").write_text(yaml.safe_dump(profile))
    loaded = plant_config(tmp_path, plant.port)
    data = loaded.config.model_dump(mode="json", exclude_defaults=True)
    data["gateway"]["org"] = "acme"
    data["devices"] = [d for d in data["devices"] if d["id"] == "pump-1"]
    data["devices"][0]["profile"] = "pump-station-private"
    data["uplinks"] = [
        {
            "type": "mqtt",
            "name": "central",
            "host": "127.0.0.1",
            "port": free_port(),
            "username": "gw",
            "password": "${env:MILLRACE_TEST_UPLINK_PW}",
            "connect_timeout": 0.5,
        }
    ]
    data["secrets"] = {"pool": INLINE_SECRET}
    data["api"] = {"host": "127.0.0.1", "port": 0, **api}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.fixture
async def gw(
    plant: ModbusPlant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv("MILLRACE_TEST_UPLINK_PW", UPLINK_PASSWORD)
    async with Gateway(_config(tmp_path, plant)) as g:
        await eventually(lambda: g.online_share() == (1, 1), what="pump online")
        yield g


async def _call(api: httpx.AsyncClient, method: str, path: str, body: Any, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if path not in STREAMING:
        return await api.request(method, path, json=body, headers=headers)
    async with api.stream(method, path, json=body, headers=headers) as r:
        if r.status_code != 200:  # an error answer is short: read it; a stream is not
            await r.aread()
        return r


async def test_every_role_on_every_endpoint(gw: Gateway) -> None:
    tokens = {role: make_token(gw.loaded, role, subject=str(role)) for role in Role}
    gw.access.limiter = FailureLimiter(limit=1000)  # this test fails logins on purpose
    async with httpx.AsyncClient(base_url=gw.api_url) as api:
        assert (await api.get("/health")).status_code == 200
        for method, path, body, least in MATRIX:
            r = await _call(api, method, path, body, None)
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            r = await _call(api, method, path, body, "mr_0123456789ab_" + "x" * 43)
            assert r.status_code == 401, (method, path)
            for role, token in tokens.items():
                r = await _call(api, method, path, body, token)
                if role >= least:
                    assert r.status_code in (200, 202), (method, path, role, r.text)
                else:
                    assert r.status_code == 403, (method, path, role, r.text)
                    assert f"needs role {least}" in r.json()["detail"]

    # a technician's write was sent; the viewer's refused attempt is audited too
    audit = [e.action for e in gw.audit.entries(limit=1000)]
    assert "access.denied" in audit and "device.write" in audit and "data.export" in audit
    assert gw.audit.verify().ok


def _routes(routes: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(full path, route) of every route, those of included routers too: FastAPI keeps an
    included router as one entry of `app.routes` (`original_router`, `include_context`)."""
    out: list[tuple[str, Any]] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            out += _routes(inner.routes, prefix + getattr(context, "prefix", ""))
        else:
            out.append((prefix + getattr(route, "path", ""), route))
    return out


async def test_no_route_is_open_by_accident(gw: Gateway) -> None:
    """Any route, present or added later (equipment, pool), refuses a call without a token."""
    async with httpx.AsyncClient(base_url=gw.api_url) as api:
        app_routes = _routes(gw._api_server.config.app.routes)
        checked: set[tuple[str, str]] = set()
        for full_path, route in app_routes:
            if not isinstance(route, APIRoute) or full_path in OPEN:
                continue
            path = full_path.replace("{", "").replace("}", "")  # any value for parameters
            for method in route.methods:
                r = await _call(api, method, path, None, None)
                assert r.status_code == 401, (method, full_path, r.status_code)
                checked.add((method, full_path))
        # the included routers' routes were walked too
        assert checked >= {("POST", "/equipment"), ("PATCH", "/equipment/{machine_id}")}
        assert ("GET", "/events") in checked and ("POST", "/commissioning") in checked
        assert len(checked) >= len(MATRIX)


async def test_restricted_and_private_points_follow_org_and_site(gw: Gateway) -> None:
    def token(role: Role, org: str = "acme", site: str | None = "") -> str:
        return make_token(gw.loaded, role, org=org, site=site)

    async def visible(tok: str) -> set[str]:
        r = await api.get("/points", headers={"Authorization": f"Bearer {tok}"})
        return {p["id"] for p in r.json()}

    async with httpx.AsyncClient(base_url=gw.api_url) as api:
        restricted, private = "pump-1.drive_serial", "pump-1.run_hours"
        own_viewer, own_admin = token(Role.VIEWER), token(Role.ADMIN)
        org_admin = token(Role.ADMIN, site=None)  # every site of acme
        rival_admin = token(Role.ADMIN, org="rival")
        assert restricted in await visible(own_viewer)
        assert private not in await visible(own_viewer)
        assert {restricted, private} <= await visible(own_admin)
        assert restricted in await visible(org_admin)
        assert private not in await visible(org_admin)
        rival = await visible(rival_admin)
        assert restricted not in rival and private not in rival and "pump-1.flow_rate" in rival

        for tok, pid in [(rival_admin, restricted), (own_viewer, private)]:
            for suffix in ("", "/history"):
                r = await api.get(
                    f"/points/{pid}{suffix}", headers={"Authorization": f"Bearer {tok}"}
                )
                assert r.status_code == 403 and "data of another" in r.json()["detail"]

        await gw.store.flush()
        r = await api.get(
            f"/points/{restricted}/history", headers={"Authorization": f"Bearer {own_viewer}"}
        )
        assert r.status_code == 200
    (export,) = gw.audit.entries(action="data.export")
    assert export.target == restricted and export.detail["class"] == "restricted"
    assert export.detail["via"] == "history" and export.detail["role"] == "viewer"
    assert export.who.startswith("test [token ")


async def test_audit_endpoint_pages(gw: Gateway) -> None:
    for i in range(5):
        await gw.audit.append("test.entry", "tester", f"t{i}", {"i": i})
    admin = make_token(gw.loaded, Role.ADMIN)
    async with httpx.AsyncClient(
        base_url=gw.api_url, headers={"Authorization": f"Bearer {admin}"}
    ) as api:
        first = (await api.get("/audit", params={"action": "test.entry", "limit": 3})).json()
        assert [e["target"] for e in first["entries"]] == ["t0", "t1", "t2"]
        assert first["next_after"] == first["entries"][-1]["seq"]
        rest = (
            await api.get("/audit", params={"action": "test.entry", "after": first["next_after"]})
        ).json()
        assert [e["target"] for e in rest["entries"]] == ["t3", "t4"]
        assert rest["next_after"] is None
        e = rest["entries"][0]
        assert e["ts"].endswith("Z") and len(e["hash"]) == 64 and e["detail"] == {"i": 3}


async def test_tokens_cli_create_list_revoke_take_effect_at_once(
    gw: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(gw.loaded.source)
    assert main(["tokens", "create", "-c", cfg, "--role", "viewer", "--subject", "grafana"]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("mr_") and "shown once" in out.err
    ident = token.split("_")[1]
    async with httpx.AsyncClient(
        base_url=gw.api_url, headers={"Authorization": f"Bearer {token}"}
    ) as api:
        assert (await api.get("/points")).status_code == 200
        assert main(["tokens", "list", "-c", cfg, "--json"]) == 0
        (listed,) = [t for t in json.loads(capsys.readouterr().out) if t["id"] == ident]
        assert listed["subject"] == "grafana" and listed["last_used"] is not None
        assert token not in json.dumps(listed)
        assert main(["tokens", "revoke", "-c", cfg, ident]) == 0
        assert (await api.get("/points")).status_code == 401
    actions = [(e.action, e.target) for e in gw.audit.entries(limit=1000)]
    assert ("token.create", ident) in actions and ("token.revoke", ident) in actions


async def test_failed_logins_are_rate_limited_and_counted(gw: Gateway) -> None:
    good = make_token(gw.loaded, Role.VIEWER)
    async with httpx.AsyncClient(base_url=gw.api_url) as api:
        for i in range(10):
            r = await api.get("/points", headers={"Authorization": f"Bearer mr_bad{i}_guess"})
            assert r.status_code == 401
        r = await api.get("/points", headers={"Authorization": "Bearer mr_bad_guess"})
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # while blocked, even a valid token is refused: guessing cannot go on
        r = await api.get("/points", headers={"Authorization": f"Bearer {good}"})
        assert r.status_code == 429
        assert (await api.get("/health")).status_code == 200
    metrics = render(gw)
    assert 'millrace_api_auth_failures_total{reason="invalid"} 10' in metrics
    assert "millrace_api_auth_rate_limited_total 2" in metrics


async def test_secrets_never_in_responses_or_metrics(gw: Gateway) -> None:
    admin = make_token(gw.loaded, Role.ADMIN)
    secrets = [UPLINK_PASSWORD, INLINE_SECRET, admin, admin.split("_", 2)[2]]
    async with httpx.AsyncClient(
        base_url=gw.api_url, headers={"Authorization": f"Bearer {admin}"}
    ) as api:

        async def uplink_failed() -> bool:
            (u,) = (await api.get("/uplinks")).json()
            return bool(u["last_error"] or u["transport_error"])

        # the uplink tried its broker (connection refused): its error is on show, not its password
        await eventually(uplink_failed, what="the uplink's connection error")
        bodies = [
            (await api.get(path)).text
            for path in ("/health", "/devices", "/points", "/uplinks", "/metrics", "/openapi.json")
        ]
        bodies.append((await api.get("/audit", params={"limit": 1000})).text)
    bodies.append(render(gw))
    bodies.append(repr(gw.config) + str(gw.config.model_dump(mode="json")))
    for body in bodies:
        for s in secrets:
            assert s not in body
    assert UPLINK_PASSWORD in gw.loaded.secret_values and INLINE_SECRET in gw.loaded.secret_values


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "millrace-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "api.crt", folder / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


async def test_https_with_a_self_signed_certificate(
    plant: ModbusPlant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MILLRACE_TEST_UPLINK_PW", UPLINK_PASSWORD)
    cert, key = _self_signed(tmp_path)
    loaded = _config(tmp_path, plant, tls={"cert": str(cert), "key": str(key)})
    async with Gateway(loaded) as g:
        assert g.api_url is not None and g.api_url.startswith("https://127.0.0.1:")
        token = make_token(loaded, Role.VIEWER)
        async with httpx.AsyncClient(
            base_url=g.api_url, verify=ssl.create_default_context(cafile=str(cert))
        ) as api:
            assert (await api.get("/health")).json()["gateway"] == "test-gw"
            assert (await api.get("/points")).status_code == 401
            r = await api.get("/points", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.json()
        # an unverified client is refused by TLS, and plain http does not get an answer
        async with httpx.AsyncClient(base_url=g.api_url) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get("/health")
        plain = g.api_url.replace("https://", "http://")
        async with httpx.AsyncClient(base_url=plain) as cleartext:
            with pytest.raises(httpx.HTTPError):
                await cleartext.get("/health")
