"""OPC UA client driver: one asyncua session per device. The only module that opens OPC UA
client connections.

Contract (see `drivers.base`): `run()` connects, resolves, subscribes and polls until cancelled,
healing its own connection; nothing is emitted after it returns; `health()` is one
`DeviceHealth`; `write()` refuses (WriteRejected) before any I/O; `probe()` reads every point once.

Every connect (the first one, and each one after a loss) runs the same sequence, so a restarted
or reconfigured server needs no manual step:

1. open the session (security policy, certificate, user/password, ApplicationUri);
2. read Server.NamespaceArray and the server's operation limits in one request;
3. resolve every point: namespace URIs / aliases to today's indexes, browse paths with one
   TranslateBrowsePathsToNodeIds call, then one read of every node's DataType (which also proves
   the node exists). A point that does not resolve is emitted once as BAD with the reason and is
   left out; the others carry on;
4. create one subscription with a monitored item per `subscribe` point (sampling interval,
   queue size, DataChangeFilter deadband), and start one batched read per `poll_interval` for
   the `poll` points.

Data: each publish response becomes one batch (its data change notifications, in order) and
each poll one batch; nothing is emitted per value. The new subscription's initial notifications
report every point once after a (re)connect, so a reconnect is not a flood of duplicates.
`ts_source` is the SourceTimestamp (else ServerTimestamp, else None), quality comes from the
status code with its name as the reason (`drivers.opcua.convert`).

Liveness: the session is lost when the socket closes, when a keep-alive read of
Server.ServerStatus.CurrentTime (every `watchdog_interval`) fails or times out, when the
subscription stops publishing (no data or keep-alive for 3 keep-alive periods), when the server
ends the subscription, or when a poll fails. The device is then DOWN: every point is emitted
once as BAD with the reason, and the session is rebuilt after a capped exponential backoff with
jitter. asyncua's own reconnect is not used (it would re-create subscriptions with node ids that
may have moved to another namespace index).

A setup problem that retrying fast cannot fix (certificate files missing or unreadable, the
certificate's ApplicationUri not matching `application_uri`, no endpoint with the requested
security) also marks the device DOWN with a clear reason, and is retried at `backoff_max`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.common.node import Node
from asyncua.common.ua_utils import data_type_to_variant_type
from asyncua.crypto import security_policies
from asyncua.crypto.uacrypto import CertProperties

from drivers.base import (
    DeviceHealth,
    DeviceState,
    Emit,
    PointSpec,
    ProbeResult,
)
from drivers.opcua import certs
from drivers.opcua.config import (
    DeadbandType,
    OpcuaDevice,
    OpcuaPoint,
    OpcuaProfile,
    PointMode,
    SecurityMode,
)
from drivers.opcua.convert import (
    INTEGER_RANGES,
    check_range,
    reading_from_datavalue,
    status_name,
    status_quality,
    to_variant,
    variant_type_for_datatype,
)
from drivers.opcua.nodeid import (
    ROOT_FOLDER_ID,
    BrowsePath,
    NodeRef,
    namespace_index,
)
from gateway.aio import cancel_until_done
from gateway.errors import DeviceError, MillraceError, TransportError, WriteRejected
from gateway.readings import Batch, Quality, Reading, Value, bad

log = logging.getLogger("millrace.opcua")

__all__ = ["OpcuaDriver", "SetupError", "connect_client", "describe_error", "make_client"]

PRODUCT_URI = "urn:millrace:gateway"
#: Requests are split into chunks of at most this many nodes unless the server says less.
DEFAULT_CHUNK = 1000
#: asyncua's own health probe is left to this driver's watchdog (it still reacts at once to a
#: closed socket); this pushes asyncua's periodic probe out of the way.
_ASYNCUA_WATCHDOG = 3600.0

_NAMESPACE_ARRAY = ua.NodeId(ua.ObjectIds.Server_NamespaceArray)
_CURRENT_TIME = ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime)
_IDS = ua.ObjectIds
_LIMIT_NODES = (
    ua.NodeId(_IDS.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead),
    ua.NodeId(_IDS.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall),
    ua.NodeId(
        _IDS.Server_ServerCapabilities_OperationLimits_MaxNodesPerTranslateBrowsePathsToNodeIds
    ),
)
_FILTER_REFUSED = frozenset(
    {
        ua.StatusCodes.BadFilterNotAllowed,
        ua.StatusCodes.BadMonitoredItemFilterUnsupported,
        ua.StatusCodes.BadMonitoredItemFilterInvalid,
        ua.StatusCodes.BadDeadbandFilterInvalid,
    }
)
#: The server refused who we are: retrying fast will not change its mind.
_IDENTITY_REFUSED = frozenset(
    {
        ua.StatusCodes.BadUserAccessDenied,
        ua.StatusCodes.BadIdentityTokenInvalid,
        ua.StatusCodes.BadIdentityTokenRejected,
        ua.StatusCodes.BadCertificateUriInvalid,
        ua.StatusCodes.BadCertificateUntrusted,
        ua.StatusCodes.BadCertificateInvalid,
        ua.StatusCodes.BadCertificateTimeInvalid,
        ua.StatusCodes.BadCertificateHostNameInvalid,
        ua.StatusCodes.BadSecurityChecksFailed,
        ua.StatusCodes.BadSecurityPolicyRejected,
    }
)
#: Built-in types a deadband applies to.
_NUMERIC = frozenset(INTEGER_RANGES) | {ua.VariantType.Float, ua.VariantType.Double}
_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
}
_MODES = {
    SecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    SecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}


class SetupError(MillraceError):
    """A connection problem a fast retry cannot fix: certificate files missing or unreadable,
    the certificate's ApplicationUri not matching, the server refusing our identity, no
    endpoint with the requested security. The message says what to change."""


# --------------------------------------------------------------------------------------------
# asyncua log noise
# --------------------------------------------------------------------------------------------


class _QuietTeardown(logging.Filter):
    """Demote asyncua's records about a connection that is already gone (or that this driver
    closes on purpose) to DEBUG. The driver logs the loss once, with the reason; without this
    every reconnect attempt would add warnings and tracebacks."""

    _ALWAYS = frozenset(
        {
            "close_session was called but connection is closed",
            "close_session but connection wasn't established",
            "close_secure_channel was called but connection is closed",
            "disconnect_socket was called but transport is None",
            "Requested session timeout to be %dms, got %dms instead",
            # the driver reports the refusal itself (device health, the write's error)
            "ServiceFault (%s, diagnostics: %s) from server received %s",
        }
    )
    _IF_CONNECTION = frozenset(
        {
            "Publish iteration crashed; retrying in 1s",
            "close_session raised during disconnect; continuing teardown",
            "close_secure_channel raised during disconnect; continuing teardown",
            "Error while renewing session",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if msg in self._ALWAYS or (msg in self._IF_CONNECTION and _is_connection_error(record)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _is_connection_error(record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return isinstance(exc, ConnectionError | OSError | TimeoutError | asyncio.CancelledError)


def _quiet_asyncua() -> None:
    """asyncua logs every request at INFO; keep it at WARNING unless someone configured it."""
    root = logging.getLogger("asyncua")
    if root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    for name in (
        "asyncua.client.client",
        "asyncua.client.ua_client.UaClient",
        "asyncua.client.ua_client.UASocketProtocol",
        "asyncua.client.ua_session.UaSession",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietTeardown) for f in logger.filters):
            logger.addFilter(_QuietTeardown())


_quiet_asyncua()


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Point:
    """A configured point and what never changes about it."""

    spec: OpcuaPoint
    id: str
    handle: int  # monitored item client handle
    ref: NodeRef | None
    path: BrowsePath | None

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(slots=True)
class _Target:
    """Where a point lives in one session's address space (resolved at every connect)."""

    node: ua.NodeId | None = None
    datatype: ua.NodeId | None = None
    vtype: ua.VariantType | None = None
    error: str | None = None


