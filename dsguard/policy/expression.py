"""Casbin matchers compiled to Python functions with casbin's semantics.

casbin evaluates a matcher with simpleeval, once per policy line, after rewriting ``r.x``/``p.x``
to ``r_x``/``p_x`` and ``&&``/``||``/``!`` to ``and``/``or``/``not``. Here the same rewritten text
is parsed once with :mod:`ast` and turned into one Python function ``(r, p, k, x) -> value``:
``r`` the request values, ``p`` one rule's values, ``k`` that rule's precompiled patterns and
``eval()`` conditions, ``x`` the request's role context. The generated source holds only
identifiers and indices chosen here; names, strings and numbers from the files are passed in the
function's namespace, never written into code.

Supported: ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``in``, ``not in``, ``and``/``or``/``not``,
literals (strings, numbers, tuples, lists), attribute and index access on request values
(``r.attrs.claims.tier``), casbin's built-in functions, role functions ``g``/``g2``... and
``eval(p.field)``. Anything else raises :class:`Unsupported` and casbin's own Enforcer decides.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from casbin.model import FunctionMap

from .errors import PolicyEvaluationError

PER_RULE_FUNCTIONS = frozenset({"keyMatch", "keyMatch2", "regexMatch"})
BOOLEAN_FUNCTIONS = frozenset({"keyMatch", "keyMatch2", "keyMatch3", "keyMatch4", "keyMatch5", "regexMatch",
                               "ipMatch", "globMatch"})
_COMPARISONS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
                ast.In: "in", ast.NotIn: "not in"}
_UNARY = {ast.Not: "not ", ast.USub: "-", ast.UAdd: "+"}


class Unsupported(Exception):
    """A matcher feature this evaluator leaves to casbin; ``str()`` names the feature."""


class MatcherError(ValueError):
    """A matcher casbin could never evaluate (undefined name or function, syntax error)."""


def casbin_text(expression: str) -> str:
    """The rewrite casbin's ``CoreEnforcer._get_expression`` applies before parsing."""
    expression = expression.replace("&&", "and").replace("||", "or")
    return re.sub(r"!(?!=)", "not ", expression)


def parse(expression: str) -> ast.expr:
    try:
        tree = ast.parse(casbin_text(expression).strip(), mode="eval")
    except SyntaxError as exc:
        raise MatcherError(f"syntax error in {expression!r}: {exc.msg}") from None
    return tree.body


def attribute(value: Any, name: str) -> Any:
    """``value.name`` as simpleeval reads it: an attribute, else an item."""
    try:
        return getattr(value, name)
    except (AttributeError, TypeError):
        try:
            return value[name]
        except (KeyError, TypeError, IndexError):
            raise PolicyEvaluationError(f"the matcher reads .{name} of a value that has none") from None


def item(value: Any, key: Any) -> Any:
    try:
        return value[key]
    except (KeyError, TypeError, IndexError) as exc:
        raise PolicyEvaluationError(f"the matcher indexes a value with {key!r}: {type(exc).__name__}") from None


@dataclasses.dataclass(frozen=True)
class Slot:
    """A per-rule value the compiled matcher reads as ``k[index]``: a pattern or an ``eval()`` condition."""

    kind: str  # "keyMatch", "keyMatch2", "regexMatch" or "eval"
    field: int


@dataclasses.dataclass
class Scope:
    """What names and functions a matcher may use."""

    r_tokens: Sequence[str]
    p_tokens: Sequence[str]
    graphs: Sequence[str]
    per_rule_slots: bool = True


