"""The pool contract (`sync/pool_api.yaml`) as the tests read it: the document, and a
validator for any schema in it with `$ref`s resolved inside the document. The contract ships
with the repository, so a missing file is a failure, not a skip."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

PATH = Path(__file__).resolve().parents[1] / "sync" / "pool_api.yaml"


@functools.cache
def document() -> dict[str, Any]:
    return yaml.safe_load(PATH.read_text(encoding="utf-8"))


@functools.cache
def validator(ref: str) -> Draft202012Validator:
    """`ref` is a JSON pointer (`#/components/schemas/Booking`) or a schema name."""
    if not ref.startswith("#"):
        ref = f"#/components/schemas/{ref}"
    return Draft202012Validator({"components": document()["components"], "$ref": ref})
