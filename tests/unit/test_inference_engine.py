"""The inference engine with real onnxruntime sessions of the shipped models.

Readings go in through `on_batch` exactly as the bus delivers them; what the engine publishes
is collected and checked. No sockets: the drivers and the bus are tested elsewhere, and the
gateway-level test runs the same models behind real simulators.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from drivers.base import Item
from gateway.configload import load_config_data
from gateway.errors import ConfigError
from gateway.inference.engine import InferenceEngine, ModelState
from gateway.readings import Batch, Quality, Reading

REPO = Path(__file__).resolve().parents[2]
DATASETS = Path(os.environ.get("MILLRACE_DATASETS", REPO.parent / "shared" / "datasets"))

FAILURE_FEATURES = {
    "product_type": "Type",
    "temperature_air": "Air temperature [K]",
    "temperature_process": "Process temperature [K]",
    "speed": "Rotational speed [rpm]",
    "torque": "Torque [Nm]",
    "tool_wear": "Tool wear [min]",
}
FAILURE_POINTS = [f"line.m1_{f}" for f in FAILURE_FEATURES]
RUL_FEATURES = [
    f["point"]
    for f in yaml.safe_load((REPO / "models/pdm-rul/manifest.yaml").read_text())["inputs"][0][
        "features"
    ]
]
RUL_POINTS = [f"turbine.{f}" for f in RUL_FEATURES] + ["turbine.cycle", "turbine.unit_id"]


class Collector:
    """The engine's `publish`: every batch it hands the bus, kept in order."""

    def __init__(self) -> None:
        self.readings: Batch = []

    def __call__(self, batch: Batch) -> None:
        self.readings.extend(batch)

    def values(self, point: str) -> list[Any]:
        return [r.value for r in self.readings if r.point == point]

    def of(self, point: str) -> list[Reading]:
        return [r for r in self.readings if r.point == point]

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        evs = [json.loads(r.value) for r in self.readings if r.point.endswith(".event")]
        return [e for e in evs if name is None or e.get("name") == name or e.get("type") == name]


def _ai4i_rows() -> list[dict[str, str]]:
    path = DATASETS / "ai4i2020" / "ai4i2020-train.csv"
    if not path.exists():
        pytest.fail(f"{path} is missing (the model tests read ../shared/datasets)", pytrace=False)
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _row(kind: str) -> dict[str, str]:
    rows = _ai4i_rows()
    if kind == "healthy":
        return next(
            r for r in rows if r["Machine failure"] == "0" and float(r["Tool wear [min]"]) < 100
        )
    assert kind == "HDF"
    # a clear case of the heat-dissipation rule (temperature difference < 8.6 K and speed <
    # 1380 rpm), well inside it, so the test does not hinge on a borderline row
    return next(
        r
        for r in rows
        if r["HDF"] == "1"
        and float(r["Process temperature [K]"]) - float(r["Air temperature [K]"]) < 8.0
        and float(r["Rotational speed [rpm]"]) < 1330
    )


def _failure_batch(row: dict[str, str], ts: float) -> Batch:
    out: Batch = []
    for feature, column in FAILURE_FEATURES.items():
        raw = row[column]
        value: Any = raw if feature == "product_type" else float(raw)
        out.append(Reading(f"line.m1_{feature}", value, Quality.GOOD, ts, ts))
    return out


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def _engine(
    tmp_path: Path,
    models: list[dict[str, Any]],
    points: list[str],
    inference: dict[str, Any] | None = None,
    items: tuple[tuple[str, str], ...] = (),
) -> tuple[InferenceEngine, Collector]:
    # Latency is not what these tests are about unless they say so: on a busy test machine a
    # 1 ms budget is missed now and then, and its alarm would be one more event to count.
    models = [{"latency_budget_ms": 60_000, **m} for m in models]
    data: dict[str, Any] = {"gateway": {"id": "gw", "site": "site"}, "models": models}
    if inference is not None:
        data["inference"] = inference
    loaded = load_config_data(data, base_dir=tmp_path)
    out = Collector()
    return InferenceEngine(loaded, out, points, items), out


