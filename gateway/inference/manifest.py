"""Read and check a model's `manifest.yaml`: the contract between a training script and the engine.

The training scripts write much more than the engine reads (metrics, protocol, model cards);
those keys are kept as they are and not checked here. The blocks the engine acts on (`files`,
`inputs`, `outputs`, `run`, `thresholds`, `health`, `fallback_rules`, `latency_budget_ms`)
are validated strictly enough that a manifest the engine accepts cannot fail later for a
reason a load-time check could have caught: every rule is compiled, every threshold names a
real output and label, window models declare a window, payload models a way to read one.

`load_manifest(folder)` raises `ModelError` listing every problem (`path: reason`); the
file checksum is verified separately by `verify_file`, since reading a large model just to
validate its manifest (`millrace validate`) would be wasted work.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.errors import ModelError
from gateway.inference.rules import Rule, RuleError, compile_rule

Severity = Literal["info", "warning", "critical"]
_LABEL_TOKENS = ("{label}", "{label_lower}", "<label lower-case>")
_POINT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")


class _Block(BaseModel):
    """Engine-read blocks: unknown keys are descriptive text, kept but not used."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class Feature(_Block):
    index: int = Field(ge=0)
    #: Points-fed models: the logical point name a config binds to a gateway point.
    point: str | None = None
    #: Payload-fed models: the field of the item's JSON record.
    field: str | None = None
    name: str | None = None
    unit: str = ""

    @property
    def key(self) -> str:
        return self.point or self.field or f"feature_{self.index}"


class Encoding(_Block):
    map: dict[str, float]


class WindowSpec(_Block):
    length: int = Field(ge=1, le=10_000)
    step: int = Field(default=1, ge=1)


class Resize(_Block):
    width: int = Field(ge=1, le=4096)
    height: int = Field(ge=1, le=4096)
    method: Literal["bilinear", "nearest", "bicubic"] = "bilinear"


class Preprocessing(_Block):
    resize: Resize
    layout: str = "NCHW"


class InputSpec(_Block):
    name: str
    dtype: Literal["float32"]
    shape: list[int | str] = Field(min_length=1)
    source: Literal["points", "payload"]
    features: list[Feature] = Field(default_factory=list)
    window: WindowSpec | None = None
    encoding: dict[str, Encoding] = Field(default_factory=dict)
    preprocessing: Preprocessing | None = None

    def encoding_for(self, feature: Feature) -> dict[str, float] | None:
        """A categorical map, keyed in the manifest by the feature's point/field or name."""
        enc = self.encoding.get(feature.key) or (
            self.encoding.get(feature.name) if feature.name else None
        )
        return enc.map if enc else None

    @property
    def kind(self) -> Literal["window", "row", "record", "image"]:
        if self.preprocessing is not None:
            return "image"
        if self.window is not None:
            return "window"
        return "row" if self.source == "points" else "record"


class OutputReading(_Block):
    point: str | None = None
    point_per_label: str | None = None


class OutputSpec(_Block):
    name: str
    dtype: Literal["float32", "int64"]
    shape: list[int | str] = Field(min_length=1)
    labels: list[str] | None = None
    reading: OutputReading | None = None

    def label_index(self, label: str) -> int:
        assert self.labels is not None
        return self.labels.index(label)


class RunSpec(_Block):
    on: Literal["readings", "change", "item"]
    every_n_readings: int = Field(default=1, ge=1)
    min_rows: int | None = Field(default=None, ge=1)
    points: list[str] = Field(default_factory=list)
    debounce_ms: float = Field(default=0.0, ge=0, le=60_000)


class Threshold(_Block):
    output: str
    #: A class label, `any` (each label on its own) or `max` (the largest probability).
    label: str | None = None
    op: Literal["<", "<=", ">", ">="] | None = None
    value: float | None = None
    between: tuple[float, float] | None = None
    alarm: str | None = None
    severity: Severity = "warning"
    grade: str | None = None
    else_: str | None = Field(default=None, alias="else")
    event: str | None = None
    action: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if (self.op is None) == (self.between is None):
            raise ValueError("give either op + value or between: [low, high]")
        if self.op is not None and self.value is None:
            raise ValueError(f"op {self.op} needs a value")
        if self.between is not None and self.between[0] > self.between[1]:
            raise ValueError(f"between: low {self.between[0]} is above high {self.between[1]}")
        if self.alarm is None and self.grade is None and self.event is None:
            raise ValueError("a threshold raises an alarm, decides a grade or emits an event")
        if self.grade is not None and self.label in ("any",):
            raise ValueError("a grade decision needs one label (or max), not any")
        return self

    def holds(self, x: float) -> bool:
        if self.between is not None:
            return self.between[0] <= x <= self.between[1]
        v = self.value
        assert v is not None
        match self.op:
            case "<":
                return x < v
            case "<=":
                return x <= v
            case ">":
                return x > v
            case _:
                return x >= v


