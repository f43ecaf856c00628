"""The shipped ONNX models (`models/<name>/`) match their manifests.

For each model: the manifest parses and has the keys the inference engine relies on, every
model file matches its sha256, onnxruntime loads it and its inputs/outputs match the
manifest, and on a fixed slice of the training data (read from `../shared/datasets`) the
model still scores what the manifest recorded at training time.

Runtime packages only: numpy, onnxruntime, Pillow, pyyaml. A missing package or a missing
`../shared/datasets` is a failure with a message, never a skip (CI has both).
"""

from __future__ import annotations

import csv
import hashlib
import os
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
DATASETS = Path(os.environ.get("MILLRACE_DATASETS", REPO.parent / "shared" / "datasets"))
SHIPPED = ["pdm-rul", "pdm-failure", "grading-tabular", "grading-vision"]
REQUIRED_KEYS = [
    "name",
    "version",
    "task",
    "description",
    "framework",
    "files",
    "training",
    "inputs",
    "outputs",
    "run",
    "thresholds",
    "fallback_rules",
    "latency_budget_ms",
    "metrics",
    "slice_check",
    "latency",
]
ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        pytest.fail(
            f"{module} is not installed: the model tests need the runtime packages "
            "numpy, onnxruntime, Pillow and pyyaml",
            pytrace=False,
        )


def _dataset(*parts: str) -> Path:
    path = DATASETS.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"dataset file {path} is missing: the shipped-model checks read "
            "../shared/datasets beside the repository (set MILLRACE_DATASETS to "
            "point elsewhere)",
            pytrace=False,
        )
    return path


@cache
def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((MODELS / name / "manifest.yaml").read_text())


@cache
def session(name: str, file_key: str = "model"):
    ort = _need("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    path = MODELS / name / manifest(name)["files"][file_key]["path"]
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", SHIPPED)
def test_manifest_has_required_keys(name: str) -> None:
    m = manifest(name)
    missing = [k for k in REQUIRED_KEYS if k not in m]
    assert not missing, f"{name}: manifest lacks {missing}"
    assert m["name"] == name
    assert m["framework"]["format"] == "onnx" and isinstance(m["framework"]["opset"], int)
    assert m["latency_budget_ms"] > 0
    assert m["run"]["on"] in {"readings", "change", "item", "schedule"}
    for data in m["training"]["data"]:
        assert len(data["sha256"]) == 64
    assert m["training"]["seed"] is not None
    assert (MODELS / name / "train.py").is_file()
    assert (MODELS / name / "MODEL_CARD.md").is_file()
    lat = m["latency"]
    for entry in lat.values() if "p99_ms" not in lat else [lat]:
        assert entry["threads"] == {"intra_op": 1, "inter_op": 1}
        assert entry["p50_ms"] <= entry["p99_ms"]
        assert {"platform", "cpu_model", "date"} <= set(entry["machine"])
    for t in m["thresholds"]:
        assert t["output"] in {o["name"] for o in m["outputs"]}


@pytest.mark.parametrize("name", SHIPPED)
def test_model_files_match_sha256_and_stay_small(name: str) -> None:
    for key, f in manifest(name)["files"].items():
        path = MODELS / name / f["path"]
        assert path.is_file(), f"{name}: {key} file {path} missing"
        assert _sha256(path) == f["sha256"], f"{name}: {path.name} does not match its sha256"
        assert path.stat().st_size < 5 * 2**20, f"{name}: {path.name} is over 5 MiB"


@pytest.mark.parametrize("name", SHIPPED)
def test_session_matches_manifest_io(name: str) -> None:
    m = manifest(name)
    for key in m["files"]:
        sess = session(name, key)
        got_in = {i.name: i for i in sess.get_inputs()}
        assert set(got_in) == {i["name"] for i in m["inputs"]}, f"{name}/{key}: inputs"
        for spec in m["inputs"]:
            node = got_in[spec["name"]]
            assert node.type == ORT_TYPES[spec["dtype"]]
            assert len(node.shape) == len(spec["shape"])
            assert not isinstance(node.shape[0], int), "batch dimension must be dynamic"
            assert list(node.shape[1:]) == spec["shape"][1:]
        got_out = {o.name: o for o in sess.get_outputs()}
        assert set(got_out) == {o["name"] for o in m["outputs"]}, f"{name}/{key}: outputs"
        for spec in m["outputs"]:
            node = got_out[spec["name"]]
            assert node.type == ORT_TYPES[spec["dtype"]]
            assert len(node.shape) == len(spec["shape"])
            assert list(node.shape[1:]) == spec["shape"][1:]
            if "labels" in spec and len(spec["shape"]) == 2:
                assert len(spec["labels"]) == spec["shape"][1]


def test_pdm_rul_slice_rmse() -> None:
    np = _need("numpy")
    m = manifest("pdm-rul")
    data = m["training"]["data"][0]
    path = _dataset(data["file"])
    assert _sha256(path) == data["sha256"]
    raw = np.loadtxt(path)
    window = m["inputs"][0]["window"]["length"]
    cols = [4 + int(f["cmapss_column"][1:]) for f in m["inputs"][0]["features"]]
    cap = m["training"]["rul_cap"]
    xs, ys = [], []
    for unit in m["slice_check"]["units"]:
        rows = raw[raw[:, 0] == unit]
        rul = np.minimum(rows[:, 1].max() - rows[:, 1], cap)
        for end in range(window, len(rows) + 1):
            xs.append(rows[end - window : end, cols])
            ys.append(rul[end - 1])
    x = np.asarray(xs, np.float32)
    assert len(x) == m["slice_check"]["n_windows"]
    pred = session("pdm-rul").run(None, {"window": x})[0][:, 0]
    assert pred.min() >= 0 and pred.max() <= cap
    rmse = float(np.sqrt(np.mean((pred - np.asarray(ys)) ** 2)))
    expected = m["slice_check"]
    assert abs(rmse - expected["rmse"]) <= expected["tolerance"], (rmse, expected["rmse"])


def test_pdm_failure_slice_scores() -> None:
    np = _need("numpy")
    m = manifest("pdm-failure")
    data = m["training"]["data"][0]
    path = _dataset(data["file"])
    assert _sha256(path) == data["sha256"]
    start, stop = m["slice_check"]["rows"]
    features = m["inputs"][0]["features"]
    codes = m["inputs"][0]["encoding"]["type_code"]["map"]
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))[start:stop]
    x = np.array(
        [[codes[r["Type"]]] + [float(r[f["dataset_column"]]) for f in features[1:]] for r in rows],
        np.float32,
    )
    y = np.array([int(r["Machine failure"]) for r in rows])
    risk, modes = session("pdm-failure").run(None, {"x": x})
    assert modes.shape == (len(rows), len(m["outputs"][1]["labels"]))
    yh = risk[:, 0] >= 0.5
    tp = np.sum(yh & (y == 1))
    f1 = 2 * tp / (yh.sum() + (y == 1).sum())
    expected = m["slice_check"]
    assert abs(np.mean(yh == (y == 1)) - expected["accuracy"]) <= expected["tolerance"]
    assert abs(f1 - expected["failure_f1"]) <= 10 * expected["tolerance"]