FAILURE_BINDING = {
    "id": "m1-failure",
    "model": "pdm-failure",
    "equipment": "mill-1",
    "input_prefix": "line.m1_",
}


async def test_failure_model_raises_and_clears_its_alarm_on_real_rows(tmp_path: Path) -> None:
    eng, out = _engine(tmp_path, [FAILURE_BINDING], FAILURE_POINTS)
    await eng.start()
    try:
        assert eng.instances[0].state == ModelState.READY
        t0 = time.time()
        eng.on_batch(_failure_batch(_row("healthy"), t0))
        await eventually(lambda: len(out.values("m1-failure.failure_risk")) == 1)
        assert out.values("m1-failure.failure_risk")[0] < 0.5
        assert out.values("m1-failure.alarm_failure_predicted") == [False]
        assert out.events("alarm") == []  # a quiet alarm's first state is not an event

        eng.on_batch(_failure_batch(_row("HDF"), t0 + 1))
        await eventually(lambda: len(out.values("m1-failure.failure_risk")) == 2)
        risk = out.of("m1-failure.failure_risk")[1]
        assert risk.value >= 0.5
        assert risk.quality is Quality.GOOD
        assert risk.reason == "model:pdm-failure@1.0.0"
        assert risk.ts_source == t0 + 1  # the newest input's time
        assert out.values("m1-failure.failure_mode_hdf")[1] >= 0.5
        (raised,) = out.events("alarm")
        assert raised["name"] == "failure_predicted"
        assert raised["state"] == "raised" and raised["severity"] == "critical"
        assert raised["model"] == "pdm-failure" and raised["version"] == "1.0.0"
        assert raised["equipment"] == "mill-1"
        assert "HDF" in out.events("failure_mode")[0]["labels"]

        eng.on_batch(_failure_batch(_row("healthy"), t0 + 2))
        await eventually(lambda: len(out.events("alarm")) == 2)
        assert out.events("alarm")[1]["state"] == "cleared"
        assert out.values("m1-failure.alarm_failure_predicted") == [False, True, False]

        (st,) = eng.status()
        assert st["calls"] == 3 and st["failures"] == 0 and st["fallback_runs"] == 0
        assert st["latency_p50_ms"] is not None and st["latency_p99_ms"] >= st["latency_p50_ms"]
        assert st["pool_available"] is True  # health: failure_risk < 0.5 on the last row
    finally:
        await eng.stop(5)


async def test_change_model_debounces_a_burst_into_one_run(tmp_path: Path) -> None:
    eng, out = _engine(tmp_path, [FAILURE_BINDING], FAILURE_POINTS)
    await eng.start()
    try:
        row = _row("healthy")
        t0 = time.time()
        for i, r in enumerate(_failure_batch(row, t0)):  # six batches within the 100 ms debounce
            r.ts_gateway = r.ts_source = t0 + i * 0.001
            eng.on_batch([r])
        await eventually(lambda: len(out.values("m1-failure.failure_risk")) == 1)
        await asyncio.sleep(0.3)
        assert len(out.values("m1-failure.failure_risk")) == 1
    finally:
        await eng.stop(5)


async def test_missing_or_bad_inputs_skip_the_run_instead_of_guessing(tmp_path: Path) -> None:
    eng, out = _engine(tmp_path, [FAILURE_BINDING], FAILURE_POINTS)
    await eng.start()
    try:
        t0 = time.time()
        batch = _failure_batch(_row("healthy"), t0)
        eng.on_batch(batch[:5])  # tool_wear never arrived
        bad_type = _failure_batch(_row("healthy"), t0)
        bad_type[0].value = "X"  # a product type the encoding does not know
        await asyncio.sleep(0.25)
        eng.on_batch(bad_type)
        await asyncio.sleep(0.25)
        tool_bad = _failure_batch(_row("healthy"), t0)
        tool_bad[5] = Reading("line.m1_tool_wear", None, Quality.BAD, t0, reason="timeout")
        eng.on_batch(tool_bad)
        await asyncio.sleep(0.25)
        assert out.values("m1-failure.failure_risk") == []
        assert eng.status()[0]["rows_incomplete"] == 3
    finally:
        await eng.stop(5)


