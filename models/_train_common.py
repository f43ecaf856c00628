"""Helpers shared by the training scripts in `models/<name>/train.py`.

Training-only: the gateway never imports this module (it needs numpy, onnxruntime and, for
the latency numbers, nothing else). Each script puts `models/` on `sys.path` and imports it.
"""

from __future__ import annotations

import argparse
import ast
import datetime as _dt
import hashlib
import os
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

MODELS_DIR = Path(__file__).resolve().parent
REPO_DIR = MODELS_DIR.parent
DEFAULT_DATA = REPO_DIR.parent / "shared" / "datasets"
OPSET = 17  # ai.onnx opset for every model; ai.onnx.ml opset 3 for tree ensembles
ML_OPSET = 3


def log(msg: str) -> None:
    """Progress line with elapsed wall time since import."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


_T0 = time.monotonic()


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("MILLRACE_DATASETS", DEFAULT_DATA)),
        help="folder holding the datasets (default: <repo>/../shared/datasets)",
    )
    p.add_argument("--seed", type=int, default=20240401, help="fixed seed (default: 20240401)")
    p.add_argument(
        "--skip-cv", action="store_true", help="train the shipped model only (no CV report)"
    )
    return p.parse_args()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch

        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
    except ImportError:
        pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str) -> str:
    """The training data must be exactly the file the dataset README describes."""
    got = sha256_file(path)
    if got != expected:
        sys.exit(f"{path}: sha256 {got} does not match the dataset README ({expected})")
    log(f"verified sha256 of {path.name}")
    return got


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime as ort

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "date": _dt.date.today().isoformat(),
        "note": "2-core x86_64 VM shared with other work; stand-in for one Raspberry Pi 4 core "
        "(expect roughly 6x slower on a Pi 4)",
    }


def session(path: Path):
    """An onnxruntime session configured the way the latency numbers are measured."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def measure_latency(
    path: Path, samples: np.ndarray, *, calls: int, warmup: int = 200
) -> dict[str, Any]:
    """p50/p99 of single-item (batch 1) calls at 1 thread, after warm-up.

    `samples` is a batch of real inputs; calls cycle through them one row at a time."""
    sess = session(path)
    name = sess.get_inputs()[0].name
    rows = [samples[i : i + 1].astype(np.float32) for i in range(len(samples))]
    for i in range(warmup):
        sess.run(None, {name: rows[i % len(rows)]})
    times = np.empty(calls)
    for i in range(calls):
        x = rows[i % len(rows)]
        t = time.perf_counter()
        sess.run(None, {name: x})
        times[i] = time.perf_counter() - t
    ms = times * 1000.0
    return {
        "threads": {"intra_op": 1, "inter_op": 1},
        "batch": 1,
        "warmup_calls": warmup,
        "calls": calls,
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "max_ms": round(float(ms.max()), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "machine": machine(),
    }


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays -> plain Python so yaml.safe_dump accepts them."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_plain(v) for v in obj.tolist()]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_manifest(path: Path, manifest: dict[str, Any], header: str) -> None:
    text = yaml.safe_dump(
        _plain(manifest), sort_keys=False, allow_unicode=True, width=100, default_flow_style=None
    )
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    path.write_text(comment + text)
    log(f"wrote {path.relative_to(REPO_DIR)}")


def r(x: float, n: int = 4) -> float:
    return round(float(x), n)


def patch_onnx_attributes() -> None:
    """skl2onnx 1.20 passes numpy integer/bool lists to `onnx.helper.make_attribute`, which
    onnx >= 1.20 rejects ("Expected an int, got a boolean"); convert them to plain ints."""
    import onnx.helper as oh

    if getattr(oh, "_millrace_patched", False):
        return
    original = oh.make_attribute

    def make_attribute(key, value, *a, **kw):
        if (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, (bool, np.bool_, np.integer)) for v in value)
        ):
            value = [int(v) for v in value]
        return original(key, value, *a, **kw)

    oh.make_attribute = make_attribute
    oh._millrace_patched = True


def embed_sklearn(model, n_features: int, prefix: str, input_name: str):
    """Convert a scikit-learn classifier/regressor with skl2onnx (zipmap off) and return its
    nodes and initializers renamed under `prefix`, reading from `input_name`.

    Returns (nodes, initializers, {original output name: prefixed name})."""
    from onnx import compose, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    patch_onnx_attributes()
    options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
    m = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, n_features]))],
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
        options=options,
    )
    m = compose.add_prefix(m, prefix)
    nodes = [helper.make_node("Identity", [input_name], [prefix + "input"])]
    nodes += list(m.graph.node)
    outs = {o.name[len(prefix) :]: o.name for o in m.graph.output}
    return nodes, list(m.graph.initializer), outs


# --- fallback rules -------------------------------------------------------------------------
# `fallback_rules` in a manifest: what the inference engine does while the model cannot load or
# fails. Each rule is {name, when?, alarm?, severity, label?, grade?, note?, measured?}; `when`
# is an expression in the small language below (see models/README.md, "Fallback rules").

RULE_KEYS = ("name", "when", "alarm", "severity", "label", "grade", "note", "measured")
RULE_SEVERITIES = ("info", "warning", "critical")
_RULE_NAME = re.compile(r"[a-z0-9_]+")
_BINOPS = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}
_CMPOPS = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}
_FUNCS = {"abs", "min", "max"}
_WINDOW_FUNCS = {"mean_last", "last"}


