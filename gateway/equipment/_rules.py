"""Status rules: the manifest rule language (`gateway.inference.rules`) plus text equality.

Machines report states as text (`work_state: "working"`, a grading line's `state:
"running"`), and the rule language only has numbers. So before a rule is compiled, each
comparison of a point with a text constant by `==` or `!=` (`work_state == "working"`, also
written the other way round) becomes a boolean flag the evaluator fills in; everything else
goes to `compile_rule` unchanged and is checked there node by node. Text compared any other
way (`<`, arithmetic) is still refused by `compile_rule` ("only numbers may appear as
constants").
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.inference.rules import Rule, RuleError, compile_rule


class AnyName(Collection[str]):
    """`known` for checking a rule before the machine's points are known: every name is."""

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


ANY_NAME = AnyName()


@dataclass(frozen=True)
class StatusExpr:
    """A compiled status condition. `points` are the point names it reads."""

    text: str
    points: frozenset[str]
    _rule: Rule
    #: flag name -> (point, text it must equal)
    _flags: tuple[tuple[str, str, str], ...]

    def holds(self, values: Mapping[str, Any]) -> bool:
        """True or False; ValueError when a point it reads has no usable value."""
        env: dict[str, Any] = {}
        for name in self._rule.names:
            if name in values:
                env[name] = values[name]
        for flag, point, text in self._flags:
            if point not in values:
                raise ValueError(f"no value for {point}")
            env[flag] = values[point] == text
        return bool(self._rule.eval(env))


def compile_status_expr(text: str, known: Collection[str]) -> StatusExpr:
    """Check `text`; RuleError says what is wrong, in the words of the text as written."""
    if not isinstance(text, str) or not text.strip():
        raise RuleError("a rule must be a non-empty expression")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise RuleError(f"not an expression: {exc.msg} at column {exc.offset}") from None
    func_names = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Name)
            and id(node) not in func_names
            and node.id != "pi"
            and node.id not in known
        ):
            listed = ", ".join(sorted(known)) or "any point of the machine"
            raise RuleError(f"unknown point {node.id!r} (known: {listed})")
    rewriter = _TextEquality()
    tree = ast.fix_missing_locations(rewriter.visit(tree))
    flags = tuple(rewriter.flags)
    rule = compile_rule(ast.unparse(tree), _Known(known, {f for f, _, _ in flags}))
    points = {n for n in rule.names if n not in {f for f, _, _ in flags}}
    points |= {p for _, p, _ in flags}
    return StatusExpr(text.strip(), frozenset(points), rule, flags)


class _Known(Collection[str]):
    def __init__(self, known: Collection[str], flags: set[str]) -> None:
        self._known = known
        self._flags = flags

    def __contains__(self, item: object) -> bool:
        return item in self._flags or item in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)


class _TextEquality(ast.NodeTransformer):
    """`point == "text"` -> `_text_N`, `point != "text"` -> `not _text_N`."""

    def __init__(self) -> None:
        self.flags: list[tuple[str, str, str]] = []

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        if len(node.ops) != 1 or not isinstance(node.ops[0], ast.Eq | ast.NotEq):
            return node
        left, right = node.left, node.comparators[0]
        if isinstance(right, ast.Name) and _is_text(left):
            left, right = right, left
        if not (isinstance(left, ast.Name) and _is_text(right)):
            return node
        assert isinstance(right, ast.Constant)
        # not a valid point name (no leading underscore), so it never shadows a point
        flag = f"_text_{len(self.flags)}"
        self.flags.append((flag, left.id, str(right.value)))
        new: ast.expr = ast.Name(flag, ast.Load())
        if isinstance(node.ops[0], ast.NotEq):
            new = ast.UnaryOp(ast.Not(), new)
        return ast.copy_location(new, node)


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)
