"""Manifest checks and the pure input helpers of the inference engine."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from gateway.errors import ModelError
from gateway.inference.features import (
    InputError,
    RowState,
    WindowBuffer,
    decode_image,
    encode,
    record_row,
)
from gateway.inference.manifest import load_manifest, verify_file
from gateway.readings import Quality

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["pdm-rul", "pdm-failure", "grading-tabular", "grading-vision"]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_manifest_loads_and_its_files_match(name: str) -> None:
    lm = load_manifest(REPO / "models" / name)
    assert lm.m.name == name and lm.stamp == f"{name}@{lm.m.version}"
    for key, spec in lm.m.files.items():
        verify_file(lm.path(key), spec)
    assert lm.result_points, "a model publishes at least one point"
    assert lm.m.fallback_rules, "every shipped model says what runs when it cannot"


def _broken(tmp_path: Path, edit: Any, name: str = "pdm-failure") -> Path:
    dst = tmp_path / name
    shutil.copytree(REPO / "models" / name, dst)
    doc = yaml.safe_load((dst / "manifest.yaml").read_text())
    edit(doc)
    (dst / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


def _set(path: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("fallback_rules.0.when", "torque > "), "fallback_rules.0.when: not an expression"),
        (_set("fallback_rules.0.when", "humidity > 3"), "unknown name 'humidity'"),
        (_set("fallback_rules.1.name", "hdf"), "'hdf' is used twice"),
        (_set("thresholds.0.output", "nope"), "thresholds.0.output: no output 'nope'"),
        (_set("thresholds.1.label", "XYZ"), "'XYZ' is not a label of mode_probs"),
        (_set("run.on", "item"), "a points model runs on readings or change"),
        (_set("run.points", ["torque", "humidity"]), "run.points: not features: humidity"),
        (_set("inputs.0.shape", ["N", 5]), "last axis 5 but 6 features listed"),
        (_set("latency_budget_ms", 0), "latency_budget_ms"),
        (_set("health.pool_available_if", "risk < 0.5"), "health.pool_available_if: unknown name"),
        (_set("files.model.sha256", "xyz"), "files.model.sha256"),
        (_set("version", ""), "version"),
    ],
)
def test_a_broken_manifest_names_what_is_wrong(tmp_path: Path, edit: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_manifest(_broken(tmp_path, edit))


def test_window_manifest_must_match_its_shape(tmp_path: Path) -> None:
    folder = _broken(tmp_path, _set("inputs.0.window.length", 20), "pdm-rul")
    with pytest.raises(ModelError, match=r"a window input is \[N, 20, features\]"):
        load_manifest(folder)


def test_unreadable_manifests_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        load_manifest(tmp_path / "missing")
    (tmp_path / "manifest.yaml").write_text("name: [unclosed")
    with pytest.raises(ModelError, match="not valid YAML"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.yaml").write_text("- a list")
    with pytest.raises(ModelError, match="a manifest is a mapping"):
        load_manifest(tmp_path)


def test_a_changed_model_file_fails_its_checksum(tmp_path: Path) -> None:
    lm = load_manifest(REPO / "models" / "grading-tabular")
    copy = tmp_path / "model.onnx"
    copy.write_bytes(lm.path().read_bytes() + b"\0")
    with pytest.raises(ModelError, match="does not match the manifest"):
        verify_file(copy, lm.file())


# -- features --------------------------------------------------------------------------------


def test_encode_takes_numbers_and_mapped_categories_only() -> None:
    assert encode(3, None) == 3.0 and encode(True, None) == 1.0 and encode(" 2.5", None) == 2.5
    assert encode(float("nan"), None) is None and encode("x", None) is None
    assert encode(None, None) is None
    mapping = {"L": 0.0, "M": 1.0, "H": 2.0}
    assert encode("M", mapping) == 1.0 and encode(" H ", mapping) == 2.0
    assert encode("X", mapping) is None and encode(1, mapping) is None


def test_row_state_is_complete_only_with_every_feature_good() -> None:
    row = RowState(["a", "b"])
    row.set(0, 1.0, Quality.GOOD, 10.0)
    assert not row.complete() and row.missing() == ["b"] and not row.all_fresh()
    row.set(1, 2.0, Quality.UNCERTAIN, 11.0)
    assert row.complete() and row.all_fresh()
    assert row.take().tolist() == [1.0, 2.0] and not row.all_fresh()
    row.set(1, 5.0, Quality.BAD, 12.0)
    assert not row.complete() and row.missing() == ["b"]


def test_window_buffer_keeps_the_last_rows_oldest_first_across_the_wrap() -> None:
    w = WindowBuffer(3, 2)
    for i in range(2):
        w.append(np.array([i, i * 10], dtype=np.float32))
    assert not w.full() and w.rows().tolist() == [[0, 0], [1, 10]]
    for i in range(2, 7):
        w.append(np.array([i, i * 10], dtype=np.float32))
    assert w.full() and w.window().shape == (1, 3, 2)
    assert w.rows()[:, 0].tolist() == [4, 5, 6]
    w.clear()
    assert w.count == 0 and w.rows().shape == (0, 2)


def _record_spec() -> Any:
    return load_manifest(REPO / "models" / "grading-tabular").m.input


def test_record_row_reads_fields_by_name_and_refuses_hostile_payloads() -> None:
    spec = _record_spec()
    fields = [f.field for f in spec.features]
    good = "{" + ",".join(f'"{f}": {i}' for i, f in enumerate(fields)) + ', "extra": "x"}'
    assert record_row(good.encode(), spec).tolist() == list(range(7))
    cases = {
        b"\xff\xfe": "not UTF-8",
        b"[" * 40 + b"]" * 40: "nested deeper",
        b'{"size": NaN}': "not JSON",
        b"[1, 2]": "a JSON object is expected",
        b'{"size": 1}': "missing or unusable fields: weight",
        ('{"size": "big"' + "".join(f', "{f}": 1' for f in fields[1:]) + "}").encode(): "size",
    }
    for payload, message in cases.items():
        with pytest.raises(InputError, match=message):
            record_row(payload, spec)


def _png(w: int, h: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), 128).save(buf, "PNG")
    return buf.getvalue()


def test_decode_image_gives_the_training_layout_and_refuses_non_images() -> None:
    spec = load_manifest(REPO / "models" / "grading-vision").m.input
    x = decode_image(_png(256, 200, "L"), spec)  # greyscale, not square: converted, resized
    assert x.shape == (3, 96, 96) and x.dtype == np.float32
    assert abs(float(x.mean()) - 128 / 255) < 1e-3
    with pytest.raises(InputError, match="not an image"):
        decode_image(b"GIF89a-but-not-really", spec)
    with pytest.raises(InputError, match="not an image"):
        decode_image(b"", spec)
    big = _png(8000, 6000, "1")  # 48 Mpx of one bit: a small file, a huge decode
    with pytest.raises(InputError, match="more than"):
        decode_image(big, spec)


def test_models_bench_reports_bare_engine_and_overhead_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from gateway.cli import main

    assert main(["models", "bench", "--model", "pdm-failure", "--calls", "100", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (r,) = report["results"]
    assert r["model"] == "pdm-failure" and r["file"] == "model" and r["budget_ms"] == 1.0
    for key in ("bare_1t", "engine_1t"):
        assert 0 < r[key]["p50_ms"] <= r[key]["p99_ms"] and r[key]["calls"] == 100
    assert r["engine_overhead_ms"] == pytest.approx(
        r["engine_1t"]["p50_ms"] - r["bare_1t"]["p50_ms"], abs=1e-3
    )
    assert set(r["rows_per_s_by_batch"]) == {"1", "8", "32"}
    assert report["machine"]["logical_cpus"] >= 1 and report["problems"] == []
