"""Hardware platform profiles: which board this is, and what that changes in the config.

A profile (`firmware-configs/platforms/<name>.yaml`) is data about a board: the ONNX execution
providers in order of preference (TensorRT → CUDA → CPU on a Jetson), how many cores a model
call may take, how often the store commits (an SD card wants fewer fsyncs than an NVMe disk),
how much memory the gateway is given, which serial ports its RS-485 HATs appear on, and the
watchdog. Three steps, kept apart so each is tested alone:

1. `find_platform_dir` / `load_profiles`: read the YAML files (the checkout's folder, a folder
   named by `MILLRACE_PLATFORM_DIR`, or the copy installed under `<prefix>/share/millrace`).
2. `detect`: choose one, by an explicit name (`--platform`, `MILLRACE_PLATFORM`) or from the
   machine itself: balena's `BALENA_DEVICE_TYPE`, `/proc/device-tree/model`,
   `/etc/nv_tegra_release`, then the CPU architecture. The root folder is a parameter so tests
   give a fake `/proc` and `/etc`.
3. `apply_profile`: a pure function returning a config whose *unset* fields take the
   profile's values. Whatever the gateway YAML (or a `MILLRACE_*` variable) sets explicitly
   wins, so a profile never overrides a technician's decision.
"""

from __future__ import annotations

import os
import platform as _platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config import GatewayConfig
from gateway.errors import ConfigError
from gateway.inference.config import InferenceConfig
from gateway.types import Duration, Name

#: Environment variable naming the platform (the same as `--platform`).
PLATFORM_ENV = "MILLRACE_PLATFORM"
#: Environment variable naming a folder of profiles (replaces the shipped ones).
PLATFORM_DIR_ENV = "MILLRACE_PLATFORM_DIR"
#: Where `pip install` puts the shipped profiles (pyproject's data-files).
INSTALLED_DIR = Path(sys.prefix) / "share" / "millrace" / "platforms"
#: The checkout's own folder (an editable install, tests, the image's build stage).
CHECKOUT_DIR = Path(__file__).resolve().parents[1] / "firmware-configs" / "platforms"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """How a board is recognised. Any one matching field is enough."""

    #: Prefixes of `/proc/device-tree/model` (e.g. "Raspberry Pi 4 Model B Rev 1.4").
    device_tree_model: list[str] = Field(default_factory=list)
    #: balena's device type slugs, from `BALENA_DEVICE_TYPE` inside a balena container.
    balena_device_type: list[str] = Field(default_factory=list)
    #: True: the existence of `/etc/nv_tegra_release` (any NVIDIA L4T system) matches.
    nv_tegra_release: bool = False
    #: `uname -m` values; only consulted when no board-specific profile matched.
    machine: list[str] = Field(default_factory=list)


class InferenceDefaults(_Strict):
    providers: list[str] = Field(min_length=1)
    threads: int = Field(ge=1, le=64)
    workers: int = Field(default=1, ge=1, le=16)


class StoreDefaults(_Strict):
    flush_interval: Duration
    queue_max: int = Field(ge=1000)


class Memory(_Strict):
    #: The memory ceiling the gateway is sized for: systemd's MemoryMax=, compose's mem_limit.
    max_mib: int = Field(ge=64)


class SerialPort(_Strict):
    path: str
    description: str = ""


class Watchdog(_Strict):
    #: systemd's WatchdogSec= for the gateway (the gateway pings at half of it).
    systemd_sec: int = Field(default=30, ge=5, le=3600)
    #: The hardware watchdog systemd's RuntimeWatchdogSec= feeds, if the board has one.
    hardware_device: str | None = None


class PlatformProfile(_Strict):
    name: Name
    description: str = ""
    match: Match = Match()
    inference: InferenceDefaults
    store: StoreDefaults
    memory: Memory
    serial_ports: list[SerialPort] = Field(default_factory=list)
    watchdog: Watchdog = Watchdog()


@dataclass(frozen=True)
class Detected:
    """The chosen profile and the evidence for it (shown by `millrace validate`)."""

    profile: PlatformProfile
    reason: str


def find_platform_dir(env: Mapping[str, str] | None = None) -> Path:
    """The folder profiles are read from: the env override, the checkout, the installed copy."""
    env = os.environ if env is None else env
    if env.get(PLATFORM_DIR_ENV):
        return Path(env[PLATFORM_DIR_ENV])
    for d in (CHECKOUT_DIR, INSTALLED_DIR):
        if d.is_dir():
            return d
    raise ConfigError(
        [
            f"platform: no platform profiles in {CHECKOUT_DIR} or {INSTALLED_DIR} "
            f"(set {PLATFORM_DIR_ENV} to the firmware-configs/platforms folder)"
        ]
    )


