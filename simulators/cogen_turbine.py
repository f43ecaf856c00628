"""A sugar mill's cogeneration turbine behind a real OPC UA server (asyncua), replaying NASA
C-MAPSS FD001 run-to-failure trajectories so the gateway's `pdm-rul` model sees real data.

A cane mill burns its bagasse in a boiler and drives a turbine for its own power and steam; the
turbine wears, and the maintenance planner wants to know how many cycles it has left. C-MAPSS
FD001 (100 simulated turbofan engines, one operating condition, HPC degradation, each run until
it fails) is the public stand-in: one dataset row per turbine *cycle*.

Address space (namespace `urn:millrace:sim:cogen-turbine`, index 2; string node ids
`ns=<i>;s=Turbine1.<Var>`, stable across restarts)::

    Objects/CogenPlant/                     (folder)
      Turbine1/ Turbine2/ ...               one object per turbine (`turbines=1`)
        T24 T30 T50 P30 Nf Nc Ps30 Phi NRf NRc BPR HtBleed W31 W32   Double: the 14 informative
                                            FD001 sensors (s2 s3 s4 s7 s8 s9 s11 s12 s13 s14 s15
                                            s17 s20 s21), in the dataset's units (see SENSORS)
        Setting1 Setting2 Setting3          Double: the operating settings
        UnitId  UInt32  the C-MAPSS engine unit being replayed
        TrueRul Double  cycles left in this trajectory (last cycle - current cycle): GROUND
                        TRUTH for the demo, uncapped (the model's output is capped at 125);
                        a real turbine has no such signal
        Cycle   UInt32  the dataset's cycle number of the values above

`drivers/profiles/cogen-turbine.yaml` maps Turbine1's nodes to the point names that the
`pdm-rul` model manifest expects (`t24_lpc_outlet_temp`, ... ; `cycle`, `unit_id`, `true_rul`).

One cycle is written in one synchronous step: every value of every turbine is computed first,
then written in a plain loop (sensors, settings, UnitId, TrueRul, and `Cycle` LAST) with nothing
in between that can suspend. asyncua only queues a data change per monitored item on a write;
subscriptions publish from their own task, so a subscriber whose publishing interval is shorter
than the cycle period receives a whole cycle in one publish response, and `Cycle` arriving means
the row is complete. All values of a cycle carry the same SourceTimestamp. OPC UA reports only
*changed* values by default (DataChangeTrigger StatusValue): a sensor that repeats last cycle's
value (common at two decimals) is not sent again, so a consumer builds a cycle's row from the
latest value of each point when `Cycle` changes (or asks for StatusValueTimestamp).

When a trajectory ends (the engine failed), the turbine is overhauled: `UnitId` changes to the
next engine (unit + `turbines`, wrapping), its trajectory starts again and `TrueRul` jumps up.
Turbine *i* (1-based) starts on unit *i*, so no two turbines replay the same engine.

`start_fraction` (0 <= f < 1) starts every trajectory at that fraction of its life, so a demo
reaches the model's low-RUL alarms (<= 30 cycles) within minutes instead of hours. The model
needs a full 30-cycle window after every overhaul before it predicts anything (the window is
cleared when `UnitId` changes), so a start is never later than `min_cycles` (default 40: the
window plus ten predictions) before the trajectory's end. With `cycle_period=1.0` and
`start_fraction=0.7` the first prediction comes after 30 s and `maintenance_due` typically
within a minute or two.

Data: where `../shared/datasets/cmapss/train_FD001.txt` exists (relative to the repository
root) it is replayed row by row. Without it (a box in the field has no datasets) each unit is a
seeded synthetic trajectory instead: FD001-like lives (128-362 cycles), per-engine offsets, an
exponential drift toward failure on the same 14 sensors with FD001's start and end levels and
noise, rounded like the dataset. The pdm-rul model follows it (RUL near 0 at failure, alarms
somewhat early), but it is not real data, and the simulator says so in its log and its
one-line description.

Run it alone::

    python -m simulators.cogen_turbine --port 4842
    python -m simulators.cogen_turbine --port 4842 --cycle-period 0.5 --start-fraction 0.7

It prints one line with the endpoint and runs until SIGINT or SIGTERM (exit status 0).

Use it in-process::

    async with CogenTurbinePlant(port=0, cycle_period=None) as sim:   # None: manual clock
        sim.endpoint, sim.port
        await sim.step()                     # one cycle for every turbine, published at once
        sim.current_values("Turbine1")       # what it serves now, as gateway values
        await sim.stop(); await sim.start()  # restart on the same port, same node ids
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import math
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.node import Node

from gateway.readings import Value
from simulators._cli import run_cli, serve_until_signal
from simulators._opcua_nodes import Var, add_variable, gateway_value, listen, stop_listening
from simulators._service import Service

__all__ = [
    "DATASET",
    "FD001_LIFE",
    "NAMESPACE",
    "SENSORS",
    "TURBINE_VARS",
    "CogenTurbinePlant",
    "CycleRow",
    "Sensor",
    "Turbine",
    "load_cmapss",
    "main",
    "parse_cmapss",
    "start_index",
    "synthetic_trajectory",
]

_log = logging.getLogger("millrace.sim.cogen_turbine")

NAMESPACE = "urn:millrace:sim:cogen-turbine"
SERVER_URI = "urn:millrace:sim:cogen-turbine:server"
DEFAULT_PORT = 4842
#: The C-MAPSS FD001 developer copy, next to the repository (absent on a field box).
DATASET = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "datasets"
    / "cmapss"
    / "train_FD001.txt"
)
VT = ua.VariantType
#: unit, cycle, 3 settings, 21 sensors (the dataset README).
_COLUMNS = 26
#: FD001's shortest and longest training trajectories (cycles).
FD001_LIFE = (128, 362)


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sensor:
    """One informative FD001 sensor: where it is in a row, its node and its profile point.

    `start`, `end` and `noise` describe FD001 for the synthetic fallback: the fleet's mean over
    each engine's first 20 cycles and last 10 cycles, and the cycle-to-cycle noise."""

    number: int  # s<number>, 1-based as in the dataset README
    var: str  # OPC UA variable name under Turbine<n>
    point: str  # the profile / pdm-rul manifest point name
    unit: str
    description: str
    start: float
    end: float
    noise: float
    decimals: int

    @property
    def column(self) -> str:
        return f"s{self.number}"