@dataclass(slots=True)
class _Credentials:
    cert: bytes
    cert_ext: str
    key: bytes
    key_ext: str
    server_cert: bytes | None
    server_ext: str


@dataclass(eq=False)
class _Session:
    """One connection's worth of state: the client, resolved nodes, liveness."""

    client: Client
    gen: int
    targets: dict[str, _Target] = field(default_factory=dict)
    limits: tuple[int, int, int] = (DEFAULT_CHUNK, DEFAULT_CHUNK, DEFAULT_CHUNK)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None
    subscription_id: int | None = None
    keepalive_s: float = 0.0
    last_publish: float = 0.0  # time.monotonic() of the last publish response
    poller: asyncio.Task[None] | None = None
    #: points filtered on the gateway this session (poll deadbands, refused server filters)
    deadband: dict[str, float] = field(default_factory=dict)
    last: dict[str, tuple[Value, Quality]] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        """Record why the session is over (first reason wins) and wake the watchdog."""
        if self.reason is None:
            self.reason = reason
        self.lost.set()


def _chunk(limit: int) -> int:
    return limit if 0 < limit < DEFAULT_CHUNK else DEFAULT_CHUNK


def _describe(exc: BaseException) -> str:
    """A short, technician-readable reason for a failure."""
    if isinstance(exc, TransportError | SetupError | DeviceError):
        return str(exc)
    if isinstance(exc, ua.UaStatusCodeError):
        code = int(getattr(exc, "code", 0) or 0)
        _, doc = ua.status_codes.get_name_and_doc(code)
        return f"server refused: {status_name(code)}" + (f" ({doc.rstrip('.')})" if doc else "")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer (timeout)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip()
    return text or type(exc).__name__


def describe_error(exc: BaseException) -> str:
    """A short, technician-readable reason for an OPC UA failure (for messages and health)."""
    return _describe(exc)


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SetupError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _ext(data: bytes) -> str:
    return "pem" if certs.is_pem(data) else "der"


def _datavalue_value(dv: ua.DataValue) -> object:
    return dv.Value.Value if dv.Value is not None else None


# --------------------------------------------------------------------------------------------
# Connecting (shared with discovery)
# --------------------------------------------------------------------------------------------


def make_client(cfg: OpcuaDevice) -> Client:
    """An asyncua client for a device: timeouts, ApplicationUri, user. No I/O yet."""
    client = Client(cfg.endpoint, timeout=cfg.timeout, watchdog_intervall=_ASYNCUA_WATCHDOG)
    client.application_uri = cfg.application_uri
    client.product_uri = PRODUCT_URI
    client.name = client.description = f"Millrace {cfg.id}"
    client.session_timeout = int(cfg.session_timeout * 1000)
    if cfg.username:
        client.set_user(cfg.username)
    if cfg.password is not None:
        client.set_password(cfg.password.get_secret_value())
    return client


