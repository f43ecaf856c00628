"""Hypothesis settings and example counting for the fuzz suite.

Two budgets, picked by the `HYPOTHESIS_PROFILE` environment variable:

* `ci` (default): what `make test` runs; every target gets its CI example count, derandomized
  so a CI failure reproduces on any machine;
* `deep`: `make fuzz`; DEEP_FACTOR times the examples, randomized, so every run explores new
  inputs (Hypothesis keeps what failed in `.hypothesis/` and tries it first next time).

The settings are applied per test (`@fuzz(n)`), never as the global default, so the property
tests elsewhere in the suite keep their own budgets. `tried(target)` counts inputs per target;
the conftest prints the counts after the run (and writes them to $FUZZ_REPORT as JSON).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "deep"):
    PROFILE = "ci"  # a profile meant for Hypothesis itself: keep the CI budget here
DEEP_FACTOR = int(os.environ.get("FUZZ_DEEP_FACTOR", "20"))

#: Inputs tried per target in this process.
TRIED: Counter[str] = Counter()

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(examples: int) -> settings:
    """Settings for one fuzz test: `examples` in CI, DEEP_FACTOR times that when deep."""
    deep = PROFILE == "deep"
    return settings(
        max_examples=examples * DEEP_FACTOR if deep else examples,
        deadline=None,
        derandomize=not deep,
        database=None if not deep else settings.default.database,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


def tried(target: str, n: int = 1) -> None:
    TRIED[target] += n
