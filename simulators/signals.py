"""Signal models for the simulated plant: plausible, changing, *deterministic* process values.

Every model is a function of (seed, time, what was written to it): two models built with the
same seed and fed the same clock readings and writes serve identical values. That is what lets
tests freeze or fast-forward time (see `ManualClock`) and still assert exact numbers, and what
lets a benchmark run be repeated. Nothing here reads the wall clock; the caller passes `t`.

Randomness is "value noise": a hash of (seed, integer knot) gives a pseudo-random number per
knot and values between knots are smoothly interpolated. It needs no state and no RNG, so any
`t` can be evaluated in any order, cheaply.

Counters (energy, run hours, tonnes crushed) and bearing wear are integrals over run time. They
are kept in closed form: state only changes when a point is written (pump enabled, setpoint
changed), and each write checkpoints the integrals at that instant, so values depend only on
the write history and `t`, not on how often anybody polled.

Models:

* `PumpStationModel`   for the `pump-station` profile, with a slowly wearing bearing.
* `SugarcanePressModel` for the `sugarcane-press` profile, bearing wear likewise.
* `GenericModel`       for any profile: a smooth signal per point inside its min/max.
"""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

from drivers.modbus.codec import TYPES, DataType, Kind
from drivers.modbus.config import ModbusPoint, ModbusProfile
from gateway.readings import Value

#: A clock returns seconds (epoch seconds by default: the daily swing follows the time of day).
Clock = Callable[[], float]

TWO_PI = 2.0 * math.pi
DAY = 86_400.0
HOUR = 3_600.0

#: ISO 10816-3 group 2 machines, rigid foundation: above 7.1 mm/s RMS is zone D ("damage").
ISO_10816_ZONE_D = 7.1

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def stream(seed: int, name: str) -> int:
    """An independent random stream id for one signal of one seeded model."""
    return _mix((seed * 0x100000001B3) ^ zlib.crc32(name.encode()))


def rand(stream_id: int, key: int = 0) -> float:
    """A pseudo-random float in [0, 1) for (stream, key); stateless, so order never matters."""
    return _mix(stream_id ^ ((key * 0xD6E8FEB86659FD93) & _MASK)) / 18446744073709551616.0


def noise(stream_id: int, t: float, period: float) -> float:
    """Smooth value noise in [-1, 1]: random at every `period` seconds, eased in between."""
    x = t / period
    k = math.floor(x)
    f = x - k
    a = rand(stream_id, k)
    b = rand(stream_id, k + 1)
    f = f * f * (3.0 - 2.0 * f)
    return 2.0 * (a + (b - a) * f) - 1.0


def daily(t: float, peak_hour: float = 15.0) -> float:
    """A slow swing over the day in [-1, 1], peaking at `peak_hour` local-ish (UTC) time."""
    return math.cos(TWO_PI * ((t % DAY) / DAY - peak_hour / 24.0))


def unit_seed(seed: int, unit_id: int) -> int:
    """Seed for one unit, so units of one model do not move in lock-step."""
    return _mix((seed << 8) ^ unit_id) & 0x7FFFFFFF


class ManualClock:
    """A clock that only moves when told to: tests freeze time or fast-forward whole days."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move time forward (or back, if negative) and return the new time."""
        self.now += seconds
        return self.now

    def set(self, now: float) -> None:
        self.now = float(now)


class SignalModel(ABC):
    """Where a simulated unit's engineering values come from.

    `sample(t)` returns values by point name for the points the model knows (`names`); the unit
    fills any other point of its profile from a `GenericModel`. `write` tells the model that a
    client wrote a writable point, so it can react (a pump follows its speed setpoint).
    """

    #: Point names this model produces.
    names: frozenset[str] = frozenset()

    @abstractmethod
    def sample(self, t: float) -> dict[str, Value]:
        """Engineering values at time `t` (seconds)."""

    def write(self, name: str, value: Value, t: float) -> None:  # noqa: B027 - optional hook
        """A client wrote `value` to the writable point `name` at time `t`. Default: ignore."""