SENSORS: tuple[Sensor, ...] = (
    Sensor(2, "T24", "t24_lpc_outlet_temp", "degR", "Total temperature at LPC outlet",
           642.38, 643.60, 0.25, 2),
    Sensor(3, "T30", "t30_hpc_outlet_temp", "degR", "Total temperature at HPC outlet",
           1586.84, 1601.44, 3.5, 2),
    Sensor(4, "T50", "t50_lpt_outlet_temp", "degR", "Total temperature at LPT outlet",
           1402.76, 1427.39, 3.5, 2),
    Sensor(7, "P30", "p30_hpc_outlet_pressure", "psia", "Total pressure at HPC outlet",
           553.95, 551.63, 0.35, 2),
    Sensor(8, "Nf", "nf_fan_speed", "rpm", "Physical fan speed",
           2388.058, 2388.220, 0.03, 2),
    Sensor(9, "Nc", "nc_core_speed", "rpm", "Physical core speed",
           9056.0, 9095.5, 4.0, 2),
    Sensor(11, "Ps30", "ps30_hpc_static_pressure", "psia", "Static pressure at HPC outlet",
           47.35, 48.10, 0.1, 2),
    Sensor(12, "Phi", "phi_fuel_flow_ratio", "pps/psi", "Ratio of fuel flow to Ps30",
           521.91, 519.93, 0.28, 2),
    Sensor(13, "NRf", "nrf_corrected_fan_speed", "rpm", "Corrected fan speed",
           2388.056, 2388.222, 0.03, 2),
    Sensor(14, "NRc", "nrc_corrected_core_speed", "rpm", "Corrected core speed",
           8137.4, 8165.2, 3.0, 2),
    Sensor(15, "BPR", "bpr_bypass_ratio", "1", "Bypass ratio",
           8.4183, 8.5151, 0.018, 4),
    Sensor(17, "HtBleed", "htbleed_bleed_enthalpy", "1", "Bleed enthalpy",
           392.26, 396.04, 0.9, 0),
    Sensor(20, "W31", "w31_hpt_coolant_bleed", "lbm/s", "HPT coolant bleed",
           38.93, 38.47, 0.09, 2),
    Sensor(21, "W32", "w32_lpt_coolant_bleed", "lbm/s", "LPT coolant bleed",
           23.360, 23.084, 0.055, 4),
)  # fmt: skip