def check_when(expr: str, names, window: int | None = None) -> ast.Expression:
    """Parse a rule's `when` and reject anything outside the language: numbers, the feature
    point `names`, `pi`, + - * / and unary -, comparisons (chained), and/or/not, abs/min/max
    and, for windowed models (`window` = rows in the window), mean_last(name, n) and last(name).
    """
    tree = ast.parse(expr, mode="eval")
    names = set(names)

    def bad(node, why):
        raise ValueError(f"`when: {expr}`: {why} ({ast.dump(node)[:60]})")

    def visit(node):
        if isinstance(node, ast.Expression):
            visit(node.body)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                bad(node, "only numeric constants")
        elif isinstance(node, ast.Name):
            if node.id != "pi" and node.id not in names:
                bad(node, f"unknown name {node.id!r}")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                bad(node, "operator not allowed")
            visit(node.left)
            visit(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.Not)):
                bad(node, "unary operator not allowed")
            visit(node.operand)
        elif isinstance(node, ast.BoolOp):
            for v in node.values:
                visit(v)
        elif isinstance(node, ast.Compare):
            if any(type(op) not in _CMPOPS for op in node.ops):
                bad(node, "comparison not allowed")
            for v in [node.left, *node.comparators]:
                visit(v)
        elif isinstance(node, ast.Call):
            f = node.func.id if isinstance(node.func, ast.Name) else None
            if node.keywords or f not in _FUNCS | (_WINDOW_FUNCS if window else set()):
                bad(node, "function not allowed")
            if f == "abs" and len(node.args) != 1:
                bad(node, "abs takes one argument")
            if f in ("min", "max") and not node.args:
                bad(node, f"{f} needs arguments")
            if f in _WINDOW_FUNCS:
                want = 2 if f == "mean_last" else 1
                a = node.args
                if len(a) != want or not isinstance(a[0], ast.Name) or a[0].id not in names:
                    bad(node, f"{f} takes a feature name" + (" and n" if want == 2 else ""))
                if f == "mean_last":
                    n = a[1]
                    if not (isinstance(n, ast.Constant) and type(n.value) is int):
                        bad(node, "mean_last: n must be an integer literal")
                    if not 1 <= n.value <= window:
                        bad(node, f"mean_last: n must be 1..{window}")
                return
            for v in node.args:
                visit(v)
        else:
            bad(node, f"{type(node).__name__} not allowed")

    visit(tree)
    return tree


def eval_when(expr: str, values: dict[str, np.ndarray], window: int | None = None) -> np.ndarray:
    """Evaluate `when` over many rows at once (the engine's semantics, vectorised with numpy).

    `values[name]` is [N] (one value per evaluation) or, for windowed models, [N, window] with
    the newest row last; a bare name then means the newest row, like last(name)."""
    tree = check_when(expr, values, window)

    def cur(v):
        return v[:, -1] if v.ndim == 2 else v

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return np.float64(node.value)
        if isinstance(node, ast.Name):
            return np.float64(np.pi) if node.id == "pi" else cur(values[node.id])
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            v = ev(node.operand)
            return np.negative(v) if isinstance(node.op, ast.USub) else np.logical_not(v)
        if isinstance(node, ast.BoolOp):
            f = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = ev(node.values[0])
            for v in node.values[1:]:
                out = f(out, ev(v))
            return out
        if isinstance(node, ast.Compare):
            left, out = ev(node.left), True
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = ev(right_node)
                out = np.logical_and(out, _CMPOPS[type(op)](left, right))
                left = right
            return out
        f, args = node.func.id, node.args
        if f == "mean_last":
            return values[args[0].id][:, -args[1].value :].mean(axis=1)
        if f == "last":
            return values[args[0].id][:, -1]
        vals = [ev(a) for a in args]
        if f == "abs":
            return np.abs(vals[0])
        return (np.minimum if f == "min" else np.maximum).reduce(np.broadcast_arrays(*vals))

    n = len(next(iter(values.values())))
    return np.broadcast_to(np.asarray(ev(tree), bool), (n,)).copy()


def fallback_rule(
    name: str,
    *,
    names,
    window: int | None = None,
    when: str | None = None,
    alarm: str | None = None,
    severity: str = "warning",
    label: str | None = None,
    grade: str | None = None,
    note: str | None = None,
    measured: dict | None = None,
) -> dict[str, Any]:
    """One `fallback_rules` entry, checked against the schema; None fields are left out."""
    if not _RULE_NAME.fullmatch(name):
        raise ValueError(f"fallback rule name {name!r} is not [a-z0-9_]+")
    if severity not in RULE_SEVERITIES:
        raise ValueError(f"fallback rule {name}: severity {severity!r}")
    if when is not None:
        check_when(when, names, window)
    rule = {
        "name": name,
        "when": when,
        "alarm": alarm,
        "severity": severity,
        "label": label,
        "grade": grade,
        "note": note,
        "measured": measured,
    }
    return {k: v for k, v in rule.items() if v is not None}


def check_fallback_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = [r["name"] for r in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"fallback rule names are not unique: {names}")
    for rule in rules:
        extra = set(rule) - set(RULE_KEYS)
        if extra:
            raise ValueError(f"fallback rule {rule['name']}: unknown keys {sorted(extra)}")
    return rules
