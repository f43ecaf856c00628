"""OPC UA application instance certificates: make one, and read what a certificate says.

An OPC UA client that signs or encrypts (security policy Basic256Sha256) proves who it is with
an application instance certificate (OPC UA Part 6 §6.2.2): an RSA key pair whose self-signed
X.509 certificate carries the client's ApplicationUri in subjectAltName. Servers compare that URI
with the ApplicationUri the client sends when it opens a session and refuse a mismatch, so the
gateway checks it itself before connecting (`OpcuaDevice.application_uri`, default
`urn:millrace:<device id>`).

File formats: a path ending in `.pem` is written as PEM; any other suffix (`.der`, `.crt`,
`.key`) as DER, which is what asyncua and most OPC UA tools assume for those names. The private
key is PKCS#8, unencrypted, created with mode 0600. The driver reads either format whatever the
name. Key material is never logged and never appears in an error message.

This backs `millrace certs` (a technician makes the gateway's certificate once, then copies the
certificate, never the key, into the server's trust list).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateInfo",
    "create_certificate",
    "create_client_certificate",
    "der",
    "first_certificate",
    "is_pem",
    "load_certificate",
    "load_private_key",
    "read_certificate",
    "thumbprint",
]

_ONE_DAY = dt.timedelta(days=1)


def is_pem(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN")


def _pem_path(path: Path) -> bool:
    return path.suffix.lower() == ".pem"


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse a certificate given as PEM or DER bytes (ValueError when it is neither)."""
    if is_pem(data):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def der(data: bytes) -> bytes:
    """A certificate (PEM or DER) as DER bytes."""
    return load_certificate(data).public_bytes(serialization.Encoding.DER)


def first_certificate(data: bytes) -> bytes:
    """The first certificate of a DER chain (servers may send theirs with its issuers)."""
    if len(data) < 4 or data[0] != 0x30:
        return data
    if data[1] == 0x82:  # long form, two length bytes: every real certificate
        return data[: 4 + int.from_bytes(data[2:4], "big")]
    if data[1] == 0x81:
        return data[: 3 + data[2]]
    return data


def thumbprint(data: bytes) -> str:
    """The SHA-1 thumbprint OPC UA tools show for a certificate (DER bytes)."""
    return hashlib.sha1(data).hexdigest()


def load_private_key(data: bytes, password: bytes | None = None) -> rsa.RSAPrivateKey:
    """Parse an RSA private key given as PEM or DER bytes. The error never quotes the key."""
    try:
        if is_pem(data):
            key = serialization.load_pem_private_key(data, password=password)
        else:
            key = serialization.load_der_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a readable private key ({type(exc).__name__})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("OPC UA Basic256Sha256 needs an RSA private key")
    return key


class CertificateInfo:
    """What a certificate says, for checks and messages (no key material)."""

    def __init__(self, cert: x509.Certificate) -> None:
        self.cert = cert
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = x509.SubjectAlternativeName([])
        self.uris: list[str] = san.get_values_for_type(x509.UniformResourceIdentifier)
        self.dns_names: list[str] = san.get_values_for_type(x509.DNSName)
        self.ip_addresses: list[str] = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        self.subject = cert.subject.rfc4514_string()
        self.not_before = cert.not_valid_before_utc
        self.not_after = cert.not_valid_after_utc
        #: SHA-1 of the DER certificate, as OPC UA tools show it (trust lists, logs).
        self.thumbprint = thumbprint(cert.public_bytes(serialization.Encoding.DER))

    def expired(self, now: dt.datetime | None = None) -> bool:
        now = now or dt.datetime.now(dt.UTC)
        return now > self.not_after

    def not_yet_valid(self, now: dt.datetime | None = None) -> bool:
        now = now or dt.datetime.now(dt.UTC)
        return now < self.not_before


def read_certificate(path: str | os.PathLike[str]) -> CertificateInfo:
    """Read a certificate file (PEM or DER) and say what it holds."""
    data = Path(path).read_bytes()
    try:
        return CertificateInfo(load_certificate(data))
    except ValueError:
        raise ValueError(f"{path} is not a PEM or DER certificate") from None


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write atomically (temp file + rename) with `mode` from the start, so a key is never
    readable by others, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_certificate(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    application_uri: str,
    hostname: str,
    common_name: str | None = None,
    organization: str | None = None,
    days: int = 3650,
    key_size: int = 2048,
    server: bool = False,
    extra_hostnames: Sequence[str] = (),
    overwrite: bool = True,
) -> tuple[Path, Path]:
    """A self-signed OPC UA application instance certificate and its key (Part 6 §6.2.2).

    `server=True` marks it for a server (serverAuth) as well as a client (the simulator uses
    that). Returns (cert_path, key_path).
    """
    if ":" not in application_uri:
        raise ValueError(f"application_uri {application_uri!r} is not a URI")
    if not hostname:
        raise ValueError("hostname is required (it goes into subjectAltName)")
    if days < 1:
        raise ValueError(f"days must be at least 1 (got {days})")
    if key_size < 2048:
        raise ValueError(f"Basic256Sha256 needs a key of 2048 bits or more (got {key_size})")
    cert_file, key_file = Path(cert_path), Path(key_path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"Millrace {hostname}")]
    if organization:
        names.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    subject = x509.Name(names)
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in (hostname, *extra_hostnames):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)  # tolerate a server whose clock is a little behind
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    encoding = serialization.Encoding.PEM if _pem_path(cert_file) else serialization.Encoding.DER
    key_encoding = serialization.Encoding.PEM if _pem_path(key_file) else serialization.Encoding.DER
    key_bytes = key.private_bytes(
        key_encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(key_file, key_bytes, 0o600, overwrite)
    _write(cert_file, cert.public_bytes(encoding), 0o644, overwrite)
    return cert_file, key_file


def create_client_certificate(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    *,
    application_uri: str,
    hostname: str,
    days: int = 3650,
    key_size: int = 2048,
    common_name: str | None = None,
    organization: str | None = None,
    overwrite: bool = True,
) -> tuple[Path, Path]:
    """The gateway's OPC UA client certificate: `application_uri` in subjectAltName (it must
    equal the device's `application_uri`), `hostname` as DNS name (or IP address), clientAuth.
    PEM when the file name ends in `.pem`, DER otherwise. Returns (cert_path, key_path)."""
    return create_certificate(
        cert_path,
        key_path,
        application_uri=application_uri,
        hostname=hostname,
        common_name=common_name,
        organization=organization,
        days=days,
        key_size=key_size,
        overwrite=overwrite,
    )