#: A sensor's level at the failing cycle, as a multiple of its start-to-`end` change: `end` is
#: the mean of the last 10 cycles, which on an exponential curve sits below the last one.
#: Tuned with k in [2.5, 5] against the shipped pdm-rul model: on 30 synthetic engines its
#: RMSE is ~16 cycles (real engines: ~13 cross-validated), it predicts ~3 at failure and
#: crosses 30 about 15 cycles early; good enough for a demo, not for judging the model.
_FAILURE_LEVEL = 1.3

#: FD001's constant or nearly constant sensors (not served; kept so a synthetic row is whole).
_CONSTANT_SENSORS = {1: 518.67, 5: 14.62, 6: 21.61, 10: 1.30, 16: 0.03, 18: 2388.0, 19: 100.0}


@dataclass(frozen=True, slots=True)
class CycleRow:
    """One line of a C-MAPSS file: an engine unit at one cycle."""

    unit: int
    cycle: int
    settings: tuple[float, float, float]
    sensors: tuple[float, ...]  # s1..s21, in order

    def sensor(self, number: int) -> float:
        """Sensor `s<number>` (1-based, as the dataset names them)."""
        return self.sensors[number - 1]


def parse_cmapss(lines: Iterable[str], source: str = "<text>") -> dict[int, list[CycleRow]]:
    """C-MAPSS rows grouped by engine unit, each unit's rows in cycle order.

    Whitespace-separated (the files end every line with two spaces), 26 columns, no header. A
    unit's cycles must run 1, 2, 3, ... without gaps: the replay's TrueRul depends on it."""
    units: dict[int, list[CycleRow]] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != _COLUMNS:
            raise ValueError(
                f"{source}:{number}: {len(fields)} columns, expected {_COLUMNS} "
                "(unit, cycle, 3 settings, 21 sensors)"
            )
        try:
            unit, cycle = int(fields[0]), int(fields[1])
            values = [float(f) for f in fields[2:]]
        except ValueError as exc:
            raise ValueError(f"{source}:{number}: {exc}") from None
        rows = units.setdefault(unit, [])
        expected = rows[-1].cycle + 1 if rows else 1
        if cycle != expected:
            raise ValueError(f"{source}:{number}: unit {unit} cycle {cycle}, expected {expected}")
        rows.append(CycleRow(unit, cycle, (values[0], values[1], values[2]), tuple(values[3:])))
    if not units:
        raise ValueError(f"{source} has no data rows")
    return units


def load_cmapss(path: str | Path = DATASET) -> dict[int, list[CycleRow]]:
    """A C-MAPSS training file (e.g. `train_FD001.txt`) by unit; see `parse_cmapss`."""
    with open(path, encoding="ascii") as f:
        return parse_cmapss(f, str(path))


def synthetic_trajectory(
    unit: int, *, seed: int = 0, life: tuple[int, int] = FD001_LIFE
) -> list[CycleRow]:
    """A seeded run-to-failure trajectory shaped like an FD001 engine (the fallback when the
    dataset is absent): each informative sensor drifts from its FD001 start level toward its
    end level along an exponential health curve, (exp(k t/L) - 1) / (exp(k) - 1), so most of
    the change comes late, as in the real engines; plus a per-engine offset and noise."""
    lo, hi = life
    if not 2 <= lo <= hi:
        raise ValueError(f"life must be (min, max) with 2 <= min <= max (got {life})")
    rng = random.Random(f"cmapss-synthetic:{seed}:{unit}")
    length = rng.randint(lo, hi)
    k = rng.uniform(2.5, 5.0)
    offsets = {s.number: rng.gauss(0.0, s.noise) for s in SENSORS}
    rows: list[CycleRow] = []
    for cycle in range(1, length + 1):
        health = (math.exp(k * cycle / length) - 1.0) / (math.exp(k) - 1.0)
        sensors = dict(_CONSTANT_SENSORS)
        for s in SENSORS:
            drift = (s.end - s.start) * _FAILURE_LEVEL * health
            value = s.start + offsets[s.number] + drift
            sensors[s.number] = round(value + rng.gauss(0.0, s.noise), s.decimals)
        settings = (round(rng.gauss(0.0, 0.0022), 4), round(rng.gauss(0.0, 0.0003), 4), 100.0)
        rows.append(CycleRow(unit, cycle, settings, tuple(sensors[n] for n in range(1, 22))))
    return rows