async def connect_client(
    cfg: OpcuaDevice,
    client: Client,
    on_lost: Callable[[str], None] | None = None,
) -> None:
    """Set up security and open the session. Raises SetupError for what retrying will not
    fix; anything else (refused, timeout, reset) is transient."""
    if cfg.secured:
        creds = load_credentials(cfg)
        policy = _POLICIES[str(cfg.security_policy)]
        mode = _MODES[cfg.security_mode]
        # Ask for the endpoints first (over an unsecured channel, as every client does) to
        # learn the server's certificate, and to name a pinning mismatch instead of timing out
        # on a channel the server cannot decrypt.
        endpoints = await client.connect_and_get_server_endpoints()
        try:
            endpoint = Client.find_endpoint(endpoints, mode, policy.URI)
        except ua.UaError:
            raise SetupError(
                f"{cfg.endpoint} offers no {cfg.security_policy} {cfg.security_mode} endpoint"
            ) from None
        presented = certs.first_certificate(endpoint.ServerCertificate or b"")
        if creds.server_cert is not None:
            pinned = certs.der(creds.server_cert)
            if presented != pinned:
                raise SetupError(
                    f"{cfg.endpoint} presented a certificate other than server_certificate "
                    f"{cfg.server_certificate} (thumbprint {certs.thumbprint(presented)}, "
                    f"pinned {certs.thumbprint(pinned)})"
                )
        await client.set_security(
            policy,
            CertProperties(creds.cert, creds.cert_ext),
            CertProperties(creds.key, creds.key_ext),
            server_certificate=CertProperties(presented, "der"),
            mode=mode,
        )
    if on_lost is not None:

        async def lost(exc: Exception) -> None:
            why = _describe(exc)
            on_lost("connection lost" if why == "transport lost" else f"connection lost: {why}")

        client.connection_lost_callback = lost
    try:
        await client.connect()
    except ua.UaStatusCodeError as exc:
        if int(getattr(exc, "code", 0) or 0) in _IDENTITY_REFUSED:
            raise SetupError(f"{cfg.endpoint}: {_describe(exc)}") from None
        raise
    except ua.UaError as exc:
        if "certificate mismatch" in str(exc).lower():
            raise SetupError(
                f"{cfg.endpoint} presented a certificate other than server_certificate "
                f"{cfg.server_certificate}"
            ) from None
        raise


def load_credentials(cfg: OpcuaDevice) -> _Credentials:
    """Read and check the certificate files (on every connect until they are good, so a fixed
    file heals the device). Key bytes never reach a message or a log."""
    assert cfg.certificate is not None and cfg.private_key is not None
    cert = _read_file(cfg.certificate, "certificate")
    key = _read_file(cfg.private_key, "private key")
    try:
        info = certs.CertificateInfo(certs.load_certificate(cert))
    except ValueError:
        raise SetupError(f"certificate {cfg.certificate} is not a PEM or DER certificate") from None
    if cfg.application_uri not in info.uris:
        found = ", ".join(info.uris) or "none"
        raise SetupError(
            f"certificate {cfg.certificate} is for ApplicationUri {found}, but device "
            f"{cfg.id} uses application_uri {cfg.application_uri}: set application_uri to "
            "the certificate's URI, or make a certificate for it (millrace certs)"
        )
    if info.expired():
        raise SetupError(f"certificate {cfg.certificate} expired on {info.not_after:%Y-%m-%d}")
    if info.not_yet_valid():
        raise SetupError(
            f"certificate {cfg.certificate} is not valid before {info.not_before:%Y-%m-%d %H:%M}"
        )
    try:
        private = certs.load_private_key(key)
    except ValueError as exc:
        raise SetupError(f"private key {cfg.private_key}: {exc}") from None
    public = info.cert.public_key()
    if private.public_key().public_numbers() != getattr(public, "public_numbers", lambda: None)():
        raise SetupError(
            f"private key {cfg.private_key} does not belong to certificate {cfg.certificate}"
        )
    server: bytes | None = None
    if cfg.server_certificate:
        server = _read_file(cfg.server_certificate, "server certificate")
        try:
            certs.load_certificate(server)
        except ValueError:
            raise SetupError(
                f"server_certificate {cfg.server_certificate} is not a PEM or DER certificate"
            ) from None
    return _Credentials(cert, _ext(cert), key, _ext(key), server, _ext(server or b""))


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