class FallbackRule(_Block):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    when: str | None = None
    alarm: str | None = None
    severity: Severity = "warning"
    label: str | None = None
    grade: str | None = None
    note: str | None = None


class Health(_Block):
    pool_available_if: str | None = None


class FileSpec(_Block):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int | None = Field(default=None, ge=1)


class Manifest(_Block):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]{0,63}$")
    version: str = Field(min_length=1, max_length=32)
    task: str = ""
    files: dict[str, FileSpec]
    inputs: list[InputSpec] = Field(min_length=1, max_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    run: RunSpec
    thresholds: list[Threshold] = Field(default_factory=list)
    health: Health | None = None
    fallback_rules: list[FallbackRule] = Field(default_factory=list)
    latency_budget_ms: float = Field(gt=0, le=60_000)

    @property
    def input(self) -> InputSpec:
        return self.inputs[0]

    def output(self, name: str) -> OutputSpec:
        return next(o for o in self.outputs if o.name == name)


class LoadedManifest:
    """A checked manifest, where it lives, and its compiled rules."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        rules: dict[str, Rule],
        health: Rule | None,
        result_points: list[str],
    ) -> None:
        self.folder = folder
        self.m = manifest
        #: Fallback rule name -> compiled `when` (rules without `when` always apply).
        self.rules = rules
        self.health = health
        #: Point names (without the instance prefix) the model's results are published on.
        self.result_points = result_points
        #: Alarms only fallback rules raise: cleared whenever the model itself answers.
        threshold_alarms = {t.alarm for t in manifest.thresholds if t.alarm}
        self.fallback_only_alarms = sorted(
            {r.alarm for r in manifest.fallback_rules if r.alarm} - threshold_alarms
        )
        #: Precomputed for the per-call path: outputs by name, per-label point names.
        self.outputs = {o.name: o for o in manifest.outputs}
        self.label_points = {
            o.name: [label_point(o.reading.point_per_label, lb) for lb in o.labels]
            for o in manifest.outputs
            if o.reading and o.reading.point_per_label and o.labels
        }

    @property
    def stamp(self) -> str:
        return f"{self.m.name}@{self.m.version}"

    def file(self, key: str = "model") -> FileSpec:
        try:
            return self.m.files[key]
        except KeyError:
            raise ModelError(
                f"model {self.m.name}: no file {key!r} in the manifest "
                f"(has: {', '.join(sorted(self.m.files))})"
            ) from None

    def path(self, key: str = "model") -> Path:
        return self.folder / self.file(key).path


def load_manifest(folder: str | Path) -> LoadedManifest:
    """Parse and check `<folder>/manifest.yaml`; ModelError lists every problem."""
    folder = Path(folder)
    path = folder / "manifest.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not valid YAML ({_first_line(exc)})") from exc
    if not isinstance(raw, dict):
        raise ModelError(f"{path}: a manifest is a mapping, got {type(raw).__name__}")
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as exc:
        lines = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise ModelError(f"{path}: " + "; ".join(lines)) from None
    problems = _cross_check(m)
    rules: dict[str, Rule] = {}
    health: Rule | None = None
    names = [f.key for f in m.input.features]
    windowed = m.input.window is not None
    for i, rule in enumerate(m.fallback_rules):
        if rule.name in rules:
            problems.append(f"fallback_rules.{i}.name: {rule.name!r} is used twice")
        if rule.when is None:
            rules[rule.name] = _ALWAYS
            continue
        try:
            rules[rule.name] = compile_rule(rule.when, names, window=windowed)
        except RuleError as exc:
            problems.append(f"fallback_rules.{i}.when: {exc}")
    points = result_points(m)
    if m.health is not None and m.health.pool_available_if:
        try:
            health = compile_rule(m.health.pool_available_if, points)
        except RuleError as exc:
            problems.append(f"health.pool_available_if: {exc}")
    if problems:
        raise ModelError(f"{path}: " + "; ".join(problems))
    return LoadedManifest(folder, m, rules, health, points)


def verify_file(path: Path, spec: FileSpec) -> None:
    """The model file is what the training script wrote (sha256), or ModelError."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if digest.hexdigest() != spec.sha256:
        raise ModelError(
            f"{path}: sha256 {digest.hexdigest()[:16]}... does not match the manifest's "
            f"{spec.sha256[:16]}... (a changed or damaged file; re-run the training script)"
        )


def label_point(template: str, label: str) -> str:
    """`failure_mode_{label_lower}` + `HDF` -> `failure_mode_hdf`."""
    out = template.replace("{label_lower}", label.lower()).replace("{label}", label)
    return out.replace("<label lower-case>", label.lower())


def result_points(m: Manifest) -> list[str]:
    """Every point name the model publishes, in a stable order (health rules read these)."""
    points: list[str] = []
    for out in m.outputs:
        r = out.reading
        if r is None:
            continue
        if r.point_per_label and out.labels:
            points += [label_point(r.point_per_label, lb) for lb in out.labels]
        elif r.point and out.labels:
            points += [r.point, f"{r.point}_confidence", f"{r.point}_class"]
        elif r.point:
            points.append(r.point)
    return points


def _cross_check(m: Manifest) -> list[str]:
    problems: list[str] = []
    inp = m.input
    if "model" not in m.files:
        problems.append("files: needs a `model` entry")
    outputs = {o.name: o for o in m.outputs}
    if inp.kind in ("window", "row", "record"):
        if not inp.features:
            problems.append("inputs.0.features: a tabular or window input lists its features")
        idx = sorted(f.index for f in inp.features)
        if idx != list(range(len(idx))):
            problems.append(f"inputs.0.features: indexes must be 0..{len(idx) - 1} (got {idx})")
        want = "point" if inp.source == "points" else "field"
        for i, f in enumerate(inp.features):
            if getattr(f, want) is None:
                problems.append(f"inputs.0.features.{i}: a {inp.source} input names its {want}")
        width = inp.shape[-1]
        if isinstance(width, int) and width != len(inp.features):
            problems.append(
                f"inputs.0.shape: last axis {width} but {len(inp.features)} features listed"
            )
        keys = [f.key for f in inp.features]
        if len(set(keys)) != len(keys):
            problems.append("inputs.0.features: names repeat")
        for name in inp.encoding:
            if name not in keys and name not in {f.name for f in inp.features}:
                problems.append(f"inputs.0.encoding.{name}: not a feature")
    if inp.kind == "window":
        assert inp.window is not None
        if len(inp.shape) != 3 or inp.shape[1] != inp.window.length:
            problems.append(
                f"inputs.0.shape: a window input is [N, {inp.window.length}, features] "
                f"(got {inp.shape})"
            )
        if m.run.on != "readings":
            problems.append("run.on: a window model runs on readings")
    if inp.kind == "image" and m.run.on != "item":
        problems.append("run.on: an image model runs on items")
    if inp.source == "payload" and m.run.on != "item":
        problems.append("run.on: a payload model runs on items")
    if inp.source == "points" and m.run.on == "item":
        problems.append("run.on: a points model runs on readings or change")
    if m.run.on == "change":
        unknown = [p for p in m.run.points if p not in {f.key for f in inp.features}]
        if unknown:
            problems.append(f"run.points: not features: {', '.join(unknown)}")
    for i, t in enumerate(m.thresholds):
        out = outputs.get(t.output)
        if out is None:
            problems.append(f"thresholds.{i}.output: no output {t.output!r}")
            continue
        if t.label not in (None, "any", "max") and (not out.labels or t.label not in out.labels):
            problems.append(f"thresholds.{i}.label: {t.label!r} is not a label of {t.output}")
        if t.label in ("any", "max") and not out.labels:
            problems.append(f"thresholds.{i}.label: {t.output} has no labels")
        if t.label is None and out.labels and len(out.labels) > 1:
            problems.append(f"thresholds.{i}.label: {t.output} has labels; say which")
    grades = [t for t in m.thresholds if t.grade is not None]
    if len({t.output for t in grades}) > 1:
        problems.append("thresholds: grade decisions must all read the same output")
    for out in m.outputs:
        r = out.reading
        for name in [r.point] if r and r.point else []:
            if not _POINT_RE.match(name):
                problems.append(f"outputs.{out.name}.reading.point: {name!r} is not a point name")
        if r and r.point_per_label:
            if not out.labels:
                problems.append(f"outputs.{out.name}.reading.point_per_label: no labels")
            elif not any(tok in r.point_per_label for tok in _LABEL_TOKENS):
                problems.append(
                    f"outputs.{out.name}.reading.point_per_label: needs {{label}} or "
                    "{label_lower}"
                )
    if not any(o.reading for o in m.outputs):
        problems.append("outputs: no output says which reading it becomes")
    return problems


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def manifest_dict(lm: LoadedManifest) -> dict[str, Any]:
    """The engine-read part, for `/models` and `millrace models show`."""
    return lm.m.model_dump(
        include={"name", "version", "task", "run", "latency_budget_ms"}, mode="json"
    )


_ALWAYS = compile_rule("1", ())