class _Trajectories:
    """Every engine unit's rows: the dataset's, or synthetic ones made on first use."""

    def __init__(
        self, data: Mapping[int, list[CycleRow]] | None, *, seed: int, life: tuple[int, int]
    ) -> None:
        self._data = dict(data) if data else {}
        self.synthetic = not self._data
        self.units = sorted(self._data) if self._data else list(range(1, 101))
        self._seed, self._life = seed, life
        self._cache: dict[int, list[CycleRow]] = {}

    def rows(self, unit: int) -> list[CycleRow]:
        if not self.synthetic:
            return self._data[unit]
        if unit not in self._cache:
            if len(self._cache) > 64:  # each turbine needs only its current unit
                self._cache.clear()
            self._cache[unit] = synthetic_trajectory(unit, seed=self._seed, life=self._life)
        return self._cache[unit]

    def after(self, unit: int, stride: int) -> int:
        """The unit `stride` places after `unit` (wrapping)."""
        i = self.units.index(unit)
        return self.units[(i + stride) % len(self.units)]


# --------------------------------------------------------------------------------------------
# Turbines
# --------------------------------------------------------------------------------------------


_Var = Var


#: In write order: sensors first, Cycle last (see the module docstring).
TURBINE_VARS: tuple[_Var, ...] = (
    *(_Var(s.var, VT.Double, s.unit, description=f"{s.description} ({s.var}, C-MAPSS {s.column})")
      for s in SENSORS),
    _Var("Setting1", VT.Double, description="Operating setting 1 (C-MAPSS setting 1)"),
    _Var("Setting2", VT.Double, description="Operating setting 2 (C-MAPSS setting 2)"),
    _Var("Setting3", VT.Double, description="Operating setting 3 (C-MAPSS setting 3)"),
    _Var("UnitId", VT.UInt32, description="C-MAPSS engine unit being replayed; changes at an "
         "overhaul (a fresh engine)"),
    _Var("TrueRul", VT.Double, "cycles", description="Ground truth for the demo: cycles left "
         "in this trajectory (last cycle - current cycle)"),
    _Var("Cycle", VT.UInt32, description="Cycle number of the values above (written last)"),
)  # fmt: skip


class Turbine:
    """One turbine: which engine unit it replays and where in that trajectory it is."""

    def __init__(
        self,
        name: str,
        trajectories: _Trajectories,
        unit: int,
        *,
        stride: int,
        start_fraction: float,
        min_cycles: int,
    ) -> None:
        self.name = name
        self._trajectories = trajectories
        self._stride = stride
        self._start_fraction = start_fraction
        self._min_cycles = min_cycles
        self.overhauls = 0
        self._begin(unit)

    @property
    def row(self) -> CycleRow:
        return self.rows[self.index]

    @property
    def true_rul(self) -> int:
        """Cycles left in this trajectory: last cycle - current cycle."""
        return self.rows[-1].cycle - self.row.cycle

    def step(self) -> bool:
        """Next cycle; at the end of the trajectory an overhaul (the next unit). True then."""
        if self.index + 1 < len(self.rows):
            self.index += 1
            return False
        failed = self.row
        self._begin(self._trajectories.after(self.unit, self._stride))
        self.overhauls += 1
        _log.info(
            "%s: unit %d failed at cycle %d; overhauled, now unit %d from cycle %d",
            self.name,
            failed.unit,
            failed.cycle,
            self.unit,
            self.row.cycle,
            extra={"turbine": self.name, "unit": self.unit, "cycle": self.row.cycle},
        )
        return True

    def jump(self, cycle: int) -> None:
        """Serve `cycle` of the current unit from the next publish (tests, demos)."""
        if not 1 <= cycle <= len(self.rows):
            raise ValueError(f"unit {self.unit} has cycles 1..{len(self.rows)} (got {cycle})")
        self.index = cycle - 1

    def values(self) -> dict[str, Any]:
        """Variable name -> value now, in TURBINE_VARS order."""
        row = self.row
        out: dict[str, Any] = {s.var: row.sensor(s.number) for s in SENSORS}
        out.update(
            Setting1=row.settings[0],
            Setting2=row.settings[1],
            Setting3=row.settings[2],
            UnitId=row.unit,
            TrueRul=float(self.true_rul),
            Cycle=row.cycle,
        )
        return out

    def _begin(self, unit: int) -> None:
        self.unit = unit
        self.rows = self._trajectories.rows(unit)
        self.index = start_index(len(self.rows), self._start_fraction, self._min_cycles)


def start_index(length: int, start_fraction: float, min_cycles: int) -> int:
    """Where a trajectory of `length` cycles starts: at `start_fraction` of its life, but with
    at least `min_cycles` left (all of it if it is shorter)."""
    return max(0, min(int(start_fraction * length), length - max(1, min_cycles)))


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