class _Integrals:
    """Run time and counters in closed form, checkpointed at every state change.

    `rates` are per hour of running. Between checkpoints the rates are constant (they only
    change on a write), so the value at any `t` is `total + rate * hours since checkpoint`.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.since: float | None = None
        self.totals: dict[str, float] = dict.fromkeys(names, 0.0)
        self.rates: dict[str, float] = dict.fromkeys(names, 0.0)

    def anchor(self, t: float) -> None:
        if self.since is None:
            self.since = t

    def at(self, name: str, t: float) -> float:
        since = t if self.since is None else self.since
        return self.totals[name] + self.rates[name] * max(0.0, t - since) / HOUR

    def checkpoint(self, t: float) -> None:
        for name in self.totals:
            self.totals[name] = self.at(name, t)
        self.since = t if self.since is None else max(t, self.since)


def _bearing_trend(start: float, wear_hours: float, tau_hours: float) -> float:
    """Vibration of a wearing rolling bearing: slow at first, then accelerating (exponential)."""
    return start * math.exp(wear_hours / tau_hours)


class PumpStationModel(SignalModel):
    """A booster pump on a variable-speed drive, a wet well, and a bearing that wears.

    Affinity laws give the shape: flow ∝ speed, head ∝ speed², power ∝ speed³. Flow swings
    over the day (demand) with a little noise; the wet well fills and draws down on a 30-minute
    cycle. Bearing vibration starts near 1.8 mm/s and grows exponentially with *wear hours*
    (run hours × `wear_rate` × load), crossing ISO 10816 zone D (7.1 mm/s) after about 60 days
    at rated speed with `wear_rate=1`; a demo sets `wear_rate` to thousands to watch it happen.
    Past zone D the drive raises `drive_fault` and `fault_code` (it keeps running: it is an
    alarm for a predictive-maintenance demo, not a trip).

    Writes: `speed_setpoint` (motor ramps at 1500 rpm/s), `pump_enable` (false stops it at once:
    speed, flow and current 0, `running` false), `pressure_setpoint` (stored). A setpoint above
    2700 rpm trips the overload relay: the pump stops and `overload_trip` is set.
    """

    RATED_SPEED = 1480.0
    RAMP_RPM_PER_S = 1500.0
    OVERLOAD_SPEED = 2700.0
    DESIGN_FLOW = 120.0  # m³/h at rated speed
    RATED_POWER = 36.0  # kW at rated speed and design flow
    VIBRATION_NEW = 1.8  # mm/s, a healthy bearing
    WEAR_TAU_HOURS = 1050.0
    FAULT_NONE = 0
    FAULT_OVERLOAD = 7
    FAULT_BEARING_VIBRATION = 16

    names = frozenset(
        {
            "flow_rate",
            "discharge_pressure",
            "suction_pressure",
            "motor_current",
            "motor_speed",
            "motor_temperature",
            "bearing_vibration",
            "bearing_temperature",
            "well_level",
            "energy_total",
            "run_hours",
            "running",
            "drive_fault",
            "remote_mode",
            "fault_code",
            "drive_serial",
            "speed_setpoint",
            "pressure_setpoint",
            "pump_enable",
            "low_level_alarm",
            "overload_trip",
        }
    )

    def __init__(self, *, seed: int = 0, wear_rate: float = 1.0, start: float | None = None):
        self.seed = seed
        self._wear_rate = float(wear_rate)
        self._s = {n: stream(seed, n) for n in ("flow", "level", "temp", "vib", "press", "amp")}
        self.enable = True
        self.speed_setpoint = self.RATED_SPEED
        self.pressure_setpoint = 5.0
        self._phase = TWO_PI * rand(stream(seed, "phase"))
        self._run_hours0 = 9_000.0 + 8_000.0 * rand(stream(seed, "hours"))
        self._energy0 = self._run_hours0 * self.RATED_POWER * 0.8
        self.serial = f"VFD{seed % 1_000_000_000:09d}"
        self._acc = _Integrals(("run_h", "energy_kwh", "wear_h"))
        self._ramp_t: float | None = None
        self._ramp_from = self.speed_setpoint
        self._last_t: float | None = None
        if start is not None:
            self._anchor(start)

    # -- state -------------------------------------------------------------------------------

    @property
    def overloaded(self) -> bool:
        return self.enable and self.speed_setpoint > self.OVERLOAD_SPEED

    @property
    def commanded(self) -> bool:
        """The drive is asked to run (enabled and not tripped)."""
        return self.enable and not self.overloaded and self.speed_setpoint > 0

    @property
    def wear_rate(self) -> float:
        return self._wear_rate

    @wear_rate.setter
    def wear_rate(self, rate: float) -> None:
        """Change wear speed from now on; wear already accumulated is kept."""
        if self._last_t is not None:
            self._acc.checkpoint(self._last_t)
        self._wear_rate = float(rate)
        self._set_rates()

    def _anchor(self, t: float) -> None:
        if self._ramp_t is None:
            self._ramp_t = t
            self._acc.anchor(t)
            self._set_rates()
        self._last_t = t

    def _set_rates(self) -> None:
        r = self.speed_setpoint / self.RATED_SPEED if self.commanded else 0.0
        running = 1.0 if self.commanded else 0.0
        self._acc.rates["run_h"] = running
        self._acc.rates["energy_kwh"] = self.RATED_POWER * r**3
        self._acc.rates["wear_h"] = running * self._wear_rate * r * r

    def speed(self, t: float) -> float:
        """Motor speed: ramps linearly toward the setpoint; 0 at once when stopped."""
        if not self.commanded:
            return 0.0
        since = t if self._ramp_t is None else self._ramp_t
        step = self.RAMP_RPM_PER_S * max(0.0, t - since)
        target = self.speed_setpoint
        if self._ramp_from < target:
            return min(target, self._ramp_from + step)
        return max(target, self._ramp_from - step)

    def write(self, name: str, value: Value, t: float) -> None:
        self._anchor(t)
        current = self.speed(t)
        self._acc.checkpoint(t)
        if name == "speed_setpoint" and isinstance(value, int | float):
            self.speed_setpoint = float(value)
        elif name == "pump_enable":
            self.enable = bool(value)
        elif name == "pressure_setpoint" and isinstance(value, int | float):
            self.pressure_setpoint = float(value)
        self._ramp_from = current if self.commanded else 0.0
        self._ramp_t = t
        self._set_rates()

    # -- values ------------------------------------------------------------------------------

    def vibration_trend(self, t: float) -> float:
        """Noise-free bearing vibration at rated speed: what wear alone has done so far."""
        return _bearing_trend(self.VIBRATION_NEW, self._acc.at("wear_h", t), self.WEAR_TAU_HOURS)

    def sample(self, t: float) -> dict[str, Value]:
        self._anchor(t)
        s = self._s
        day = daily(t)
        ambient = 21.0 + 5.0 * day + 0.5 * noise(s["temp"], t, 600.0)
        level = 55.0 + 22.0 * math.sin(TWO_PI * t / 1_800.0 + self._phase)
        level += 1.5 * noise(s["level"], t, 60.0)
        suction = 0.15 + 0.009 * level + 0.01 * noise(s["press"], t, 7.0)
        n = self.speed(t)
        running = n > 0.0
        r = n / self.RATED_SPEED
        trend = self.vibration_trend(t)
        if running:
            flow = r * (self.DESIGN_FLOW + 25.0 * day + 6.0 * noise(s["flow"], t, 20.0))
            flow_norm = flow / (self.DESIGN_FLOW * r)
            discharge = suction + 4.4 * r * r - 0.004 * (flow - self.DESIGN_FLOW * r)
            discharge += 0.03 * noise(s["press"], t + 1e5, 5.0)
            power = self.RATED_POWER * r**3 * (0.7 + 0.3 * flow_norm)
            current = 8.0 + 1.7 * power + 0.4 * noise(s["amp"], t, 3.0)
            clean_vibration = trend * (0.4 + 0.6 * r)
            vibration = clean_vibration + 0.08 * noise(s["vib"], t, 5.0)
            motor_temp = ambient + 28.0 * power / self.RATED_POWER
            bearing_temp = ambient + 12.0 * r * r + 3.5 * (clean_vibration - self.VIBRATION_NEW)
            bearing_temp += 0.3 * noise(s["temp"], t + 1e5, 30.0)
        else:
            flow = current = power = 0.0
            discharge = suction + 0.3
            clean_vibration = 0.0
            vibration = 0.05 + 0.03 * noise(s["vib"], t, 5.0)
            motor_temp = bearing_temp = ambient
        fault = running and clean_vibration > ISO_10816_ZONE_D
        if self.overloaded:
            code = self.FAULT_OVERLOAD
        elif fault:
            code = self.FAULT_BEARING_VIBRATION
        else:
            code = self.FAULT_NONE
        return {
            "flow_rate": max(0.0, flow),
            "discharge_pressure": discharge,
            "suction_pressure": suction,
            "motor_current": max(0.0, current),
            "motor_speed": round(n),
            "motor_temperature": motor_temp,
            "bearing_vibration": max(0.0, vibration),
            "bearing_temperature": bearing_temp,
            "well_level": min(100.0, max(0.0, level)),
            "energy_total": int(self._energy0 + self._acc.at("energy_kwh", t)),
            "run_hours": self._run_hours0 + self._acc.at("run_h", t),
            "running": running,
            "drive_fault": fault,
            "remote_mode": True,
            "fault_code": code,
            "drive_serial": self.serial,
            "speed_setpoint": round(self.speed_setpoint),
            "pressure_setpoint": self.pressure_setpoint,
            "pump_enable": self.enable,
            "low_level_alarm": level < 33.0,
            "overload_trip": self.overloaded,
        }


class SugarcanePressModel(SignalModel):
    """A roller press of a cane mill tandem: feed drives everything downstream.

    Cane feed wanders between 80 and 140 t/h (a 90-minute swing plus noise); roller speed and
    roller load follow it (load also scales with the hydraulic `load_setpoint`); juice flow is
    the extracted juice plus imbibition water (`imbibition_ratio`, % on fibre), and brix falls
    as imbibition dilutes it. `cane_crushed_total` integrates the feed. Journal-bearing wear
    works as in the pump (`wear_rate`). `batch_id` changes every 8-hour shift. Writing
    `press_running` false stops the feed, the rollers and the juice.
    """

    FEED_MEAN = 110.0
    FEED_SWING = 18.0
    FEED_PERIOD = 5_400.0
    FIBRE = 0.14  # fraction of cane mass
    VIBRATION_NEW = 2.0
    WEAR_TAU_HOURS = 1_300.0
    SHIFT = 8 * HOUR

    names = frozenset(
        {
            "roller_speed",
            "hydraulic_pressure",
            "roller_load",
            "cane_feed_rate",
            "juice_flow",
            "juice_brix",
            "motor_power",
            "bearing_temperature",
            "bearing_vibration",
            "oil_temperature",
            "cane_crushed_total",
            "batch_id",
            "load_setpoint",
            "imbibition_ratio",
            "press_running",
            "choke_alarm",
        }
    )

    def __init__(self, *, seed: int = 0, wear_rate: float = 1.0, start: float | None = None):
        self.seed = seed
        self._wear_rate = float(wear_rate)
        self._s = {n: stream(seed, n) for n in ("feed", "load", "juice", "temp", "vib", "power")}
        self._phase = TWO_PI * rand(stream(seed, "phase"))
        self.running = True
        self.load_setpoint = 600.0
        self.imbibition_ratio = 250.0
        self._crushed0 = 50_000.0 + 250_000.0 * rand(stream(seed, "crushed"))
        self._acc = _Integrals(("run_h", "wear_h"))
        self._feed_since: float | None = None  # closed-form feed integral checkpoints
        self._crushed = 0.0
        self._last_t: float | None = None
        if start is not None:
            self._anchor(start)

    @property
    def wear_rate(self) -> float:
        return self._wear_rate

    @wear_rate.setter
    def wear_rate(self, rate: float) -> None:
        if self._last_t is not None:
            self._checkpoint(self._last_t)
        self._wear_rate = float(rate)
        self._set_rates()

    def _anchor(self, t: float) -> None:
        if self._feed_since is None:
            self._feed_since = t
            self._acc.anchor(t)
            self._set_rates()
        self._last_t = t

    def _set_rates(self) -> None:
        on = 1.0 if self.running else 0.0
        self._acc.rates["run_h"] = on
        self._acc.rates["wear_h"] = on * self._wear_rate * (self.load_setpoint / 600.0)

    def _feed_integral(self, t: float) -> float:
        """∫ mean feed dt in tonnes (noise is zero-mean and left out)."""
        w = TWO_PI / self.FEED_PERIOD
        return (self.FEED_MEAN * t - self.FEED_SWING / w * math.cos(w * t + self._phase)) / HOUR

    def _crushed_at(self, t: float) -> float:
        since = t if self._feed_since is None else self._feed_since
        if not self.running or t <= since:
            return self._crushed
        return self._crushed + self._feed_integral(t) - self._feed_integral(since)

    def _checkpoint(self, t: float) -> None:
        self._crushed = self._crushed_at(t)
        self._feed_since = t
        self._acc.checkpoint(t)

    def write(self, name: str, value: Value, t: float) -> None:
        self._anchor(t)
        self._checkpoint(t)
        if name == "press_running":
            self.running = bool(value)
        elif name == "load_setpoint" and isinstance(value, int | float):
            self.load_setpoint = float(value)
        elif name == "imbibition_ratio" and isinstance(value, int | float):
            self.imbibition_ratio = float(value)
        self._set_rates()

    def sample(self, t: float) -> dict[str, Value]:
        self._anchor(t)
        s = self._s
        ambient = 30.0 + 4.0 * daily(t) + 0.5 * noise(s["temp"], t, 600.0)
        trend = _bearing_trend(self.VIBRATION_NEW, self._acc.at("wear_h", t), self.WEAR_TAU_HOURS)
        if self.running:
            feed = self.FEED_MEAN + self.FEED_SWING * math.sin(
                TWO_PI * t / self.FEED_PERIOD + self._phase
            )
            feed = min(140.0, max(80.0, feed + 7.0 * noise(s["feed"], t, 90.0)))
            roller_speed = 3.0 + feed / 60.0
            load = self.load_setpoint * (0.55 + 0.45 * feed / self.FEED_MEAN)
            load += 6.0 * noise(s["load"], t, 4.0)
            extracted = feed * 0.62
            water = feed * self.FIBRE * self.imbibition_ratio / 100.0 * 0.9
            juice = (extracted + water) / 1.07 + 0.8 * noise(s["juice"], t, 10.0)
            brix = 19.5 * extracted / (extracted + water) + 0.15 * noise(s["juice"], t, 60.0)
            power = 120.0 + 0.75 * load * roller_speed / 5.0 + 8.0 * noise(s["power"], t, 3.0)
            clean_vibration = trend * (0.5 + 0.5 * feed / self.FEED_MEAN)
            vibration = clean_vibration + 0.1 * noise(s["vib"], t, 5.0)
            bearing_temp = ambient + 22.0 + 4.0 * (clean_vibration - self.VIBRATION_NEW)
        else:
            feed = roller_speed = juice = 0.0
            load = 0.05 * self.load_setpoint
            brix = 0.0
            power = 18.0 + 0.5 * noise(s["power"], t, 3.0)
            vibration = 0.05 + 0.03 * noise(s["vib"], t, 5.0)
            bearing_temp = ambient + 5.0
        oil = 42.0 + 10.0 * load / 900.0 + 0.5 * noise(s["temp"], t + 1e5, 120.0)
        return {
            "roller_speed": roller_speed,
            "hydraulic_pressure": 40.0 + 0.22 * self.load_setpoint + 1.5 * noise(s["load"], t, 9.0),
            "roller_load": max(0.0, load),
            "cane_feed_rate": feed,
            "juice_flow": max(0.0, juice),
            "juice_brix": max(0.0, brix),
            "motor_power": power,
            "bearing_temperature": bearing_temp,
            "bearing_vibration": max(0.0, vibration),
            "oil_temperature": oil,
            "cane_crushed_total": self._crushed0 + self._crushed_at(t),
            "batch_id": f"CS{int(t // self.SHIFT) % 1_000_000:06d}",
            "load_setpoint": self.load_setpoint,
            "imbibition_ratio": self.imbibition_ratio,
            "press_running": self.running,
            "choke_alarm": self.running and (feed > 136.0 or load > 880.0),
        }


#: Raw ranges used when a point states no min/max: modest, so scaled values stay readable.
_DEFAULT_RAW_RANGE: dict[DataType, tuple[float, float]] = {
    DataType.UINT16: (0.0, 1_000.0),
    DataType.INT16: (-500.0, 500.0),
    DataType.UINT32: (0.0, 100_000.0),
    DataType.INT32: (-50_000.0, 50_000.0),
    DataType.UINT64: (0.0, 1_000_000.0),
    DataType.INT64: (-500_000.0, 500_000.0),
    DataType.FLOAT32: (0.0, 100.0),
    DataType.FLOAT64: (0.0, 100.0),
}

_COUNTER_SUFFIXES = ("_total", "_count", "_counter", "_hours")


def point_range(point: ModbusPoint) -> tuple[float, float]:
    """The engineering range a generic signal for `point` stays in.

    The point's own min/max when given; otherwise a modest raw range for its data type put
    through scale and offset (floats: 0..100 engineering units).
    """
    spec = TYPES[point.data_type]
    raw_lo, raw_hi = _DEFAULT_RAW_RANGE.get(point.data_type, (0.0, 1.0))
    if spec.kind is Kind.FLOAT:
        lo, hi = raw_lo, raw_hi
    else:
        a, b = raw_lo * point.scale + point.offset, raw_hi * point.scale + point.offset
        lo, hi = min(a, b), max(a, b)
    if point.min is not None and point.max is not None:
        return point.min, point.max
    if point.min is not None:
        return point.min, max(point.min, point.min + (hi - lo))
    if point.max is not None:
        return min(point.max, point.max - (hi - lo)), point.max
    return lo, hi


class GenericModel(SignalModel):
    """Plausible values for any profile, cheap enough for 500 units × 30 points.

    Numbers: a sine with a per-point period (1-10 min) and phase plus a little smooth noise,
    kept inside `point_range`; integer types are rounded. Points named like counters
    (`*_total`, `*_count`, `*_hours`) count up instead. Bools and bits toggle on a slow square
    wave (30 s-5 min). Strings are fixed. Writable points are held by the unit, so writes need
    no reaction here.
    """

    def __init__(self, profile: ModbusProfile, *, seed: int = 0, label: str | None = None) -> None:
        self.seed = seed
        self.names = frozenset(p.name for p in profile.points)
        self._label = label or profile.name
        self._start: float | None = None
        # name, kind, lo, hi, omega, phase, noise stream, integer, counter rate (per second)
        self._numeric: list[tuple[str, float, float, float, float, int, bool, float]] = []
        self._toggles: list[tuple[str, float, float]] = []
        self._fixed: dict[str, Value] = {}
        for p in profile.points:
            s = stream(seed, p.name)
            kind = TYPES[p.data_type].kind
            if kind is Kind.BOOL:
                self._toggles.append((p.name, 30.0 + 270.0 * rand(s, 1), 1e4 * rand(s, 2)))
            elif kind is Kind.STRING:
                self._fixed[p.name] = self._label[: p.length or 0]
            else:
                lo, hi = point_range(p)
                omega = TWO_PI / (60.0 + 540.0 * rand(s, 1))
                integer = kind is Kind.INTEGER and p.scale == 1 and p.offset == 0
                counter = kind is Kind.INTEGER and p.name.endswith(_COUNTER_SUFFIXES)
                rate = (hi - lo) / (30 * DAY) if counter else 0.0
                phase = TWO_PI * rand(s, 2)
                self._numeric.append((p.name, lo, hi, omega, phase, s, integer, rate))

    def sample(self, t: float) -> dict[str, Value]:
        if self._start is None:
            self._start = t
        out: dict[str, Value] = dict(self._fixed)
        sin = math.sin
        for name, lo, hi, omega, phase, s, integer, rate in self._numeric:
            if rate:
                value = lo + (hi - lo) * 0.1 + rate * max(0.0, t - self._start)
                out[name] = int(value) if integer else value
                continue
            mid = 0.5 * (lo + hi)
            half = 0.5 * (hi - lo)
            value = mid + half * (0.8 * sin(omega * t + phase) + 0.15 * noise(s, t, 15.0))
            out[name] = round(value) if integer else value
        for name, period, offset in self._toggles:
            out[name] = int((t + offset) // period) % 2 == 1
        return out


def model_for(
    profile: ModbusProfile,
    *,
    seed: int = 0,
    wear_rate: float = 1.0,
    start: float | None = None,
    label: str | None = None,
) -> SignalModel:
    """The model for a profile, chosen by profile name; anything unknown gets `GenericModel`."""
    factory = MODELS.get(profile.name)
    if factory is None:
        return GenericModel(profile, seed=seed, label=label)
    return factory(seed=seed, wear_rate=wear_rate, start=start)


#: Profile name -> model class. Extend it to give another profile a bespoke model.
MODELS: Mapping[str, Callable[..., SignalModel]] = {
    "pump-station": PumpStationModel,
    "sugarcane-press": SugarcanePressModel,
}
