"""A simulated CNC machine line behind a real OPC UA server (asyncua).

Tests, the gateway demo and the benchmarks talk to this exactly as they would to a machine's
OPC UA server: over opc.tcp, with subscriptions, reads, writes, browse paths and (optionally)
Basic256Sha256 security and user names.

Address space (namespace `urn:millrace:sim:machine-line`, index 2 unless `extra_namespaces`
pushes it up; string node ids `ns=<i>;s=<Machine>.<Variable>`, stable across restarts)::

    Objects/MachineLine/                    (folder)
      Mill1/ Mill2/ Mill3/                  one object per machine (`machines=3`)
        SpindleSpeed Double rpm, SpindleTorque Double Nm, SpindleLoad Double %,
        Vibration Double mm/s, AirTemperature Double K, ProcessTemperature Double K,
        MotorTemperature Double °C, CoolantTemperature Double °C, ToolWear UInt16 min,
        PartCount UInt32, State String (idle|running|fault), StateCode Int32 (0/1/2),
        FaultCode UInt16, Alarm Boolean, FeedOverride Double % (writable, 0..150),
        ProductType String (L|M|H), ProductId String, MachineFailure Boolean (dataset label)
      LineController/                       one variable of every built-in type the line PLC has
        Heartbeat Boolean, SignalQuality SByte, ActiveStation Byte, AmbientTemperature Int16
        (0.1 °C), LinePressure UInt16 mbar, ShiftMinute Int32, UptimeSeconds UInt32 (ns=<i>;i=1001),
        EnergyTotal Int64 Wh, TotalParts UInt64, LineRate Float parts/min, Oee Double,
        ShiftName String, LastChange DateTime, BatchId Guid (a g= node id), RecipeHash ByteString
        (a b= node id), OperatorName LocalizedText, ActiveMachine NodeId, LastStatus StatusCode,
        ZoneTemperatures Double[3], TargetRate UInt16 (writable, 0..1000)
    Objects/Bench/Node0000 ...              `extra_nodes=N` Doubles for throughput benchmarks

Analog variables carry EngineeringUnits and EURange properties, as real machines do.

Process data: where `../shared/datasets/ai4i2020/ai4i2020-train.csv` exists (relative to the
repository root), the machines REPLAY its rows (AI4I 2020 predictive maintenance data, a milling
process): one row per tick per machine, each machine starting at its own offset. Air and process
temperature [K], rotational speed [rpm], torque [Nm], tool wear [min], product type and the
failure label come straight from the row; spindle load, vibration and motor / coolant temperature
are derived from them; a row with `Machine failure = 1` is a one-tick fault whose code names the
first failure mode (1 TWF, 2 HDF, 3 PWF, 4 OSF, 5 RNF). Without the file (a box in the field has
no datasets) a seeded synthetic process with the same statistics is used.

Faults and knobs, changeable while clients are connected:

* `sim.set_fault("Mill2", 42)` holds a machine in fault (spindle stopped, Alarm, FaultCode 42)
  until `sim.clear_fault("Mill2")`;
* `await sim.set_value("Mill1", "Vibration", 3.5)` serves a chosen value now;
* `tick=None` stops the clock: `await sim.step()` advances one tick (deterministic tests);
* `await sim.stop()` / `await sim.start()` restart on the SAME port with the same node ids (the
  server forgets every session and subscription, as a real restart does);
  `await sim.start(extra_namespaces=["urn:other"])` registers those namespaces first, so the
  machine line's namespace index moves (clients must resolve it by URI).

Security: `secure=True` serves only Basic256Sha256 Sign and SignAndEncrypt endpoints with a
server certificate generated into `cert_dir` (a temporary directory by default). Client
certificates are trusted when their subjectAltName URI equals the ApplicationUri the client
sends (anything else gets BadCertificateUriInvalid); `trusted_certificates` narrows trust to
those certificates. `users={"name": "password"}` requires one of those user names (anonymous is
refused).

Run it alone::

    python -m simulators.opcua_machine --port 4840
    python -m simulators.opcua_machine --port 4840 --secure --user operator:secret
    python -m simulators.opcua_machine --port 4841 --bench-nodes 1000 --bench-tick 1

It prints one line with the endpoint and runs until SIGINT or SIGTERM (exit status 0).

Use it in-process::

    async with OpcuaMachineLine(port=0, tick=0.5) as sim:
        sim.endpoint, sim.port
        sim.current_values("Mill1")     # what it serves right now, as gateway values
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import logging
import math
import random
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.manage_nodes import delete_nodes
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from drivers.opcua import certs
from gateway.readings import Value
from simulators._cli import run_cli, serve_until_signal
from simulators._opcua_nodes import Var, add_variable, gateway_value, listen, stop_listening
from simulators._service import Service

__all__ = [
    "DATASET",
    "NAMESPACE",
    "Machine",
    "OpcuaMachineLine",
    "ProcessRow",
    "SyntheticProcess",
    "load_ai4i",
    "main",
]

_log = logging.getLogger(__name__)

NAMESPACE = "urn:millrace:sim:machine-line"
SERVER_URI = "urn:millrace:sim:machine-line:server"
DEFAULT_PORT = 4840
#: The AI4I 2020 developer copy, next to the repository (absent on a field box).
DATASET = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "datasets"
    / "ai4i2020"
    / "ai4i2020-train.csv"
)
FAILURE_MODES = ("TWF", "HDF", "PWF", "OSF", "RNF")
STATES = {0: "idle", 1: "running", 2: "fault"}
RATED_POWER_W = 9000.0  # AI4I: power failure above 9 kW
VT = ua.VariantType


# --------------------------------------------------------------------------------------------
# Process data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """One AI4I 2020 row (or a synthetic one with the same fields)."""

    product_id: str
    product_type: str
    air_k: float
    process_k: float
    rpm: float
    torque: float
    tool_wear: int
    failure: bool
    modes: tuple[str, ...] = ()


def load_ai4i(path: str | Path = DATASET) -> list[ProcessRow]:
    """The dataset's rows in file order (see its README for the columns)."""
    rows: list[ProcessRow] = []
    with open(path, newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            rows.append(
                ProcessRow(
                    product_id=rec["Product ID"],
                    product_type=rec["Type"],
                    air_k=float(rec["Air temperature [K]"]),
                    process_k=float(rec["Process temperature [K]"]),
                    rpm=float(rec["Rotational speed [rpm]"]),
                    torque=float(rec["Torque [Nm]"]),
                    tool_wear=int(rec["Tool wear [min]"]),
                    failure=rec["Machine failure"] == "1",
                    modes=tuple(m for m in FAILURE_MODES if rec[m] == "1"),
                )
            )
    if not rows:
        raise ValueError(f"{path} has no data rows")
    return rows


class SyntheticProcess:
    """Rows shaped like AI4I 2020 when the file is absent: air temperature a random walk around
    300 K, process temperature air + 10 K, torque ~ N(40, 10) Nm, speed from ~2860 W of power,
    tool wear +2/3/5 min per part (L/M/H) and a new tool at 200-240 min, ~3 % failures."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._air = 300.0
        self._process = 310.0
        self._wear = 0
        self._limit = 220
        self._serial = 10_000 + seed * 1000

    def next(self) -> ProcessRow:
        r = self._rng
        self._air = 300.0 + 0.95 * (self._air - 300.0) + r.gauss(0.0, 0.6)
        self._process = (
            self._air + 10.0 + 0.9 * (self._process - self._air - 10.0) + r.gauss(0, 0.3)
        )
        torque = max(3.0, r.gauss(40.0, 10.0))
        power = r.gauss(2860.0, 320.0)
        rpm = max(1168.0, min(2886.0, power / (torque * 2 * math.pi / 60.0)))
        kind = r.choices("LMH", weights=(5, 3, 2))[0]
        self._wear += {"L": 2, "M": 3, "H": 5}[kind]
        modes: list[str] = []
        if self._wear >= self._limit:
            modes.append("TWF")
            self._wear, self._limit = 0, r.randint(200, 240)
        if rpm * torque * 2 * math.pi / 60.0 > RATED_POWER_W or torque * self._wear > 12_000:
            modes.append("OSF")
        if r.random() < 0.001:
            modes.append("RNF")
        self._serial += 1
        return ProcessRow(
            product_id=f"{kind}{self._serial}",
            product_type=kind,
            air_k=round(self._air, 1),
            process_k=round(self._process, 1),
            rpm=float(round(rpm)),
            torque=round(torque, 1),
            tool_wear=self._wear,
            failure=bool(modes),
            modes=tuple(modes),
        )


class _RowSource:
    """Replays dataset rows from an offset (wrapping), or draws synthetic ones."""

    def __init__(self, rows: Sequence[ProcessRow] | None, offset: int, seed: int) -> None:
        self._rows = rows
        self._i = offset % len(rows) if rows else 0
        self._synthetic = None if rows else SyntheticProcess(seed)

    def next(self) -> ProcessRow:
        if self._synthetic is not None:
            return self._synthetic.next()
        assert self._rows is not None
        row = self._rows[self._i]
        self._i = (self._i + 1) % len(self._rows)
        return row


# --------------------------------------------------------------------------------------------
# Variables
# --------------------------------------------------------------------------------------------


_Var = Var  # the shared declaration (simulators._opcua_nodes)


MACHINE_VARS: tuple[_Var, ...] = (
    _Var("SpindleSpeed", VT.Double, "rpm", (0, 3000), description="Spindle rotational speed"),
    _Var("SpindleTorque", VT.Double, "Nm", (0, 100), description="Spindle torque"),
    _Var("SpindleLoad", VT.Double, "%", (0, 150), description="Spindle power / rated power"),
    _Var("Vibration", VT.Double, "mm/s", (0, 20), description="Spindle vibration velocity RMS"),
    _Var("AirTemperature", VT.Double, "K", (290, 310), description="Ambient air temperature"),
    _Var("ProcessTemperature", VT.Double, "K", (300, 320), description="Process temperature"),
    _Var("MotorTemperature", VT.Double, "°C", (0, 120), description="Spindle motor winding"),
    _Var("CoolantTemperature", VT.Double, "°C", (0, 60), description="Coolant return"),
    _Var("ToolWear", VT.UInt16, "min", (0, 260), description="Minutes on the current tool"),
    _Var("PartCount", VT.UInt32, "", description="Parts made since the counter was reset"),
    _Var("State", VT.String, description="idle, running or fault"),
    _Var("StateCode", VT.Int32, description="0 idle, 1 running, 2 fault"),
    _Var("FaultCode", VT.UInt16, description="0 none; 1 TWF 2 HDF 3 PWF 4 OSF 5 RNF; others"),
    _Var("Alarm", VT.Boolean, description="A fault is active"),
    _Var("FeedOverride", VT.Double, "%", (0, 150), True, "Feed rate override"),
    _Var("ProductType", VT.String, description="Product quality variant L, M or H"),
    _Var("ProductId", VT.String, description="Product serial"),
    _Var("MachineFailure", VT.Boolean, description="Failure label of the current process row"),
)

LINE_VARS: tuple[_Var, ...] = (
    _Var("Heartbeat", VT.Boolean, description="Toggles every tick"),
    _Var("SignalQuality", VT.SByte, "dBm", (-100, 0), description="Fieldbus radio signal"),
    _Var("ActiveStation", VT.Byte, description="Machine being loaded"),
    _Var("AmbientTemperature", VT.Int16, "0.1 °C", description="Hall temperature × 10"),
    _Var("LinePressure", VT.UInt16, "mbar", (0, 10_000), description="Pneumatic supply"),
    _Var("ShiftMinute", VT.Int32, "min", description="Minutes into the shift"),
    _Var("UptimeSeconds", VT.UInt32, "s", description="Controller uptime"),
    _Var("EnergyTotal", VT.Int64, "Wh", description="Line energy meter"),
    _Var("TotalParts", VT.UInt64, description="Parts made by the line"),
    _Var("LineRate", VT.Float, "parts/min", (0, 60), description="Recent output rate"),
    _Var("Oee", VT.Double, "", (0, 1), description="Overall equipment effectiveness"),
    _Var("ShiftName", VT.String, description="Current shift"),
    _Var("LastChange", VT.DateTime, description="When the tool was last changed"),
    _Var("BatchId", VT.Guid, description="Current batch"),
    _Var("RecipeHash", VT.ByteString, description="Hash of the active recipe"),
    _Var("OperatorName", VT.LocalizedText, description="Operator on duty"),
    _Var("ActiveMachine", VT.NodeId, description="Machine being loaded (its node)"),
    _Var("LastStatus", VT.StatusCode, description="Status of the last line command"),
    _Var("ZoneTemperatures", VT.Double, "°C", description="Hall zones 1-3"),
    _Var("TargetRate", VT.UInt16, "parts/h", (0, 1000), True, "Planned output rate"),
)

#: Line variables with a numeric / guid / bytestring node id instead of `Line.<name>`.
_LINE_IDS: dict[str, tuple[Any, ua.NodeIdType]] = {
    "UptimeSeconds": (1001, ua.NodeIdType.Numeric),
    "BatchId": (uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a"), ua.NodeIdType.Guid),
    "RecipeHash": (b"recipe-hash", ua.NodeIdType.ByteString),
}


class Machine:
    """One CNC mill: a process row per tick, a fault that can be injected, a feed override."""

    def __init__(self, name: str, source: _RowSource, *, seed: int) -> None:
        self.name = name
        self._source = source
        self._rng = random.Random(seed)
        self.feed_override = 100.0
        self.part_count = 0
        self.fault: int | None = None
        self.row = source.next()
        self.values: dict[str, Value] = {}
        self._compute()

    def step(self) -> None:
        self.row = self._source.next()
        if self.fault is None and self.feed_override > 0:
            self.part_count += 1
        self._compute()

    def _compute(self) -> None:
        row, rng = self.row, self._rng
        injected = self.fault is not None
        failed = row.failure and not injected
        if injected:
            state, code = 2, int(self.fault or 0)
        elif failed:
            modes = [FAILURE_MODES.index(m) + 1 for m in row.modes]
            state, code = 2, modes[0] if modes else 9  # 9: failure without a mode (dataset quirk)
        else:
            state, code = (1 if self.feed_override > 0 else 0), 0
        running = state == 1 or failed  # a dataset failure happens while cutting
        factor = self.feed_override / 100.0 if running else 0.0
        rpm = row.rpm * factor
        torque = row.torque if running and not injected else 0.0
        power = torque * rpm * 2 * math.pi / 60.0
        vib = 0.3 + (1.0 + 0.006 * row.tool_wear + 0.03 * abs(row.torque - 40.0)) * (rpm / 1500.0)
        self.values = {
            "SpindleSpeed": round(rpm, 1),
            "SpindleTorque": torque,
            "SpindleLoad": round(100.0 * power / RATED_POWER_W, 2),
            "Vibration": round(max(0.05, vib + rng.gauss(0.0, 0.05)), 3),
            "AirTemperature": row.air_k,
            "ProcessTemperature": row.process_k,
            "MotorTemperature": round(row.process_k - 273.15 + 0.15 * torque + 5.0, 2),
            "CoolantTemperature": round(row.air_k - 273.15 + 2.0 + rng.gauss(0.0, 0.1), 2),
            "ToolWear": row.tool_wear,
            "PartCount": self.part_count,
            "State": STATES[state],
            "StateCode": state,
            "FaultCode": code,
            "Alarm": state == 2,
            "FeedOverride": self.feed_override,
            "ProductType": row.product_type,
            "ProductId": row.product_id,
            "MachineFailure": row.failure,
        }


# --------------------------------------------------------------------------------------------
# Server glue
# --------------------------------------------------------------------------------------------


class _Users(UserManager):
    """User names and passwords; anonymous (and unknown users) refused."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


_gateway_value = gateway_value


class OpcuaMachineLine(Service):
    """CNC mills and a line controller behind one asyncua server. See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        machines: int | Sequence[str] = 3,
        tick: float | None = 1.0,
        dataset: str | Path | None = DATASET,
        seed: int = 0,
        secure: bool = False,
        cert_dir: str | Path | None = None,
        trusted_certificates: Sequence[str | Path | bytes] | None = None,
        users: Mapping[str, str] | None = None,
        extra_nodes: int = 0,
        bench_tick: float | None = None,
    ) -> None:
        names = (
            [f"Mill{i + 1}" for i in range(machines)]
            if isinstance(machines, int)
            else list(machines)
        )
        if not names:
            raise ValueError("a machine line needs at least one machine")
        if tick is not None and tick <= 0:
            raise ValueError(f"tick must be > 0 or None (got {tick})")
        if extra_nodes < 0:
            raise ValueError(f"extra_nodes must be >= 0 (got {extra_nodes})")
        self.host = host
        self._port = port
        self.tick = tick
        self.bench_tick = bench_tick if bench_tick is not None else (tick or 1.0)
        self.seed = seed
        self.secure = secure
        self.users = dict(users or {})
        self.extra_nodes = extra_nodes
        rows: list[ProcessRow] | None = None
        self.dataset: Path | None = None
        if dataset is not None and Path(dataset).is_file():
            rows = load_ai4i(dataset)
            self.dataset = Path(dataset)
        self.rows = len(rows) if rows else 0
        step = max(1, (len(rows) if rows else 1) // len(names))
        self.machines: dict[str, Machine] = {
            name: Machine(name, _RowSource(rows, i * step, seed * 31 + i), seed=seed * 17 + i)
            for i, name in enumerate(names)
        }
        self._trusted: list[bytes] = []
        self._trust_any = True
        self.trust(trusted_certificates)
        self._own_cert_dir = cert_dir is None
        self.cert_dir = Path(cert_dir) if cert_dir is not None else None
        self.server_certificate: Path | None = None
        self._server: Server | None = None
        self._layout: tuple[str, ...] | None = None
        self._nodes: dict[tuple[str, str], ua.NodeId] = {}
        self._vtypes: dict[tuple[str, str], ua.VariantType] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._t0 = time.time()
        self._ticks = 0
        self._line: dict[str, Value] = {}
        self.namespace_index: int | None = None

    # -- where ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port (the real one once started with port 0)."""
        return self._port

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self._port}/"

    @property
    def running(self) -> bool:
        return self._running

    def describe(self) -> str:
        """One line: where it listens and what it serves (the CLI prints this)."""
        data = (
            f"replaying {self.dataset.name} ({self.rows} rows)"
            if self.dataset
            else "synthetic data"
        )
        sec = "Basic256Sha256 Sign/SignAndEncrypt" if self.secure else "no security"
        bench = f", {self.extra_nodes} bench nodes" if self.extra_nodes else ""
        return (
            f"OPC UA machine line simulator listening on {self.endpoint} "
            f"({len(self.machines)} machines{bench}, namespace {NAMESPACE}, {data}, {sec})"
        )

    def trust(self, certificates: Sequence[str | Path | bytes] | None) -> None:
        """Trust any client certificate whose URI matches (None), or only these ones, from
        the next session on (secured simulator)."""
        self._trusted = [self._load_trusted(c) for c in certificates or ()]
        self._trust_any = certificates is None

    def node_id(self, machine: str, name: str) -> str:
        """The node id text of a variable as served now (`ns=<index>;s=Mill1.SpindleSpeed`)."""
        return self._nodes[(machine, name)].to_string()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, *, extra_namespaces: Sequence[str] = ()) -> None:
        """Listen (again) on the same port. A different `extra_namespaces` rebuilds the machine
        line's nodes behind those namespaces, so its namespace index moves accordingly."""
        if self._running:
            return
        layout = tuple(extra_namespaces)
        if self._server is None:
            self._server = await self._new_server()
        if layout != self._layout:
            await self._populate(self._server, layout)
        self._port = await listen(self._server, self.host, self._port)
        self._running = True
        await self._publish_all()
        if self.tick is not None:
            self._tasks.append(asyncio.create_task(self._tick_loop(), name="opcua-sim-tick"))
        if self.extra_nodes and (self.tick is not None or self.bench_tick):
            self._tasks.append(asyncio.create_task(self._bench_loop(), name="opcua-sim-bench"))

    async def stop(self) -> None:
        """Stop listening and forget every session and subscription (a server restart)."""
        if not self._running:
            return
        self._running = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert self._server is not None
        await stop_listening(self._server)

    async def close(self) -> None:
        await self.stop()
        if self._own_cert_dir and self.cert_dir is not None:
            shutil.rmtree(self.cert_dir, ignore_errors=True)
            self.cert_dir = None

    # -- values -----------------------------------------------------------------------------

    def current_values(self, machine: str) -> dict[str, Value]:
        """What the machine (or `"LineController"`) serves now, as gateway values."""
        if machine == "LineController":
            return {v.name: _gateway_value(v.vtype, self._line[v.name]) for v in LINE_VARS}
        m = self.machines[machine]
        return {v.name: _gateway_value(v.vtype, m.values[v.name]) for v in MACHINE_VARS}

    async def step(self) -> None:
        """Advance one tick: every machine takes its next process row; values are published."""
        self._read_back_writes()
        for m in self.machines.values():
            m.step()
        self._ticks += 1
        await self._publish_all()

    def set_fault(self, machine: str, code: int) -> None:
        """Hold a machine in fault with this code until `clear_fault` (shown from next tick)."""
        if not 0 < code <= 65535:
            raise ValueError(f"fault code must be 1..65535 (got {code})")
        self.machines[machine].fault = code

    def clear_fault(self, machine: str) -> None:
        self.machines[machine].fault = None

    async def set_value(self, machine: str, name: str, value: Any) -> None:
        """Serve `value` for one variable now (until the next tick recomputes it)."""
        key = (machine, name)
        if key not in self._nodes:
            raise KeyError(f"{machine}.{name}")
        if machine == "LineController":
            self._line[name] = value
        else:
            self.machines[machine].values[name] = value
            if name == "FeedOverride":
                self.machines[machine].feed_override = float(value)
        if self._running:
            await self._write(key, value, self._now())

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _load_trusted(item: str | Path | bytes) -> bytes:
        data = item if isinstance(item, bytes) else Path(item).read_bytes()
        return certs.load_certificate(data).public_bytes(serialization.Encoding.DER)

    def _now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def _new_server(self) -> Server:
        """The asyncua server with its standard address space (the slow part: seconds)."""
        server = Server()
        await server.init()
        server.disable_clock(True)  # the tick loop keeps CurrentTime; restarts stay fast
        server.set_server_name("Millrace CNC machine line simulator")
        await server.set_application_uri(SERVER_URI)
        if self.secure:
            await self._setup_security(server)
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self.users:
            server.iserver.user_manager = _Users(self.users)
            server.set_identity_tokens([ua.UserNameIdentityToken])
        elif not self.secure:
            server.set_identity_tokens([ua.AnonymousIdentityToken])
        return server

    async def _populate(self, server: Server, extra_namespaces: tuple[str, ...]) -> None:
        """(Re)build the machine line's nodes in namespace NAMESPACE, registered after
        `extra_namespaces`; node ids other than the namespace index stay the same."""
        objects = server.nodes.objects
        if self._layout is not None:
            # Delete the old tree without asyncua's scan of every node for references to each
            # deleted one (seconds); only the Objects folder points into it.
            old = self.namespace_index
            tops = [ua.NodeId("MachineLine", old)]
            if self.extra_nodes:
                tops.append(ua.NodeId("Bench", old))
            await delete_nodes(
                server.iserver.isession,
                [server.get_node(n) for n in tops],
                recursive=True,
                delete_target_references=False,
            )
            await server.iserver.isession.delete_references(
                [
                    ua.DeleteReferencesItem(
                        SourceNodeId=objects.nodeid,
                        ReferenceTypeId=ua.NodeId(ua.ObjectIds.Organizes),
                        IsForward=True,
                        TargetNodeId=n,
                        DeleteBidirectional=True,
                    )
                    for n in tops
                ]
            )
        names = await server.get_namespace_array()
        base = list(names[:2])  # the OPC UA namespace and the server's own URI
        await server.nodes.namespace_array.write_value([*base, *extra_namespaces, NAMESPACE])
        idx = len(base) + len(extra_namespaces)
        self.namespace_index = idx
        self._nodes.clear()
        self._vtypes.clear()
        line = await objects.add_folder(
            ua.NodeId("MachineLine", idx), ua.QualifiedName("MachineLine", idx)
        )
        for name, machine in self.machines.items():
            obj = await line.add_object(ua.NodeId(name, idx), ua.QualifiedName(name, idx))
            for var in MACHINE_VARS:
                await self._add(
                    obj,
                    idx,
                    name,
                    var,
                    ua.NodeId(f"{name}.{var.name}", idx),
                    machine.values[var.name],
                )
        self._line = self._line_values(self._now())
        ctl = await line.add_object(
            ua.NodeId("LineController", idx), ua.QualifiedName("LineController", idx)
        )
        for var in LINE_VARS:
            ident, kind = _LINE_IDS.get(var.name, (f"Line.{var.name}", ua.NodeIdType.String))
            await self._add(
                ctl, idx, "LineController", var, ua.NodeId(ident, idx, kind), self._line[var.name]
            )
        if self.extra_nodes:
            bench = await objects.add_folder(
                ua.NodeId("Bench", idx), ua.QualifiedName("Bench", idx)
            )
            for i in range(self.extra_nodes):
                name = f"Node{i:04d}"
                var = _Var(name, VT.Double)
                await self._add(
                    bench, idx, "Bench", var, ua.NodeId(f"Bench.{name}", idx), 0.0, props=False
                )
        self._layout = extra_namespaces

    async def _add(
        self,
        parent: Node,
        idx: int,
        owner: str,
        var: _Var,
        nodeid: ua.NodeId,
        value: Any,
        *,
        props: bool = True,
    ) -> None:
        await add_variable(parent, idx, owner, var, value, nodeid=nodeid, props=props)
        self._nodes[(owner, var.name)] = nodeid
        self._vtypes[(owner, var.name)] = var.vtype

    async def _setup_security(self, server: Server) -> None:
        if self.cert_dir is None:
            self.cert_dir = Path(tempfile.mkdtemp(prefix="millrace-opcua-sim-"))
        cert = self.cert_dir / "server-cert.pem"
        key = self.cert_dir / "server-key.pem"
        if not cert.exists() or not key.exists():
            certs.create_certificate(
                cert,
                key,
                application_uri=SERVER_URI,
                hostname=socket.gethostname(),
                extra_hostnames=[
                    h for h in ("127.0.0.1", "localhost", self.host) if h != socket.gethostname()
                ],
                common_name="Millrace machine line simulator",
                server=True,
            )
        self.server_certificate = cert
        await server.load_certificate(cert.read_bytes(), format="pem")
        await server.load_private_key(key.read_bytes(), format="pem")
        server.set_security_policy(
            [
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Basic256Sha256_Sign,
            ]
        )
        server.set_certificate_validator(self._validate_client)

    async def _validate_client(
        self, cert: x509.Certificate, app: ua.ApplicationDescription
    ) -> None:
        """Trust a client certificate whose SAN URI is the ApplicationUri the client sends
        (and, when given, that is one of `trusted_certificates`)."""
        info = certs.CertificateInfo(cert)
        if app.ApplicationUri not in info.uris:
            raise ServiceError(ua.StatusCodes.BadCertificateUriInvalid)
        if not self._trust_any:
            der = cert.public_bytes(certs.serialization.Encoding.DER)  # type: ignore[attr-defined]
            if der not in self._trusted:
                raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    def _line_values(self, now: dt.datetime) -> dict[str, Value | Any]:
        t = self._ticks
        rng = random.Random(self.seed * 7919 + t)
        parts = sum(m.part_count for m in self.machines.values())
        names = list(self.machines)
        active = names[t % len(names)]
        idx = self.namespace_index or 2
        return {
            "Heartbeat": t % 2 == 1,
            "SignalQuality": -60 - rng.randint(0, 15),
            "ActiveStation": t % len(names) + 1,
            "AmbientTemperature": 215 + rng.randint(-5, 5),
            "LinePressure": 6000 + rng.randint(-50, 50),
            "ShiftMinute": (t // 60) % 480,
            "UptimeSeconds": int(time.time() - self._t0),
            "EnergyTotal": 4_200_000_000 + 350 * t,  # past 2**31 on purpose (Int64)
            "TotalParts": 2**40 + parts,  # past 2**32 on purpose (UInt64)
            "LineRate": float(round(1.5 + rng.random(), 2)),
            "Oee": round(0.7 + 0.2 * rng.random(), 4),
            "ShiftName": ("night", "early", "late")[(t // 480) % 3],
            "LastChange": now.replace(microsecond=0),
            "BatchId": uuid.UUID(int=(0x09087E758E5E499B954FF2A9603DB28A + t // 100) % 2**128),
            "RecipeHash": bytes([t % 256, 0x5E, 0xED, 0x01]),
            "OperatorName": ua.LocalizedText("Ana Souza", "pt-BR"),
            "ActiveMachine": ua.NodeId(active, idx),
            "LastStatus": ua.StatusCode(ua.StatusCodes.Good),
            "ZoneTemperatures": [round(21.0 + i + rng.random(), 2) for i in range(3)],
            "TargetRate": self._line.get("TargetRate", 120) if self._line else 120,
        }

    def _read_back_writes(self) -> None:
        """Pick up what clients wrote into the writable variables."""
        server = self._server
        if server is None:
            return
        for name, m in self.machines.items():
            dv = server.read_attribute_value(self._nodes[(name, "FeedOverride")])
            if dv.Value is not None and isinstance(dv.Value.Value, int | float):
                m.feed_override = float(dv.Value.Value)
        dv = server.read_attribute_value(self._nodes[("LineController", "TargetRate")])
        if dv.Value is not None and isinstance(dv.Value.Value, int):
            self._line["TargetRate"] = dv.Value.Value

    async def _publish_all(self) -> None:
        if not self._running:
            return
        now = self._now()
        for name, m in self.machines.items():
            for var in MACHINE_VARS:
                if not var.writable:
                    await self._write((name, var.name), m.values[var.name], now)
        self._line = self._line_values(now)
        for var in LINE_VARS:
            if not var.writable:
                await self._write(("LineController", var.name), self._line[var.name], now)
        server = self._server
        assert server is not None
        current = ua.DataValue(
            ua.Variant(now, VT.DateTime), SourceTimestamp=now, ServerTimestamp=now
        )
        await server.write_attribute_value(
            ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime), current
        )

    async def _write(self, key: tuple[str, str], value: Any, now: dt.datetime) -> None:
        server = self._server
        assert server is not None
        dv = ua.DataValue(
            ua.Variant(value, self._vtypes[key]), SourceTimestamp=now, ServerTimestamp=now
        )
        await server.write_attribute_value(self._nodes[key], dv)

    async def _tick_loop(self) -> None:
        assert self.tick is not None
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.tick
            await asyncio.sleep(max(0.0, due - loop.time()))
            await self.step()

    async def _bench_loop(self) -> None:
        server = self._server
        assert server is not None
        nodes = [self._nodes[("Bench", f"Node{i:04d}")] for i in range(self.extra_nodes)]
        loop = asyncio.get_running_loop()
        due = loop.time()
        n = 0
        while True:
            now = self._now()
            for i, nodeid in enumerate(nodes):
                value = math.sin(0.1 * n + i) * 100.0
                dv = ua.DataValue(
                    ua.Variant(value, VT.Double), SourceTimestamp=now, ServerTimestamp=now
                )
                await server.write_attribute_value(nodeid, dv)
            n += 1
            due += self.bench_tick
            await asyncio.sleep(max(0.0, due - loop.time()))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.opcua_machine",
        description="A CNC machine line (AI4I 2020 replay) behind an OPC UA server.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="TCP port (default %(default)s; 0 = any free)",
    )
    parser.add_argument(
        "--machines", type=int, default=3, help="number of mills (default %(default)s)"
    )
    parser.add_argument(
        "--tick", type=float, default=1.0, help="seconds per process row (default %(default)s)"
    )
    parser.add_argument(
        "--dataset", default=str(DATASET), help="AI4I 2020 CSV to replay (default: the shared copy)"
    )
    parser.add_argument(
        "--no-dataset", action="store_true", help="synthetic data even if the CSV exists"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for derived signals (default 0)")
    parser.add_argument(
        "--secure", action="store_true", help="Basic256Sha256 Sign/SignAndEncrypt endpoints only"
    )
    parser.add_argument(
        "--cert-dir", help="where the server certificate is made (default: a temp dir)"
    )
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="require this user (repeatable)",
    )
    parser.add_argument("--bench-nodes", type=int, default=0, help="extra changing Double nodes")
    parser.add_argument(
        "--bench-tick", type=float, help="seconds between bench node changes (default: --tick)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log asyncua details")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    users: dict[str, str] = {}
    for spec in args.user:
        name, sep, password = spec.partition(":")
        if not sep or not name:
            raise ValueError(f"--user {spec!r}: write NAME:PASSWORD")
        users[name] = password
    sim = OpcuaMachineLine(
        host=args.host,
        port=args.port,
        machines=args.machines,
        tick=args.tick,
        dataset=None if args.no_dataset else args.dataset,
        seed=args.seed,
        secure=args.secure,
        cert_dir=args.cert_dir,
        users=users,
        extra_nodes=args.bench_nodes,
        bench_tick=args.bench_tick,
    )
    await serve_until_signal(sim, sim.describe)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    return run_cli(
        "opcua_machine",
        lambda: _serve(args),
        verbose=args.verbose,
        verbose_level=logging.INFO,
        quiet=("asyncua",),
    )


if __name__ == "__main__":
    sys.exit(main())