_gateway_value = gateway_value


class CogenTurbinePlant(Service):
    """Cogeneration turbines behind one asyncua server. See the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        turbines: int = 1,
        cycle_period: float | None = 1.0,
        start_fraction: float = 0.0,
        min_cycles: int = 40,
        dataset: str | Path | None = DATASET,
        seed: int = 0,
        synthetic_life: tuple[int, int] = FD001_LIFE,
    ) -> None:
        if turbines < 1:
            raise ValueError(f"turbines must be >= 1 (got {turbines})")
        if cycle_period is not None and cycle_period <= 0:
            raise ValueError(f"cycle_period must be > 0 or None (got {cycle_period})")
        if not 0.0 <= start_fraction < 1.0:
            raise ValueError(f"start_fraction must be in [0, 1) (got {start_fraction})")
        if min_cycles < 1:
            raise ValueError(f"min_cycles must be >= 1 (got {min_cycles})")
        self.host = host
        self._port = port
        self.cycle_period = cycle_period
        self.start_fraction = start_fraction
        self.dataset: Path | None = None
        data: dict[int, list[CycleRow]] | None = None
        if dataset is not None and Path(dataset).is_file():
            data = load_cmapss(dataset)
            self.dataset = Path(dataset)
            _log.info("replaying %s (%d engine units)", dataset, len(data))
        else:
            why = "not requested" if dataset is None else f"{dataset} not found"
            _log.warning(
                "C-MAPSS dataset %s: serving SYNTHETIC degradation, not real data",
                why,
                extra={"dataset": str(dataset) if dataset else None},
            )
        self.trajectories = _Trajectories(data, seed=seed, life=synthetic_life)
        units = self.trajectories.units
        if turbines > len(units):
            raise ValueError(f"{turbines} turbines but only {len(units)} engine units to replay")
        self.turbines: dict[str, Turbine] = {
            f"Turbine{i + 1}": Turbine(
                f"Turbine{i + 1}",
                self.trajectories,
                units[i],
                stride=turbines,
                start_fraction=start_fraction,
                min_cycles=min_cycles,
            )
            for i in range(turbines)
        }
        self.cycles = 0
        self.namespace_index: int | None = None
        self._server: Server | None = None
        self._nodes: dict[tuple[str, str], ua.NodeId] = {}
        self._task: asyncio.Task[None] | None = None
        self._running = False

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

    @property
    def synthetic(self) -> bool:
        """True when serving the synthetic fallback instead of the dataset."""
        return self.trajectories.synthetic

    def describe(self) -> str:
        """One line: where it listens and what it serves (the CLI prints this)."""
        data = (
            f"replaying {self.dataset.name} ({len(self.trajectories.units)} engines)"
            if self.dataset
            else "SYNTHETIC degradation (dataset not found)"
        )
        period = f"{self.cycle_period:g} s/cycle" if self.cycle_period else "manual cycles"
        return (
            f"OPC UA cogen turbine simulator listening on {self.endpoint} "
            f"({len(self.turbines)} turbine(s), namespace {NAMESPACE}, {data}, {period}, "
            f"start fraction {self.start_fraction:g})"
        )

    def node_id(self, turbine: str, var: str) -> str:
        """The node id text of a variable as served now (`ns=2;s=Turbine1.T24`)."""
        return self._nodes[(turbine, var)].to_string()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (again) on the same port with the same node ids; the turbines carry on
        where they were, as a machine does while its OPC UA server restarts."""
        if self._running:
            return
        if self._server is None:
            self._server = await self._new_server()
            await self._populate(self._server)
        self._port = await listen(self._server, self.host, self._port)
        self._running = True
        await self._publish()
        if self.cycle_period is not None:
            self._task = asyncio.create_task(self._cycle_loop(), name="cogen-turbine-cycles")

    async def stop(self) -> None:
        """Stop listening and forget every session and subscription (a server restart)."""
        if not self._running:
            return
        self._running = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert self._server is not None
        await stop_listening(self._server)

    async def close(self) -> None:
        await self.stop()

    # -- values -----------------------------------------------------------------------------

    def current_values(self, turbine: str = "Turbine1") -> dict[str, Value]:
        """What the turbine serves now (variable name -> gateway value)."""
        values = self.turbines[turbine].values()
        return {v.name: _gateway_value(v.vtype, values[v.name]) for v in TURBINE_VARS}

    async def step(self) -> None:
        """One cycle for every turbine, published in one synchronous step (works without a
        running server too: the values still advance)."""
        for turbine in self.turbines.values():
            turbine.step()
        self.cycles += 1
        await self._publish()

    # -- internals --------------------------------------------------------------------------

    async def _new_server(self) -> Server:
        """The asyncua server with its standard address space (the slow part: seconds)."""
        server = Server()
        await server.init()
        server.disable_clock(True)  # the cycle loop keeps CurrentTime; restarts stay fast
        server.set_server_name("Millrace cogeneration turbine simulator")
        await server.set_application_uri(SERVER_URI)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        return server

    async def _populate(self, server: Server) -> None:
        idx = await server.register_namespace(NAMESPACE)
        self.namespace_index = idx
        plant = await server.nodes.objects.add_folder(
            ua.NodeId("CogenPlant", idx), ua.QualifiedName("CogenPlant", idx)
        )
        for name, turbine in self.turbines.items():
            obj = await plant.add_object(ua.NodeId(name, idx), ua.QualifiedName(name, idx))
            values = turbine.values()
            for var in TURBINE_VARS:
                await self._add(obj, idx, name, var, values[var.name])

    async def _add(self, parent: Node, idx: int, owner: str, var: _Var, value: Any) -> None:
        self._nodes[(owner, var.name)] = await add_variable(parent, idx, owner, var, value)

    def _cycle_writes(self, now: dt.datetime) -> list[tuple[ua.NodeId, ua.DataValue]]:
        """Every value of this cycle, computed before anything is written."""
        writes: list[tuple[ua.NodeId, ua.DataValue]] = []
        for name, turbine in self.turbines.items():
            values = turbine.values()
            for var in TURBINE_VARS:
                dv = ua.DataValue(
                    ua.Variant(values[var.name], var.vtype),
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                )
                writes.append((self._nodes[(name, var.name)], dv))
        return writes

    async def _publish(self) -> None:
        """Write one cycle as one step. `write_attribute_value` stores the value and queues a
        data change per monitored item without ever suspending, and nothing else is awaited
        between the writes, so no subscription can publish half a cycle."""
        server = self._server
        if not self._running or server is None:
            return
        now = dt.datetime.now(dt.UTC)
        clock = ua.DataValue(ua.Variant(now, VT.DateTime), SourceTimestamp=now, ServerTimestamp=now)
        writes = [(ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime), clock)]
        writes += self._cycle_writes(now)
        for nodeid, dv in writes:
            await server.write_attribute_value(nodeid, dv)

    async def _cycle_loop(self) -> None:
        assert self.cycle_period is not None
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += self.cycle_period
            delay = due - loop.time()
            if delay < 0:  # fell behind: skip ahead rather than burst cycles
                due, delay = loop.time(), 0.0
            await asyncio.sleep(delay)
            await self.step()


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.cogen_turbine",
        description="A sugar mill's cogeneration turbine (C-MAPSS FD001 replay) behind OPC UA.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="TCP port (default %(default)s; 0 = any)"
    )
    parser.add_argument("--turbines", type=int, default=1, help="turbines (default %(default)s)")
    parser.add_argument(
        "--cycle-period", type=float, default=1.0, help="seconds per cycle (default %(default)s)"
    )
    parser.add_argument(
        "--start-fraction",
        type=float,
        default=0.0,
        help="start each trajectory at this fraction of its life, 0..1 (default %(default)s)",
    )
    parser.add_argument(
        "--min-cycles",
        type=int,
        default=40,
        help="cycles every trajectory keeps at least (default %(default)s: the model's 30 + 10)",
    )
    parser.add_argument(
        "--dataset", default=str(DATASET), help="C-MAPSS file to replay (default: shared copy)"
    )
    parser.add_argument(
        "--no-dataset", action="store_true", help="synthetic data even if the file exists"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for synthetic data")
    parser.add_argument("-v", "--verbose", action="store_true", help="log overhauls and more")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    sim = CogenTurbinePlant(
        host=args.host,
        port=args.port,
        turbines=args.turbines,
        cycle_period=args.cycle_period,
        start_fraction=args.start_fraction,
        min_cycles=args.min_cycles,
        dataset=None if args.no_dataset else args.dataset,
        seed=args.seed,
    )
    await serve_until_signal(sim, sim.describe)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad arguments."""
    args = _parser().parse_args(argv)
    return run_cli(
        "cogen_turbine",
        lambda: _serve(args),
        verbose=args.verbose,
        verbose_level=logging.INFO,
        quiet=("asyncua",),
    )


if __name__ == "__main__":
    sys.exit(main())
