"""OPC UA config models, the built-in profile, client certificates and the discovery output
format: everything that is checked before a socket is opened."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError

from drivers.opcua.certs import (
    create_certificate,
    create_client_certificate,
    load_private_key,
    read_certificate,
)
from drivers.opcua.config import (
    DeadbandType,
    OpcuaDevice,
    OpcuaPoint,
    OpcuaProfile,
    PointMode,
    SecurityMode,
    SecurityPolicy,
)
from drivers.opcua.discover import point_name, profile_yaml

ROOT = Path(__file__).resolve().parents[2]
URI = "urn:millrace:sim:machine-line"


def device(**kw: Any) -> OpcuaDevice:
    base: dict[str, Any] = {
        "id": "line1",
        "protocol": "opcua",
        "endpoint": "opc.tcp://10.0.0.5:4840",
        "profile": "cnc-machine-line",
    }
    return OpcuaDevice.model_validate(base | kw)


def point(**kw: Any) -> OpcuaPoint:
    return OpcuaPoint.model_validate({"name": "speed", "node": "ns=2;s=Speed"} | kw)


def error_of(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return str(exc.value)


# -- points ---------------------------------------------------------------------------------------


def test_point_defaults() -> None:
    p = point()
    assert p.mode is PointMode.SUBSCRIBE
    assert p.deadband_type is DeadbandType.NONE and p.deadband_value == 0
    assert p.queue_size == 1 and p.sampling_interval is None
    assert p.writable is False and p.data_class == "public"
    assert p.namespaces() == {2}


def test_point_by_browse_path() -> None:
    p = point(node=None, browse_path=f"0:Objects/nsu={URI};MachineLine/ml:Mill1")
    assert p.node_ref() is None
    assert p.namespaces() == {0, URI, "ml"}


def test_point_durations_take_units() -> None:
    assert point(sampling_interval="250ms").sampling_interval == 0.25


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"node": None}, "exactly one of node or browse_path"),
        ({"browse_path": "0:Objects/2:X"}, "exactly one of node or browse_path"),
        ({"node": "ns=2;x=1"}, "expected i=, s=, g= or b="),
        ({"node": "nsu=urn:x"}, "missing ';'"),
        ({"node": None, "browse_path": "0:Objects/"}, "ends with '/'"),
        ({"min": 10, "max": 1}, "min 10.0 is greater than max 1.0"),
        ({"deadband_value": 0.5}, "deadband_value needs deadband_type"),
        ({"deadband_type": "absolute"}, "needs deadband_value > 0"),
        ({"deadband_type": "percent", "deadband_value": 150}, "0..100"),
        ({"deadband_type": "relative", "deadband_value": 1}, "deadband_type"),
        ({"mode": "poll", "deadband_type": "percent", "deadband_value": 5}, "give min and max"),
        ({"mode": "stream"}, "mode"),
        ({"queue_size": 0}, "queue_size"),
        ({"sampling_interval": "0s"}, "greater than zero"),
        ({"name": "mill1.speed"}, "name"),
        ({"address": 5}, "Extra inputs are not permitted"),
    ],
)
def test_bad_points(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        point(**kw)
    assert message in error_of(info)


def test_poll_percent_deadband_with_range_is_fine() -> None:
    p = point(mode="poll", deadband_type="percent", deadband_value=5, min=0, max=200)
    assert p.deadband_value == 5


def test_points_are_frozen() -> None:
    with pytest.raises(ValidationError):
        point().name = "other"  # type: ignore[misc]


# -- profiles -------------------------------------------------------------------------------------


def test_profile_aliases() -> None:
    prof = OpcuaProfile.model_validate(
        {
            "name": "cnc",
            "namespaces": {"ml": URI},
            "points": [
                {"name": "a", "node": "nsu=ml;s=Mill1.SpindleSpeed"},
                {"name": "b", "browse_path": "0:Objects/ml:MachineLine"},
                {"name": "c", "node": f"nsu={URI};i=1001"},
            ],
        }
    )
    assert prof.protocol == "opcua"
    assert prof.namespaces == {"ml": URI}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"points": []}, "at least 1 item"),
        (
            {"points": [{"name": "a", "node": "i=1"}, {"name": "a", "node": "i=2"}]},
            "duplicate point names: a",
        ),
        ({"points": [{"name": "a", "node": "nsu=ml;s=X"}]}, "alias 'ml' is not defined"),
        ({"points": [{"name": "a", "browse_path": "ml:X"}]}, "alias 'ml' is not defined"),
        (
            {"namespaces": {"ml": "machine"}, "points": [{"name": "a", "node": "i=1"}]},
            "not a namespace URI",
        ),
        ({"protocol": "modbus", "points": [{"name": "a", "node": "i=1"}]}, "opcua"),
    ],
)
def test_bad_profiles(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        OpcuaProfile.model_validate({"name": "p"} | data)
    assert message in error_of(info)


def test_builtin_cnc_profile_validates() -> None:
    data = yaml.safe_load((ROOT / "drivers" / "profiles" / "cnc-machine-line.yaml").read_text())
    prof = OpcuaProfile.model_validate(data)
    names = {p.name for p in prof.points}
    for mill in (1, 2, 3):
        assert {f"mill{mill}_spindle_speed", f"mill{mill}_tool_wear", f"mill{mill}_state"} <= names
    writable = {p.name for p in prof.points if p.writable}
    assert writable == {
        "mill1_feed_override",
        "mill2_feed_override",
        "mill3_feed_override",
        "line_target_rate",
    }
    assert all(p.min is not None and p.max is not None for p in prof.points if p.writable)
    # nodes are named by URI alias (or ns=0), never by a namespace index that can move
    for p in prof.points:
        assert all(ns == 0 or isinstance(ns, str) for ns in p.namespaces()), p.name


# -- devices --------------------------------------------------------------------------------------


def test_device_defaults() -> None:
    d = device()
    assert d.application_uri == "urn:millrace:line1"
    assert d.security_policy is SecurityPolicy.NONE and d.security_mode is SecurityMode.NONE
    assert d.connection_key == "opc.tcp://10.0.0.5:4840#line1"
    assert (d.publishing_interval, d.poll_interval, d.timeout) == (1.0, 1.0, 5.0)
    assert (d.session_timeout, d.watchdog_interval) == (60.0, 5.0)
    assert (d.backoff_initial, d.backoff_max) == (1.0, 60.0)
    assert d.enabled and not d.secured


def test_device_secured_with_files_and_user() -> None:
    d = device(
        security_policy="Basic256Sha256",
        security_mode="SignAndEncrypt",
        certificate="/etc/millrace/opcua-cert.der",
        private_key="/etc/millrace/opcua-key.pem",
        username="operator",
        password="s3cret-value",
        application_uri="urn:plant:gateway",
        publishing_interval="250ms",
    )
    assert d.secured and d.application_uri == "urn:plant:gateway"
    assert d.publishing_interval == 0.25
    assert "s3cret-value" not in repr(d) and "s3cret-value" not in str(d.model_dump())
    assert d.password is not None and d.password.get_secret_value() == "s3cret-value"


def test_two_devices_on_one_endpoint_get_their_own_session() -> None:
    assert device(id="a").connection_key != device(id="b").connection_key


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"security_policy": "Basic256Sha256"}, "needs security_mode Sign or SignAndEncrypt"),
        ({"security_mode": "Sign"}, "needs a security_policy"),
        (
            {"security_policy": "Basic256Sha256", "security_mode": "Sign"},
            "needs certificate and private_key",
        ),
        ({"security_policy": "Basic128Rsa15", "security_mode": "Sign"}, "security_policy"),
        ({"password": "x"}, "password given without username"),
        ({"backoff_initial": 10, "backoff_max": 5}, "backoff_initial 10.0 is greater"),
        ({"session_timeout": 1, "watchdog_interval": 5}, "session_timeout must be at least"),
        ({"application_uri": "gateway"}, "is not a URI"),
        ({"endpoint": "http://10.0.0.5:4840"}, "opc.tcp://host:4840"),
        ({"endpoint": "opc.tcp://"}, "opc.tcp://host:4840"),
        ({"endpoint": "opc.tcp://host:99999"}, "invalid port"),
        ({"timeout": 0}, "greater than zero"),
        ({"protocol": "modbus-tcp"}, "opcua"),
        ({"host": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_devices(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        device(**kw)
    assert message in error_of(info)


def test_config_models_do_not_import_asyncua() -> None:
    """Validating a config never loads I/O code (STYLE 12)."""
    code = (
        "import sys, drivers.opcua, drivers.opcua.config, drivers.opcua.nodeid;"
        "assert 'asyncua' not in sys.modules, 'asyncua imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


# -- certificates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pem", ".der"])
def test_client_certificate(tmp_path: Path, suffix: str) -> None:
    cert_path, key_path = create_client_certificate(
        tmp_path / f"cert{suffix}",
        tmp_path / f"key{suffix}",
        application_uri="urn:millrace:line1",
        hostname="gw-01.plant.local",
        days=30,
    )
    data = cert_path.read_bytes()
    assert data.startswith(b"-----BEGIN CERTIFICATE") == (suffix == ".pem")
    info = read_certificate(cert_path)
    assert info.uris == ["urn:millrace:line1"]
    assert info.dns_names == ["gw-01.plant.local"]
    assert not info.expired() and not info.not_yet_valid()
    assert 29 <= (info.not_after - info.not_before).days <= 31
    usage = info.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    assert ExtendedKeyUsageOID.SERVER_AUTH not in usage
    key_usage = info.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (
        key_usage.digital_signature and key_usage.key_encipherment and key_usage.data_encipherment
    )
    key = load_private_key(key_path.read_bytes())
    assert key.key_size == 2048
    assert key.public_key().public_numbers() == info.cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    if suffix == ".der":
        serialization.load_der_private_key(key_path.read_bytes(), password=None)


def test_certificate_for_an_ip_address_and_a_server(tmp_path: Path) -> None:
    cert, _ = create_certificate(
        tmp_path / "s.pem",
        tmp_path / "s.key.pem",
        application_uri="urn:server",
        hostname="192.168.0.10",
        extra_hostnames=["localhost"],
        server=True,
        key_size=3072,
    )
    info = read_certificate(cert)
    assert info.ip_addresses == ["192.168.0.10"]
    assert info.dns_names == ["localhost"]
    usage = info.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_certificate_refuses_to_overwrite_when_asked(tmp_path: Path) -> None:
    args = {"application_uri": "urn:a", "hostname": socket.gethostname()}
    create_client_certificate(tmp_path / "c.pem", tmp_path / "k.pem", **args)
    first = (tmp_path / "k.pem").read_bytes()
    with pytest.raises(FileExistsError, match="exists"):
        create_client_certificate(tmp_path / "c.pem", tmp_path / "k.pem", overwrite=False, **args)
    assert (tmp_path / "k.pem").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pem", "k.pem"]  # no temp files


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"application_uri": "gateway"}, "not a URI"),
        ({"hostname": ""}, "hostname is required"),
        ({"days": 0}, "days must be at least 1"),
        ({"key_size": 1024}, "2048 bits or more"),
    ],
)
def test_certificate_arguments(tmp_path: Path, kw: dict[str, Any], message: str) -> None:
    args = {"application_uri": "urn:a", "hostname": "h"} | kw
    with pytest.raises(ValueError, match=message):
        create_client_certificate(tmp_path / "c.pem", tmp_path / "k.pem", **args)
    assert not list(tmp_path.iterdir())


def test_unreadable_key_message_hides_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_private_key(
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n"
        )
    assert "c2VjcmV0" not in str(info.value)
    with pytest.raises(ValueError, match="not a PEM or DER certificate"):
        (tmp_path / "x.pem").write_text("nope")
        read_certificate(tmp_path / "x.pem")


# -- discovery output -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (("MachineLine", "Mill1", "SpindleSpeed"), "machine_line_mill1_spindle_speed"),
        (("OEE",), "oee"),
        (("PLC", "DB10.Temp 1"), "plc_db10_temp_1"),
        (("_hidden",), "hidden"),
        (("ÄÖ",), "point"),
        (("x" * 80,), None),
    ],
)
def test_point_names(path: tuple[str, ...], name: str | None) -> None:
    got = point_name(path)
    OpcuaPoint(name=got, node="i=1")  # always a valid point name
    if name is not None:
        assert got == name
    else:
        assert len(got) == 64 and got != point_name(("x" * 81,))


def test_profile_yaml_round_trips() -> None:
    profile = {
        "name": "discovered",
        "protocol": "opcua",
        "description": "Discovered from opc.tcp://h:4840/: 2 variables",
        "points": [
            {
                "name": "speed",
                "node": f"nsu={URI};s=Mill1.SpindleSpeed",
                "unit": "rpm",
                "min": 0.0,
                "max": 3000.0,
            },
            {
                "name": "feed",
                "node": f"nsu={URI};s=Mill1.FeedOverride",
                "unit": "%",
                "writable": True,
            },
        ],
    }
    text = profile_yaml(profile)
    assert text.startswith("# Generated by `millrace discover opcua`")
    assert (
        "  - {name: speed, node: 'nsu=urn:millrace:sim:machine-line;s=Mill1.SpindleSpeed'" in text
    )
    assert yaml.safe_load(text) == profile
    OpcuaProfile.model_validate(yaml.safe_load(text))
