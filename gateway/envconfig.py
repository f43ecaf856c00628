"""`MILLRACE_*` environment variables as config overrides (balena device and fleet variables).

On a balena fleet the same image runs on every box; what differs per box (its id, its site,
where the store lives) is set as fleet variables (all boxes) and device variables (one box,
winning over the fleet's), which balena hands to the container as environment variables. A
plain `docker run -e` or a systemd `Environment=` works the same way.

`env_overrides` is the pure mapping from variables to a nested override dict; `merge` lays it
over the YAML's data *before* validation, so a bad value is reported like a bad YAML value
(`api.port: Input should be ... (got 70000)`) and an explicit variable always wins over the
file. Only the variables listed in `VARIABLES` are read: secrets stay `${env:NAME}`
references in the YAML, so they never appear in an override or a log line.

The whole config can also come from a variable (`MILLRACE_CONFIG_YAML`), for fleets that keep
no file on the box: `load_deployed` uses it when the config file does not exist.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.configload import LoadedConfig, load_config, load_config_data, load_config_text
from gateway.errors import ConfigError

CONFIG_YAML_ENV = "MILLRACE_CONFIG_YAML"


def _text(v: str) -> str:
    return v


def _csv(v: str) -> list[str]:
    return [p.strip() for p in v.split(",") if p.strip()]


@dataclass(frozen=True)
class Variable:
    name: str
    path: tuple[str, ...]
    convert: Callable[[str], Any]
    doc: str


#: Every variable read, the config field it sets and what it is for. Values are strings;
#: pydantic converts "8080" to 8080, "true" to True, "4GiB" to bytes, as for YAML scalars.
VARIABLES: tuple[Variable, ...] = (
    Variable("MILLRACE_GATEWAY_ID", ("gateway", "id"), _text, "this box's id (e.g. gw-07)"),
    Variable("MILLRACE_SITE", ("gateway", "site"), _text, "site name (e.g. cane-mill)"),
    Variable("MILLRACE_GATEWAY_NAME", ("gateway", "name"), _text, "a human name for the box"),
    Variable("MILLRACE_API_HOST", ("api", "host"), _text, "0.0.0.0 to serve beyond loopback"),
    Variable("MILLRACE_API_PORT", ("api", "port"), _text, "local API port"),
    Variable("MILLRACE_API_ENABLED", ("api", "enabled"), _text, "false turns the API off"),
    Variable(
        "MILLRACE_STORE_PATH", ("store", "path"), _text, "SQLite file (/data/... in the image)"
    ),
    Variable("MILLRACE_STORE_MAX_BYTES", ("store", "max_bytes"), _text, "store cap (e.g. 4GiB)"),
    Variable("MILLRACE_STORE_SYNCHRONOUS", ("store", "synchronous"), _text, "full or normal"),
    Variable("MILLRACE_LOG_LEVEL", ("logging", "level"), _text, "debug, info, warning, error"),
    Variable("MILLRACE_LOG_FORMAT", ("logging", "format"), _text, "json or text"),
    Variable(
        "MILLRACE_INFERENCE_THREADS", ("inference", "threads"), _text, "threads per model call"
    ),
    Variable(
        "MILLRACE_INFERENCE_PROVIDERS",
        ("inference", "providers"),
        _csv,
        "comma-separated ONNX execution providers, preferred first",
    ),
)


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """The nested override dict for the `MILLRACE_*` variables present (and not empty).

    Pure. An empty value counts as unset: balena shows a variable cleared in the dashboard
    as an empty string, and that should fall back to the file, not set an empty id.
    """
    out: dict[str, Any] = {}
    for var in VARIABLES:
        raw = env.get(var.name)
        if raw is None or raw.strip() == "":
            continue
        node = out
        for key in var.path[:-1]:
            node = node.setdefault(key, {})
        node[var.path[-1]] = var.convert(raw.strip())
    return out


def merge(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with `overrides` laid over it, mappings merged key by key. Pure (deep copy)."""
    out = copy.deepcopy(dict(data))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_deployed(path: str | Path, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load the config for a box: the file at `path` (or `MILLRACE_CONFIG_YAML` when there is
    no such file), then the `MILLRACE_*` overrides. Without overrides this is `load_config`."""
    env = os.environ if env is None else env
    src = Path(path)
    overrides = env_overrides(env)
    inline = env.get(CONFIG_YAML_ENV, "")
    if not src.exists() and inline.strip():
        # Relative paths in an inline config (profiles/, models/) resolve from the cwd.
        text, base_dir, source = inline, Path.cwd(), None
    elif not src.exists():
        raise ConfigError(
            [f"{src}: cannot read (no such file; mount one there or set {CONFIG_YAML_ENV})"]
        )
    elif not overrides:
        return load_config(src)
    else:
        try:
            text = src.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{src}: cannot read ({exc.strerror})"]) from exc
        base_dir, source = src.resolve().parent, src
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict):
        # Let the loader word the YAML problem exactly as it does for a file.
        return load_config_text(text, base_dir=base_dir, source=source)
    return load_config_data(merge(data, overrides), base_dir=base_dir, source=source)


def variables_table() -> str:
    """The variables as a Markdown table (the balena README is checked against it)."""
    rows = ["| variable | config field | what |", "| --- | --- | --- |"]
    rows += [f"| `{v.name}` | `{'.'.join(v.path)}` | {v.doc} |" for v in VARIABLES]
    return "\n".join(rows)