def test_grading_tabular_slice_accuracy() -> None:
    np = _need("numpy")
    m = manifest("grading-tabular")
    data = m["training"]["data"][0]
    path = _dataset(data["file"])
    assert _sha256(path) == data["sha256"]
    start, stop = m["slice_check"]["rows"]
    cols = [f["dataset_column"] for f in m["inputs"][0]["features"]]
    labels = m["outputs"][0]["labels"]
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))[start:stop]
    x = np.array([[float(r[c]) for c in cols] for r in rows], np.float32)
    y = np.array([labels.index(r["Quality"]) for r in rows])
    label, probs = session("grading-tabular").run(None, {"x": x})
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    acc = float(np.mean(label == y))
    expected = m["slice_check"]
    assert abs(acc - expected["accuracy"]) <= expected["tolerance"], (acc, expected["accuracy"])


def test_grading_vision_slice_accuracy() -> None:
    np = _need("numpy")
    _need("PIL")
    from PIL import Image

    m = manifest("grading-vision")
    root = _dataset("fruit-images")
    with open(_dataset("fruit-images", "manifest.csv"), newline="") as f:
        sha = {r["path"]: r for r in csv.DictReader(f)}
    spec = m["inputs"][0]
    _, _, h, w = spec["shape"]
    labels = m["outputs"][0]["labels"]
    xs, ys = [], []
    for rel in m["slice_check"]["images"]:
        path = root / rel
        assert _sha256(path) == sha[rel]["sha256"], rel
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
        xs.append(np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255.0)
        ys.append(labels.index(sha[rel]["class"]))
    x, y = np.stack(xs), np.array(ys)
    expected = m["slice_check"]
    for key, f in m["files"].items():
        probs = session("grading-vision", key).run(None, {"image": x})[0]
        assert np.allclose(probs.sum(1), 1, atol=1e-3)
        acc = float(np.mean(probs.argmax(1) == y))
        want = expected["accuracy"][f["path"]]
        assert abs(acc - want) <= expected["tolerance"], (f["path"], acc, want)
