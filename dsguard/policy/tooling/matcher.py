"""How a Casbin model's matcher compares each policy field with the request, for `dsguard policy lint`.

The matcher is parsed as casbin evaluates it (``r.sub`` read as ``r_sub``, ``&&`` as ``and``) and
each ``p`` field is classified: compared with ``==``, matched by a pattern function
(``keyMatch(r.obj, p.obj)``), resolved through a role definition (``g(r.sub, p.sub)``) or
evaluated as an expression (``eval(p.rule)``).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable

from casbin import util
from casbin.util import builtin_operators

from .files import ModelFile

PATTERN_FUNCTIONS: dict[str, Callable[[str, str], bool]] = {
    "keyMatch": builtin_operators.key_match, "keyMatch2": builtin_operators.key_match2,
    "keyMatch3": builtin_operators.key_match3, "keyMatch4": builtin_operators.key_match4,
    "keyMatch5": builtin_operators.key_match5, "regexMatch": builtin_operators.regex_match,
    "globMatch": builtin_operators.glob_match, "ipMatch": builtin_operators.ip_match,
}
REGEX_BUILDERS = frozenset({"keyMatch2", "keyMatch3", "keyMatch4", "keyMatch5"})
OTHER_FUNCTIONS = frozenset({"eval", "timeMatch"})
EFFECTS = {
    "some(where (p_eft == allow))": "allow-override",
    "some(where (p_eft == allow)) && !some(where (p_eft == deny))": "deny-wins",
    "!some(where (p_eft == deny))": "default-allow",
    "priority(p_eft) || deny": "first-match",
    "subjectPriority(p_eft) || deny": "subject-priority",
}


@dataclasses.dataclass
class Matcher:
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    """p field -> "eq", "eval", a pattern function name, or "role:<g>"."""
    wildcards: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    """p field -> literal values the matcher treats as "any" (``p.act == "*"``)."""
    domain: str | None = None
    """The request field passed as the domain of a role definition: ``g(r.sub, p.sub, r.dom)``."""
    problems: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    """(section, key, message): errors in the matcher itself."""
    unused_roles: list[str] = dataclasses.field(default_factory=list)

    def kind(self, field: str) -> str:
        return self.kinds.get(field, "eq")

    def is_wildcard(self, field: str, value: str) -> bool:
        return value in self.wildcards.get(field, ())


def escape(expression: str) -> str:
    """A casbin expression as the Python casbin evaluates."""
    expression = re.sub(r"\b([rp]\d*)\.", r"\1_", expression)
    expression = expression.replace("&&", " and ").replace("||", " or ")
    return re.sub(r"!(?!=)", " not ", expression)


def effect_kind(value: str) -> str | None:
    """allow-override, deny-wins, default-allow, first-match, subject-priority; None if casbin lacks it."""
    return EFFECTS.get(util.remove_comments(util.escape_assertion(value)))


def read_matcher(model: ModelFile) -> Matcher:
    matcher = Matcher()
    entry = model.entry("m", "m")
    if entry is None:
        return matcher
    try:
        tree = ast.parse(escape(entry.value).strip(), mode="eval")
    except SyntaxError as exc:
        matcher.problems.append(("m", "m", f"matcher does not parse: {exc.msg}"))
        return matcher
    defined = {"r": set(model.tokens("r", "r")), "p": set(model.tokens("p", "p"))}
    names = {"r": "request_definition", "p": "policy_definition"}
    functions = set(PATTERN_FUNCTIONS) | OTHER_FUNCTIONS | set(model.gtypes)
    called: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and re.fullmatch(r"[rp]_\w+", node.id):
            prefix, _, field = node.id.partition("_")
            if field not in defined[prefix]:
                matcher.problems.append(("m", "m", f"matcher uses {prefix}.{field}, which {names[prefix]} does "
                                         "not define"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            called.add(node.func.id)
            if node.func.id not in functions:
                matcher.problems.append(("m", "m", f"matcher calls {node.func.id}(), which is neither a casbin "
                                         "function nor a role definition"))
            _classify_call(matcher, model, node.func.id, node.args)
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
            _classify_equality(matcher, node.left, node.comparators[0])
    matcher.unused_roles = [gtype for gtype in model.gtypes if gtype not in called]
    return matcher


def _classify_call(matcher: Matcher, model: ModelFile, name: str, args: list[ast.expr]) -> None:
    fields = [policy_field(arg) for arg in args]
    if name == "eval" and fields and fields[0]:
        matcher.kinds[fields[0]] = "eval"
    elif len(args) >= 2 and fields[1] and request_field(args[0]):
        matcher.kinds.setdefault(fields[1], f"role:{name}" if name in model.gtypes else name)
        if name in model.gtypes and len(args) == 3:
            matcher.domain = request_field(args[2])


def _classify_equality(matcher: Matcher, left: ast.expr, right: ast.expr) -> None:
    for a, b in ((left, right), (right, left)):
        field = policy_field(a)
        if field and request_field(b):
            matcher.kinds.setdefault(field, "eq")
        elif field and isinstance(b, ast.Constant) and isinstance(b.value, str):
            matcher.wildcards.setdefault(field, set()).add(b.value)


def policy_field(node: ast.expr) -> str | None:
    return node.id[2:] if isinstance(node, ast.Name) and node.id.startswith("p_") else None


def request_field(node: ast.expr) -> str | None:
    """``r.obj`` -> obj, and ``r.attrs.tier`` -> attrs."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id[2:] if isinstance(node, ast.Name) and node.id.startswith("r_") else None


def safe_match(function: str, value: str, pattern: str) -> bool:
    try:
        return bool(PATTERN_FUNCTIONS[function](value, pattern))
    except (re.error, ValueError, TypeError):
        return False
