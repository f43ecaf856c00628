"""The rule language of manifests: what it accepts, what it refuses, and how it evaluates."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.inference.rules import RuleError, Window, compile_rule

KNOWN = {"torque", "speed", "tool_wear", "product_type", "ps30"}


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("torque * speed * 2 * pi / 60 < 3500", {"torque": 10.0, "speed": 1500.0}, True),
        ("torque * speed * 2 * pi / 60 < 3500", {"torque": 60.0, "speed": 1500.0}, False),
        (
            "tool_wear * torque > 11000 + 1000 * product_type",
            {"tool_wear": 200, "torque": 60, "product_type": 1},
            False,
        ),
        (
            "tool_wear * torque > 11000 + 1000 * product_type",
            {"tool_wear": 220, "torque": 60, "product_type": 1},
            True,
        ),
        ("0 < torque <= 5", {"torque": 5.0}, True),
        ("not (torque > 1) or speed == 2", {"torque": 3.0, "speed": 2.0}, True),
        ("abs(-torque) + max(speed, 1, 2) - min(1, 0.5) ** 2", {"torque": 1.0, "speed": 3.0}, 3.75),
    ],
)
def test_rules_evaluate_like_python(text: str, values: dict[str, float], expected: object) -> None:
    assert compile_rule(text, KNOWN).eval(values) == expected


def test_window_functions_read_rows_oldest_first() -> None:
    rule = compile_rule("mean_last(ps30, 2) >= 47.5 and last(ps30) > 47", KNOWN, window=True)
    assert rule.names == frozenset()  # the window argument is a feature name, not a value
    w = Window(["ps30"], [[46.0], [47.2], [48.0]])
    assert rule.holds({}, w) is True
    assert rule.holds({}, Window(["ps30"], [[48.0], [47.0], [47.9]])) is False


def test_window_too_short_is_a_clear_value_error() -> None:
    rule = compile_rule("mean_last(ps30, 10) >= 1", KNOWN, window=True)
    with pytest.raises(ValueError, match="needs 10 rows, the window has 2"):
        rule.holds({}, Window(["ps30"], [[1.0], [2.0]]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('__import__("os").system("x")', "only plain function calls"),
        ("torque.real", "Attribute is not allowed"),
        ("[1][0]", "not allowed"),
        ("'text' == torque", "only numbers"),
        ("True", "only numbers"),
        ("lambda: 1", "Lambda is not allowed"),
        ("exec('1')", "unknown function"),
        ("open(torque)", "unknown function"),
        ("mean_last(ps30, 2)", "reads a window"),
        ("humidity > 3", "unknown name 'humidity'"),
        ("torque >", "not an expression"),
        ("", "non-empty"),
        ("x" * 600, "at most 500"),
        ("(y := 1)", "not allowed"),
        ("torque if speed else 1", "not allowed"),
    ],
)
def test_anything_outside_the_language_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        compile_rule(text, KNOWN)


def test_window_function_arguments_are_checked() -> None:
    with pytest.raises(RuleError, match="whole number"):
        compile_rule("mean_last(ps30, 0) > 1", KNOWN, window=True)
    with pytest.raises(RuleError, match="unknown name 'nope'"):
        compile_rule("mean_last(nope, 3) > 1", KNOWN, window=True)


def test_missing_values_and_division_by_zero_are_value_errors() -> None:
    rule = compile_rule("torque / speed > 1", KNOWN)
    with pytest.raises(ValueError, match="no value for"):
        rule.eval({"torque": 1.0})
    with pytest.raises(ValueError, match="division by zero"):
        rule.eval({"torque": 1.0, "speed": 0.0})


@given(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)
def test_arithmetic_matches_python(a: float, b: float) -> None:
    rule = compile_rule("torque * 2 - speed / 4 + abs(torque - speed)", KNOWN)
    want = a * 2 - b / 4 + abs(a - b)
    got = rule.eval({"torque": a, "speed": b})
    assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12) or (
        math.isinf(got) and math.isinf(want)
    )


@given(st.text(max_size=60))
def test_arbitrary_text_either_compiles_or_raises_rule_error(text: str) -> None:
    with contextlib.suppress(RuleError):
        rule = compile_rule(text, KNOWN)
        assert rule.names <= KNOWN  # whatever compiles reads only known names
