"""Train `pdm-rul`: remaining useful life (cycles) of a turbofan from a sliding window of
its 14 informative sensors (NASA C-MAPSS FD001, standard protocol: window 30, RUL cap 125).

    python models/pdm-rul/train.py [--data DIR] [--seed N] [--skip-cv]

Protocol (honest validation, engines never split):
1. Choices (model family and tree size) were made on a fixed selection set of 20 engines drawn
   with the seed; `--seed` redraws it. The selection score is printed and recorded, marked as
   used for choices.
2. The reported score is 5-fold GroupKFold over the other 80 engines (whole engines held out).
3. The shipped model is trained on all 100 engines.

The ONNX graph takes the raw window (oldest row first) and does everything else: z-scaling
with the training mean/std, the window features (last value, short and long means, std,
slopes), the gradient-boosted trees and the clip to [0, 125].
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _train_common as C  # noqa: E402

NAME = "pdm-rul"
VERSION = "1.0.0"
DATA_SHA256 = "963b5e22825b34d8b21c69e1aeb4af3e647050eb672ee8834ba4b5d91d2de0f8"
WINDOW = 30
CAP = 125
# (C-MAPSS column, point name, meaning, unit) in the model's input order
SENSORS = [
    ("s2", "t24_lpc_outlet_temp", "total temperature at LPC outlet (T24)", "degR"),
    ("s3", "t30_hpc_outlet_temp", "total temperature at HPC outlet (T30)", "degR"),
    ("s4", "t50_lpt_outlet_temp", "total temperature at LPT outlet (T50)", "degR"),
    ("s7", "p30_hpc_outlet_pressure", "total pressure at HPC outlet (P30)", "psia"),
    ("s8", "nf_fan_speed", "physical fan speed (Nf)", "rpm"),
    ("s9", "nc_core_speed", "physical core speed (Nc)", "rpm"),
    ("s11", "ps30_hpc_static_pressure", "static pressure at HPC outlet (Ps30)", "psia"),
    ("s12", "phi_fuel_flow_ratio", "ratio of fuel flow to Ps30 (phi)", "pps/psi"),
    ("s13", "nrf_corrected_fan_speed", "corrected fan speed (NRf)", "rpm"),
    ("s14", "nrc_corrected_core_speed", "corrected core speed (NRc)", "rpm"),
    ("s15", "bpr_bypass_ratio", "bypass ratio (BPR)", "1"),
    ("s17", "htbleed_bleed_enthalpy", "bleed enthalpy (htBleed)", "1"),
    ("s20", "w31_hpt_coolant_bleed", "HPT coolant bleed (W31)", "lbm/s"),
    ("s21", "w32_lpt_coolant_bleed", "LPT coolant bleed (W32)", "lbm/s"),
]
SENSOR_COLS = [s[0] for s in SENSORS]
# 21 sensors: columns 6..26 (1-based) -> index 5..25
COL_INDEX = {f"s{i}": 4 + i for i in range(1, 22)}
HGB_PARAMS = dict(
    max_iter=300,
    learning_rate=0.05,
    max_leaf_nodes=7,
    min_samples_leaf=100,
    l2_regularization=1.0,
)
N_SELECTION = 20
CUTS_PER_ENGINE = 10
SLICE_UNITS = list(range(1, 11))
LINEAR_FEATURES = [
    "last",
    "mean_last5",
    "mean_last10",
    "mean_all",
    "mean_first10",
    "slope_all",
    "slope_last15",
]


def load(path: Path) -> np.ndarray:
    raw = np.loadtxt(path)
    assert raw.shape[1] == 26, raw.shape
    return raw


def linear_weights() -> np.ndarray:
    """[WINDOW, 7] weights: feature_k(window) = sum_t window[t] * w[t, k]."""
    w = np.zeros((WINDOW, len(LINEAR_FEATURES)), np.float64)
    w[-1, 0] = 1
    w[-5:, 1] = 1 / 5
    w[-10:, 2] = 1 / 10
    w[:, 3] = 1 / WINDOW
    w[:10, 4] = 1 / 10
    for k, length in ((5, WINDOW), (6, 15)):
        t = np.arange(length) - (length - 1) / 2
        w[-length:, k] = t / (t**2).sum()  # least-squares slope per cycle
    return w


def window_features(z: np.ndarray) -> np.ndarray:
    """z: [N, WINDOW, 14] scaled windows -> [N, 7*14 + 14] (same maths as the ONNX graph)."""
    z = z.astype(np.float32)
    lin = np.einsum("ntc,tk->nkc", z, linear_weights().astype(np.float32))
    m = z.mean(1)
    std = np.sqrt(np.maximum((z * z).mean(1) - m * m, 0))
    return np.concatenate([lin.reshape(len(z), -1), std], 1).astype(np.float32)


def feature_names() -> list[str]:
    names = [f"{f}({s[1]})" for f in LINEAR_FEATURES for s in SENSORS]
    return names + [f"std_all({s[1]})" for s in SENSORS]


def windows(
    raw: np.ndarray, units: np.ndarray, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All full windows (step 1) of the given engines: raw X [N,30,14], capped RUL, unit."""
    idx = [COL_INDEX[c] for c in SENSOR_COLS]
    xs, ys, us = [], [], []
    for u in units:
        rows = raw[raw[:, 0] == u]
        assert np.all(np.diff(rows[:, 1]) == 1), f"unit {u}: cycles not consecutive"
        x = rows[:, idx]
        rul = rows[:, 1].max() - rows[:, 1]
        n = len(rows) - WINDOW + 1
        st = np.lib.stride_tricks.sliding_window_view(x, (WINDOW, x.shape[1]))[:, 0]
        xs.append(st)
        ys.append(np.minimum(rul[WINDOW - 1 :], CAP))
        us.append(np.full(n, u))
    return (
        np.concatenate(xs).astype(dtype),
        np.concatenate(ys).astype(np.float32),
        np.concatenate(us),
    )