class OpcuaDriver:
    """Reads one OPC UA device through one session and emits its readings.

    Nothing is emitted after `run()` returns. `write()` and `probe()` may be called while
    `run()` is connected (asyncua multiplexes requests on the session).
    """

    def __init__(
        self,
        units: Sequence[tuple[OpcuaDevice, OpcuaProfile]],
        emit: Emit,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if len(units) != 1:
            raise ValueError(
                f"an OPC UA driver serves exactly one device (one session); got {len(units)}"
            )
        cfg, profile = units[0]
        if profile.protocol != "opcua":
            raise ValueError(f"device {cfg.id}: profile {profile.name} is not an OPC UA profile")
        self.key = cfg.connection_key
        self._cfg = cfg
        self._profile = profile
        self._emit = emit
        self._clock = clock
        self._rng = rng or random.Random()
        self._points = [
            _Point(p, f"{cfg.id}.{p.name}", i + 1, p.node_ref(), p.path())
            for i, p in enumerate(profile.points)
        ]
        self._by_name = {p.name: p for p in self._points}
        self._by_handle = {p.handle: p for p in self._points}
        self._health = DeviceHealth(
            device=cfg.id,
            protocol=cfg.protocol,
            endpoint=cfg.endpoint,
            points=len(self._points),
            state=DeviceState.STARTING if cfg.enabled else DeviceState.DISABLED,
        )
        self._data_types: dict[str, str] = {}
        self._session: _Session | None = None
        self._emitting: int | None = None  # generation of the session allowed to emit
        self._gen = 0
        self._backoff = 0.0
        self._running = False
        self._attempts = 0
        self._last_setup_error: str | None = None
        self._warned: set[str] = set()

    # -- public interface ----------------------------------------------------------------

    @property
    def devices(self) -> list[str]:
        return [self._cfg.id]

    def health(self) -> list[DeviceHealth]:
        return [self._health]

    def points(self) -> list[PointSpec]:
        cfg = self._cfg
        return [
            PointSpec(
                id=p.id,
                device=cfg.id,
                name=p.name,
                source=cfg.id,
                unit=p.spec.unit,
                data_type=self._data_types.get(p.name, ""),
                data_class=p.spec.data_class,
                writable=p.spec.writable,
                description=p.spec.description,
                min=p.spec.min,
                max=p.spec.max,
            )
            for p in self._points
        ]

    async def run(self) -> None:
        """Connect, resolve, subscribe and poll until cancelled; heal after every loss."""
        if not self._cfg.enabled:
            await asyncio.Event().wait()  # disabled: idle until cancelled
        if self._running:
            raise RuntimeError(f"device {self._cfg.id}: run() is already running")
        self._running = True
        try:
            while True:
                reason, setup = await self._one_session()
                delay = self._failed(reason, setup=setup)
                await asyncio.sleep(delay)
        finally:
            self._emitting = None
            self._running = False

    async def close(self) -> None:
        """Close the session if one is still open (after `run()` was cancelled)."""
        self._emitting = None
        session, self._session = self._session, None
        if session is not None:
            await self._dispose(session)

    async def write(self, device: str, point: str, value: Value) -> None:
        """Check, convert to the node's DataType, and write one point. WriteRejected before
        any I/O when the point is unknown, read-only, outside its min/max, or the value does
        not fit the node's type."""
        cfg = self._cfg
        if device != cfg.id:
            raise WriteRejected(f"device {device}: not on this connection")
        p = self._by_name.get(point)
        if p is None:
            raise WriteRejected(f"device {device} point {point}: no such point")
        where = f"device {device} point {point}"
        if not p.spec.writable:
            raise WriteRejected(f"{where}: not writable")
        try:
            check_range(value, p.spec.min, p.spec.max)
        except WriteRejected as exc:
            raise WriteRejected(f"{where}: {exc}") from exc
        session = self._session
        if session is None or self._emitting != session.gen:
            why = self._health.last_error or str(self._health.state)
            raise TransportError(f"{where}: device not connected ({why})")
        target = session.targets.get(point) or _Target(error="not resolved")
        if target.node is None:
            raise DeviceError(f"{where}: node not resolved: {target.error}")
        vtype = await self._write_type(session, target, where)
        try:
            variant = to_variant(value, vtype, minimum=p.spec.min, maximum=p.spec.max)
        except WriteRejected as exc:
            raise WriteRejected(f"{where}: {exc}") from exc
        params = ua.WriteParameters()
        params.NodesToWrite = [
            ua.WriteValue(
                NodeId=target.node, AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(variant)
            )
        ]
        self._health.requests += 1
        try:
            results = await session.client.uaclient.session.write(params)
        except ua.UaStatusCodeError as exc:
            raise DeviceError(f"{where}: {_describe(exc)}", code=int(exc.code)) from exc
        except (TimeoutError, ConnectionError, OSError, ua.UaError) as exc:
            raise TransportError(f"{where}: write failed: {_describe(exc)}") from exc
        status = results[0]
        if not status.is_good():
            raise DeviceError(
                f"{where}: server refused the write: {status_name(int(status.value))}",
                code=int(status.value),
            )
        log.info("point written", extra={"device": device, "point": point, "value": value})

    async def probe(self) -> list[ProbeResult]:
        """Read every point once (through the running session, or a short one of its own)."""
        session = self._session
        if session is not None and self._emitting == session.gen:
            return await self._probe_with(session)
        self._gen += 1
        temp = _Session(make_client(self._cfg), self._gen)
        try:
            await connect_client(self._cfg, temp.client)
            await self._prepare(temp)
            return await self._probe_with(temp)
        except Exception as exc:
            reason = f"cannot connect to {self._cfg.endpoint}: {_describe(exc)}"
            return [
                ProbeResult(self._cfg.id, p.name, False, unit=p.spec.unit, reason=reason)
                for p in self._points
            ]
        finally:
            await self._dispose(temp)

    # -- one session ---------------------------------------------------------------------

    async def _one_session(self) -> tuple[str, bool]:
        """Run one session to its end; return why it ended and whether it was a setup error."""
        self._gen += 1
        self._attempts += 1
        if self._attempts > 1:
            self._health.reconnects += 1
        session = _Session(make_client(self._cfg), self._gen)
        self._session = session
        try:
            try:
                await connect_client(self._cfg, session.client, session.fail)
            except SetupError as exc:
                return str(exc), True
            except Exception as exc:
                return f"cannot connect to {self._cfg.endpoint}: {_describe(exc)}", False
            try:
                await self._prepare(session)
                self._start(session)
                await self._subscribe(session)
                if any(p.spec.mode is PointMode.POLL for p in self._points):
                    session.poller = asyncio.create_task(
                        self._poll_loop(session), name=f"opcua-poll-{self._cfg.id}"
                    )
                self._online(session)
                await self._watch(session)
            except SetupError as exc:
                return str(exc), True
            except Exception as exc:
                if not isinstance(exc, TransportError | ua.UaError | OSError | TimeoutError):
                    log.error(
                        "unexpected error in session",
                        exc_info=True,
                        extra={"device": self._cfg.id, "endpoint": self._cfg.endpoint},
                    )
                return session.reason or _describe(exc), False
            return session.reason or "session ended", False  # pragma: no cover - _watch raises
        finally:
            self._emitting = None
            if self._session is session:
                self._session = None
            await self._dispose(session)

    async def _prepare(self, session: _Session) -> None:
        """Namespace array and limits, then resolve every point (steps 2 and 3)."""
        dvs = await self._read(
            session,
            [(n, ua.AttributeIds.Value) for n in (_NAMESPACE_ARRAY, *_LIMIT_NODES)],
            DEFAULT_CHUNK,
        )
        ns_dv = dvs[0]
        if not ns_dv.StatusCode.is_good() or not isinstance(_datavalue_value(ns_dv), list):
            status = status_name(int(ns_dv.StatusCode.value))
            raise TransportError(f"cannot read the server's namespace array: {status}")
        namespaces = [str(u) for u in _datavalue_value(ns_dv)]  # type: ignore[union-attr]
        limits: list[int] = []
        for dv in dvs[1:]:
            raw = _datavalue_value(dv)
            limits.append(int(raw) if dv.StatusCode.is_good() and isinstance(raw, int) else 0)
        session.limits = (_chunk(limits[0]), _chunk(limits[1]), _chunk(limits[2]))
        session.targets = await self._resolve(session, namespaces)
        self._data_types = {name: _type_name(t) for name, t in session.targets.items()}

    async def _resolve(self, session: _Session, namespaces: list[str]) -> dict[str, _Target]:
        aliases = self._profile.namespaces
        targets = {p.name: _Target() for p in self._points}
        paths: list[tuple[_Point, ua.BrowsePath]] = []
        for p in self._points:
            t = targets[p.name]
            try:
                if p.ref is not None:
                    idx = namespace_index(p.ref.namespace, namespaces, aliases)
                    t.node = _node_id(p.ref, idx)
                else:
                    assert p.path is not None
                    paths.append((p, _browse_path(p.path, namespaces, aliases)))
            except LookupError as exc:
                t.error = str(exc.args[0]) if exc.args else str(exc)
        chunk = session.limits[2]
        for start in range(0, len(paths), chunk):
            part = paths[start : start + chunk]
            self._health.requests += 1
            results = await session.client.uaclient.session.translate_browsepaths_to_nodeids(
                [bp for _, bp in part]
            )
            for (p, _), result in zip(part, results, strict=True):
                t = targets[p.name]
                if not result.StatusCode.is_good() or not result.Targets:
                    name = (
                        status_name(int(result.StatusCode.value))
                        if not result.StatusCode.is_good()
                        else "no target"
                    )
                    t.error = f"browse path {p.spec.browse_path} not found ({name})"
                    continue
                tid = result.Targets[0].TargetId
                if getattr(tid, "ServerIndex", 0):
                    t.error = f"browse path {p.spec.browse_path} leads to another server"
                    continue
                t.node = ua.NodeId(tid.Identifier, tid.NamespaceIndex, tid.NodeIdType)
        known = [(p, targets[p.name]) for p in self._points if targets[p.name].node is not None]
        dvs = await self._read(
            session,
            [(t.node, ua.AttributeIds.DataType) for _, t in known],
            session.limits[0],  # type: ignore[misc]
        )
        for (_p, t), dv in zip(known, dvs, strict=True):
            assert t.node is not None
            if not dv.StatusCode.is_good():
                code = int(dv.StatusCode.value)
                what = {
                    ua.StatusCodes.BadNodeIdUnknown: "not found on the server",
                    ua.StatusCodes.BadAttributeIdInvalid: "is not a variable",
                }.get(code, "cannot be read")
                t.error = f"node {t.node.to_string()} {what} ({status_name(code)})"
                t.node = None
                continue
            datatype = _datavalue_value(dv)
            if isinstance(datatype, ua.NodeId):
                t.datatype = datatype
                t.vtype = variant_type_for_datatype(datatype)
        return targets

    def _start(self, session: _Session) -> None:
        """From here on this session may emit; unresolved points are reported first."""
        self._emitting = session.gen
        now = self._clock()
        unresolved = [
            bad(p.id, f"unresolved: {session.targets[p.name].error}", now)
            for p in self._points
            if session.targets[p.name].node is None
        ]
        for p in self._points:
            spec = p.spec
            if spec.deadband_type is DeadbandType.NONE or spec.mode is not PointMode.POLL:
                continue
            band = _client_deadband(spec)
            if band is not None:
                session.deadband[p.name] = band
        if unresolved:
            log.warning(
                "points unresolved",
                extra={
                    "device": self._cfg.id,
                    "points": {r.point: r.reason for r in unresolved},
                },
            )
            self._emit(unresolved)

    def _online(self, session: _Session) -> None:
        h = self._health
        now = self._clock()
        previous = h.state
        missing = [t.error for t in session.targets.values() if t.node is None]
        h.state = DeviceState.ONLINE
        h.since = now
        h.last_contact = now
        h.consecutive_failures = 0
        h.last_error = f"{len(missing)} points unresolved, first: {missing[0]}" if missing else None
        h.extra["unresolved_points"] = float(len(missing))
        self._backoff = 0.0
        self._last_setup_error = None
        extra = {"device": self._cfg.id, "endpoint": self._cfg.endpoint, "unresolved": len(missing)}
        if previous is DeviceState.DOWN:
            log.info("device recovered", extra=extra)
        else:
            log.info("device online", extra=extra)

    async def _subscribe(self, session: _Session) -> None:
        points = [
            p
            for p in self._points
            if p.spec.mode is PointMode.SUBSCRIBE and session.targets[p.name].node is not None
        ]
        if not points:
            return
        cfg = self._cfg
        interval_ms = cfg.publishing_interval * 1000.0
        keepalive = max(1, math.ceil(cfg.watchdog_interval / cfg.publishing_interval))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=interval_ms,
            RequestedLifetimeCount=3 * keepalive,
            RequestedMaxKeepAliveCount=keepalive,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        callback = functools.partial(self._on_publish, session)
        self._health.requests += 1
        result = await session.client.uaclient.session.create_subscription(params, callback)
        session.subscription_id = result.SubscriptionId
        revised_ms = result.RevisedPublishingInterval or interval_ms
        session.keepalive_s = (
            revised_ms / 1000.0 * max(1, result.RevisedMaxKeepAliveCount or keepalive)
        )
        session.last_publish = time.monotonic()
        textual = [
            p.name
            for p in points
            if p.spec.deadband_type is not DeadbandType.NONE
            and session.targets[p.name].vtype not in (None, *_NUMERIC)
            and p.name not in self._warned
        ]
        if textual:
            self._warned.update(textual)
            log.warning(
                "deadband ignored on non-numeric points",
                extra={"device": cfg.id, "points": textual},
            )
        failed = await self._monitor(session, points, with_filter=True)
        refused = [p for p, code in failed if code in _FILTER_REFUSED]
        if refused:
            # The server does not do this deadband: subscribe unfiltered, filter here.
            for p in refused:
                band = _client_deadband(p.spec)
                if band is not None:
                    session.deadband[p.name] = band
            log.info(
                "server refused deadband filters; filtering on the gateway",
                extra={"device": cfg.id, "points": [p.name for p in refused]},
            )
            failed = [f for f in failed if f[1] not in _FILTER_REFUSED]
            failed += await self._monitor(session, refused, with_filter=False)
        if failed:
            now = self._clock()
            batch = []
            for p, code in failed:
                reason = f"cannot monitor: {status_name(code)}"
                session.targets[p.name].error = reason
                batch.append(bad(p.id, reason, now))
            self._emit(batch)
        self._health.extra["monitored_items"] = float(len(points) - len(failed))

    async def _monitor(
        self, session: _Session, points: list[_Point], *, with_filter: bool
    ) -> list[tuple[_Point, int]]:
        """Create monitored items in chunks; return the points the server refused, with why."""
        failed: list[tuple[_Point, int]] = []
        chunk = session.limits[1]
        for start in range(0, len(points), chunk):
            part = points[start : start + chunk]
            params = ua.CreateMonitoredItemsParameters(
                SubscriptionId=session.subscription_id,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                ItemsToCreate=[_item(p, session.targets[p.name], with_filter) for p in part],
            )
            self._health.requests += 1
            results = await session.client.uaclient.session.create_monitored_items(params)
            for p, result in zip(part, results, strict=True):
                if not result.StatusCode.is_good():
                    failed.append((p, int(result.StatusCode.value)))
        return failed

    def _on_publish(self, session: _Session, result: ua.PublishResult) -> None:
        """One publish response: its data changes become one batch."""
        if self._emitting != session.gen:
            return
        session.last_publish = time.monotonic()
        now = self._clock()
        self._health.last_contact = now
        batch: Batch = []
        by_handle = self._by_handle
        for notification in result.NotificationMessage.NotificationData or ():
            if isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    p = by_handle.get(item.ClientHandle)
                    if p is None:
                        continue
                    reading = self._reading(session, p, item.Value, now)
                    if p.name in session.deadband and not _passes(session, p.name, reading):
                        continue
                    batch.append(reading)
            elif isinstance(notification, ua.StatusChangeNotification):
                quality, reason = status_quality(notification.Status)
                if quality is Quality.BAD:
                    session.fail(f"subscription ended by the server: {reason}")
        if batch:
            self._health.points_read += len(batch)
            self._emit(batch)

    async def _poll_loop(self, session: _Session) -> None:
        points = [
            p
            for p in self._points
            if p.spec.mode is PointMode.POLL and session.targets[p.name].node is not None
        ]
        if not points:
            return
        loop = asyncio.get_running_loop()
        interval = self._cfg.poll_interval
        due = loop.time()
        while True:
            try:
                await self._poll(session, points)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._health.polls_failed += 1
                session.fail(f"poll failed: {_describe(exc)}")
                return
            due += interval
            now = loop.time()
            if due <= now:  # overran: skip missed ticks rather than bursting
                self._health.overruns += 1
                due = now + interval - ((now - due) % interval)
            await asyncio.sleep(due - now)

    async def _poll(self, session: _Session, points: list[_Point]) -> None:
        nodes = [(session.targets[p.name].node, ua.AttributeIds.Value) for p in points]
        dvs = await self._read(session, nodes, session.limits[0])  # type: ignore[arg-type]
        if self._emitting != session.gen:
            return
        now = self._clock()
        batch: Batch = []
        for p, dv in zip(points, dvs, strict=True):
            reading = self._reading(session, p, dv, now)
            if p.name in session.deadband and not _passes(session, p.name, reading):
                continue
            batch.append(reading)
        h = self._health
        h.polls_ok += 1
        h.last_contact = now
        h.points_read += len(dvs)
        if batch:
            self._emit(batch)

    def _reading(self, session: _Session, p: _Point, dv: ua.DataValue, now: float) -> Reading:
        """One point's reading, checked against the type its node declared at connect: a
        value of another kind (the server's type changed) is BAD, counted in
        `extra["wrong_type"]` and shown as the device's last error."""
        expected = session.targets[p.name].vtype
        r = reading_from_datavalue(
            p.id, dv, now, minimum=p.spec.min, maximum=p.spec.max, expected=expected
        )
        if r.quality is Quality.BAD and r.reason is not None and r.reason.startswith("wrong type"):
            extra = self._health.extra
            extra["wrong_type"] = extra.get("wrong_type", 0.0) + 1
            self._health.last_error = f"point {p.name}: {r.reason}"
        return r

    async def _watch(self, session: _Session) -> None:
        """Return never: raise TransportError once the session is lost (see module doc)."""
        cfg = self._cfg
        client = session.client
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.watchdog_interval):
                    await session.lost.wait()
            if session.lost.is_set():
                raise TransportError(session.reason or "connection lost")
            if client.state is not UaClientState.CONNECTED:
                raise TransportError("connection lost")
            try:
                async with asyncio.timeout(cfg.timeout):
                    await self._read(session, [(_CURRENT_TIME, ua.AttributeIds.Value)], 1)
            except TimeoutError:
                raise TransportError(f"no answer to keep-alive within {cfg.timeout:g}s") from None
            except (ConnectionError, OSError, ua.UaError) as exc:
                raise TransportError(f"keep-alive failed: {_describe(exc)}") from exc
            self._health.last_contact = self._clock()
            if session.subscription_id is not None:
                silent = time.monotonic() - session.last_publish
                if silent > 3 * session.keepalive_s + cfg.timeout:
                    raise TransportError(
                        f"subscription stale: no publish response for {silent:.0f}s"
                    )

    async def _read(
        self,
        session: _Session,
        items: Sequence[tuple[ua.NodeId, ua.AttributeIds]],
        chunk: int,
    ) -> list[ua.DataValue]:
        """One Read service call per `chunk` nodes, source and server timestamps both."""
        out: list[ua.DataValue] = []
        for start in range(0, len(items), chunk):
            params = ua.ReadParameters(
                MaxAge=0,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                NodesToRead=[
                    ua.ReadValueId(NodeId=node, AttributeId=attr)
                    for node, attr in items[start : start + chunk]
                ],
            )
            self._health.requests += 1
            out += await session.client.uaclient.session.read(params)
        return out

    async def _write_type(self, session: _Session, target: _Target, where: str) -> ua.VariantType:
        """The built-in type to write: from the DataType read at resolve, else the server's
        type hierarchy, else the type of the value the node holds now. Cached per session."""
        if target.vtype is not None:
            return target.vtype
        vtype: ua.VariantType | None = None
        try:
            if target.datatype is not None:
                found = await data_type_to_variant_type(
                    Node(session.client.uaclient.session, target.datatype)
                )
                if found is not ua.VariantType.Variant and found in ua.VariantType:
                    vtype = found
            if vtype is None:
                assert target.node is not None
                dv = (await self._read(session, [(target.node, ua.AttributeIds.Value)], 1))[0]
                if dv.Value is not None and dv.Value.VariantType is not ua.VariantType.Null:
                    vtype = dv.Value.VariantType
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise TransportError(
                f"{where}: cannot read the node's data type: {_describe(exc)}"
            ) from exc
        except ua.UaError:
            vtype = None
        if vtype is None:
            raise WriteRejected(f"{where}: cannot tell which type the node takes")
        target.vtype = vtype
        return vtype

    async def _probe_with(self, session: _Session) -> list[ProbeResult]:
        cfg = self._cfg
        known = [p for p in self._points if session.targets[p.name].node is not None]
        dvs = await self._read(
            session,
            [(session.targets[p.name].node, ua.AttributeIds.Value) for p in known],
            session.limits[0],  # type: ignore[misc]
        )
        values = dict(zip((p.name for p in known), dvs, strict=True))
        now = self._clock()
        results: list[ProbeResult] = []
        for p in self._points:
            dv = values.get(p.name)
            if dv is None:
                reason = f"unresolved: {session.targets[p.name].error}"
                results.append(ProbeResult(cfg.id, p.name, False, unit=p.spec.unit, reason=reason))
                continue
            r = self._reading(session, p, dv, now)
            results.append(
                ProbeResult(
                    cfg.id,
                    p.name,
                    r.quality is not Quality.BAD,
                    r.value,
                    p.spec.unit,
                    r.reason or "",
                )
            )
        return results

    async def _dispose(self, session: _Session) -> None:
        """Stop the poller, close the session (the server deletes its subscription), drop
        the socket. Bounded by `timeout`. If this task is cancelled meanwhile (a supervisor
        re-delivers cancels), the close still completes before the cancel is re-raised: a
        half-closed asyncua client would leave its publish and renew tasks behind."""
        closer = asyncio.create_task(self._close(session), name=f"opcua-close-{self._cfg.id}")
        cancelled = False
        while not closer.done():
            try:
                await asyncio.shield(closer)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _close(self, session: _Session) -> None:
        poller, session.poller = session.poller, None
        if poller is not None:
            await cancel_until_done(poller)
        client = session.client
        try:
            async with asyncio.timeout(self._cfg.timeout):
                await client.disconnect()
        except Exception:
            pass
        finally:
            with contextlib.suppress(Exception):
                client.disconnect_socket()

    # -- health transitions ----------------------------------------------------------------

    def _failed(self, reason: str, *, setup: bool) -> float:
        """The session ended (or never started): go DOWN once, then back off."""
        cfg = self._cfg
        h = self._health
        now = self._clock()
        h.consecutive_failures += 1
        h.last_error = reason
        extra = {"device": cfg.id, "endpoint": cfg.endpoint, "error": reason}
        if h.state is not DeviceState.DOWN:
            h.state = DeviceState.DOWN
            h.since = now
            self._backoff = cfg.backoff_initial
            if setup:
                log.error("device down: setup problem", extra=extra)
            else:
                log.warning("device down", extra=extra)
            reason_text = f"device down: {reason}"
            self._emit([bad(p.id, reason_text, now) for p in self._points])
        else:
            self._backoff = min(max(self._backoff * 2, cfg.backoff_initial), cfg.backoff_max)
            if setup and reason != self._last_setup_error:
                log.error("device setup problem", extra=extra)
        if setup:
            self._last_setup_error = reason
            self._backoff = cfg.backoff_max
        return self._jitter(self._backoff)

    def _jitter(self, delay: float) -> float:
        """Full jitter on the upper half: spreads many gateways' retries without ever retrying
        sooner than half the backoff."""
        return delay * (0.5 + self._rng.random() * 0.5)


