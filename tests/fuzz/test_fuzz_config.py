"""Configuration and equipment documents against hostile input: wrong types, duplicates, path
tricks, YAML bombs and deep nesting, huge files. Each is refused with the one documented
error, every problem line names the field it is about, nothing outside the profile folders
is read, and refusing never takes long."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway.configload import MAX_CONFIG_BYTES, load_config, load_config_data, load_config_text
from gateway.equipment.errors import InvalidMachine
from gateway.equipment.model import Machine, parse_machine
from gateway.errors import ConfigError
from tests.fuzz._fuzz import fuzz, tried

BASE: dict[str, Any] = {
    "gateway": {"id": "gw-1", "site": "site-1"},
    "devices": [
        {
            "id": "pump-1",
            "protocol": "modbus-tcp",
            "host": "127.0.0.1",
            "port": 5020,
            "unit_id": 1,
            "profile": "pump-station",
        }
    ],
    "store": {"path": "gw.db"},
}
MACHINE: dict[str, Any] = {
    "id": "tractor-01",
    "type": "tractor",
    "name": "Blue tractor",
    "owner": {"org": "Coop", "contact_name": "A", "phone": "+84 912 345 678"},
    "location": {"lat": 22.8, "lon": 108.3, "timezone": "Asia/Ho_Chi_Minh"},
    "sharing": {
        "shared": True,
        "weekly": [{"days": ["mon"], "start": "07:00", "end": "17:00"}],
        "rate": {"amount": 45, "currency": "VND", "per": "hour"},
    },
}
junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["../../etc/passwd", "/etc/passwd", "${env:NOPE}", "${file:../../x}", ""]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def mutate(data: Any, draw: st.DrawFn, depth: int = 0) -> Any:
    """Replace, drop or duplicate a few fields anywhere in a valid document."""
    if isinstance(data, dict) and data:
        key = draw(st.sampled_from(sorted(data)))
        action = draw(st.sampled_from(["replace", "drop", "recurse", "recurse", "extra"]))
        if action == "replace":
            data[key] = draw(junk)
        elif action == "drop":
            del data[key]
        elif action == "extra":
            data[draw(st.text(min_size=1, max_size=8))] = draw(junk)
        else:
            data[key] = mutate(data[key], draw, depth + 1)
    elif isinstance(data, list) and data:
        i = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data.append(copy.deepcopy(data[i]))  # a duplicate entry
        else:
            data[i] = mutate(data[i], draw, depth + 1)
    elif depth > 0:
        return draw(junk)
    return data


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        data = mutate(data, draw)
    return data


def assert_named(problems: list[str]) -> None:
    """Every problem line is `path: reason`, the path naming a field (or the file)."""
    assert problems
    for line in problems:
        where, sep, reason = line.partition(": ")
        assert sep and where and reason, line


@fuzz(120)
@given(data=mutated(BASE))
def test_mutated_configs_load_or_name_every_problem(
    data: dict[str, Any], tmp_path_factory: Any
) -> None:
    tried("config.load (mutated documents)")
    base = tmp_path_factory.mktemp("cfg")
    try:
        load_config_data(data, base_dir=base)
    except ConfigError as exc:
        assert_named(exc.problems)


@fuzz(120)
@given(text=st.text(max_size=300))
def test_any_text_as_a_config(text: str, tmp_path_factory: Any) -> None:
    tried("config.load (any text)")
    try:
        load_config_text(text, base_dir=tmp_path_factory.mktemp("cfg"))
    except ConfigError as exc:
        assert_named(exc.problems)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "a/../../b", "x\x00y"])
def test_profile_path_tricks_are_refused_before_any_file_is_read(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tried("config.load (path tricks)")
    opened: list[str] = []
    real = Path.read_text

    def spy(self: Path, *a: Any, **kw: Any) -> str:
        opened.append(str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", spy)
    data = copy.deepcopy(BASE)
    data["devices"][0]["profile"] = name
    data["profile_paths"] = ["../../../etc", "/etc"]
    with pytest.raises(ConfigError) as err:
        load_config_data(data, base_dir=tmp_path)
    assert any(p.startswith("devices.0.profile:") for p in err.value.problems), err.value.problems
    assert not [p for p in opened if "passwd" in p or p.startswith("/etc")], opened


def test_duplicate_ids_name_both_entries(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    data["devices"].append(copy.deepcopy(data["devices"][0]) | {"unit_id": 2})
    with pytest.raises(ConfigError) as err:
        load_config_data(data, base_dir=tmp_path)
    text = "\n".join(err.value.problems)
    assert "devices.1.id" in text and "pump-1" in text


def bomb(levels: int, width: int = 9) -> str:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join([*lines, "gateway: {id: gw, site: s}", f"devices: *a{levels}"])


@pytest.mark.parametrize(
    "text",
    [
        bomb(9),  # 387 million values once expanded
        bomb(30, 2),
        "gateway: " + "[" * 3_000 + "]" * 3_000,
        "gateway: " + "{a: " * 5_000 + "1" + "}" * 5_000,
        bomb(3, 100),  # wide rather than deep: a million values
    ],
    ids=["billion-laughs", "deep-aliases", "deep-lists", "deep-maps", "wide-aliases"],
)
def test_yaml_bombs_and_deep_nesting_are_refused_quickly(text: str, tmp_path: Path) -> None:
    tried("config.load (YAML bombs)")
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_config_text(text, base_dir=tmp_path)
    assert time.monotonic() - t0 < 10
    assert_named(err.value.problems)
    assert any("nested deeper" in p or "aliases" in p or "devices" in p for p in err.value.problems)


def test_a_huge_file_is_refused_without_parsing(tmp_path: Path) -> None:
    tried("config.load (huge file)")
    path = tmp_path / "huge.yaml"
    with path.open("w") as f:
        f.write("gateway: {id: gw, site: s}\n# " + "x" * (MAX_CONFIG_BYTES + 10) + "\n")
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert time.monotonic() - t0 < 2
    assert "more than" in str(err.value)
    path.write_bytes(b"gateway: {id: \xff\xfe}\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


@fuzz(150)
@given(data=st.one_of(mutated(MACHINE), st.dictionaries(st.text(max_size=10), junk, max_size=6)))
def test_machines_parse_or_name_every_problem(data: dict[str, Any]) -> None:
    tried("equipment.parse_machine")
    try:
        machine = parse_machine(data)
    except InvalidMachine as exc:
        assert_named(exc.problems)
        return
    assert isinstance(machine, Machine) and machine.id
    # A machine that parsed survives its own round trip.
    again = parse_machine(yaml.safe_load(yaml.safe_dump(machine.model_dump(mode="json"))))
    assert again == machine
