"""Prints how many inputs each fuzz target was given (the issue asks for the number)."""

from __future__ import annotations

import json
import os

import pytest

from tests.fuzz._fuzz import PROFILE, TRIED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TRIED:
        return
    total = sum(TRIED.values())
    terminalreporter.write_sep("-", f"fuzz ({PROFILE} profile): {total} inputs tried")
    for target, n in sorted(TRIED.items()):
        terminalreporter.write_line(f"  {target:<40} {n:>8}")
    path = os.environ.get("FUZZ_REPORT")
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"profile": PROFILE, "total": total, "targets": dict(TRIED)}, f, indent=1)
