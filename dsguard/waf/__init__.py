"""The web application firewall: rules, normalisation, a SecLang loader for the OWASP CRS, scoring.

:func:`builtin_rule_set` is dsguard's own rules; :func:`crs_rule_set` loads a CRS rules
directory (its ``@detectSQLi``/``@detectXSS`` answered by dsguard's SQLi and XSS rules).
``RuleSet.engine(paranoia)`` compiles them for one paranoia level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from .engine import Engine, Verdict
from .model import Hit, Rule
from .rules import builtin_rules
from .seclang import DEBIAN_CRS, LoadReport, SecLangError, load_directory

__all__ = ["DEBIAN_CRS", "Engine", "Hit", "Rule", "RuleSet", "SecLangError", "Verdict", "builtin_rule_set",
           "crs_rule_set", "resolve_crs_path"]


@dataclasses.dataclass
class RuleSet:
    rules: tuple[Rule, ...]
    source: str
    report: LoadReport | None = None
    approximations: dict[str, Callable[[str], bool]] = dataclasses.field(default_factory=dict)
    _engines: dict[tuple[int, int], Engine] = dataclasses.field(default_factory=dict, repr=False)

    def engine(self, paranoia: int, threshold: int = 5) -> Engine:
        key = (paranoia, threshold)
        engine = self._engines.get(key)
        if engine is None:
            engine = Engine(self.rules, paranoia=paranoia, threshold=threshold, approximations=self.approximations)
            self._engines[key] = engine
        return engine


def builtin_rule_set() -> RuleSet:
    return RuleSet(tuple(builtin_rules()), "built-in")


def _family_detector(family: str) -> Callable[[str], bool]:
    engine = Engine([rule for rule in builtin_rules() if rule.family == family], paranoia=1, threshold=1)

    def detect(text: str) -> bool:
        return engine.inspect({"ARGS": [("", text)]}).blocked

    return detect


def crs_rule_set(path: Path) -> RuleSet:
    """A CRS rules directory (``REQUEST-9*.conf``); raises :class:`SecLangError` if unreadable."""
    approximations = {"detectsqli": _family_detector("sqli"), "detectxss": _family_detector("xss")}
    loader = load_directory(path, approximated=approximations)
    return RuleSet(tuple(loader.rules), str(path), loader.report, approximations)


def resolve_crs_path(value: str | Path | None) -> Path | None:
    """``None`` for the built-in rules, Debian's CRS for ``"auto"`` (``None`` when not installed), else a path."""
    if value is None:
        return None
    if str(value) == "auto":
        return DEBIAN_CRS if DEBIAN_CRS.is_dir() else None
    return Path(value)