def _cycle_batch(values: np.ndarray, cycle: int, unit: int, ts: float, bad: int = -1) -> Batch:
    out = [
        Reading(f"turbine.{name}", float(v), Quality.BAD if i == bad else Quality.GOOD, ts, ts)
        for i, (name, v) in enumerate(zip(RUL_FEATURES, values, strict=True))
    ]
    out += [
        Reading("turbine.cycle", cycle, ts_gateway=ts),
        Reading("turbine.unit_id", unit, ts_gateway=ts),
    ]
    return out


def _cmapss_unit(unit: int) -> np.ndarray:
    path = DATASETS / "cmapss" / "train_FD001.txt"
    if not path.exists():
        pytest.fail(f"{path} is missing (the model tests read ../shared/datasets)", pytrace=False)
    data = np.loadtxt(path)
    cols = [2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21]  # s2..s21 informative sensors
    return data[data[:, 0] == unit][:, [c + 4 for c in cols]].astype(np.float32)


RUL_BINDING = {
    "id": "t1-rul",
    "model": "pdm-rul",
    "input_prefix": "turbine.",
    "row_key": "turbine.cycle",
    "reset_on": "turbine.unit_id",
}


async def test_rul_window_runs_only_on_full_windows_and_resets_on_overhaul(tmp_path: Path) -> None:
    eng, out = _engine(tmp_path, [RUL_BINDING], RUL_POINTS)
    traj = _cmapss_unit(1)
    await eng.start()
    try:
        t0 = time.time()
        for c in range(29):
            eng.on_batch(_cycle_batch(traj[c], c + 1, 1, t0 + c))
        await asyncio.sleep(0.2)
        assert out.values("t1-rul.rul_cycles") == []  # 29 rows: no padding, no run
        eng.on_batch(_cycle_batch(traj[29], 30, 1, t0 + 29))
        await eventually(lambda: len(out.values("t1-rul.rul_cycles")) == 1)
        eng.on_batch(_cycle_batch(traj[30], 31, 1, t0 + 30))
        await eventually(lambda: len(out.values("t1-rul.rul_cycles")) == 2)

        # the engine's number is the bare model's on the same 30 rows, oldest first
        bare = ort.InferenceSession(str(REPO / "models/pdm-rul/model.onnx"))
        want = bare.run(None, {"window": traj[1:31][np.newaxis]})[0][0, 0]
        assert out.values("t1-rul.rul_cycles")[1] == pytest.approx(float(want), abs=1e-4)

        # a row with a BAD sensor is not added; the window does not move
        eng.on_batch(_cycle_batch(traj[31], 32, 1, t0 + 31, bad=3))
        await asyncio.sleep(0.1)
        assert len(out.values("t1-rul.rul_cycles")) == 2
        assert eng.status()[0]["rows_incomplete"] == 1

        # overhaul: a new unit empties the window; 29 rows of it give nothing
        unit2 = _cmapss_unit(2)
        for c in range(29):
            eng.on_batch(_cycle_batch(unit2[c], c + 1, 2, t0 + 100 + c))
        await asyncio.sleep(0.2)
        assert len(out.values("t1-rul.rul_cycles")) == 2
        eng.on_batch(_cycle_batch(unit2[29], 30, 2, t0 + 129))
        await eventually(lambda: len(out.values("t1-rul.rul_cycles")) == 3)
        want2 = bare.run(None, {"window": unit2[0:30][np.newaxis]})[0][0, 0]
        assert out.values("t1-rul.rul_cycles")[2] == pytest.approx(float(want2), abs=1e-4)
    finally:
        await eng.stop(5)


async def test_rul_alarm_at_end_of_life(tmp_path: Path) -> None:
    eng, out = _engine(tmp_path, [RUL_BINDING], RUL_POINTS)
    traj = _cmapss_unit(1)
    await eng.start()
    try:
        t0 = time.time()
        for c in range(len(traj)):
            eng.on_batch(_cycle_batch(traj[c], c + 1, 1, t0 + c))
        await eventually(lambda: len(out.values("t1-rul.rul_cycles")) == len(traj) - 29)
        rul = out.values("t1-rul.rul_cycles")
        assert rul[0] > 100 and rul[-1] < 20  # healthy at the start, near failure at the end
        raised = [e["name"] for e in out.events("alarm") if e["state"] == "raised"]
        assert "maintenance_due" in raised and "maintenance_overdue" in raised
    finally:
        await eng.stop(5)