class Codegen:
    """Python source for a matcher, built node by node; constants go to the namespace."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.namespace: dict[str, Any] = {"_attribute": attribute, "_item": item}
        self.slots: list[Slot] = []
        functions = FunctionMap.load_function_map().get_functions()
        self.functions = {name: fn for name, fn in functions.items() if name != "timeMatch"}

    def _const(self, value: Any) -> str:
        name = f"_c{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def _slot(self, kind: str, field: int) -> str:
        slot = Slot(kind, field)
        if slot not in self.slots:
            self.slots.append(slot)
        return f"k[{self.slots.index(slot)}]"

    def p_field(self, node: ast.expr) -> int | None:
        if isinstance(node, ast.Name) and node.id.startswith("p_"):
            name = node.id[2:]
            if name in self.scope.p_tokens:
                return self.scope.p_tokens.index(name)
        return None

    def emit(self, node: ast.expr) -> str:
        if isinstance(node, ast.Name):
            return self._name(node.id)
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, str | int | float | bool | type(None)):
                raise Unsupported(f"{type(node.value).__name__} literals")
            return self._const(node.value)
        if isinstance(node, ast.Tuple | ast.List):
            items = "".join(f"{self.emit(element)}, " for element in node.elts)
            return f"({items})" if isinstance(node, ast.Tuple) else f"[{items}]"
        if isinstance(node, ast.Attribute):
            if node.attr.startswith("_") or node.attr.startswith("func_"):
                raise Unsupported(f"access to .{node.attr}")
            return f"_attribute({self.emit(node.value)}, {self._const(node.attr)})"
        if isinstance(node, ast.Subscript):
            if isinstance(node.slice, ast.Slice):
                raise Unsupported("slices")
            return f"_item({self.emit(node.value)}, {self.emit(node.slice)})"
        if isinstance(node, ast.BoolOp):
            joiner = " and " if isinstance(node.op, ast.And) else " or "
            return "(" + joiner.join(self.emit(value) for value in node.values) + ")"
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return f"({_UNARY[type(node.op)]}{self.emit(node.operand)})"
        if isinstance(node, ast.Compare):
            parts = [self.emit(node.left)]
            for op, right in zip(node.ops, node.comparators, strict=True):
                if type(op) not in _COMPARISONS:
                    raise Unsupported(f"the {type(op).__name__} operator")
                parts += [_COMPARISONS[type(op)], self.emit(right)]
            return "(" + " ".join(parts) + ")"
        if isinstance(node, ast.Call):
            return self._call(node)
        raise Unsupported(f"{type(node).__name__} expressions")

    def _name(self, name: str) -> str:
        for prefix, tokens, var in (("r_", self.scope.r_tokens, "r"), ("p_", self.scope.p_tokens, "p")):
            if name.startswith(prefix) and name[2:] in tokens:
                return f"{var}[{list(tokens).index(name[2:])}]"
        raise MatcherError(f"the matcher uses {name.replace('_', '.', 1)!r}, which no definition declares")

    def _call(self, node: ast.Call) -> str:
        if not isinstance(node.func, ast.Name) or node.keywords or any(
                isinstance(a, ast.Starred) for a in node.args):
            raise Unsupported("calls other than name(arguments)")
        name = node.func.id
        args = node.args
        if name == "eval":
            field = self.p_field(args[0]) if len(args) == 1 else None
            if field is None or not self.scope.per_rule_slots:
                raise Unsupported("eval() of anything but one policy field")
            return f"{self._slot('eval', field)}(r, p, x)"
        if name in self.scope.graphs:
            if len(args) not in (2, 3):
                raise Unsupported(f"{name}() with {len(args)} arguments")
            return f"_graph{list(self.scope.graphs).index(name)}(x, {', '.join(self.emit(a) for a in args)})"
        if name in PER_RULE_FUNCTIONS and self.scope.per_rule_slots and len(args) == 2:
            field = self.p_field(args[1])
            if field is not None:
                return f"{self._slot(name, field)}({self.emit(args[0])})"
        if name not in self.functions:
            if name == "timeMatch":
                raise Unsupported("timeMatch() (decisions that change with the clock)")
            raise MatcherError(f"the matcher calls {name}(), which casbin does not define")
        return f"{self._const(self.functions[name])}({', '.join(self.emit(a) for a in args)})"


def is_boolean(node: ast.expr, graphs: Sequence[str]) -> bool:
    """Whether ``node`` always yields a bool (casbin refuses any other matcher result but a float)."""
    if isinstance(node, ast.Compare):
        return True
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.Not)
    if isinstance(node, ast.BoolOp):
        return all(is_boolean(value, graphs) for value in node.values)
    if isinstance(node, ast.Constant):
        return isinstance(node.value, bool)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id in BOOLEAN_FUNCTIONS or node.func.id in graphs or node.func.id == "eval"
    return False


def references_rule(node: ast.expr) -> bool:
    """Whether ``node`` reads a policy field (or ``eval``s one)."""
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and child.id.startswith("p_"):
            return True
        if isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and child.func.id == "eval":
            return True
    return False


Compiled = Callable[..., Any]


def compile_node(node: ast.expr, scope: Scope, graphs: dict[str, Any], params: str = "r, p, k, x",
                 codegen: Codegen | None = None) -> tuple[Compiled, list[Slot]]:
    """A function of ``params`` evaluating ``node``, and the per-rule slots it reads."""
    codegen = codegen or Codegen(scope)
    body = codegen.emit(node)
    namespace = dict(codegen.namespace)
    namespace.update({f"_graph{i}": graphs[name].has_link for i, name in enumerate(scope.graphs)})
    code = compile(f"lambda {params}: {body}", "<casbin matcher>", "eval")
    namespace["__builtins__"] = {}
    function: Compiled = eval(code, namespace)
    return function, codegen.slots
