"""Load, resolve and check a gateway config, reporting every problem at once.

Problems are lines of the form `path.to.field: reason (got VALUE)`. They come from three
passes over the same file, all run even when an earlier one fails, so a technician fixes a
config in one go rather than one error per attempt:

1. secret references `${env:NAME}` and `${file:PATH}` are resolved (values read from them are
   shown as `***` in any message);
2. the structure is validated by the pydantic models (`gateway.config`) and each referenced
   profile file by its protocol's profile model;
3. cross-references are checked on the raw data: duplicate ids, unknown profiles, devices and
   points, units sharing a connection with conflicting settings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from gateway.config import PROFILE_PROTOCOL, DeviceConfig, GatewayConfig, ProfileConfig
from gateway.errors import ConfigError
from gateway.secrets import config_secret_values

_SECRET_RE = re.compile(r"\$\{(env|file):([^}]+)\}")
_TAG_SEGMENTS = {"modbus-tcp", "modbus-rtu", "modbus", "opcua", "mqtt"}
_MAX_SHOWN = 60
#: Bounds on what a config (or profile) file may be before anything walks it. A real config is
#: a few hundred kilobytes at most; past these it is a mistake or an attack: a YAML alias bomb
#: (each alias is walked again by every pass, so nine levels of nine aliases are 387 million
#: nodes), or nesting deep enough to overflow the parser's recursion.
MAX_CONFIG_BYTES = 8 * 1024 * 1024
MAX_CONFIG_NODES = 200_000
MAX_CONFIG_DEPTH = 64

BUILTIN_PROFILES = Path(str(resources.files("drivers") / "profiles"))

_profile_adapter: TypeAdapter[Any] = TypeAdapter(ProfileConfig)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with its profiles resolved. Everything the runtime needs."""

    config: GatewayConfig
    profiles: dict[str, Any]
    base_dir: Path
    source: Path | None = None
    #: Values read from secret references: the log filter masks them wherever they appear.
    secret_values: tuple[str, ...] = field(default=(), repr=False)

    def profile_for(self, device: DeviceConfig) -> Any:
        return self.profiles[device.profile]

    def store_path(self) -> Path:
        path = Path(self.config.store.path)
        return path if path.is_absolute() else self.base_dir / path


def load_config(path: str | Path) -> LoadedConfig:
    """Read and check the YAML file at `path`; raise `ConfigError` listing every problem."""
    src = Path(path)
    try:
        size = src.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([f"{src}: {size} bytes, more than {MAX_CONFIG_BYTES} (not a config)"])
        text = src.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{src}: cannot read ({exc.strerror})"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{src}: not UTF-8 text (byte {exc.start})"]) from None
    return load_config_text(text, base_dir=src.resolve().parent, source=src)