# --------------------------------------------------------------------------------------------
# Helpers (request building, gateway-side deadband)
# --------------------------------------------------------------------------------------------


def _type_name(target: _Target) -> str:
    """What `points()` shows as data_type: the built-in type, else the DataType node id."""
    if target.vtype is not None:
        return target.vtype.name
    return target.datatype.to_string() if target.datatype is not None else ""


def _node_id(ref: NodeRef, index: int) -> ua.NodeId:
    kinds = {
        "i": ua.NodeIdType.Numeric,
        "s": ua.NodeIdType.String,
        "g": ua.NodeIdType.Guid,
        "b": ua.NodeIdType.ByteString,
    }
    if ref.kind == "i":
        return ua.NodeId(int(ref.identifier), index)  # type: ignore[arg-type]
    return ua.NodeId(ref.identifier, index, kinds[ref.kind])


def _browse_path(path: BrowsePath, namespaces: list[str], aliases: dict[str, str]) -> ua.BrowsePath:
    elements = [
        ua.RelativePathElement(
            ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
            IsInverse=False,
            IncludeSubtypes=True,
            TargetName=ua.QualifiedName(e.name, namespace_index(e.namespace, namespaces, aliases)),
        )
        for e in path.elements
    ]
    return ua.BrowsePath(
        StartingNode=ua.NodeId(ROOT_FOLDER_ID, 0), RelativePath=ua.RelativePath(Elements=elements)
    )