def load_profiles(folder: Path) -> dict[str, PlatformProfile]:
    """Every `*.yaml` in `folder` by name; all problems reported at once."""
    profiles: dict[str, PlatformProfile] = {}
    problems: list[str] = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            profile = PlatformProfile.model_validate(data)
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path}: cannot read ({exc})")
            continue
        except ValidationError as exc:
            problems += [
                f"{path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            ]
            continue
        if profile.name != path.stem:
            problems.append(f"{path}: name must match the file name (got {profile.name})")
        profiles[profile.name] = profile
    if problems:
        raise ConfigError(problems)
    if not profiles:
        raise ConfigError([f"platform: no *.yaml profiles in {folder}"])
    return profiles


def _read(path: Path) -> str | None:
    try:
        # The device-tree strings end with a NUL byte.
        return path.read_bytes().decode("utf-8", "replace").strip("\x00\n ")
    except OSError:
        return None


def detect(
    profiles: Mapping[str, PlatformProfile],
    *,
    explicit: str | None = None,
    env: Mapping[str, str] | None = None,
    root: Path = Path("/"),
    machine: str | None = None,
) -> Detected:
    """Choose the profile for this machine.

    Order: an explicit name (`--platform`), then `MILLRACE_PLATFORM`, then balena's device
    type, the device-tree model, the L4T release file, and last the CPU architecture. A name
    that names no profile is a config error listing the known ones, because silently falling
    back to generic settings on a Jetson would run every model on the CPU.
    """
    env = os.environ if env is None else env
    for source, name in (("--platform", explicit), (PLATFORM_ENV, env.get(PLATFORM_ENV))):
        if name:
            if name not in profiles:
                raise ConfigError(
                    [f"platform: no profile {name!r} (known: {', '.join(sorted(profiles))})"]
                )
            return Detected(profiles[name], f"from {source}")
    balena_type = env.get("BALENA_DEVICE_TYPE", "")
    model = _read(root / "proc" / "device-tree" / "model") or ""
    tegra = (root / "etc" / "nv_tegra_release").is_file()
    for p in profiles.values():
        if balena_type and balena_type in p.match.balena_device_type:
            return Detected(p, f"BALENA_DEVICE_TYPE={balena_type}")
    for p in profiles.values():
        if model and any(model.startswith(m) for m in p.match.device_tree_model):
            return Detected(p, f"/proc/device-tree/model: {model}")
    for p in profiles.values():
        if tegra and p.match.nv_tegra_release:
            return Detected(p, "/etc/nv_tegra_release present")
    arch = (machine or _platform.machine()).lower()
    for p in profiles.values():
        if arch in p.match.machine:
            return Detected(p, f"architecture {arch}")
    raise ConfigError(
        [
            f"platform: nothing matches this machine (architecture {arch}, model {model!r}); "
            f"name one with --platform or {PLATFORM_ENV} (known: {', '.join(sorted(profiles))})"
        ]
    )


def apply_profile(config: GatewayConfig, profile: PlatformProfile) -> GatewayConfig:
    """`config` with the profile's values in every field the config did not set itself.

    Pure: no I/O, the input is not changed. "Set" means present in the YAML (pydantic's
    `model_fields_set`), so `threads: 1` written out stays 1 even on a Jetson.
    """
    inf = config.inference
    inf_defaults = profile.inference.model_dump()
    inference = InferenceConfig.model_validate(
        {**inf_defaults, **inf.model_dump(include=inf.model_fields_set)}
    )
    st = config.store
    store_data = {**profile.store.model_dump(), **st.model_dump(include=st.model_fields_set)}
    store = type(st).model_validate(store_data)
    return config.model_copy(update={"inference": inference, "store": store})


def port_warnings(
    config: GatewayConfig, profile: PlatformProfile, root: Path = Path("/")
) -> list[str]:
    """RTU devices on a serial port that neither exists nor is one the board is known for.

    Only a warning: a USB adapter may be plugged in later, and udev rules can rename ports.
    """
    known = {p.path for p in profile.serial_ports}
    out: list[str] = []
    for i, d in enumerate(config.devices):
        port = getattr(d, "port", None)
        if d.protocol != "modbus-rtu" or not isinstance(port, str):
            continue
        if port not in known and not (root / port.lstrip("/")).exists():
            out.append(
                f"devices.{i}.port: {port} does not exist and is not a serial port of "
                f"{profile.name} (known: {', '.join(sorted(known)) or 'none'})"
            )
    return out


def describe(det: Detected) -> list[str]:
    """Lines for `millrace validate`: which platform, why, and what it sets."""
    p = det.profile
    return [
        f"platform {p.name} ({det.reason}): {p.description}",
        f"  providers {' > '.join(p.inference.providers)}; model threads "
        f"{p.inference.threads}; memory max {p.memory.max_mib} MiB",
        f"  serial ports {', '.join(s.path for s in p.serial_ports) or 'none'}; "
        f"watchdog {p.watchdog.systemd_sec}s"
        + (f" (hardware {p.watchdog.hardware_device})" if p.watchdog.hardware_device else ""),
    ]


def systemd_dropin(profile: PlatformProfile) -> str:
    """A systemd drop-in sizing `millrace.service` for this board (watchdog and memory)."""
    return (
        f"# millrace.service sized for {profile.name} (millrace platform --systemd-dropin)\n"
        "[Service]\n"
        f"WatchdogSec={profile.watchdog.systemd_sec}\n"
        f"MemoryMax={profile.memory.max_mib}M\n"
    )


def resolve(
    explicit: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    root: Path = Path("/"),
    machine: str | None = None,
    folder: Path | None = None,
) -> Detected:
    """Load the profiles and detect this machine's (what the CLI calls)."""
    profiles = load_profiles(folder or find_platform_dir(env))
    return detect(profiles, explicit=explicit, env=env, root=root, machine=machine)


__all__: Sequence[str] = (
    "Detected",
    "PlatformProfile",
    "apply_profile",
    "describe",
    "detect",
    "load_profiles",
    "port_warnings",
    "resolve",
    "systemd_dropin",
)
