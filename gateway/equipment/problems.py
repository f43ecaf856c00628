"""One validation problem of a machine, as a line for people and as data for translation.

The CLI and the logs show the English line (`path: reason (got VALUE)`); the technician's
page shows the same problem in the reader's language. It cannot translate English text, so
every problem also carries a stable `code` and the `params` of its message, and the page
looks the code up in its messages (`problem.<code>`), falling back to the English line for
a code it does not know.

Codes are pydantic's error types for the checks pydantic makes (`greater_than`, `missing`)
and ours for the checks the model makes itself (`time_of_day`, `duplicate_point`); the
model's validators raise `invalid(code, template, **params)` so both kinds travel the same
way. `TRANSLATED_CODES` lists every code the page must have a message for (a unit test holds
the page's messages to it, and another holds the model's errors to the list).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import PydanticCustomError

#: Scalars a problem's parameters are reduced to: what JSON and the page's templates take.
Param = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Problem:
    """`path` is dotted (`sharing.weekly.0.end`), `(machine)` for the whole document or
    `(file)` for the file it came in. `got` is the value as shown (`***` for personal data,
    `nothing` when missing, None when there is no single value to show)."""

    path: str
    code: str
    message: str
    got: str | None = None
    params: Mapping[str, Param] = field(default_factory=dict)

    @property
    def line(self) -> str:
        tail = "" if self.got is None else f" (got {self.got})"
        return f"{self.path}: {self.message}{tail}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "code": self.code,
            "message": self.message,
            "got": self.got,
            "params": dict(self.params),
        }


def invalid(code: str, template: str, **params: Any) -> PydanticCustomError:
    """A validator's error with a code: raise it where a ValueError would go. `template`
    names params as `{name}`; a `got` param is the offending value (shown as `(got X)`)."""
    return PydanticCustomError(code, template, {k: as_param(v) for k, v in params.items()})


def as_param(value: Any) -> Param:
    """A value as a message parameter: scalars as they are, anything else as text."""
    return value if isinstance(value, str | int | float | bool) else str(value)


#: Pydantic's own checks a machine document can fail (each one exercised by a unit test),
#: with the params their messages use.
PYDANTIC_CODES: dict[str, tuple[str, ...]] = {
    "missing": (),
    "extra_forbidden": (),
    "string_type": (),
    "string_too_short": ("min_length",),
    "string_too_long": ("max_length",),
    "string_pattern_mismatch": ("pattern",),
    "greater_than": ("gt",),
    "greater_than_equal": ("ge",),
    "less_than": ("lt",),
    "less_than_equal": ("le",),
    "float_parsing": (),
    "float_type": (),
    "bool_parsing": (),
    "bool_type": (),
    "enum": ("expected",),
    "literal_error": ("expected",),
    "list_type": (),
    "too_short": ("min_length",),
    "too_long": ("max_length",),
    "dict_type": (),
    "model_type": (),
    "date_type": (),
    "date_from_datetime_parsing": (),
    "date_from_datetime_inexact": (),
}

#: Our own checks (raised with `invalid`), with their params.
OWN_CODES: dict[str, tuple[str, ...]] = {
    "time_of_day": (),
    "not_finite": (),
    "phone_format": (),
    "email_format": (),
    "unknown_timezone": (),
    "lat_lon_pair": (),
    "day_twice": (),
    "window_start_late": (),
    "window_end_before_start": ("start",),
    "status_rule": ("error",),
    "duplicate_model": (),
    "duplicate_capability": (),
    "duplicate_point": (),
    "duplicate_meter": (),
    "shared_needs": ("missing", "fields"),
    "point_prefix_mismatch": ("prefix",),
    "always_public": ("field",),
    "unknown_data_field": ("field", "known"),
    "data_class_not_allowed": ("field", "klass"),
    "duration_format": (),
    "not_positive": (),
    "id_changed": (),
}

#: Every code the page translates (`problem.<code>` in its messages, both languages). The
#: CLI's own (`file_not_document`, `file_not_mapping`) never reach the page.
TRANSLATED_CODES: dict[str, tuple[str, ...]] = {**PYDANTIC_CODES, **OWN_CODES}
