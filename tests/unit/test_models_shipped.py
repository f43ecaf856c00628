"""The shipped ONNX models (`models/<name>/`) match their manifests.

For each model: the manifest parses and has the keys the inference engine relies on, every
model file matches its sha256, onnxruntime loads it and its inputs/outputs match the
manifest, and on a fixed slice of the training data (read from `../shared/datasets`) the
model still scores what the manifest recorded at training time.

Runtime packages only: numpy, onnxruntime, Pillow, pyyaml. A missing package or a missing
`../shared/datasets` is a failure with a message, never a skip (CI has both).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import math
import os
import re
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
# fallback_rules: the schema and `when` language the inference engine implements
RULE_KEYS = {"name", "when", "alarm", "severity", "label", "grade", "note", "measured"}
SEVERITIES = {"info", "warning", "critical"}
WHEN_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp,
    ast.Compare, ast.Call, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub, ast.Not, ast.And,
    ast.Or, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq,
)  # fmt: skip


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


def _rule_names(m: dict[str, Any]) -> tuple[set[str], int | None]:
    """Names a `when` may use (the feature points) and the window length (windowed models)."""
    spec = m["inputs"][0]
    points = {f["point"] for f in spec.get("features", []) if "point" in f}
    return points, spec.get("window", {}).get("length")


def _parse_when(expr: str, points: set[str], window: int | None) -> ast.Expression:
    """Parse `when` and check it stays inside the engine's expression language."""
    tree = ast.parse(expr, mode="eval")
    functions = {"abs", "min", "max"} | ({"mean_last", "last"} if window else set())
    callees = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        assert isinstance(node, WHEN_NODES), f"`{expr}`: {type(node).__name__} not allowed"
        if isinstance(node, ast.Constant):
            assert type(node.value) in (int, float), f"`{expr}`: constant {node.value!r}"
        elif isinstance(node, ast.Name) and id(node) not in callees:
            assert node.id == "pi" or node.id in points, f"`{expr}`: unknown name {node.id!r}"
        elif isinstance(node, ast.Call):
            f, args = node.func, node.args
            assert isinstance(f, ast.Name) and f.id in functions, f"`{expr}`: call not allowed"
            assert not node.keywords, f"`{expr}`: keyword arguments"
            if f.id in ("mean_last", "last"):
                assert len(args) == (2 if f.id == "mean_last" else 1), f"`{expr}`: {f.id} args"
                assert isinstance(args[0], ast.Name), f"`{expr}`: {f.id} needs a point name"
                if f.id == "mean_last":
                    n = args[1]
                    assert isinstance(n, ast.Constant) and type(n.value) is int, f"`{expr}`"
                    assert 1 <= n.value <= window, f"`{expr}`: mean_last n outside the window"
            else:
                assert len(args) == 1 if f.id == "abs" else args, f"`{expr}`: {f.id} arguments"
    return tree


