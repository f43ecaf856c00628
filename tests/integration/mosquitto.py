"""A real Mosquitto broker for integration tests: free loopback port, config in a tmp folder.

    broker = Mosquitto(tmp_path, users={"farm": "s3cret"}, tls=True)
    broker.start()              # returns once the listeners accept connections
    broker.port, broker.tls_port, broker.tls.ca
    broker.stop(); broker.start()   # same ports, same persistence file
    broker.kill()               # SIGKILL: a crash (in-memory state since the last save is lost)

Persistence is on (in the tmp folder): sessions, subscriptions and queued QoS 1 messages
survive `stop()`/`start()` (Mosquitto writes its database on SIGTERM), which is what the
persistent-session tests need. `users` switches anonymous access off and writes a password
file with `mosquitto_passwd`. `tls=True` adds a TLS listener with a CA and a server
certificate for 127.0.0.1/localhost generated here with `cryptography`, plus a client
certificate from the same CA; `require_certificate=True` makes that listener demand it
(mutual TLS).

Mosquitto is a test dependency that `make test` installs; when it is missing the tests FAIL
(never skip), so CI can never pass without exercising the real broker.

Fixtures: `mosquitto` (anonymous, started) and `mosquitto_factory` (build your own; every
broker it made is stopped afterwards).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import ipaddress
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.server_process import ServerProcess

MISSING = "mosquitto is not installed: run make test, which installs it"
_SBIN = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


def _tool(name: str, fallbacks: tuple[str, ...] = ()) -> str:
    found = shutil.which(name) or next((p for p in fallbacks if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.fail(MISSING, pytrace=False)
    return found


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost, a client certificate."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls(folder: Path, *, client_cn: str = "millrace-gateway") -> TlsFiles:
    """Generate a throwaway CA and two leaf certificates (EC P-256, valid one day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("Millrace Test CA"))
        .issuer_name(name("Millrace Test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    server_key, server_cert = leaf(
        "localhost",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key, client_cert = leaf(client_cn, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    files = TlsFiles(
        ca=folder / "ca.pem",
        ca_key=folder / "ca.key",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )
    pem = serialization.Encoding.PEM
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    files.server_cert.write_bytes(server_cert.public_bytes(pem))
    files.client_cert.write_bytes(client_cert.public_bytes(pem))
    write_key(ca_key, files.ca_key)
    write_key(server_key, files.server_key)
    write_key(client_key, files.client_key)
    return files


class Mosquitto(ServerProcess):
    """One Mosquitto process with a generated config; see the module docstring."""

    label = "mosquitto"

    def __init__(
        self,
        folder: Path,
        *,
        users: dict[str, str] | None = None,
        tls: bool = False,
        require_certificate: bool = False,
        max_queued_messages: int = 100_000,
        extra_config: str = "",
    ) -> None:
        self.binary = _tool("mosquitto", _SBIN)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.tls = make_tls(folder / "tls") if tls else None
        self.users = dict(users or {})
        self.log_path = folder / "mosquitto.log"
        self.conf_path = folder / "mosquitto.conf"
        super().__init__()
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if self.users else 'true'}",
            "persistence true",
            f"persistence_location {folder}/",
            "persistence_file mosquitto.db",
            # Mosquitto's default (1000) drops QoS 1 messages for a slow or absent subscriber
            # beyond it; tests that queue on purpose need room, and say so here.
            f"max_queued_messages {max_queued_messages}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        with contextlib.suppress(KeyError, OSError):  # no passwd entry: leave the default
            lines.append(f"user {getpass.getuser()}")  # as root, do not switch to 'mosquitto'
        if self.users:
            pwfile = folder / "passwords"
            passwd = _tool("mosquitto_passwd", ("/usr/bin/mosquitto_passwd",))
            pwfile.write_text("")
            for user, password in self.users.items():
                subprocess.run([passwd, "-b", str(pwfile), user, password], check=True)
            pwfile.chmod(0o600)
            lines.append(f"password_file {pwfile}")
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if require_certificate else 'false'}",
            ]
        if extra_config:
            lines.append(extra_config)
        self.conf_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.conf_path)]

    def ready(self) -> bool:
        """Every listener accepts connections."""
        for port in (p for p in (self.port, self.tls_port) if p is not None):
            try:
                with socket.create_connection((self.host, port), timeout=0.5):
                    pass
            except OSError:
                return False
        return True

    def start(self, timeout: float = 10.0) -> None:
        super().start(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Mosquitto saves its persistence database and exits."""
        super().stop(timeout)


MosquittoFactory = Callable[..., Mosquitto]


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[MosquittoFactory]:
    """Build brokers with your own options (`users=`, `tls=`, ...); started, and stopped at
    the end of the test."""
    made: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"mosquitto-{len(made)}", **options)
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    """A started anonymous broker on a free port, with persistence in tmp."""
    return mosquitto_factory()
