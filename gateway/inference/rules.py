"""The expression language of manifest rules: fallback rules and health conditions.

Rules are data written by the training scripts (`when: "tool_wear * torque > 11000"`), so
they are parsed with Python's `ast` and refused unless every node is on a short list:
numbers, names, arithmetic (+ - * / **, unary -), comparisons (chained), and/or/not, the
constant `pi` and the functions `abs`, `min`, `max`, and, for windowed models,
`mean_last(name, n)` and `last(name)`. No attribute access, subscripts, strings or other
calls can appear, so evaluating one cannot reach anything but the values handed in.

`compile_rule` checks a rule once (at manifest load, naming the offending part); `Rule.eval`
then runs it per call at plain-Python speed. Whole-number constants are compiled as floats (all
but `mean_last`'s row count), so arithmetic is float arithmetic, whose cost is bounded: with
Python integers `9**9**9` alone would keep a worker busy for minutes. A rule nested deeper than
the parser can follow is refused as well (RuleError, not RecursionError). Names are the
manifest's feature point names (after any categorical encoding) or, for health conditions,
output reading names.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import ModelError

_ALLOWED: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.Compare,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.Eq,
    ast.NotEq,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Call,
)
_PLAIN_FUNCS = frozenset({"abs", "min", "max"})
_WINDOW_FUNCS = frozenset({"mean_last", "last"})
_CONSTANTS = {"pi": math.pi}
MAX_LENGTH = 500


class RuleError(ModelError):
    """A rule that is not in the language, or names something the model does not have."""


class Window:
    """What `mean_last`/`last` read: rows of feature values, oldest first."""

    def __init__(self, names: Sequence[str], rows: Sequence[Sequence[float]]) -> None:
        self._index = {n: i for i, n in enumerate(names)}
        self._rows = rows

    def last(self, name: str) -> float:
        if not self._rows:
            raise ValueError("the window is empty")
        return float(self._rows[-1][self._index[name]])

    def mean_last(self, name: str, n: float) -> float:
        k = int(n)
        if k < 1 or k != n:
            raise ValueError(f"mean_last needs a whole number of rows >= 1 (got {n})")
        if len(self._rows) < k:
            raise ValueError(
                f"mean_last({name}, {k}) needs {k} rows, the window has {len(self._rows)}"
            )
        i = self._index[name]
        return sum(float(r[i]) for r in self._rows[-k:]) / k


@dataclass(frozen=True)
class Rule:
    """A checked expression. `names` are the free variables it reads."""

    text: str
    names: frozenset[str]
    uses_window: bool
    _code: Any = field(repr=False, compare=False)

    def eval(self, values: Mapping[str, float], window: Window | None = None) -> Any:
        """Evaluate with `values` for the names (and `window` for the window functions).
        Raises ValueError (missing value, empty window, division by zero) with the reason."""
        env: dict[str, Any] = {"__builtins__": {}, "abs": abs, "min": min, "max": max}
        env.update(_CONSTANTS)
        if self.uses_window:
            if window is None:
                raise ValueError("this rule reads the window, and there is none")
            env["last"] = window.last
            env["mean_last"] = window.mean_last
        for name in self.names:
            try:
                env[name] = values[name]
            except KeyError:
                raise ValueError(f"no value for {name}") from None
        try:
            # the AST was checked node by node at compile time
            return eval(self._code, env)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except (TypeError, OverflowError) as exc:
            raise ValueError(str(exc)) from None

    def holds(self, values: Mapping[str, float], window: Window | None = None) -> bool:
        return bool(self.eval(values, window))


def compile_rule(text: str, known: Collection[str], *, window: bool = False) -> Rule:
    """Check `text` against the language and the `known` names; RuleError says what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError("a rule must be a non-empty expression")
    if len(text) > MAX_LENGTH:
        raise RuleError(f"a rule is at most {MAX_LENGTH} characters (got {len(text)})")
    try:
        return _compile(text.strip(), known, window)
    except (RecursionError, MemoryError):
        raise RuleError("a rule is nested too deeply") from None


