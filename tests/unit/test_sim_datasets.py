"""The simulators' data sources, apart from sockets: the C-MAPSS loader and its synthetic
fallback, the turbine's replay logic, and the grading line's rows, images, order and payloads.

Tests on the real datasets skip only when `../shared/datasets` is not next to this checkout
(a field box or a bare clone); the synthetic fallbacks are always tested.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import statistics
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from simulators import cogen_turbine as ct
from simulators import grading_line as gl

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
needs_datasets = pytest.mark.skipif(
    not DATASETS.is_dir(), reason=f"the shared datasets are not next to this checkout ({DATASETS})"
)


# -- C-MAPSS ---------------------------------------------------------------------------------


def test_dataset_constants_point_at_the_shared_copy() -> None:
    assert ct.DATASET == DATASETS / "cmapss" / "train_FD001.txt"
    assert gl.FRUIT_DATASET == DATASETS / "apple-quality" / "apple_quality-train.csv"
    assert gl.IMAGE_DATASET == DATASETS / "fruit-images"


@needs_datasets
def test_load_cmapss_reads_fd001() -> None:
    units = ct.load_cmapss(ct.DATASET)
    assert sorted(units) == list(range(1, 101))
    assert sum(len(rows) for rows in units.values()) == 20631
    lives = [len(rows) for rows in units.values()]
    assert (min(lives), max(lives), statistics.median(lives)) == (128, 362, 199)
    first = units[1][0]
    # the file's first line: "1 1 -0.0007 -0.0004 100.0 518.67 641.82 1589.70 1400.60 ..."
    assert (first.unit, first.cycle, first.settings) == (1, 1, (-0.0007, -0.0004, 100.0))
    assert (first.sensor(1), first.sensor(2), first.sensor(3), first.sensor(4)) == (
        518.67,
        641.82,
        1589.70,
        1400.60,
    )
    assert first.sensor(21) == 23.4190 and len(first.sensors) == 21
    assert [r.cycle for r in units[1]] == list(range(1, 193))
    assert all(r.unit == 1 for r in units[1])


def test_parse_cmapss_says_where_a_file_is_wrong() -> None:
    good = "1 1 " + " ".join(["0.5"] * 24) + "  \n"
    rows = ct.parse_cmapss([good, "\n", good.replace("1 1 ", "1 2 ", 1)])
    assert [r.cycle for r in rows[1]] == [1, 2]
    with pytest.raises(ValueError, match=r"x:1: 25 columns"):
        ct.parse_cmapss(["1 1 " + " ".join(["0.5"] * 23)], "x")
    with pytest.raises(ValueError, match=r"x:2: unit 1 cycle 3, expected 2"):
        ct.parse_cmapss([good, good.replace("1 1 ", "1 3 ", 1)], "x")
    with pytest.raises(ValueError, match=r"x:1: "):
        ct.parse_cmapss([good.replace("0.5", "abc", 1)], "x")
    with pytest.raises(ValueError, match="no data rows"):
        ct.parse_cmapss(["", "  "], "x")


def test_synthetic_trajectories_degrade_like_fd001() -> None:
    a = ct.synthetic_trajectory(1, seed=0)
    assert a == ct.synthetic_trajectory(1, seed=0), "seeded"
    assert a != ct.synthetic_trajectory(2, seed=0) and a != ct.synthetic_trajectory(1, seed=1)
    for unit in range(1, 11):
        rows = ct.synthetic_trajectory(unit, seed=3)
        assert 128 <= len(rows) <= 362
        assert [r.cycle for r in rows] == list(range(1, len(rows) + 1))
        assert all(r.unit == unit and len(r.sensors) == 21 for r in rows)
    rows = ct.synthetic_trajectory(5, seed=0)
    for s in ct.SENSORS:
        early = statistics.mean(r.sensor(s.number) for r in rows[:20])
        late = statistics.mean(r.sensor(s.number) for r in rows[-10:])
        # drifts toward failure in FD001's direction, most of it late (exponential)
        assert (late - early) * (s.end - s.start) > 0, s.var
        assert abs(early - s.start) < 4 * s.noise + 0.2 * abs(s.end - s.start), s.var
        assert all(round(r.sensor(s.number), s.decimals) == r.sensor(s.number) for r in rows)
    assert {r.sensor(1) for r in rows} == {518.67}  # FD001's constant sensors stay constant
    assert {r.settings[2] for r in rows} == {100.0}
    short = ct.synthetic_trajectory(1, life=(3, 3))
    assert [r.cycle for r in short] == [1, 2, 3]
    with pytest.raises(ValueError):
        ct.synthetic_trajectory(1, life=(1, 5))


def test_start_index_keeps_the_models_window() -> None:
    assert ct.start_index(200, 0.0, 40) == 0
    assert ct.start_index(200, 0.5, 40) == 100
    assert ct.start_index(200, 0.9, 40) == 160  # 180 would leave only 20 cycles
    assert ct.start_index(30, 0.5, 40) == 0  # shorter than min_cycles: all of it
    assert ct.start_index(200, 0.99, 1) == 198


def test_turbines_replay_and_overhaul_without_a_server() -> None:
    """No server needed: step() advances the turbines; an overhaul moves to the next unit
    (stride = number of turbines), Cycle restarts and TrueRul = last cycle - cycle."""
    sim = ct.CogenTurbinePlant(
        cycle_period=None, turbines=2, dataset=None, synthetic_life=(4, 4), min_cycles=1
    )
    assert sim.synthetic
    t1 = sim.turbines["Turbine1"]
    seen = []
    for _ in range(9):
        v = sim.current_values("Turbine1")
        seen.append((v["UnitId"], v["Cycle"], v["TrueRul"]))
        asyncio.run(sim.step())
    assert seen == [
        (1, 1, 3.0), (1, 2, 2.0), (1, 3, 1.0), (1, 4, 0.0),
        (3, 1, 3.0), (3, 2, 2.0), (3, 3, 1.0), (3, 4, 0.0),
        (5, 1, 3.0),
    ]  # fmt: skip
    assert t1.overhauls == 2 and sim.turbines["Turbine2"].unit == 6
    v = sim.current_values("Turbine1")
    assert list(v) == [var.name for var in ct.TURBINE_VARS]
    assert list(v)[:14] == [s.var for s in ct.SENSORS] and list(v)[-1] == "Cycle"
    assert v["T24"] == t1.row.sensor(2) and v["HtBleed"] == t1.row.sensor(17)
    assert type(v["Cycle"]) is int and type(v["UnitId"]) is int and type(v["T24"]) is float


@needs_datasets
def test_start_fraction_starts_every_trajectory_part_way() -> None:
    sim = ct.CogenTurbinePlant(cycle_period=None, start_fraction=0.5)
    assert not sim.synthetic and sim.dataset == ct.DATASET
    t1 = sim.turbines["Turbine1"]
    assert (t1.unit, t1.row.cycle, t1.true_rul) == (1, 97, 95)  # unit 1 lives 192 cycles
    t1.jump(192)
    asyncio.run(sim.step())
    assert (t1.unit, t1.row.cycle) == (2, 287 // 2 + 1)  # unit 2 lives 287 cycles


def test_plant_arguments_are_checked() -> None:
    for bad in (
        {"turbines": 0},
        {"cycle_period": 0},
        {"start_fraction": 1.0},
        {"start_fraction": -0.1},
        {"min_cycles": 0},
        {"turbines": 101, "dataset": None},
    ):
        with pytest.raises(ValueError):
            ct.CogenTurbinePlant(**bad)  # type: ignore[arg-type]


# -- grading line ----------------------------------------------------------------------------


@needs_datasets
def test_apple_quality_rows() -> None:
    rows = gl.load_apple_quality(gl.FRUIT_DATASET)
    assert len(rows) == 3200
    assert Counter(r.quality for r in rows) == {"good": 1603, "bad": 1597}
    first = rows[0]
    # "0,-3.970048523,-2.512336381,5.346329613,-1.012008712,1.844900361,0.329839797,
    #  -0.491590483,good"
    assert first.source_id == 0 and first.quality == "good"
    assert first.values == (
        -3.970048523,
        -2.512336381,
        5.346329613,
        -1.012008712,
        1.844900361,
        0.329839797,
        -0.491590483,
    )


def test_apple_quality_parse_errors() -> None:
    head = "A_id,Size,Weight,Sweetness,Crunchiness,Juiciness,Ripeness,Acidity,Quality\n"
    (row,) = gl.parse_apple_quality([head, "1,1,2,3,4,5,6,7,bad\n"])
    assert row == gl.FruitRow(1, (1, 2, 3, 4, 5, 6, 7), "bad")
    with pytest.raises(ValueError, match="missing columns Acidity"):
        gl.parse_apple_quality([head.replace("Acidity", "Sourness")])
    with pytest.raises(ValueError, match=r":2: Quality 'meh'"):
        gl.parse_apple_quality([head, "1,1,2,3,4,5,6,7,meh\n"])
    with pytest.raises(ValueError, match=r":2: "):
        gl.parse_apple_quality([head, "1,1,2,x,4,5,6,7,bad\n"])
    with pytest.raises(ValueError, match="no data rows"):
        gl.parse_apple_quality([head])


@needs_datasets
def test_fruit_images_manifest() -> None:
    items = gl.load_image_manifest(gl.IMAGE_DATASET)
    assert len(items) == 800
    assert Counter(i.cls for i in items) == {c: 200 for c in gl.IMAGE_CLASSES}
    assert all(i.label == gl.IMAGE_CLASSES[i.cls] for i in items)
    manifest = (gl.IMAGE_DATASET / "manifest.csv").read_text().splitlines()[1:]
    sha = {line.split(",")[0]: line.split(",")[4] for line in manifest}
    order = gl.ShuffledCycle(items, seed=0, salt="image")
    for _ in range(8):  # the bytes published are the files listed, unchanged
        item = order.next()
        assert hashlib.sha256(item.read()).hexdigest() == sha[item.name]
        with Image.open(io.BytesIO(item.read())) as img:
            assert img.convert("RGB").size == (256, 256)


def test_image_manifest_problems(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text(
        "path,class,label,group,sha256\nfresh/a.jpg,fresh,healthy,g,x\n"
    )
    with pytest.raises(ValueError, match=r"1 listed images are missing, e\.g\. fresh/a\.jpg"):
        gl.load_image_manifest(tmp_path)
    with pytest.raises(ValueError, match="class 'plum'"):
        gl.parse_image_manifest(["path,class\n", "p.jpg,plum\n"], tmp_path)


def test_synthetic_fruit_and_images() -> None:
    rows = gl.synthetic_fruit(2000, seed=4)
    assert rows == gl.synthetic_fruit(2000, seed=4) != gl.synthetic_fruit(2000, seed=5)
    good = sum(r.quality == "good" for r in rows) / len(rows)
    assert 0.4 < good < 0.6
    for i, name in enumerate(gl.FRUIT_FIELDS):  # the dataset's means and spreads
        values = [r.values[i] for r in rows]
        assert abs(statistics.mean(values) - gl._FRUIT_MEAN[i]) < 0.15, name
        assert abs(statistics.stdev(values) / gl._FRUIT_STD[i] - 1) < 0.1, name
    images = gl.synthetic_images(8, seed=2)
    assert [i.read() for i in images] == [i.read() for i in gl.synthetic_images(8, seed=2)]
    assert Counter(i.cls for i in images) == {c: 2 for c in gl.IMAGE_CLASSES}
    for item in images:
        data = item.read()
        assert data.startswith(b"\x89PNG") and len(data) < 20_000
        with Image.open(io.BytesIO(data)) as img:
            assert img.convert("RGB").size == (128, 128)


def test_shuffled_cycle_order() -> None:
    items = list(range(50))
    a = gl.ShuffledCycle(items, seed=1, salt="fruit")
    first_pass = [a.next() for _ in range(50)]
    assert sorted(first_pass) == items and first_pass != items  # every item once, mixed
    assert [a.next() for _ in range(50)] == first_pass  # the same order on every pass
    b = gl.ShuffledCycle(items, seed=1, salt="fruit")
    assert [b.next() for _ in range(50)] == first_pass  # seeded
    c = gl.ShuffledCycle(items, seed=2, salt="fruit")
    assert [c.next() for _ in range(50)] != first_pass
    with pytest.raises(ValueError):
        gl.ShuffledCycle([], seed=0, salt="x")


def test_fruit_payload_shape() -> None:
    row = gl.FruitRow(7, (-3.970048523, 1.0, 2.5, -0.25, 0.0, 1e-9, 3.0), "bad")
    msg = gl.fruit_payload("line-1-42", 1718000000123, row)
    assert msg == {
        "item_id": "line-1-42",
        "ts": 1718000000123,
        "size": -3.970048523,
        "weight": 1.0,
        "sweetness": 2.5,
        "crunchiness": -0.25,
        "juiciness": 0.0,
        "ripeness": 1e-9,
        "acidity": 3.0,
        "truth": "bad",
    }
    assert json.loads(json.dumps(msg)) == msg  # floats survive JSON exactly


def test_grading_line_sources_and_ids_without_a_broker() -> None:
    """The line's order is seeded; ids count up across both stations (nothing is sent
    before start(): paho queues the messages)."""
    a = gl.GradingLine(fruit_dataset=None, image_dataset=None, seed=3)
    b = gl.GradingLine(fruit_dataset=None, image_dataset=None, seed=3)
    assert a.synthetic and "SYNTHETIC fruit rows" in a.describe()
    ids = []
    for _ in range(3):
        topic, msg = a.publish_fruit()
        ids.append(msg["item_id"])
        assert topic == f"grading/line-1/fruit/{msg['item_id']}"
        _, msg_b = b.publish_fruit()
        assert {k: v for k, v in msg.items() if k != "ts"} == {
            k: v for k, v in msg_b.items() if k != "ts"
        }
        topic, image = a.publish_image()
        ids.append(topic.rsplit("/", 1)[1])
        assert image.read() == b.publish_image()[1].read()
    assert ids == [f"line-1-{n}" for n in range(1, 7)]
    assert a.published == {"fruit": 3, "image": 3}
    for bad in ({"line": "a/b"}, {"line": "+"}, {"fruit_rate": -1}, {"mqtt_version": "3.1"}):
        with pytest.raises(ValueError):
            gl.GradingLine(fruit_dataset=None, image_dataset=None, **bad)  # type: ignore[arg-type]


@needs_datasets
def test_grading_line_uses_the_datasets_when_present() -> None:
    line = gl.GradingLine(seed=0)
    assert not line.synthetic
    assert len(line.fruit.items) == 3200 and len(line.images.items) == 800
    assert "3200 apple-quality rows" in line.describe()
    assert "800 fruit-images photos" in line.describe()
    classes = [line.images.next().cls for _ in range(40)]
    assert len(set(classes)) == 4, "shuffled: the manifest is sorted by class"
