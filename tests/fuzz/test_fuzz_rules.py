"""The manifest rule language against hostile expressions: anything outside the language is
refused at compile time with RuleError (never evaluated), and whatever compiles evaluates in
bounded time, raising only ValueError."""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.inference.rules import RuleError, compile_rule
from tests.fuzz._fuzz import fuzz, tried

KNOWN = ["torque", "rpm", "wear"]

HOSTILE = [
    "__import__('os').system('touch /tmp/pwned')",
    "open('/etc/passwd').read()",
    "torque.__class__.__mro__",
    "().__class__.__bases__[0].__subclasses__()",
    "[x for x in (1,)]",
    "lambda: 1",
    "exec('1')",
    "eval('1')",
    "getattr(torque, 'real')",
    "globals()",
    "'a' * 10",
    "b'x'",
    "torque if rpm else wear",
    "(torque := 1)",
    "{1: 2}",
    "torque[0]",
    "f'{torque}'",
    "abs(torque, key=1)",
    "min(*[1, 2])",
    "mean_last(torque, 5)",  # a window function without a window
    "-" * 499 + "1",  # deeper than the parser can recurse
    "(" * 199 + "torque" + ")" * 199 + " > " + "9" * 280,  # a number beyond float
    "1" * 501,
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_rules_are_refused(text: str) -> None:
    tried("rules.compile (hostile list)")
    with pytest.raises(RuleError) as err:
        compile_rule(text, KNOWN)
    assert str(err.value)


@pytest.mark.parametrize("text", ["9**9**9 > torque", "(10**300)**(10**300)", "99**99**99 * rpm"])
def test_huge_powers_compile_but_cannot_stall_evaluation(text: str) -> None:
    """Integer constants are floats inside a rule: overflow is an error, not minutes of CPU."""
    tried("rules.eval (huge powers)")
    rule = compile_rule(text, KNOWN)
    t0 = time.monotonic()
    with pytest.raises(ValueError):
        rule.eval({"torque": 1.0, "rpm": 2.0, "wear": 3.0})
    assert time.monotonic() - t0 < 0.5


TOKENS = [
    "torque", "rpm", "wear", "pi", "1", "2.5", "1e308", "0", "9", "**", "*", "/", "+", "-",
    "<", "<=", ">", "==", "!=", " and ", " or ", "not ", "(", ")", ",", "abs(", "min(", "max(",
    "mean_last(torque, 3)", "last(rpm)", ".", "[", "]", "'", "_", "__", "import", "lambda",
]  # fmt: skip


@pytest.mark.filterwarnings("ignore::SyntaxWarning")  # "1and": Python warns, then refuses
@fuzz(250)
@given(
    text=st.one_of(
        st.lists(st.sampled_from(TOKENS), min_size=1, max_size=40).map("".join),
        st.text(max_size=120),
    ),
    window=st.booleans(),
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
)
def test_any_text_compiles_or_is_refused_and_evaluation_is_bounded(
    text: str, window: bool, values: list[float]
) -> None:
    tried("rules.compile+eval (generated)")
    try:
        rule = compile_rule(text, KNOWN, window=window)
    except RuleError as exc:
        assert str(exc)
        return
    assert rule.names <= set(KNOWN)
    if rule.uses_window:
        return  # needs a window; covered by the engine tests
    t0 = time.monotonic()
    with contextlib.suppress(ValueError):  # the documented error: missing value, overflow
        rule.eval(dict(zip(KNOWN, values, strict=True)))
    assert time.monotonic() - t0 < 0.5, text
