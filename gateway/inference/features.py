"""Model inputs from the gateway's data: rows from points, windows of rows, item payloads.

Pure data handling, no onnxruntime and no I/O, so each piece is tested on its own:

* `encode` turns one point value into the model's number (categorical maps such as product
  type `L/M/H -> 0/1/2`, booleans as 0/1); a value the model cannot take is `None`, which
  makes the row incomplete: the model is not run on a guess (the manifests say "do not impute").
* `RowState` keeps the newest encoded value of each feature and knows when a row is complete.
* `WindowBuffer` is a fixed ring of rows (numpy), read out oldest-first as `[1, length, F]`.
* `record_row` reads a JSON item (a fruit's sensor scores) and `decode_image` an image item,
  with the limits a hostile payload needs (size, pixel count, nesting) checked first.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from gateway.readings import Quality, Value

if TYPE_CHECKING:
    from gateway.inference.manifest import InputSpec

#: Larger images are refused before decoding (a decompression bomb costs memory, not bytes).
MAX_IMAGE_PIXELS = 40_000_000


class InputError(ValueError):
    """The item or row cannot become a model input; the message says why (it reaches events)."""


#: Inputs are float32: a finite float64 beyond this (1e39 in a JSON record) would reach the
#: model as inf, so it counts as a value the model cannot take.
_F32_MAX = float(np.finfo(np.float32).max)


def _usable(f: float) -> float | None:
    return f if math.isfinite(f) and abs(f) <= _F32_MAX else None


def encode(value: Value, mapping: dict[str, float] | None) -> float | None:
    """One value as the model's float, or None when the model cannot take it (not a
    number, NaN or infinite, or too large for float32)."""
    if mapping is not None:
        if isinstance(value, str):
            return mapping.get(value.strip())
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        try:
            return _usable(float(value))
        except OverflowError:  # an int beyond any float
            return None
    if isinstance(value, str):
        try:
            return _usable(float(value))
        except ValueError:
            return None
    return None


class RowState:
    """The newest usable value of each feature, and which arrived since the last row."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.values = np.full(len(self.names), np.nan, dtype=np.float64)
        self.ts = np.zeros(len(self.names), dtype=np.float64)
        self._fresh = np.zeros(len(self.names), dtype=bool)

    def set(self, i: int, value: float | None, quality: Quality, ts: float) -> None:
        """A BAD reading or an unusable value empties the feature until a good one comes."""
        usable = value is not None and quality is not Quality.BAD
        self.values[i] = value if usable else np.nan
        self.ts[i] = ts
        self._fresh[i] = True

    def complete(self) -> bool:
        return not bool(np.isnan(self.values).any())

    def all_fresh(self) -> bool:
        return bool(self._fresh.all())

    def missing(self) -> list[str]:
        return [n for n, v in zip(self.names, self.values, strict=True) if math.isnan(v)]

    def take(self) -> np.ndarray:
        """The current row (a copy) and a fresh start for "arrived since the last row"."""
        self._fresh[:] = False
        return self.values.astype(np.float32)

    def as_dict(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.names, self.values, strict=True)}


class WindowBuffer:
    """The last `length` rows; `count` says how many real rows it holds (no padding)."""

    def __init__(self, length: int, width: int) -> None:
        self.length = length
        self._buf = np.zeros((length, width), dtype=np.float32)
        self._next = 0
        self.count = 0
        self.appended = 0

    def append(self, row: np.ndarray) -> None:
        self._buf[self._next] = row
        self._next = (self._next + 1) % self.length
        self.count = min(self.count + 1, self.length)
        self.appended += 1

    def full(self) -> bool:
        return self.count == self.length

    def clear(self) -> None:
        self._next = 0
        self.count = 0

    def rows(self) -> np.ndarray:
        """The held rows, oldest first, shape [count, width]."""
        if self.count < self.length:
            return self._buf[: self.count].copy()
        return np.roll(self._buf, -self._next, axis=0)

    def window(self) -> np.ndarray:
        """Model input `[1, length, width]` float32 (only when full)."""
        return self.rows()[np.newaxis, :, :]


def record_row(payload: bytes, spec: InputSpec, max_depth: int = 8) -> np.ndarray:
    """A JSON object item with one number per feature field -> `[F]` float32."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("not UTF-8") from None
    if _depth_exceeds(text, max_depth):
        raise InputError(f"JSON nested deeper than {max_depth}")
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise InputError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InputError(f"a JSON object is expected, got {type(doc).__name__}")
    row = np.empty(len(spec.features), dtype=np.float32)
    missing: list[str] = []
    for f in spec.features:
        key = f.field or f.key
        value = encode(doc.get(key), spec.encoding_for(f))
        if value is None:
            missing.append(key)
        else:
            row[f.index] = value
    if missing:
        raise InputError(f"missing or unusable fields: {', '.join(missing)}")
    return row


def item_id_from_record(payload: bytes) -> str | None:
    """The `item_id` field of a JSON item, when there is one (best effort, never raises)."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    value = doc.get("item_id") if isinstance(doc, dict) else None
    return str(value)[:128] if isinstance(value, str | int) else None


def decode_image(payload: bytes, spec: InputSpec) -> np.ndarray:
    """JPEG/PNG bytes -> `[3, H, W]` float32 in [0, 1], exactly as the training script did
    (Pillow RGB, bilinear resize, /255; normalisation is inside the graph)."""
    from PIL import Image, UnidentifiedImageError

    pre = spec.preprocessing
    assert pre is not None
    resample = {
        "bilinear": Image.Resampling.BILINEAR,
        "nearest": Image.Resampling.NEAREST,
        "bicubic": Image.Resampling.BICUBIC,
    }[pre.resize.method]
    try:
        # Only the two formats a camera sends: every other decoder Pillow has (EPS hands the
        # bytes to Ghostscript, TIFF, PSD, ...) is attack surface an item topic does not need.
        with Image.open(io.BytesIO(payload), formats=("JPEG", "PNG")) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise InputError(
                    f"image is {img.width}x{img.height}, more than {MAX_IMAGE_PIXELS} pixels"
                )
            rgb = img.convert("RGB").resize((pre.resize.width, pre.resize.height), resample)
    except UnidentifiedImageError:
        raise InputError("not an image Pillow can read (JPEG or PNG expected)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"image cannot be decoded ({exc})") from None
    arr = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _depth_exceeds(text: str, limit: int) -> bool:
    """Bracket depth outside strings, before json.loads can recurse on it."""
    depth = 0
    in_str = False
    escaped = False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        elif ch in "]}":
            depth -= 1
    return False


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")
