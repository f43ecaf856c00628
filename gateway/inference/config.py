"""Configuration of the inference engine: where models are, how they run, what they read.

A manifest speaks of logical points (`torque`, `ps30_hpc_static_pressure`); a binding in the
gateway config ties one model to one machine's real points, so the same model serves every
mill on a line::

    inference:
      threads: 1                      # onnxruntime intra-op threads per model call
      providers: [CPUExecutionProvider]
    models:
      - id: mill1-failure             # results are points mill1-failure.failure_risk, ...
        model: pdm-failure            # models/pdm-failure/manifest.yaml
        equipment: mill-1
        input_prefix: line-1.mill1_   # feature `torque` -> point line-1.mill1_torque ...
        inputs:                       # ... unless named here
          product_type: line-1.mill1_product_type
      - id: turbine1-rul
        model: pdm-rul
        input_prefix: cogen-1.
        row_key: cogen-1.cycle        # one window row per change of this point
        reset_on: cogen-1.unit_id     # an overhaul (new unit) empties the window
      - id: line1-grade
        model: grading-vision
        file: model_int8              # the manifest's files key (model | model_int8)
        items: {device: grading-broker, channel: image}

Which points exist is only known once the drivers are built, so `check_bindings` runs at
gateway start (and in `millrace validate`) and reports every problem the way the config
loader does (`models.0.inputs.torque: no point line-1.mill1_torque`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.types import Name

#: The repository's own models, used when a config's model_paths do not have the model.
BUILTIN_MODELS = Path(__file__).resolve().parents[2] / "models"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InferenceConfig(_Strict):
    #: Folders (relative to the config file) searched for `<model>/manifest.yaml` before the
    #: built-in `models/`.
    model_paths: list[str] = Field(default_factory=lambda: ["models"])
    #: onnxruntime intra-op threads for each call. 1 leaves the other cores to the gateway;
    #: platform profiles raise it where cores are spare.
    threads: int = Field(default=1, ge=1, le=64)
    #: Execution providers in order of preference; those this build lacks are skipped.
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], min_length=1)
    #: Worker threads running model calls (calls never run on the event loop).
    workers: int = Field(default=1, ge=1, le=16)
    #: Batches of readings waiting for the engine before further ones are refused (counted).
    queue_max: int = Field(default=2000, ge=10, le=1_000_000)
    #: Items waiting per model before further ones are refused (counted; the sender's
    #: broker keeps them only if QoS and session allow).
    item_queue_max: int = Field(default=256, ge=1, le=100_000)
    #: Items run together in one call when several wait (a batch costs less than its items).
    max_batch: int = Field(default=16, ge=1, le=1024)
    #: Consecutive calls over budget that raise the latency alarm: one slow call (a cold
    #: cache, a garbage collection, a neighbour busy on the CPU) is not a trend to warn of.
    budget_raise_after: int = Field(default=3, ge=1, le=10_000)
    #: Consecutive calls within budget that clear a latency alarm.
    budget_clear_after: int = Field(default=100, ge=1, le=100_000)


class ItemSource(_Strict):
    device: Name
    channel: Name


class ModelBinding(_Strict):
    id: Name
    model: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]{0,63}$")
    enabled: bool = True
    equipment: Name | None = None
    file: str = Field(default="model", pattern=r"^[a-z0-9_]{1,32}$")
    inputs: dict[str, str] = Field(default_factory=dict)
    input_prefix: str | None = Field(default=None, min_length=1, max_length=200)
    row_key: str | None = None
    reset_on: str | None = None
    items: ItemSource | None = None
    #: Override the manifest's budget (the manifest's is for the Pi-class target).
    latency_budget_ms: float | None = Field(default=None, gt=0, le=60_000)
    threads: int | None = Field(default=None, ge=1, le=64)

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.items is not None and (self.inputs or self.input_prefix or self.row_key):
            raise ValueError("an item-fed model takes items, not point inputs")
        return self

    def point_for(self, feature: str) -> str | None:
        if feature in self.inputs:
            return self.inputs[feature]
        if self.input_prefix is not None:
            return f"{self.input_prefix}{feature}"
        return None


def model_folders(paths: Sequence[str], base_dir: Path) -> list[Path]:
    folders = [p if (p := Path(s)).is_absolute() else base_dir / p for s in paths]
    return [*folders, BUILTIN_MODELS]


def find_model(name: str, folders: Sequence[Path]) -> Path | None:
    return next((d / name for d in folders if (d / name / "manifest.yaml").is_file()), None)


def check_binding(
    i: int,
    b: ModelBinding,
    features: Sequence[str],
    source: str,
    files: Collection[str],
    points: Collection[str],
    item_channels: Collection[tuple[str, str]],
) -> list[str]:
    """Problems binding model `b` (models.i) to this gateway's points and item channels."""
    where = f"models.{i}"
    problems: list[str] = []
    if b.file not in files:
        problems.append(
            f"{where}.file: model {b.model} has no file {b.file!r} "
            f"(has: {', '.join(sorted(files))})"
        )
    if source == "payload":
        if b.items is None:
            problems.append(
                f"{where}.items: {b.model} reads item payloads; name the device and channel"
            )
        elif (b.items.device, b.items.channel) not in item_channels:
            problems.append(
                f"{where}.items: no item channel {b.items.channel!r} on device {b.items.device!r} "
                f"(got {b.items.device}/{b.items.channel})"
            )
        return problems
    if b.items is not None:
        problems.append(f"{where}.items: {b.model} reads points, not items")
    for name in b.inputs:
        if name not in features:
            problems.append(f"{where}.inputs.{name}: {b.model} has no feature {name!r}")
    for f in features:
        pid = b.point_for(f)
        if pid is None:
            problems.append(f"{where}.inputs.{f}: not bound (give inputs.{f} or input_prefix)")
        elif pid not in points:
            problems.append(f"{where}.inputs.{f}: no point {pid} (got {pid})")
    for key in ("row_key", "reset_on"):
        pid = getattr(b, key)
        if pid is not None and pid not in points:
            problems.append(f"{where}.{key}: no point {pid} (got {pid})")
    return problems
