"""`dsguard policy lint`: problems in a Casbin model and policy that casbin itself accepts.

Findings: policy lines casbin would drop or fail on, matcher references to undefined fields,
roles granted but never assigned (or assigned but granting nothing), duplicate, redundant and
unreachable rules, deny rules the effect ignores, and wildcards that grant every route, model
or action. Coverage between two rules is judged from the matcher: equality, role inheritance
(g), and the pattern functions, a pattern covering a value when it matches it literally.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterable, Iterator
from typing import Literal

from .files import ModelFile, PolicyLine, structural_errors
from .matcher import (
    EFFECTS,
    PATTERN_FUNCTIONS,
    REGEX_BUILDERS,
    Matcher,
    effect_kind,
    escape,
    read_matcher,
    safe_match,
)

Severity = Literal["error", "warning"]

PROBES = {
    "route": ("/", "/v1/chat/completions", "/v1/models", "/admin/keys", "/healthz"),
    "model": ("model:deepseek-r1-70b", "model:deepseek-r1-distill-qwen-1.5b", "model:x"),
    "action": ("GET", "POST", "DELETE", "chat", "complete", "embed"),
}
SUBJECT_PROBES = ("alice", "bob", "admin", "user")


@dataclasses.dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.message}"


class Linter:
    def __init__(self, model: ModelFile, lines: list[PolicyLine], known_names: Iterable[str] = ()) -> None:
        self.model = model
        self.lines = lines
        self.known_names = set(known_names)
        self.findings: list[Finding] = []
        self.matcher = Matcher()
        self.effect: str | None = None

    def run(self) -> list[Finding]:
        self._check_model()
        broken = set()
        for line, message in structural_errors(self.model, self.lines):
            broken.add(line.line)
            self._report(line, "error", message)
        usable = [line for line in self.lines if line.line not in broken]
        self.rules = [line for line in usable if line.ptype == "p"]
        self.groupings = [line for line in usable if line.ptype in self.model.gtypes]
        self._check_values()
        self._check_duplicates(usable)
        self._check_coverage()
        self._check_roles()
        self._check_wildcards()
        return sorted(set(self.findings))

    def _report(self, where: PolicyLine | tuple[str, int], severity: Severity, message: str) -> None:
        path, line = (str(where.path), where.line) if isinstance(where, PolicyLine) else where
        self.findings.append(Finding(path, line, severity, message))

    def _model_report(self, section: str, key: str, severity: Severity, message: str) -> None:
        self._report((str(self.model.path), self.model.line_of(section, key)), severity, message)

    # --- the model ---------------------------------------------------------------------------------------------

    def _check_model(self) -> None:
        effect = self.model.entry("e", "e")
        if effect is not None:
            self.effect = effect_kind(effect.value)
            if self.effect is None:
                self._model_report("e", "e", "error", f"unsupported policy_effect {effect.value!r}; casbin "
                                   "supports: " + "; ".join(key.replace("p_", "p.") for key in EFFECTS))
            elif self.effect == "default-allow":
                self._model_report("e", "e", "warning", "default allow: every request no deny rule matches is "
                                   "allowed")
        self.matcher = read_matcher(self.model)
        for section, key, message in self.matcher.problems:
            self._model_report(section, key, "error", message)
        for gtype in self.matcher.unused_roles:
            self._model_report("g", gtype, "warning", f"role definition {gtype} is never used by the matcher")

    # --- values, duplicates, coverage --------------------------------------------------------------------------

    def _check_values(self) -> None:
        fields = self.model.tokens("p", "p")
        for rule in self.rules:
            for field, value in zip(fields, rule.values, strict=True):
                kind = self.matcher.kind(field)
                if kind == "regexMatch" or kind in REGEX_BUILDERS:
                    self._check_pattern(rule, field, value, kind)
                elif kind == "eval":
                    self._check_rule_expression(rule, field, value)
                elif kind == "eq" and value in ("*", "/*", ".*") and not self.matcher.is_wildcard(field, value):
                    self._report(rule, "warning", f"{field} {value!r} is compared with ==, so it matches only the "
                                 f"literal {value!r}, not everything")

    def _check_pattern(self, rule: PolicyLine, field: str, value: str, kind: str) -> None:
        try:
            PATTERN_FUNCTIONS[kind]("/probe", value)
        except re.error as exc:
            self._report(rule, "error", f"{field} {value!r} is not a valid {kind} pattern: {exc}")
            return
        if kind in REGEX_BUILDERS and "." in value:
            self._report(rule, "warning", f"{field} {value!r}: {kind} turns the pattern into a regular expression, "
                         "so '.' matches any character")

    def _check_rule_expression(self, rule: PolicyLine, field: str, value: str) -> None:
        try:
            tree = ast.parse(escape(value).strip(), mode="eval")
        except SyntaxError as exc:
            self._report(rule, "error", f"{field} is not a valid expression: {exc.msg}")
            return
        request = set(self.model.tokens("r", "r"))
        called = {node.func for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            if node in called and isinstance(node, ast.Name) and node.id in PATTERN_FUNCTIONS:
                continue
            if isinstance(node, ast.Name):
                prefix, _, name = node.id.partition("_")
                if prefix != "r" or name not in request:
                    self._report(rule, "error", f"{field} uses {node.id.replace('_', '.', 1)}, which is not a "
                                 "request field")

    def _check_duplicates(self, usable: list[PolicyLine]) -> None:
        first: dict[tuple[str, tuple[str, ...]], PolicyLine] = {}
        for line in usable:
            key = (line.ptype, line.values)
            if key in first:
                self._report(line, "warning", f"duplicate of line {first[key].line}")
            else:
                first[key] = line

    def _effect_of(self, rule: PolicyLine) -> str:
        fields = self.model.tokens("p", "p")
        return rule.values[fields.index("eft")] if "eft" in fields else "allow"

    def _check_coverage(self) -> None:
        if self.effect in (None, "default-allow", "subject-priority"):
            return
        unique: dict[tuple[str, ...], PolicyLine] = {}
        for rule in self.rules:
            unique.setdefault(rule.values, rule)
        self._check_rule_coverage(list(unique.values()))

    def _check_rule_coverage(self, unique: list[PolicyLine]) -> None:
        if self.effect == "first-match":
            self._check_first_match(unique)
            return
        allows = [rule for rule in unique if self._effect_of(rule) == "allow"]
        denies = [rule for rule in unique if self._effect_of(rule) == "deny"]
        if self.effect == "allow-override":
            for rule in denies:
                self._report(rule, "error", "deny rule has no effect: the policy_effect some(where (p.eft == "
                             "allow)) only counts allow rules")
        for rule in allows:
            denier = self._first_covering(rule, denies) if self.effect == "deny-wins" else None
            coverer = self._first_covering(rule, allows)
            if denier:
                self._report(rule, "warning", f"never allows: line {denier.line} denies every request it matches")
            elif coverer:
                self._report(rule, "warning", f"redundant: line {coverer.line} already allows every request it "
                             "matches")
        if self.effect != "deny-wins":
            return
        for rule in denies:
            coverer = self._first_covering(rule, denies)
            if coverer:
                self._report(rule, "warning", f"redundant: line {coverer.line} already denies every request it "
                             "matches")
            elif not any(self._overlaps(rule, allow) for allow in allows):
                self._report(rule, "warning", "unreachable deny: no allow rule matches the requests it denies")

    def _check_first_match(self, rules: list[PolicyLine]) -> None:
        fields = self.model.tokens("p", "p")
        if "priority" in fields:
            index = fields.index("priority")
            rules = sorted(rules, key=lambda rule: (0, int(rule.values[index]), "") if rule.values[index].isdigit()
                           else (1, 0, rule.values[index]))
        for i, rule in enumerate(rules):
            for earlier in rules[:i]:
                if self._covers(earlier, rule):
                    self._report(rule, "warning", f"unreachable: line {earlier.line} comes first and matches every "
                                 f"request this line matches ({self._effect_of(earlier)})")
                    break

    def _first_covering(self, rule: PolicyLine, candidates: list[PolicyLine]) -> PolicyLine | None:
        for other in candidates:
            if other is not rule and self._covers(other, rule) and not (
                    self._covers(rule, other) and other.line > rule.line):
                return other
        return None

    def _fields(self, a: PolicyLine, b: PolicyLine) -> Iterator[tuple[str, str, str]]:
        for field, x, y in zip(self.model.tokens("p", "p"), a.values, b.values, strict=True):
            if field not in ("eft", "priority"):
                yield field, x, y

    def _covers(self, wide: PolicyLine, narrow: PolicyLine) -> bool:
        """Every request ``narrow`` matches, ``wide`` matches too."""
        domain = self._domain_of(narrow)
        for field, x, y in self._fields(wide, narrow):
            kind = self.matcher.kind(field)
            if x == y or self.matcher.is_wildcard(field, x):
                continue
            if kind.startswith("role:"):
                if not self.inherits(y, x, kind[5:], domain):
                    return False
            elif kind not in PATTERN_FUNCTIONS or not safe_match(kind, y, x):
                return False
        return True

    def _overlaps(self, a: PolicyLine, b: PolicyLine) -> bool:
        """Some request could match both (one identity may hold several roles)."""
        for field, x, y in self._fields(a, b):
            kind = self.matcher.kind(field)
            wild = self.matcher.is_wildcard(field, x) or self.matcher.is_wildcard(field, y)
            if x == y or wild or kind.startswith("role:") or kind == "eval":
                continue
            if kind not in PATTERN_FUNCTIONS or not (safe_match(kind, x, y) or safe_match(kind, y, x)):
                return False
        return True

    def _domain_of(self, rule: PolicyLine) -> str | None:
        fields = self.model.tokens("p", "p")
        domain = self.matcher.domain
        return rule.values[fields.index(domain)] if domain in fields else None

    # --- roles ------------------------------------------------------------------------------------------------

    def parents(self, name: str, gtype: str, domain: str | None) -> set[str]:
        return {line.values[1] for line in self.groupings if line.ptype == gtype and line.values[0] == name
                and (domain is None or len(line.values) < 3 or line.values[2] == domain)}

    def inherits(self, member: str, role: str, gtype: str, domain: str | None) -> bool:
        seen, todo = {member}, [member]
        while todo:
            for parent in self.parents(todo.pop(), gtype, domain) - seen:
                if parent == role:
                    return True
                seen.add(parent)
                todo.append(parent)
        return False

    def _role_fields(self) -> dict[str, str]:
        return {field: kind[5:] for field, kind in self.matcher.kinds.items() if kind.startswith("role:")}

    def _check_roles(self) -> None:
        fields = self.model.tokens("p", "p")
        for field, gtype in self._role_fields().items():
            index = fields.index(field)
            assigned = {value for line in self.groupings if line.ptype == gtype for value in line.values[:2]}
            granted = {rule.values[index] for rule in self.rules}
            for rule in self.rules:
                name = rule.values[index]
                if name not in assigned | self.known_names and not self.matcher.is_wildcard(field, name):
                    self._report(rule, "warning", f"{name!r} is granted permissions but never assigned: no {gtype} "
                                 "line, --role or test identity names it (a misspelt role?)")
            reported: set[str] = set()
            for line in self.groupings:
                role = line.values[1]
                if line.ptype != gtype or role in reported or self._grants(role, gtype, granted):
                    continue
                reported.add(role)
                self._report(line, "warning", f"role {role!r} is assigned here but grants nothing: no p line names "
                             "it or a role it inherits")

    def _grants(self, role: str, gtype: str, granted: set[str]) -> bool:
        return role in granted or any(self.inherits(role, name, gtype, None) for name in granted)

    def _check_wildcards(self) -> None:
        fields = self.model.tokens("p", "p")
        conditions = [field for field in fields if self.matcher.kind(field) == "eval"]
        subject = next(iter(self._role_fields()), "sub" if "sub" in fields else next(iter(conditions), None))
        for rule in self.rules:
            if self._effect_of(rule) != "allow":
                continue
            for field, value in zip(fields, rule.values, strict=True):
                if field in (subject, self.matcher.domain, "eft", "priority"):
                    continue
                classes = [what for what, probes in PROBES.items() if self._matches_all(field, value, probes)]
                if not classes:
                    continue
                what = "everything" if len(classes) == len(PROBES) else "every " + " and every ".join(classes)
                why = " (keyMatch2 reads ':name' as a path parameter)" if (
                    self.matcher.kind(field) == "keyMatch2" and ":" in value) else ""
                self._report_wildcard(rule, subject, f"{field} {value!r} matches {what}{why}")

    def _report_wildcard(self, rule: PolicyLine, subject: str | None, finding: str) -> None:
        fields = self.model.tokens("p", "p")
        if subject is None:
            self._report(rule, "error", f"{finding}, for every caller")
            return
        name = rule.values[fields.index(subject)]
        if self.matcher.kind(subject) == "eval":
            self._report(rule, "warning", f"{finding}; granted to every caller for whom {name!r} holds")
        elif self._matches_all(subject, name, SUBJECT_PROBES):
            self._report(rule, "error", f"{finding} and is granted to everyone ({subject} {name!r})")
        elif subject in self._role_fields() and (heirs := self._heirs(name, self._role_fields()[subject])):
            self._report(rule, "error", f"{finding} and is granted to the base role {name!r}, which "
                         f"{', '.join(heirs)} also hold")
        else:
            self._report(rule, "warning", f"{finding}; granted to {name!r}, it also grants whatever is added later")

    def _matches_all(self, field: str, value: str, probes: tuple[str, ...]) -> bool:
        if self.matcher.is_wildcard(field, value):
            return True
        kind = self.matcher.kind(field)
        return kind in PATTERN_FUNCTIONS and all(safe_match(kind, probe, value) for probe in probes)

    def _heirs(self, role: str, gtype: str) -> list[str]:
        """Who else holds ``role`` when it is a base role (one that inherits nothing itself)."""
        if self.parents(role, gtype, None):
            return []
        roles = {name for line in self.groupings if line.ptype == gtype for name in line.values[:2]}
        return sorted(other for other in roles if other != role and self.inherits(other, role, gtype, None))


def lint(model: ModelFile, lines: list[PolicyLine], known_names: Iterable[str] = ()) -> list[Finding]:
    return Linter(model, lines, known_names).run()
