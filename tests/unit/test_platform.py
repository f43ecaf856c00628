"""Platform profiles: the shipped YAML, board detection from a fake root, the pure apply step,
and the proof that what is applied reaches the inference engine and onnxruntime."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway import platforms
from gateway.configload import load_config_text
from gateway.deploy import load_box
from gateway.errors import ConfigError

PROFILES = platforms.load_profiles(platforms.CHECKOUT_DIR)


def fake_root(tmp_path: Path, *, model: str | None = None, tegra: bool = False) -> Path:
    if model is not None:
        (tmp_path / "proc" / "device-tree").mkdir(parents=True)
        # The kernel writes the model NUL-terminated.
        (tmp_path / "proc" / "device-tree" / "model").write_bytes(model.encode() + b"\x00")
    if tegra:
        (tmp_path / "etc").mkdir(parents=True, exist_ok=True)
        (tmp_path / "etc" / "nv_tegra_release").write_text(
            "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n"
        )
    return tmp_path


def test_the_five_shipped_profiles_load_and_say_what_the_issue_asks() -> None:
    assert set(PROFILES) == {"pi4", "pi5", "jetson-orin-nano", "generic-x86_64", "generic-arm64"}
    jetson = PROFILES["jetson-orin-nano"].inference.providers
    assert jetson == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    for p in PROFILES.values():
        assert p.inference.providers[-1] == "CPUExecutionProvider", p.name
        assert p.serial_ports, p.name
        assert p.watchdog.systemd_sec >= 5
    assert "/dev/ttySC0" in {s.path for s in PROFILES["pi4"].serial_ports}  # RS-485 HAT


@pytest.mark.parametrize(
    ("model", "tegra", "machine", "expected", "why"),
    [
        ("Raspberry Pi 4 Model B Rev 1.4", False, "aarch64", "pi4", "device-tree"),
        ("Raspberry Pi Compute Module 4 Rev 1.0", False, "aarch64", "pi4", "device-tree"),
        ("Raspberry Pi 5 Model B Rev 1.0", False, "aarch64", "pi5", "device-tree"),
        (
            "NVIDIA Jetson Orin Nano Developer Kit",
            True,
            "aarch64",
            "jetson-orin-nano",
            "device-tree",
        ),
        (None, True, "aarch64", "jetson-orin-nano", "nv_tegra_release"),
        ("Radxa ROCK 5B", False, "aarch64", "generic-arm64", "architecture"),
        (None, False, "x86_64", "generic-x86_64", "architecture"),
    ],
)
def test_detects_the_board_from_a_fake_root(
    tmp_path: Path, model: str | None, tegra: bool, machine: str, expected: str, why: str
) -> None:
    root = fake_root(tmp_path, model=model, tegra=tegra)
    det = platforms.detect(PROFILES, env={}, root=root, machine=machine)
    assert det.profile.name == expected
    assert why in det.reason


def test_explicit_name_then_env_then_balena_device_type_win_over_the_hardware(
    tmp_path: Path,
) -> None:
    root = fake_root(tmp_path, model="Raspberry Pi 4 Model B Rev 1.4")
    env = {"MILLRACE_PLATFORM": "pi5", "BALENA_DEVICE_TYPE": "jetson-orin-nano-devkit-nvme"}
    assert platforms.detect(PROFILES, explicit="generic-arm64", env=env, root=root).reason == (
        "from --platform"
    )
    assert platforms.detect(PROFILES, env=env, root=root).profile.name == "pi5"
    del env["MILLRACE_PLATFORM"]
    assert platforms.detect(PROFILES, env=env, root=root).profile.name == "jetson-orin-nano"


def test_an_unknown_platform_name_is_a_config_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        platforms.detect(PROFILES, explicit="pi3", env={})
    assert "no profile 'pi3'" in err.value.problems[0]
    assert "jetson-orin-nano" in err.value.problems[0]


def test_no_match_names_the_architecture(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="architecture riscv64"):
        platforms.detect(PROFILES, env={}, root=tmp_path, machine="riscv64")


def test_a_broken_profile_is_reported_with_its_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "pi9.yaml").write_text(
        "name: pi9\ninference: {providers: [], threads: 0}\nstore: {flush_interval: 1s, "
        "queue_max: 5000}\nmemory: {max_mib: 512}\n"
    )
    with pytest.raises(ConfigError) as err:
        platforms.load_profiles(tmp_path)
    text = "\n".join(err.value.problems)
    assert "pi9.yaml: inference.providers" in text
    assert "pi9.yaml: inference.threads" in text


def cfg(extra: str = "") -> object:
    return load_config_text(
        "gateway: {id: gw-1, site: s}\n" + extra, base_dir=Path("."), source=None
    ).config


def test_apply_fills_only_what_the_config_left_unset() -> None:
    base = cfg()
    out = platforms.apply_profile(base, PROFILES["jetson-orin-nano"])  # type: ignore[arg-type]
    assert out.inference.providers == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert out.inference.threads == 2
    # The input is not changed (pure).
    assert base.inference.providers == ["CPUExecutionProvider"]  # type: ignore[attr-defined]

    explicit = cfg("inference: {threads: 1}\nstore: {flush_interval: 5s}\n")
    pi = platforms.apply_profile(explicit, PROFILES["pi4"])  # type: ignore[arg-type]
    assert pi.inference.threads == 1  # written in the YAML: kept
    assert pi.inference.providers == ["CPUExecutionProvider"]
    assert pi.store.flush_interval == 5.0  # kept
    assert pi.store.queue_max == 100_000  # the Pi's smaller queue fills the gap
    assert pi.gateway.id == "gw-1"


def test_port_warnings_name_an_rtu_port_the_board_does_not_have(tmp_path: Path) -> None:
    text = yaml.safe_dump(
        {
            "gateway": {"id": "g", "site": "s"},
            "devices": [
                {
                    "id": "rtu-1",
                    "protocol": "modbus-rtu",
                    "port": "/dev/ttyXYZ9",
                    "unit_id": 1,
                    "profile": "pump-station",
                },
                {
                    "id": "rtu-2",
                    "protocol": "modbus-rtu",
                    "port": "/dev/ttySC0",
                    "unit_id": 2,
                    "profile": "pump-station",
                },
            ],
        }
    )
    config = load_config_text(text, base_dir=tmp_path).config
    warnings = platforms.port_warnings(config, PROFILES["pi4"], root=tmp_path)
    assert len(warnings) == 1
    assert warnings[0].startswith("devices.0.port: /dev/ttyXYZ9 does not exist")


def test_systemd_dropin_carries_the_profile_watchdog_and_memory() -> None:
    text = platforms.systemd_dropin(PROFILES["pi4"])
    assert "[Service]\nWatchdogSec=30\nMemoryMax=768M\n" in text


def test_the_profile_reaches_the_engine_and_onnxruntime_skips_missing_providers(
    tmp_path: Path,
) -> None:
    """The Jetson profile asks TensorRT > CUDA > CPU; on this CPU-only build the session is
    still created (on CPU) with the profile's thread count."""
    from gateway.inference.manifest import load_manifest
    from gateway.inference.session import SessionSettings, load_session
    from gateway.runtime import Gateway

    (tmp_path / "gateway.yaml").write_text(
        yaml.safe_dump(
            {"gateway": {"id": "jet", "site": "s"}, "store": {"path": str(tmp_path / "g.db")}}
        )
    )
    loaded, det = load_box(
        tmp_path / "gateway.yaml", "jetson-orin-nano", env={}, root=fake_root(tmp_path)
    )
    assert det.profile.name == "jetson-orin-nano"
    gw = Gateway(loaded, api=False)
    assert gw.engine.cfg.providers[0] == "TensorrtExecutionProvider"
    assert gw.engine.cfg.threads == 2
    lm = load_manifest(Path(__file__).resolve().parents[2] / "models" / "pdm-failure")
    settings = SessionSettings(
        threads=gw.engine.cfg.threads, providers=tuple(gw.engine.cfg.providers)
    )
    session = load_session(lm, "model", settings)
    assert session.providers == ["CPUExecutionProvider"]