def nasa_score(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """PHM08 scoring function per prediction: late predictions cost more than early ones."""
    d = pred - true
    return np.where(d < 0, np.exp(-d / 13) - 1, np.exp(d / 10) - 1)


def truncation_points(y_unit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Emulate the test-set protocol on held-out engines: cut each trajectory at random
    points (true RUL uniform in [5, min(150, life-30)]) and keep the window ending there."""
    picks = []
    for u in np.unique(y_unit):
        ii = np.where(y_unit == u)[0]
        life = len(ii) + WINDOW - 1  # cycles; the window ending at cycle c has RUL life-c
        for rul in rng.integers(5, min(150, life - WINDOW) + 1, CUTS_PER_ENGINE):
            picks.append(ii[life - rul - WINDOW])
    return np.array(picks)


def fit(x_raw: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.ensemble import HistGradientBoostingRegressor

    flat = x_raw.reshape(-1, x_raw.shape[2]).astype(np.float64)
    mean, std = flat.mean(0), flat.std(0)
    feats = window_features((x_raw - mean) / std)
    model = HistGradientBoostingRegressor(random_state=seed, **HGB_PARAMS).fit(feats, y)
    return model, mean.astype(np.float32), std.astype(np.float32)


def predict(model, mean, std, x_raw):
    return np.clip(model.predict(window_features((x_raw - mean) / std)), 0, CAP)


def evaluate(pred, y, units, cuts) -> dict:
    last = np.array([np.where(units == u)[0][-1] for u in np.unique(units)])
    return {
        "rmse_all_windows": np.sqrt(np.mean((pred - y) ** 2)),
        "mae_all_windows": np.mean(np.abs(pred - y)),
        "rmse_truncated_last_window": np.sqrt(np.mean((pred[cuts] - y[cuts]) ** 2)),
        "nasa_score_truncated_per_100_engines": 100 * nasa_score(pred[cuts], y[cuts]).mean(),
        "rmse_end_of_life_last_window": np.sqrt(np.mean((pred[last] - y[last]) ** 2)),
        "n_windows": len(y),
        "n_truncated_windows": len(cuts),
    }


def export_onnx(model, mean, std, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    C.patch_onnx_attributes()
    n_s, n_f = len(SENSORS), len(LINEAR_FEATURES)
    trees = convert_sklearn(
        model,
        initial_types=[("features", FloatTensorType([None, n_f * n_s + n_s]))],
        target_opset={"": C.OPSET, "ai.onnx.ml": C.ML_OPSET},
    )
    tree_out = trees.graph.output[0].name
    init = [
        numpy_helper.from_array(mean.reshape(1, 1, n_s), "scale_mean"),
        numpy_helper.from_array(std.reshape(1, 1, n_s), "scale_std"),
        numpy_helper.from_array(linear_weights().astype(np.float32), "window_weights"),
        numpy_helper.from_array(np.array([-1, n_f * n_s], np.int64), "lin_shape"),
        numpy_helper.from_array(np.array(0, np.float32), "rul_min"),
        numpy_helper.from_array(np.array(CAP, np.float32), "rul_max"),
    ]
    nodes = [
        helper.make_node("Sub", ["window", "scale_mean"], ["centred"]),
        helper.make_node("Div", ["centred", "scale_std"], ["z"]),
        helper.make_node("Transpose", ["z"], ["z_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["z_t", "window_weights"], ["lin_ck"]),
        helper.make_node("Transpose", ["lin_ck"], ["lin_kc"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["lin_kc", "lin_shape"], ["lin"]),
        helper.make_node("ReduceMean", ["z"], ["m"], axes=[1], keepdims=0),
        helper.make_node("Mul", ["z", "z"], ["z2"]),
        helper.make_node("ReduceMean", ["z2"], ["m2"], axes=[1], keepdims=0),
        helper.make_node("Mul", ["m", "m"], ["m_sq"]),
        helper.make_node("Sub", ["m2", "m_sq"], ["var_raw"]),
        helper.make_node("Relu", ["var_raw"], ["var"]),
        helper.make_node("Sqrt", ["var"], ["sd"]),
        helper.make_node("Concat", ["lin", "sd"], ["features"], axis=1),
    ]
    nodes += list(trees.graph.node)
    nodes.append(helper.make_node("Clip", [tree_out, "rul_min", "rul_max"], ["rul_cycles"]))
    graph = helper.make_graph(
        nodes,
        "pdm_rul",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["N", WINDOW, n_s])],
        [helper.make_tensor_value_info("rul_cycles", TensorProto.FLOAT, ["N", 1])],
        initializer=init + list(trees.graph.initializer),
    )
    m = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", C.OPSET),
            helper.make_opsetid("ai.onnx.ml", C.ML_OPSET),
        ],
        producer_name="millrace-models",
        producer_version=VERSION,
    )
    m.ir_version = 8
    m.doc_string = f"{NAME} {VERSION}: RUL (cycles, capped at {CAP}) from a {WINDOW}-cycle window"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)


def fallback_rule(raw: np.ndarray, units: np.ndarray) -> dict:
    """A one-sensor rule for when the model cannot load: the 10-cycle mean of Ps30 (HPC static
    pressure, the most monotone FD001 sensor) above a threshold means RUL <= 30 is likely.

    The threshold maximises F1 for RUL <= 30 over all training windows; the rule is then
    written in the engine's expression language and evaluated AS WRITTEN (threshold rounded
    to 3 decimals, float64 sensor values) to record its measured numbers."""
    x, y, _ = windows(raw, units, np.float64)
    j = SENSOR_COLS.index("s11")
    m10 = x[:, -10:, j].mean(1)
    target = y <= 30

    def prf(pred):
        tp = np.sum(pred & target)
        prec = tp / max(pred.sum(), 1)
        rec = tp / target.sum()
        return prec, rec, 2 * prec * rec / max(prec + rec, 1e-9)

    best = None
    for thr in np.quantile(m10, np.linspace(0.5, 0.995, 400)):
        f1 = prf(m10 >= thr)[2]
        if best is None or f1 > best[0]:
            best = (f1, thr)
    point = SENSORS[j][1]
    when = f"mean_last({point}, 10) >= {best[1]:.3f}"
    values = {s[1]: x[:, :, k] for k, s in enumerate(SENSORS)}
    prec, rec, f1 = prf(C.eval_when(when, values, WINDOW))
    assert abs(f1 - best[0]) < 2e-3, (f1, best)
    C.log(f"fallback rule `{when}`: precision {prec:.4f}, recall {rec:.4f}, F1 {f1:.4f}")
    rule = C.fallback_rule(
        "ps30_high",
        names=list(values),
        window=WINDOW,
        when=when,
        alarm="maintenance_due",
        severity="warning",
        label="rul_le_30",
        note="RUL <= 30 cycles is likely (Ps30 in psia); a coarse guard, not a model",
        measured={
            "positive": "RUL <= 30 cycles",
            "precision": C.r(prec),
            "recall": C.r(rec),
            "f1": C.r(f1),
            "windows": len(y),
            "note": "in-sample on all 100 FD001 training engines (every full window); a rough "
            "guard, not a model",
        },
    )
    return C.check_fallback_rules([rule])


def main() -> None:
    args = C.parse_args(__doc__.splitlines()[0])
    C.seed_everything(args.seed)
    t_start = time.monotonic()
    path = args.data / "cmapss" / "train_FD001.txt"
    if not path.exists():
        sys.exit(f"dataset not found: {path} (use --data DIR)")
    C.verify_sha256(path, DATA_SHA256)
    raw = load(path)
    units = np.unique(raw[:, 0]).astype(int)
    C.log(f"loaded {len(raw)} rows, {len(units)} engines")
    rng = np.random.default_rng(args.seed)
    selection = np.sort(rng.choice(units, N_SELECTION, replace=False))
    rest = np.setdiff1d(units, selection)

    metrics: dict = {}
    if not args.skip_cv:
        from sklearn.model_selection import GroupKFold

        # selection set: where the choices were made (recorded, not the headline)
        xa, ya, _ = windows(raw, rest)
        xs, ys, us = windows(raw, selection)
        model, mean, std = fit(xa, ya, args.seed)
        cuts = truncation_points(us, np.random.default_rng(args.seed + 1))
        sel = evaluate(predict(model, mean, std, xs), ys, us, cuts)
        C.log(f"selection set ({N_SELECTION} engines): {_fmt(sel)}")

        x, y, u = windows(raw, rest)
        folds = []
        preds = np.zeros_like(y)
        for k, (tr, te) in enumerate(GroupKFold(n_splits=5).split(x, y, u)):
            model, mean, std = fit(x[tr], y[tr], args.seed)
            preds[te] = predict(model, mean, std, x[te])
            cuts = truncation_points(u[te], np.random.default_rng(args.seed + 10 + k))
            res = evaluate(preds[te], y[te], u[te], cuts)
            folds.append(res)
            C.log(f"fold {k + 1}/5 ({len(np.unique(u[te]))} engines held out): {_fmt(res)}")
        keys = [k for k in folds[0] if not k.startswith("n_")]
        cv = {k: C.r(np.mean([f[k] for f in folds]), 3) for k in keys}
        cv_sd = {k: C.r(np.std([f[k] for f in folds]), 3) for k in keys}
        C.log(f"5-fold CV mean: {cv}")
        metrics = {
            "protocol": (
                "C-MAPSS FD001 train file only (the test file is held back). 20 engines drawn "
                f"with seed {args.seed} were used to choose the model family and tree size "
                "(recorded as `selection_set`). The other 80 engines: 5-fold GroupKFold by "
                "engine; scaling fitted on the training engines of each fold. "
                "`rmse_truncated_last_window` emulates the test-set protocol: each held-out "
                f"engine is cut at {CUTS_PER_ENGINE} random points (true RUL uniform in "
                "[5, min(150, life-30)]) and only the window ending at the cut is scored "
                f"against the RUL capped at {CAP}. `rmse_end_of_life_last_window` scores the "
                "last window of the complete trajectory (true RUL 0). `rmse_all_windows` scores "
                "every window (step 1). NASA score = sum of exp(-d/13)-1 (early) or "
                "exp(d/10)-1 (late), d = predicted - true, scaled to 100 engines."
            ),
            "cv_5fold_by_engine_mean": cv,
            "cv_5fold_by_engine_std": cv_sd,
            "cv_folds": [{k: C.r(v, 3) for k, v in f.items()} for f in folds],
            "selection_set": {
                "engines": selection.tolist(),
                "used_for": "choosing window features, model family (trees beat a 1D-CNN, "
                "GRU and MLP here) and tree size",
                **{k: C.r(v, 3) for k, v in sel.items()},
            },
            "published_reference": {
                "note": "published FD001 TEST-set RMSEs (not directly comparable: our numbers "
                "are cross-validated on the training engines)",
                "lstm_rmse": 16.1,
                "deep_cnn_rmse": 12.6,
            },
            "target": {"rmse": "< 12.5", "met": bool(cv["rmse_truncated_last_window"] < 12.5)},
        }

    # the shipped model: all 100 engines
    x, y, u = windows(raw, units)
    C.log(f"training the shipped model on {len(y)} windows from {len(units)} engines")
    model, mean, std = fit(x, y, args.seed)
    out = HERE / "model.onnx"
    export_onnx(model, mean, std, out)
    C.log(f"exported {out.name} ({out.stat().st_size} bytes)")

    sess = C.session(out)
    onnx_pred = sess.run(None, {"window": x})[0][:, 0]
    skl_pred = predict(model, mean, std, x)
    # float32 tree thresholds in ONNX can flip a comparison sitting exactly on a split
    gap = np.abs(onnx_pred - skl_pred)
    diff = float(np.percentile(gap, 99))
    C.log(
        f"onnx vs sklearn |diff| over all windows: p99 {diff:.4f}, max {gap.max():.4f}, "
        f"mean {gap.mean():.5f} cycles; {np.mean(gap > 0.01):.2%} of windows differ > 0.01"
    )
    assert diff < 0.05 and gap.mean() < 0.02, (diff, gap.mean())

    sl = np.isin(u, SLICE_UNITS)
    slice_rmse = float(np.sqrt(np.mean((onnx_pred[sl] - y[sl]) ** 2)))
    lat = C.measure_latency(out, x[:: max(1, len(x) // 500)], calls=3000)
    C.log(f"latency p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms")

    manifest = build_manifest(
        args,
        mean,
        std,
        metrics,
        lat,
        out,
        fallback_rule(raw, units),
        slice_rmse,
        int(sl.sum()),
        time.monotonic() - t_start,
        diff,
    )
    C.write_manifest(
        HERE / "manifest.yaml",
        manifest,
        f"{NAME} {VERSION}: generated by models/pdm-rul/train.py; edit the script, not this file.",
    )


def _fmt(d: dict) -> str:
    return ", ".join(f"{k}={v:.2f}" for k, v in d.items() if not k.startswith("n_"))


def build_manifest(args, mean, std, metrics, lat, out, fallback, slice_rmse, slice_n, secs, diff):
    return {
        "name": NAME,
        "version": VERSION,
        "task": "regression",
        "description": "Remaining useful life, in engine cycles, of a turbofan-class machine from "
        f"the last {WINDOW} cycles of 14 sensors (NASA C-MAPSS FD001: one operating condition, "
        f"HPC degradation). Output capped at {CAP} cycles (piecewise-linear RUL).",
        "framework": {
            "format": "onnx",
            "opset": C.OPSET,
            "ml_opset": C.ML_OPSET,
            "ir_version": 8,
            "trained_with": "scikit-learn HistGradientBoostingRegressor -> skl2onnx",
        },
        "files": {
            "model": {
                "path": "model.onnx",
                "sha256": C.sha256_file(out),
                "bytes": out.stat().st_size,
            }
        },
        "training": {
            "script": "models/pdm-rul/train.py",
            "command": "python models/pdm-rul/train.py --data ../shared/datasets",
            "seed": args.seed,
            "data": [
                {
                    "dataset": "cmapss",
                    "file": "cmapss/train_FD001.txt",
                    "sha256": DATA_SHA256,
                    "rows": 20631,
                    "engines": 100,
                }
            ],
            "label": f"RUL = last cycle of the engine - cycle, capped at {CAP}",
            "rul_cap": CAP,
            "model": {"type": "HistGradientBoostingRegressor", **HGB_PARAMS},
            "duration_s": round(secs, 1),
            "protocol": metrics.get("protocol", "CV skipped (--skip-cv)"),
        },
        "inputs": [
            {
                "name": "window",
                "dtype": "float32",
                "shape": ["N", WINDOW, len(SENSORS)],
                "layout": "[batch, time (oldest first, newest last), feature]",
                "source": "points",
                "features": [
                    {"index": i, "point": p, "cmapss_column": c, "meaning": m, "unit": un}
                    for i, (c, p, m, un) in enumerate(SENSORS)
                ],
                "window": {
                    "length": WINDOW,
                    "step": 1,
                    "unit": "cycle",
                    "row": "one row per engine cycle: the 14 points' values for that cycle, in "
                    "feature order; a row is complete when every point has a reading for the cycle",
                    "padding": "none: do not run until 30 complete rows exist for the unit",
                    "reset": "clear the window when the unit is replaced or overhauled",
                    "missing": "a bad-quality or missing point makes that row incomplete; skip the "
                    "run (do not impute)",
                },
                "scaling": {
                    "where": "baked_into_graph",
                    "engine_action": "none: feed raw sensor values in the units above",
                    "method": "z = (x - mean) / std per feature, training-set statistics",
                    "mean": [round(float(v), 6) for v in mean],
                    "std": [round(float(v), 6) for v in std],
                },
                "derived_in_graph": {
                    "per_feature": [*LINEAR_FEATURES, "std_all"],
                    "count": len(feature_names()),
                    "order": "derived kind major: the 14 features for `last`, then for "
                    "`mean_last5`, ...; slopes are least-squares per cycle; std is population std",
                },
            }
        ],
        "outputs": [
            {
                "name": "rul_cycles",
                "dtype": "float32",
                "shape": ["N", 1],
                "meaning": "predicted remaining useful life at the newest row of the window",
                "unit": "cycles",
                "range": [0, CAP],
                "note": f"values at {CAP} mean 'healthy, at least ~{CAP} cycles left'",
                "reading": {"point": "rul_cycles", "stamp": ["model_name", "model_version"]},
            }
        ],
        "run": {
            "on": "readings",
            "every_n_readings": 1,
            "reading_unit": "complete window row",
            "min_rows": WINDOW,
        },
        "thresholds": [
            {
                "output": "rul_cycles",
                "op": "<=",
                "value": 30,
                "alarm": "maintenance_due",
                "severity": "warning",
                "event": "rul_cycles",
            },
            {
                "output": "rul_cycles",
                "op": "<=",
                "value": 15,
                "alarm": "maintenance_overdue",
                "severity": "critical",
                "event": "rul_cycles",
            },
        ],
        "health": {
            "pool_available_if": "rul_cycles > 30",
            "meaning": "a machine with rul_cycles <= 30 is not offered to the pool",
        },
        "fallback_rules": fallback,
        "latency_budget_ms": 1.0,
        "metrics": metrics,
        "slice_check": {
            "what": f"RMSE (cycles, vs RUL capped at {CAP}) of the shipped model over every "
            f"full window (step 1) of engines {SLICE_UNITS[0]}..{SLICE_UNITS[-1]} of "
            "cmapss/train_FD001.txt (in-sample: a regression check, not an accuracy claim)",
            "units": SLICE_UNITS,
            "n_windows": slice_n,
            "rmse": round(slice_rmse, 4),
            "tolerance": 0.05,
            "onnx_vs_sklearn_p99_abs_diff_cycles": round(float(diff), 5),
            "note_float32": "the ONNX trees compare float32 features; about 1 % of windows sit "
            "on a split and differ from scikit-learn's float64 by up to ~1.5 cycles",
        },
        "latency": lat,
    }


if __name__ == "__main__":
    main()
