"""onnxruntime sessions: created once per model, with the platform's providers and threads.

A session is expensive to create (graph optimisation) and cheap to call, so each model gets
exactly one, made at start-up in a worker thread. Execution providers are taken in the
configured order of preference and those this onnxruntime build does not have are skipped
(a Jetson profile asks TensorRT -> CUDA -> CPU; the same config on a Pi ends with CPU).
`intra_op_num_threads` bounds the cores one call may use: on a Pi the gateway's own work
needs a core, so profiles give models fewer than all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.errors import ModelError

if TYPE_CHECKING:
    from gateway.inference.manifest import LoadedManifest

log = logging.getLogger("millrace.inference")

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}


@dataclass(frozen=True)
class SessionSettings:
    threads: int = 1
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


class ModelSession:
    """One loaded ONNX graph and the names the engine feeds and reads."""

    def __init__(self, lm: LoadedManifest, file_key: str, settings: SessionSettings) -> None:
        import onnxruntime as ort

        from gateway.inference.manifest import verify_file

        path = lm.path(file_key)
        verify_file(path, lm.file(file_key))
        available = ort.get_available_providers()
        providers = [p for p in settings.providers if p in available]
        if not providers:
            raise ModelError(
                f"model {lm.m.name}: none of the providers {list(settings.providers)} is in "
                f"this onnxruntime build (it has {available})"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = settings.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"model {lm.m.name}: {path.name} does not load ({exc})") from exc
        self.providers: list[str] = self._session.get_providers()
        self.file = path
        self.input_name = lm.m.input.name
        self.output_names = [o.name for o in lm.m.outputs]
        _check_io(lm, self._session)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One call on a batch; outputs by name. Raises ModelError with onnxruntime's reason."""
        try:
            values = self._session.run(self.output_names, {self.input_name: x})
        except Exception as exc:
            raise ModelError(f"inference failed: {exc}") from exc
        return dict(zip(self.output_names, values, strict=True))

    def bare(self) -> Any:
        """The onnxruntime session itself (for `models bench` to time a bare call)."""
        return self._session


def _check_io(lm: LoadedManifest, session: Any) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    problems: list[str] = []
    spec = lm.m.input
    got = inputs.get(spec.name)
    if got is None:
        problems.append(f"input {spec.name!r} not in the graph (it has {sorted(inputs)})")
    else:
        if got.type != _ORT_TYPES[spec.dtype]:
            problems.append(f"input {spec.name}: graph type {got.type}, manifest {spec.dtype}")
        problems += _shape_problems(f"input {spec.name}", got.shape, spec.shape)
    for out in lm.m.outputs:
        g = outputs.get(out.name)
        if g is None:
            problems.append(f"output {out.name!r} not in the graph (it has {sorted(outputs)})")
            continue
        if g.type != _ORT_TYPES[out.dtype]:
            problems.append(f"output {out.name}: graph type {g.type}, manifest {out.dtype}")
    if problems:
        raise ModelError(f"model {lm.m.name}: graph and manifest disagree: " + "; ".join(problems))


def _shape_problems(what: str, graph: Sequence[Any], manifest: Sequence[Any]) -> list[str]:
    if len(graph) != len(manifest):
        return [f"{what}: graph rank {len(graph)}, manifest {list(manifest)}"]
    return [
        f"{what}: axis {i} is {g} in the graph, {m} in the manifest"
        for i, (g, m) in enumerate(zip(graph, manifest, strict=True))
        if isinstance(g, int) and isinstance(m, int) and g != m
    ]


def load_session(lm: LoadedManifest, file_key: str, settings: SessionSettings) -> ModelSession:
    session = ModelSession(lm, file_key, settings)
    log.info(
        "model loaded",
        extra={
            "model": lm.stamp,
            "file": Path(session.file).name,
            "providers": session.providers,
            "threads": settings.threads,
        },
    )
    return session