def _copy_model(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / "models" / name
    shutil.copytree(REPO / "models" / name, dst)
    return dst


@pytest.mark.parametrize("damage", ["bytes_changed", "not_onnx"])
async def test_a_broken_model_is_reported_and_its_rules_take_over(
    tmp_path: Path, damage: str
) -> None:
    folder = _copy_model(tmp_path, "pdm-failure")
    model = folder / "model.onnx"
    if damage == "bytes_changed":
        model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
        reason = "sha256"
    else:  # a file the manifest vouches for that is not a graph: it must fail to load
        model.write_bytes(b"this is not an onnx graph")
        manifest = yaml.safe_load((folder / "manifest.yaml").read_text())
        import hashlib

        manifest["files"]["model"]["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
        (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        reason = "does not load"
    eng, out = _engine(tmp_path, [FAILURE_BINDING], FAILURE_POINTS, {"model_paths": ["models"]})
    await eng.start()
    try:
        (st,) = eng.status()
        assert st["state"] == ModelState.FALLBACK
        assert reason in st["error"]
        assert out.events("model_failed")[0]["error"] == st["error"]

        t0 = time.time()
        eng.on_batch(_failure_batch(_row("HDF"), t0))
        await eventually(lambda: bool(out.values("m1-failure.alarm_failure_predicted")))
        (raised,) = out.events("alarm")
        assert raised["source"] == "fallback" and raised["rules"] == ["hdf"]
        assert raised["labels"] == ["HDF"]
        flag = out.of("m1-failure.alarm_failure_predicted")[0]
        assert flag.value is True and flag.reason == "fallback:pdm-failure@1.0.0"
        assert out.values("m1-failure.failure_risk") == []  # rules give alarms, not numbers
        assert eng.status()[0]["fallback_runs"] == 1
    finally:
        await eng.stop(5)


async def test_calls_over_budget_raise_the_alarm_and_good_calls_clear_it(
    tmp_path: Path,
) -> None:
    binding = {**FAILURE_BINDING, "latency_budget_ms": 0.000001}
    settings = {"budget_raise_after": 2, "budget_clear_after": 2}
    eng, out = _engine(tmp_path, [binding], FAILURE_POINTS, settings)
    await eng.start()
    try:
        t0 = time.time()
        eng.on_batch(_failure_batch(_row("healthy"), t0))
        await eventually(lambda: len(out.values("m1-failure.failure_risk")) == 1)
        assert eng.status()[0]["over_budget"] == 1
        assert out.events("alarm") == []  # one slow call is not a trend
        eng.on_batch(_failure_batch(_row("healthy"), t0 + 1))
        await eventually(lambda: bool(out.events("alarm")))
        (ev,) = out.events("alarm")
        assert ev["name"] == "latency_over_budget" and ev["state"] == "raised"
        assert ev["budget_ms"] == 0.000001 and ev["value"] > 0
        assert eng.status()[0]["over_budget"] == 2
        assert out.values("m1-failure.alarm_latency_over_budget") == [True]

        eng.instances[0].budget_ms = 10_000.0  # now every call is within budget
        for i in (2, 3):
            eng.on_batch(_failure_batch(_row("healthy"), t0 + i))
            await eventually(lambda i=i: len(out.values("m1-failure.failure_risk")) == i + 1)
        await eventually(lambda: len(out.events("alarm")) == 2)
        assert out.events("alarm")[1]["state"] == "cleared"
    finally:
        await eng.stop(5)


def test_bindings_are_checked_against_the_gateways_points(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _engine(
            tmp_path,
            [
                {**FAILURE_BINDING, "inputs": {"torque": "line.nope", "humidity": "line.x"}},
                {"id": "r", "model": "pdm-rul", "input_prefix": "t.", "row_key": "t.cycle"},
                {"id": "g", "model": "no-such-model"},
                {"id": "v", "model": "pdm-failure", "items": {"device": "d", "channel": "c"}},
            ],
            FAILURE_POINTS,
        )
    text = "\n".join(err.value.problems)
    assert "models.0.inputs.torque: no point line.nope" in text
    assert "models.0.inputs.humidity: pdm-failure has no feature 'humidity'" in text
    assert "models.1.inputs.t24_lpc_outlet_temp: no point t.t24_lpc_outlet_temp" in text
    assert "models.1.row_key: no point t.cycle" in text
    assert "models.2.model: no no-such-model/manifest.yaml" in text
    assert "models.3.items: pdm-failure reads points, not items" in text


def test_model_ids_cannot_shadow_devices_or_repeat(tmp_path: Path) -> None:
    data = {
        "gateway": {"id": "gw", "site": "s"},
        "models": [
            {"id": "m", "model": "pdm-failure", "input_prefix": "x."},
            {"id": "m", "model": "pdm-failure", "input_prefix": "y."},
        ],
    }
    with pytest.raises(ConfigError, match=r"models\.1\.id: duplicate id"):
        load_config_data(data, base_dir=tmp_path)


def _apple_rows() -> list[dict[str, str]]:
    path = DATASETS / "apple-quality" / "apple_quality-train.csv"
    if not path.exists():
        pytest.fail(f"{path} is missing (the model tests read ../shared/datasets)", pytrace=False)
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


FIELDS = ["Size", "Weight", "Sweetness", "Crunchiness", "Juiciness", "Ripeness", "Acidity"]


def _fruit_item(row: dict[str, str], item_id: str) -> Item:
    record = {k.lower(): float(row[k]) for k in FIELDS} | {"item_id": item_id}
    return Item(
        "grading-broker",
        "grader-1",
        "fruit",
        item_id,
        json.dumps(record).encode(),
        f"grading/grader-1/fruit/{item_id}",
        time.time(),
    )


GRADER = {
    "id": "g1",
    "model": "grading-tabular",
    "equipment": "grader-1",
    "items": {"device": "grading-broker", "channel": "fruit"},
}
CHANNELS = (("grading-broker", "fruit"),)


async def test_each_fruit_item_gets_a_grade_event_that_matches_the_bare_model(
    tmp_path: Path,
) -> None:
    eng, out = _engine(tmp_path, [GRADER], [], items=CHANNELS)
    rows = _apple_rows()[:20]
    await eng.start()
    try:
        for i, row in enumerate(rows):
            assert eng.submit_item(_fruit_item(row, f"grader-1-{i}")) is True
        await eventually(lambda: len(out.events("grade")) == 20)
        bare = ort.InferenceSession(str(REPO / "models/grading-tabular/model.onnx"))
        x = np.asarray([[float(r[k]) for k in FIELDS] for r in rows], dtype=np.float32)
        p_good = bare.run(["probabilities"], {"x": x})[0][:, 1]
        grades = {e["item_id"]: e for e in out.events("grade")}
        for i, p in enumerate(p_good):
            ev = grades[f"grader-1-{i}"]
            assert ev["grade"] == ("good" if p >= 0.5 else "bad")
            assert ev["model"] == "grading-tabular" and ev["equipment"] == "grader-1"
        st = eng.status()[0]
        assert st["rows_run"] == 20 and st["calls"] < 20  # waiting items share one call
        assert st["items_in"] == 20 and st["items_refused"] == 0
        # the share graded right on this slice of real rows
        right = sum(grades[f"grader-1-{i}"]["grade"] == r["Quality"] for i, r in enumerate(rows))
        assert right >= 16
        assert {r.reason for r in out.of("g1.grade")} == {"model:grading-tabular@1.0.0"}
    finally:
        await eng.stop(5)


async def test_a_bad_item_gets_grade_unknown_and_the_next_good_one_clears_the_alarm(
    tmp_path: Path,
) -> None:
    eng, out = _engine(tmp_path, [GRADER], [], items=CHANNELS)
    await eng.start()
    try:
        bad = Item("grading-broker", "grader-1", "fruit", "x-1", b'{"size": 1.0}', "t", time.time())
        eng.submit_item(bad)
        await eventually(lambda: len(out.events("grade")) == 1)
        (ev,) = out.events("grade")
        assert ev["grade"] == "unknown" and ev["item_id"] == "x-1"
        assert "missing or unusable fields: weight" in ev["fallback_reason"]
        (raised,) = out.events("alarm")
        assert raised["name"] == "grading_degraded" and raised["state"] == "raised"
        assert out.of("g1.grade")[0].quality is Quality.UNCERTAIN
        assert eng.status()[0]["items_bad"] == 1

        eng.submit_item(_fruit_item(_apple_rows()[0], "ok-1"))
        await eventually(lambda: len(out.events("alarm")) == 2)
        assert out.events("alarm")[1]["state"] == "cleared"
        for payload in (b"\xff\xfe", b"[" * 50, b"NaN", b'"text"', b"{}" * 3):
            eng.submit_item(Item("grading-broker", "grader-1", "fruit", None, payload, "t", 0.0))
        await eventually(lambda: len(out.events("grade")) == 7)
        assert [e["grade"] for e in out.events("grade")[2:]] == ["unknown"] * 5
    finally:
        await eng.stop(5)


async def test_a_full_item_queue_refuses_and_counts(tmp_path: Path) -> None:
    eng, _out = _engine(tmp_path, [GRADER], [], {"item_queue_max": 2}, items=CHANNELS)
    row = _apple_rows()[0]
    # not started: nothing takes the jobs, so the third item finds the queue full
    assert eng.submit_item(_fruit_item(row, "a")) is True
    assert eng.submit_item(_fruit_item(row, "b")) is True
    assert eng.submit_item(_fruit_item(row, "c")) is False
    assert eng.status()[0]["items_refused"] == 1
    wrong = Item("grading-broker", "grader-1", "image", "d", b"", "t", 0.0)
    assert eng.submit_item(wrong) is False  # no model reads that channel


def _fruit_images(n: int) -> list[tuple[Path, str]]:
    folder = DATASETS / "fruit-images"
    if not (folder / "manifest.csv").exists():
        pytest.fail(f"{folder} is missing (the model tests read ../shared/datasets)", pytrace=False)
    with (folder / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    picked = rows[:: max(1, len(rows) // n)][:n]  # spread over the classes
    return [(folder / r["path"], r["class"]) for r in picked]


@pytest.mark.parametrize("file", ["model", "model_int8"])
async def test_camera_items_are_graded_by_the_vision_model(tmp_path: Path, file: str) -> None:
    binding = {
        "id": "cam",
        "model": "grading-vision",
        "file": file,
        "items": {"device": "grading-broker", "channel": "image"},
    }
    eng, out = _engine(tmp_path, [binding], [], items=(("grading-broker", "image"),))
    images = _fruit_images(8)
    await eng.start()
    try:
        for i, (path, _) in enumerate(images):
            item = Item(
                "grading-broker",
                "grader-1",
                "image",
                f"img-{i}",
                path.read_bytes(),
                "t",
                time.time(),
            )
            assert eng.submit_item(item)
        eng.submit_item(
            Item("grading-broker", "grader-1", "image", "junk", b"\x89PNG-not", "t", 0.0)
        )
        await eventually(lambda: len(out.events("grade")) == 9)
        grades = {e["item_id"]: e for e in out.events("grade")}
        labels = {"fresh", "bruise_defect", "rot_defect", "scab_defect"}
        for i in range(8):
            ev = grades[f"img-{i}"]
            assert ev["grade"] in ("good", "reject") and ev["class"] in labels
            assert 0.25 <= ev["confidence"] <= 1.0
            assert (ev["grade"] == "good") == (ev["class"] == "fresh" and ev["confidence"] >= 0.5)
        assert grades["junk"]["grade"] == "unknown"
        assert "not an image" in grades["junk"]["fallback_reason"]
        st = eng.status()[0]
        assert st["file"] == file and st["rows_run"] == 8 and st["items_bad"] == 1
    finally:
        await eng.stop(5)