def _item(p: _Point, target: _Target, with_filter: bool) -> ua.MonitoredItemCreateRequest:
    spec = p.spec
    if target.vtype is not None and target.vtype not in _NUMERIC:
        with_filter = False  # a deadband means nothing for text or flags (and breaks some servers)
    mparams = ua.MonitoringParameters(
        ClientHandle=p.handle,
        SamplingInterval=spec.sampling_interval * 1000.0 if spec.sampling_interval else -1.0,
        QueueSize=spec.queue_size,
        DiscardOldest=True,
    )
    if with_filter and spec.deadband_type is not DeadbandType.NONE:
        mparams.Filter = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=(
                ua.DeadbandType.Absolute
                if spec.deadband_type is DeadbandType.ABSOLUTE
                else ua.DeadbandType.Percent
            ),
            DeadbandValue=spec.deadband_value,
        )
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=target.node, AttributeId=ua.AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=mparams,
    )


def _client_deadband(spec: OpcuaPoint) -> float | None:
    """The absolute band to filter on the gateway; a percent band needs the point's min..max
    (None: cannot filter here, report everything)."""
    if spec.deadband_type is DeadbandType.ABSOLUTE:
        return spec.deadband_value
    if spec.deadband_type is DeadbandType.PERCENT and spec.min is not None and spec.max is not None:
        return (spec.max - spec.min) * spec.deadband_value / 100.0
    return None


def _passes(session: _Session, name: str, reading: Reading) -> bool:
    """Gateway-side deadband against the last *reported* value (quality changes always pass)."""
    band = session.deadband[name]
    last = session.last.get(name)
    new = reading.value
    if last is not None and last[1] is reading.quality:
        old = last[0]
        numbers = (
            isinstance(new, int | float)
            and isinstance(old, int | float)
            and not isinstance(new, bool)
            and not isinstance(old, bool)
        )
        if (numbers and abs(new - old) <= band) or (not numbers and new == old):  # type: ignore[operator]
            return False
    session.last[name] = (new, reading.quality)
    return True
