"""`millrace equipment`: the registry commands against a real SQLite file beside the store."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.demo import sample_text

TRACTOR = """
id: tractor-07
type: tractor
make: Kubota
model: M7060
owner: {org: Demo Cane Cooperative, contact_name: Nguyen Van A, phone: "+84 912 345 678"}
capabilities:
  - {name: ploughing, capacity: 6, unit: ha/day}
location: {lat: 22.81734, lon: 108.36652, timezone: Asia/Ho_Chi_Minh}
sharing:
  shared: true
  weekly:
    - {days: [mon, tue, wed, thu, fri], start: "07:00", end: "17:00"}
  min_booking_hours: 2
device: coop-broker
"""


def _config(tmp_path: Path) -> Path:
    text = sample_text().replace("path: millrace-demo.db", "path: data/gw.db")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(text)
    return cfg


def test_add_list_show_update_retire_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(_config(tmp_path))
    (tmp_path / "t.yaml").write_text(TRACTOR)
    assert main(["equipment", "add", "-c", cfg, str(tmp_path / "t.yaml")]) == 0
    assert "added tractor-07 (version 1)" in capsys.readouterr().out
    assert (tmp_path / "data" / "equipment.db").exists()

    assert main(["equipment", "list", "-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "tractor-07" in out and "shared" in out
    assert "booster-pump-1" in out  # config machines are seeded

    (tmp_path / "p.yaml").write_text("capabilities: [{name: ploughing, capacity: 8, unit: ha/day}]")
    assert main(["equipment", "update", "-c", cfg, "tractor-07", str(tmp_path / "p.yaml"),
                 "--version", "1"]) == 0  # fmt: skip
    assert "version 2" in capsys.readouterr().out
    # a stale version is refused, and nothing changes
    assert main(["equipment", "update", "-c", cfg, "tractor-07", str(tmp_path / "p.yaml"),
                 "--version", "1"]) == 1  # fmt: skip
    assert "version" in capsys.readouterr().err

    assert main(["equipment", "show", "-c", cfg, "tractor-07"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["machine"]["capabilities"][0]["capacity"] == 8
    assert [h["action"] for h in shown["history"]] == ["add", "update"]
    assert all(h["who"].startswith("cli:") for h in shown["history"])

    assert main(["equipment", "retire", "-c", cfg, "tractor-07", "--version", "2"]) == 0
    capsys.readouterr()
    assert main(["equipment", "list", "-c", cfg]) == 0
    assert "tractor-07" not in capsys.readouterr().out
    assert main(["equipment", "list", "-c", cfg, "--all"]) == 0
    assert "RETIRED" in capsys.readouterr().out


def test_an_invalid_machine_lists_every_problem_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(_config(tmp_path))
    bad = yaml.safe_load(TRACTOR)
    bad["sharing"]["weekly"][0]["end"] = "06:00"
    bad["capabilities"][0]["capacity"] = -1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["equipment", "add", "-c", cfg, str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "sharing.weekly.0.end" in err and "capabilities.0.capacity" in err
    assert "+84 912" not in err  # personal data never echoed
    assert main(["equipment", "show", "-c", cfg, "tractor-07"]) == 1
    assert "tractor-07" in capsys.readouterr().err