class _WindowArgs(ast.NodeTransformer):
    """mean_last(x, n) / last(x) -> mean_last('x', n) / last('x'): look the window up by name."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id in ("mean_last", "last"):
            node.args[0] = ast.copy_location(ast.Constant(node.args[0].id), node.args[0])
        return self.generic_visit(node)


def _when(expr: str, points: set[str], window: int | None):
    """`when` -> predicate(values) in plain Python (the engine's semantics). `values` maps each
    point to its value or, for windowed models, to its window (oldest first, newest last)."""
    tree = ast.fix_missing_locations(_WindowArgs().visit(_parse_when(expr, points, window)))
    code = compile(tree, "<when>", "eval")

    def predicate(values: dict[str, Any]) -> bool:
        scope: dict[str, Any] = {"pi": math.pi, "abs": abs, "min": min, "max": max}
        if window:
            scope["mean_last"] = lambda name, n: sum(values[name][-n:]) / n
            scope["last"] = lambda name: values[name][-1]
            scope.update({k: v[-1] for k, v in values.items()})  # bare name: newest row
        else:
            scope.update(values)
        return bool(eval(code, {"__builtins__": {}}, scope))  # checked by _parse_when

    return predicate


@pytest.mark.parametrize("name", SHIPPED)
def test_fallback_rules_schema(name: str) -> None:
    m = manifest(name)
    rules = m["fallback_rules"]
    points, window = _rule_names(m)
    assert isinstance(rules, list) and rules, f"{name}: fallback_rules must be a non-empty list"
    seen = set()
    for rule in rules:
        assert isinstance(rule, dict) and set(rule) <= RULE_KEYS, f"{name}: {rule}"
        assert re.fullmatch(r"[a-z0-9_]+", str(rule.get("name", ""))), f"{name}: rule name"
        assert rule["name"] not in seen, f"{name}: duplicate rule name {rule['name']}"
        seen.add(rule["name"])
        assert rule.get("severity", "warning") in SEVERITIES, f"{name}/{rule['name']}"
        for key in ("when", "alarm", "label", "grade", "note"):
            assert isinstance(rule.get(key, ""), str), f"{name}/{rule['name']}: {key}"
        assert isinstance(rule.get("measured", {}), dict), f"{name}/{rule['name']}: measured"
        assert "alarm" in rule or "grade" in rule, f"{name}/{rule['name']}: no action"
        if "when" in rule:
            _parse_when(rule["when"], points, window)


def test_when_language_rejects_outside_names_and_nodes() -> None:
    points = {"speed", "torque"}
    _parse_when("-speed * 2 * pi / 60 < 3 < max(torque, 1) and not abs(torque) >= 0", points, None)
    _parse_when("mean_last(speed, 10) - last(torque) > min(speed, 3)", points, 30)
    for bad in (
        "speed ** 2 > 1",
        "speed < 1 if torque else 2",
        "rpm > 3",
        "speed.real > 1",
        "__import__('os')",
        "mean_last(speed, 10) > 1",  # not a windowed model
        "speed in (1, 2)",
        "'a' < speed",
        "speed // 2 > 1",
        "abs(x=speed) > 1",
        "speed[0] > 1",
        "(lambda: 1)() > 0",
    ):
        with pytest.raises((AssertionError, SyntaxError)):
            _parse_when(bad, points, None)
    for bad in ("mean_last(speed, 31) > 1", "mean_last(speed, 2.5) > 1", "last(speed, 2) > 1"):
        with pytest.raises(AssertionError):
            _parse_when(bad, points, 30)


def test_pdm_failure_fallback_rules_measured() -> None:
    """Each rule, evaluated as written on every row of the training file, fires exactly as
    often as the manifest recorded."""
    m = manifest("pdm-failure")
    path = _dataset(m["training"]["data"][0]["file"])
    spec = m["inputs"][0]
    points, window = _rule_names(m)
    encoding = spec.get("encoding", {})  # categorical points are seen after their map
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    values = []
    for r in rows:
        row = {}
        for ft in spec["features"]:
            raw = r[ft["dataset_column"]]
            enc = encoding.get(ft["name"])
            row[ft["point"]] = enc["map"][raw] if enc else float(raw)
        values.append(row)
    failed = [r["Machine failure"] == "1" for r in rows]
    for rule in m["fallback_rules"]:
        when = _when(rule["when"], points, window)
        fired = [when(v) for v in values]
        got = {
            "rows_fired": sum(fired),
            "failures_caught": sum(f and y for f, y in zip(fired, failed, strict=True)),
            "fired_without_failure": sum(f and not y for f, y in zip(fired, failed, strict=True)),
        }
        assert got == {k: rule["measured"][k] for k in got}, (rule["name"], got)


def test_pdm_rul_fallback_rule_measured() -> None:
    """The Ps30 rule, evaluated as written on every full window of the training file, has the
    precision/recall the manifest recorded."""
    np = _need("numpy")
    m = manifest("pdm-rul")
    path = _dataset(m["training"]["data"][0]["file"])
    raw = np.loadtxt(path)
    spec = m["inputs"][0]
    points, window = _rule_names(m)
    cols = {f["point"]: 4 + int(f["cmapss_column"][1:]) for f in spec["features"]}
    cap = m["training"]["rul_cap"]
    (rule,) = m["fallback_rules"]
    when = _when(rule["when"], points, window)
    tp = fp = fn = 0
    for unit in np.unique(raw[:, 0]):
        rows = raw[raw[:, 0] == unit]
        series = {p: rows[:, c].tolist() for p, c in cols.items()}
        for end in range(window, len(rows) + 1):
            fired = when({p: s[end - window : end] for p, s in series.items()})
            positive = min(rows[-1, 1] - rows[end - 1, 1], cap) <= 30
            tp, fp, fn = (
                tp + (fired and positive),
                fp + (fired and not positive),
                fn + (positive and not fired),
            )
    measured = rule["measured"]
    assert tp + fp + fn > 0 and measured["windows"] == sum(
        len(raw[raw[:, 0] == u]) - window + 1 for u in np.unique(raw[:, 0])
    )
    assert abs(tp / (tp + fp) - measured["precision"]) < 1e-4, (tp, fp)
    assert abs(tp / (tp + fn) - measured["recall"]) < 1e-4, (tp, fn)