def _compile(text: str, known: Collection[str], window: bool) -> Rule:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"not an expression: {exc.msg} at column {exc.offset}") from None
    names: set[str] = set()
    uses_window = False
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise RuleError(f"{type(node).__name__} is not allowed in a rule: {_snippet(node)}")
        if isinstance(node, ast.Constant) and (
            isinstance(node.value, bool) or not isinstance(node.value, int | float)
        ):
            raise RuleError(f"only numbers may appear as constants: {_snippet(node)}")
        if isinstance(node, ast.Call):
            uses_window |= _check_call(node, known, window)
    tree = ast.fix_missing_locations(_WindowArgs().visit(_FloatConstants().visit(tree)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not _is_func_name(tree, node):
            if node.id in _CONSTANTS:
                continue
            if node.id not in known:
                raise RuleError(
                    f"unknown name {node.id!r} (known: {', '.join(sorted(known)) or 'none'})"
                )
            names.add(node.id)
    code = compile(tree, "<rule>", "eval")
    return Rule(text, frozenset(names), uses_window, code)


def _check_call(node: ast.Call, known: Collection[str], window: bool) -> bool:
    if not isinstance(node.func, ast.Name) or node.keywords:
        raise RuleError(f"only plain function calls are allowed: {_snippet(node)}")
    fname = node.func.id
    if fname in _PLAIN_FUNCS:
        if not node.args:
            raise RuleError(f"{fname}() needs arguments")
        return False
    if fname not in _WINDOW_FUNCS:
        allowed = sorted(_PLAIN_FUNCS | (_WINDOW_FUNCS if window else frozenset()))
        raise RuleError(f"unknown function {fname}() (allowed: {', '.join(allowed)})")
    if not window:
        raise RuleError(f"{fname}() reads a window, and this model has none")
    want = 2 if fname == "mean_last" else 1
    if len(node.args) != want or not isinstance(node.args[0], ast.Name):
        raise RuleError(f"{fname} takes {'(name, rows)' if want == 2 else '(name)'}")
    if node.args[0].id not in known:
        raise RuleError(f"{fname}(): unknown name {node.args[0].id!r}")
    if want == 2:
        n = node.args[1]
        if not (isinstance(n, ast.Constant) and isinstance(n.value, int) and n.value >= 1):
            raise RuleError("mean_last(name, n): n must be a whole number >= 1")
    return True


class _FloatConstants(ast.NodeTransformer):
    """Whole numbers become floats, so no rule can build a huge integer (`9**9**9`); only
    `mean_last`'s row count stays an int (checked by _check_call)."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if isinstance(node.func, ast.Name) and node.func.id in _WINDOW_FUNCS:
            return node  # its arguments are a name and a row count, no arithmetic
        self.generic_visit(node)
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, int) and not isinstance(node.value, bool):
            try:
                value = float(node.value)
            except OverflowError:
                raise RuleError(f"number too large: {_snippet(node)}") from None
            return ast.copy_location(ast.Constant(value), node)
        return node


class _WindowArgs(ast.NodeTransformer):
    """`mean_last(ps30, 10)` names a feature, not its value: pass the name as text."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in _WINDOW_FUNCS:
            first = node.args[0]
            assert isinstance(first, ast.Name)  # checked by _check_call
            node.args[0] = ast.copy_location(ast.Constant(first.id), first)
        return node


def _is_func_name(tree: ast.AST, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and n.func is name for n in ast.walk(tree))


def _snippet(node: ast.AST) -> str:
    try:
        return ast.unparse(node)[:60]
    except Exception:  # pragma: no cover - unparse handles every node ast.parse makes
        return type(node).__name__


def window_function_names() -> frozenset[str]:
    return _WINDOW_FUNCS