def load_config_text(text: str, *, base_dir: Path, source: Path | None = None) -> LoadedConfig:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([f"(file): {len(text)} characters, more than {MAX_CONFIG_BYTES}"])
    try:
        data = _safe_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "unknown place"
        raise ConfigError([f"(file): not valid YAML at {where}: {exc}"]) from exc
    except ValueError as exc:
        raise ConfigError([f"(file): {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"(file): the top level must be a mapping (got {_show(data)})"])
    return load_config_data(data, base_dir=base_dir, source=source)


def load_config_data(
    data: dict[str, Any], *, base_dir: Path, source: Path | None = None
) -> LoadedConfig:
    problems: list[str] = []
    secret_paths: set[str] = set()
    secret_values: list[str] = []
    data = _resolve_secrets(data, (), base_dir, problems, secret_paths, secret_values)

    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_format_errors(exc, (), secret_paths))

    profiles, broken = _load_profiles(data, base_dir, problems)
    problems.extend(_cross_check(data, profiles, broken))
    if config is not None:
        problems.extend(_status_rules(config, profiles))
        if config.pool is not None:
            problems += [
                f"uplinks.{i}.name: `pool` is the pool sync's own outbox consumer (got pool)"
                for i, u in enumerate(config.uplinks)
                if u.name == "pool"
            ]

    if problems or config is None:
        raise ConfigError(_dedupe(problems) or ["(file): invalid configuration"])
    return LoadedConfig(
        config=config,
        profiles=profiles,
        base_dir=base_dir,
        source=source,
        secret_values=tuple(
            dict.fromkeys(v for v in (*secret_values, *config_secret_values(config)) if v)
        ),
    )


# -- pass 1: secrets ---------------------------------------------------------------------


def _resolve_secrets(
    node: Any,
    path: tuple[Any, ...],
    base_dir: Path,
    problems: list[str],
    secret_paths: set[str],
    secret_values: list[str],
) -> Any:
    if isinstance(node, dict):
        return {
            k: _resolve_secrets(v, (*path, k), base_dir, problems, secret_paths, secret_values)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [
            _resolve_secrets(v, (*path, i), base_dir, problems, secret_paths, secret_values)
            for i, v in enumerate(node)
        ]
    if not isinstance(node, str) or "${" not in node:
        return node

    dotted = _dotted(path)

    def replace(match: re.Match[str]) -> str:
        kind, ref = match.group(1), match.group(2).strip()
        secret_paths.add(dotted)
        if kind == "env":
            if ref not in os.environ:
                problems.append(f"{dotted}: environment variable {ref} is not set (got {node})")
                return ""
            value = os.environ[ref]
        else:
            file = Path(ref) if Path(ref).is_absolute() else base_dir / ref
            try:
                value = file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                problems.append(f"{dotted}: cannot read secret file {file} ({exc.strerror})")
                return ""
        secret_values.append(value)
        return value

    return _SECRET_RE.sub(replace, node)


# -- pass 2: structure -------------------------------------------------------------------


def _format_errors(
    exc: ValidationError, prefix: tuple[Any, ...], secret_paths: set[str]
) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = (*prefix, *_strip_tags(tuple(err["loc"])))
        message = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        value = err.get("input")
        if err["type"] == "union_tag_invalid":
            field = str(err["ctx"]["discriminator"]).strip("'")
            loc = (*loc, field)
            value = err["ctx"]["tag"]
            message = f"unknown {field}; expected one of {err['ctx']['expected_tags']}"
        dotted = _dotted(loc)
        own = _OWN_GOT.match(message)
        if err["type"] == "missing":
            got = "nothing"
        elif dotted in secret_paths:
            got = "***"
        elif own:  # the validator named the offending value itself
            message, got = own.group(1), own.group(2)
        elif isinstance(value, dict):  # a whole-object check: name the object, not its dump
            got = _show(value.get("name", value.get("id", value)))
        else:
            got = _show(value)
        lines.append(f"{dotted}: {message} (got {got})")
    return lines


_OWN_GOT = re.compile(r"^(.*) \(got (.*)\)$", re.S)


def _strip_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the union tag pydantic inserts at the root or after a list index
    (`devices.0.modbus-tcp.port` -> `devices.0.port`)."""
    out: list[Any] = []
    for i, seg in enumerate(loc):
        if seg in _TAG_SEGMENTS and (i == 0 or isinstance(loc[i - 1], int)):
            continue
        out.append(seg)
    return tuple(out)


def _safe_yaml(text: str) -> Any:
    """`yaml.safe_load` that refuses documents nested deeper than MAX_CONFIG_DEPTH or with
    more than MAX_CONFIG_NODES nodes once aliases are expanded (ValueError saying which)."""
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_CONFIG_DEPTH} levels") from None
    nodes = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:  # iterative: the walk must not be what overflows
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_CONFIG_NODES:
            raise ValueError(
                f"more than {MAX_CONFIG_NODES} values once aliases are expanded (a YAML bomb?)"
            )
        if depth > MAX_CONFIG_DEPTH:
            raise ValueError(f"nested deeper than {MAX_CONFIG_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            nodes += len(node)  # the keys
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return data


def _load_profiles(
    data: dict[str, Any], base_dir: Path, problems: list[str]
) -> tuple[dict[str, Any], set[str]]:
    """Find and validate every profile a device names.

    Returns the valid profiles and the names whose file exists but is broken (already
    reported here); names with no file at all are pass 3's to report.
    """
    paths = data.get("profile_paths", ["profiles"])
    search = [base_dir / p for p in paths if isinstance(p, str)] + [BUILTIN_PROFILES]
    profiles: dict[str, Any] = {}
    broken: set[str] = set()
    for _, device in _items(data.get("devices")):
        name = device.get("profile")
        if not isinstance(name, str) or name in profiles or name in broken or not _is_name(name):
            continue
        file = next((d / f"{name}.yaml" for d in search if (d / f"{name}.yaml").is_file()), None)
        if file is None:
            continue
        where = ("profiles", name)
        try:
            raw = _safe_yaml(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            problems.append(f"{_dotted(where)}: cannot load {file}: {exc}")
            broken.add(name)
            continue
        if isinstance(raw, dict):
            raw.setdefault("protocol", "modbus")  # the first protocol; older files omit it
        try:
            profile = _profile_adapter.validate_python(raw)
        except ValidationError as exc:
            problems.extend(_format_errors(exc, where, set()))
            broken.add(name)
            continue
        if profile.name != name:
            problems.append(
                f"{_dotted((*where, 'name'))}: must match the file name {file.name} "
                f"(got {profile.name})"
            )
            broken.add(name)
            continue
        profiles[name] = profile
    return profiles, broken


# -- pass 3: cross-references ------------------------------------------------------------


def _cross_check(data: dict[str, Any], profiles: dict[str, Any], broken: set[str]) -> list[str]:
    problems: list[str] = []
    devices = list(_items(data.get("devices")))
    equipment = list(_items(data.get("equipment")))
    problems += _duplicates("devices", devices)
    problems += _duplicates("equipment", equipment)
    models = list(_items(data.get("models")))
    problems += _duplicates("models", models)
    uplinks = [(i, {**u, "id": u.get("name")}) for i, u in _items(data.get("uplinks"))]
    problems += [p.replace(".id:", ".name:") for p in _duplicates("uplinks", uplinks)]
    # Any field may hold any YAML value here (pass 2 reports wrong types); only strings and
    # numbers are looked up, so a list where an id belongs cannot crash the checks.
    taken = {d["id"] for _, d in [*devices, *equipment] if isinstance(d.get("id"), str)}
    for i, mb in models:
        if isinstance(mb.get("id"), str) and mb["id"] in taken:
            problems.append(
                f"models.{i}.id: a model's results are points <id>.<output>; this id is "
                f"already a device or equipment id (got {mb['id']})"
            )

    by_id: dict[str, dict[str, Any]] = {}
    units: dict[tuple[str, Any], int] = {}
    lines: dict[str, tuple[Any, int]] = {}
    for i, dev in devices:
        if isinstance(dev.get("id"), str):
            by_id.setdefault(dev["id"], dev)
        name = dev.get("profile")
        proto = dev.get("protocol") if isinstance(dev.get("protocol"), str) else None
        if isinstance(name, str) and _is_name(name):
            profile = profiles.get(name)
            if profile is None and name not in broken:
                problems.append(
                    f"devices.{i}.profile: no profile file {name}.yaml in "
                    f"{', '.join(map(str, data.get('profile_paths', ['profiles'])))} "
                    f"or the built-in profiles (got {name})"
                )
            elif profile is not None and PROFILE_PROTOCOL.get(proto) == "modbus":
                problems += _modbus_limits(i, dev, profile)
            elif profile is not None and proto == "mqtt" and profile.protocol == "mqtt":
                problems += _mqtt_pairing(i, dev, profile)
            if profile is not None and PROFILE_PROTOCOL.get(proto) not in (
                None,
                profile.protocol,
            ):
                problems.append(
                    f"devices.{i}.profile: a {proto} device needs a "
                    f"{PROFILE_PROTOCOL[proto]} profile, {name} is {profile.protocol} "
                    f"(got {name})"
                )
        key = _connection_key(dev)
        if key is not None and dev.get("enabled", True) is not False:
            unit_id = dev.get("unit_id", 1)
            unit = (key, unit_id if isinstance(unit_id, int | str) else repr(unit_id))
            if unit in units:
                problems.append(
                    f"devices.{i}.unit_id: unit {unit[1]} on {key} is already used by "
                    f"devices.{units[unit]} (got {unit[1]})"
                )
            else:
                units[unit] = i
        if proto == "modbus-rtu" and isinstance(dev.get("port"), str):
            settings = tuple(
                dev.get(k, d)
                for k, d in (("baudrate", 9600), ("parity", "N"), ("stopbits", 1), ("bytesize", 8))
            )
            first = lines.setdefault(dev["port"], (settings, i))
            if first[0] != settings:
                problems.append(
                    f"devices.{i}.baudrate: units on {dev['port']} must share line settings "
                    f"with devices.{first[1]} {first[0]} (got {settings})"
                )

    for i, eq in equipment:
        dev_id = eq.get("device")
        if not isinstance(dev_id, str):
            continue
        dev = by_id.get(dev_id)
        if dev is None:
            problems.append(f"equipment.{i}.device: no device with this id (got {dev_id})")
            continue
        name = dev.get("profile")
        profile = profiles.get(name) if isinstance(name, str) else None
        if profile is None:
            continue
        known = {p.name for p in profile.points}
        for j, point in enumerate(eq.get("points") or []):
            if isinstance(point, str) and point not in known:
                problems.append(
                    f"equipment.{i}.points.{j}: profile {profile.name} of device {dev_id} "
                    f"has no such point (got {point})"
                )
    return problems


def _status_rules(config: GatewayConfig, profiles: dict[str, Any]) -> list[str]:
    """A machine's status rules may only read points its device's profile has: a typo would
    otherwise leave the machine `idle` for ever."""
    from gateway.equipment.errors import InvalidMachine
    from gateway.equipment.status import compile_status_rules

    devices = {d.id: d for d in config.devices}
    problems: list[str] = []
    for i, eq in enumerate(config.equipment):
        dev = devices.get(eq.device)
        profile = profiles.get(getattr(dev, "profile", "")) if dev is not None else None
        names = [p.name for p in profile.points] if profile is not None else None
        try:
            compile_status_rules(eq, names)
        except InvalidMachine as exc:
            problems += [f"equipment.{i}.{line}" for line in exc.problems]
    return problems


def _modbus_limits(i: int, dev: dict[str, Any], profile: Any) -> list[str]:
    """A point wider than one request allows could never be read: say so before any I/O."""
    limit = dev.get("max_registers_per_read", 125)
    if not isinstance(limit, int) or profile.protocol != "modbus":
        return []
    return [
        f"devices.{i}.max_registers_per_read: point {p.name} of profile {profile.name} "
        f"needs {p.width} registers in one read (got {limit})"
        for p in profile.points
        if not p.table.is_bits and p.width > limit
    ]


def _mqtt_pairing(i: int, dev: dict[str, Any], profile: Any) -> list[str]:
    """Checks that need the MQTT device and its profile together (topic placeholders the
    profile's format needs, for instance)."""
    from drivers.mqtt.config import MqttDevice, check_profile

    try:
        device = MqttDevice.model_validate(dev)
    except ValidationError:
        return []  # already reported by pass 2
    return [
        f"devices.{i}.{line.split(': ', 1)[0]}: {line.split(': ', 1)[-1]} (got {profile.name})"
        for line in check_profile(device, profile)
    ]


def _connection_key(dev: dict[str, Any]) -> str | None:
    """Computed from the raw dict on purpose (the models' `connection_key` needs a device
    that validates): a unit-id clash is still reported when the same device has another,
    unrelated error."""
    proto = dev.get("protocol")
    if proto == "modbus-tcp" and isinstance(dev.get("host"), str):
        return f"tcp://{dev['host']}:{dev.get('port', 502)}"
    if proto == "modbus-rtu" and isinstance(dev.get("port"), str):
        return f"rtu://{dev['port']}"
    return None


def _duplicates(section: str, items: list[tuple[int, dict[str, Any]]]) -> list[str]:
    first: dict[str, int] = {}
    problems = []
    for i, item in items:
        ident = item.get("id")
        if not isinstance(ident, str):
            continue
        if ident in first:
            problems.append(
                f"{section}.{i}.id: duplicate id, already used by {section}.{first[ident]} "
                f"(got {ident})"
            )
        else:
            first[ident] = i
    return problems


# -- helpers -----------------------------------------------------------------------------


def _items(section: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    if isinstance(section, list):
        for i, item in enumerate(section):
            if isinstance(item, dict):
                yield i, item


def _is_name(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}", value) is not None


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path) or "(file)"


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    if isinstance(value, str) and value == "":
        text = "''"
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _dedupe(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))
