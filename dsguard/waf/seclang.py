"""A SecLang subset: enough to run the OWASP CRS ``REQUEST-9xx`` attack rule files.

Supported: ``SecRule`` with the request collections of :mod:`dsguard.waf.targets` (keys,
``/regex/`` keys and ``!`` exclusions), ``MATCHED_VAR(S)`` in chained rules; operators
``@rx @pm @pmFromFile @contains @beginsWith @endsWith @streq @within @eq @ge @gt @lt @le
@unconditionalMatch`` (``!`` negation too); the transformations of :mod:`dsguard.waf.normalize`;
actions ``id``, ``phase``, ``chain``, ``severity``, ``tag:'paranoia-level/N'``, ``msg`` and the
anomaly-score ``setvar``; paranoia gating by ``SecRule TX:..PARANOIA_LEVEL "@lt N"
"..skipAfter:M"`` up to ``SecMarker M``. ``@detectSQLi``/``@detectXSS`` (libinjection) run
only when an approximation is passed in (dsguard uses its own SQLi/XSS rules); otherwise they
are skipped.

Everything else is skipped and counted by reason in :class:`LoadReport`, never silently:
rules on ``TX`` or other variables we do not collect, ``&`` counts, macros (``%{..}``) in
operators, rules that set no anomaly score, response phases, and other directives.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from .model import SEVERITY_SCORES, Operator, Rule, Selector, family_of_rule_id
from .normalize import TRANSFORMS
from .regex import UnsupportedPattern, compile_pattern

COLLECTIONS = frozenset({
    "ARGS", "ARGS_GET", "ARGS_POST", "ARGS_NAMES", "ARGS_GET_NAMES", "ARGS_POST_NAMES", "REQUEST_HEADERS",
    "REQUEST_HEADERS_NAMES", "REQUEST_COOKIES", "REQUEST_COOKIES_NAMES", "REQUEST_FILENAME", "REQUEST_BASENAME",
    "REQUEST_URI", "REQUEST_URI_RAW", "REQUEST_LINE", "REQUEST_METHOD", "REQUEST_PROTOCOL", "QUERY_STRING",
    "REQUEST_BODY", "XML", "FILES", "FILES_NAMES",
})
CHAIN_ONLY = frozenset({"MATCHED_VAR", "MATCHED_VARS"})
REGEX_OPERATORS = frozenset({"rx", "pm", "pmfromfile", "pmf", "contains", "beginswith", "endswith", "streq"})
DIRECT_OPERATORS = frozenset({"eq", "ge", "gt", "lt", "le", "within", "unconditionalmatch"})
APPROXIMATED = frozenset({"detectsqli", "detectxss"})
_SCORE_VARIABLE = re.compile(r"anomaly_score", re.I)


class SecLangError(ValueError):
    """A rules file that cannot be read at all."""


@dataclasses.dataclass
class LoadReport:
    files: list[str] = dataclasses.field(default_factory=list)
    loaded: int = 0
    by_family: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    skipped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    approximated: int = 0

    def summary(self) -> str:
        skipped = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
        return (f"{self.loaded} rules loaded from {len(self.files)} files"
                f" ({self.approximated} approximated); skipped: {skipped or 'none'}")


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def logical_lines(text: str) -> Iterator[str]:
    """Directives with backslash continuations joined and comments dropped."""
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        if pending.strip():
            yield pending.strip()
        pending = ""
    if pending.strip():
        yield pending.strip()


def split_words(line: str) -> list[str]:
    """Apache configuration words: double quotes group, ``\\"`` and ``\\\\`` are escapes inside them."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            break
        if line[i] == '"':
            i += 1
            word: list[str] = []
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n and line[i + 1] in '"\\':
                    i += 1
                word.append(line[i])
                i += 1
            words.append("".join(word))
            i += 1
        else:
            start = i
            while i < n and not line[i].isspace():
                i += 1
            words.append(line[start:i])
    return words


def split_actions(text: str) -> list[tuple[str, str]]:
    """``id:1,msg:'a, b',t:none`` as ``[(id, 1), (msg, a, b), (t, none)]``."""
    actions: list[tuple[str, str]] = []
    current: list[str] = []
    quoted = False
    for char in text + ",":
        if char == "'":
            quoted = not quoted
            continue
        if char == "," and not quoted:
            item = "".join(current).strip()
            if item:
                name, _, value = item.partition(":")
                actions.append((name.strip().lower(), value.strip()))
            current = []
            continue
        current.append(char)
    return actions


def _selectors(text: str, *, chained: bool) -> tuple[Selector, ...]:
    selectors = []
    for item in text.split("|"):
        item = item.strip()
        if not item:
            continue
        if item.startswith("&"):
            raise _Skip("count (&) variables")
        exclude = item.startswith("!")
        name, _, key = item.lstrip("!").partition(":")
        name = name.upper()
        if name in CHAIN_ONLY and chained:
            selectors.append(Selector(name))
            continue
        if name not in COLLECTIONS:
            raise _Skip(f"variable {name}")
        key = key.strip("'")
        if name == "XML" or not key:
            selectors.append(Selector(name, exclude=exclude))
        elif key.startswith("/") and key.endswith("/") and len(key) > 1:
            selectors.append(Selector(name, key_pattern=key[1:-1], exclude=exclude))
        else:
            selectors.append(Selector(name, key=key.lower(), exclude=exclude))
    if not any(not s.exclude for s in selectors):
        raise _Skip("no inspected variable")
    return tuple(selectors)


def escape(literal: str) -> str:
    """A literal as a pattern both RE2 and Python's ``re`` read the same way."""
    out = []
    for char in literal:
        if char.isalnum() or char == "_" or ord(char) > 127:
            out.append(char)
        elif char == " ":
            out.append("[ ]")
        elif char.isprintable():
            out.append("\\" + char)
        else:
            out.append(f"\\x{ord(char):02x}" if ord(char) < 256 else char)
    return "".join(out)


def _phrases(words: Iterable[str]) -> str:
    alternatives = sorted({escape(w) for w in words if w}, key=len, reverse=True)
    if not alternatives:
        raise _Skip("empty phrase list")
    return "(?i)(?:" + "|".join(alternatives) + ")"


def _phrase_file(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        raise _Skip("missing @pmFromFile data file") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def parse_operator(text: str, base: Path) -> Operator:
    negated = text.startswith("!")
    if negated:
        text = text[1:]
    if not text.startswith("@"):
        name, argument = "rx", text
    else:
        name, _, argument = text[1:].partition(" ")
        name = name.lower()
        argument = argument.strip()
    if "%{" in argument:
        raise _Skip("macro in operator")
    if name in APPROXIMATED or name in DIRECT_OPERATORS:
        return Operator(name, argument, negated)
    if name not in REGEX_OPERATORS:
        raise _Skip(f"operator @{name}")
    if name == "rx":
        pattern = argument
    elif name == "pm":
        pattern = _phrases(argument.split())
    elif name in ("pmfromfile", "pmf"):
        pattern = _phrases(p for file in argument.split() for p in _phrase_file(base / file))
    elif name == "contains":
        pattern = escape(argument)
    elif name == "beginswith":
        pattern = "^" + escape(argument)
    elif name == "endswith":
        pattern = escape(argument) + r"\z"
    else:
        pattern = "^" + escape(argument) + r"\z"
    return Operator(name, argument, negated, pattern)


@dataclasses.dataclass
class _Parsed:
    id: int
    phase: int
    selectors: tuple[Selector, ...]
    operator: Operator
    transforms: tuple[str, ...]
    actions: list[tuple[str, str]]
    skip: str | None = None


def _score(actions: list[tuple[str, str]]) -> int | None:
    """The anomaly score a rule adds: its ``setvar`` on an anomaly score (whatever its disruptive action:
    in anomaly scoring mode ``pass`` rules count too), else its severity if it blocks; ``None`` if neither."""
    severity = None
    for name, value in actions:
        if name == "severity":
            severity = SEVERITY_SCORES.get(value.strip("'").lower())
        if name == "setvar" and _SCORE_VARIABLE.search(value.split("=", 1)[0]) and "=+" in value:
            amount = value.split("=+", 1)[1].strip()
            level = re.search(r"tx\.(critical|error|warning|notice)_anomaly_score", amount, re.I)
            if level:
                return SEVERITY_SCORES[level.group(1).lower()]
            if amount.isdigit():
                return int(amount)
    return severity if any(name in ("block", "deny", "drop") for name, _ in actions) else None


class Loader:
    """Reads rules files in order, keeping paranoia gates and chains across directives."""

    def __init__(self, approximated: Iterable[str] = ()) -> None:
        self.rules: list[Rule] = []
        self.report = LoadReport()
        self.approximated = frozenset(approximated)
        self._gate_level = 1
        self._gate_marker: str | None = None
        self._chain: list[_Parsed] = []
        self.skipped_ids: list[tuple[int, str]] = []

    def load_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise SecLangError(f"cannot read {path}: {exc.strerror}") from None
        self.report.files.append(str(path))
        for line in logical_lines(text):
            self._directive(line, path.parent)

    def load_text(self, text: str, base: Path = Path(".")) -> None:
        for line in logical_lines(text):
            self._directive(line, base)

    def _directive(self, line: str, base: Path) -> None:
        words = split_words(line)
        directive = words[0].lower() if words else ""
        if directive == "secmarker":
            if len(words) > 1 and words[1].strip("'\"") == self._gate_marker:
                self._gate_level, self._gate_marker = 1, None
            return
        if directive != "secrule":
            self.report.skipped[f"directive {words[0] if words else '?'}"] += 1
            return
        if len(words) < 3:
            self.report.skipped["malformed SecRule"] += 1
            return
        actions = split_actions(words[3] if len(words) > 3 else "")
        if self._is_gate(words[1], words[2], actions):
            return
        self._chain.append(self._parse(words[1], words[2], actions, base, chained=bool(self._chain)))
        if not any(name == "chain" for name, _ in actions):
            links, self._chain = self._chain, []
            self._finish(links)

    def _is_gate(self, variables: str, operator: str, actions: list[tuple[str, str]]) -> bool:
        if self._chain or "PARANOIA_LEVEL" not in variables.upper() or not operator.startswith("@lt"):
            return False
        marker = next((value for name, value in actions if name == "skipafter"), None)
        level = operator[3:].strip()
        if marker is None or not level.isdigit():
            return False
        self._gate_level, self._gate_marker = int(level), marker
        return True

    def _parse(self, variables: str, operator: str, actions: list[tuple[str, str]], base: Path, *,
               chained: bool) -> _Parsed:
        values = dict(actions)
        rule_id = int(values["id"]) if values.get("id", "").isdigit() else 0
        phase_text = values.get("phase", "2")
        phase = int(phase_text) if phase_text.isdigit() else {"request": 2, "response": 4}.get(phase_text, 2)
        transforms: tuple[str, ...] = ()
        for name, value in actions:
            if name == "t":  # t:none drops the transformations listed before it
                transforms = () if value.lower() == "none" else (*transforms, value.lower())
        try:
            unknown = next((t for t in transforms if t not in TRANSFORMS), None)
            if unknown:
                raise _Skip(f"transformation t:{unknown}")
            parsed_operator = parse_operator(operator, base)
            if parsed_operator.name in APPROXIMATED and parsed_operator.name not in self.approximated:
                raise _Skip(f"operator @{parsed_operator.name} (libinjection, no approximation given)")
            selectors = _selectors(variables, chained=chained)
            if parsed_operator.pattern is not None:
                compile_pattern(parsed_operator.pattern)
        except UnsupportedPattern:
            return _Parsed(rule_id, phase, (), Operator("none"), transforms, actions, "pattern neither RE2 nor re runs")
        except _Skip as skip:
            return _Parsed(rule_id, phase, (), Operator("none"), transforms, actions, skip.reason)
        return _Parsed(rule_id, phase, selectors, parsed_operator, transforms, actions)

    def _finish(self, links: list[_Parsed]) -> None:
        head = links[0]
        skip = next((link.skip for link in links if link.skip), None)
        all_actions = [action for link in links for action in link.actions]
        score = _score(all_actions)
        if skip is None and head.phase > 2:
            skip = "response phase"
        if skip is None and score is None:
            skip = "sets no anomaly score"
        if skip is not None:
            self.report.skipped[skip] += 1
            self.skipped_ids.append((head.id, skip))
            return
        assert score is not None
        tagged = [int(m.group(1)) for n, v in head.actions if n == "tag"
                  for m in [re.search(r"paranoia-level/(\d)", v)] if m]
        paranoia = max([self._gate_level, *tagged])
        family = family_of_rule_id(head.id)
        message = next((v for n, v in head.actions if n == "msg"), "")
        rule: Rule | None = None
        for link in reversed(links):
            rule = Rule(head.id, family, paranoia, score, link.selectors, link.operator, link.transforms,
                        message if link is head else "", rule)
        assert rule is not None
        self.rules.append(rule)
        self.report.loaded += 1
        self.report.by_family[family] += 1
        if any(link.operator.name in APPROXIMATED for link in links):
            self.report.approximated += 1


CRS_FILES = "REQUEST-9*.conf"
DEBIAN_CRS = Path("/usr/share/modsecurity-crs/rules")


def load_directory(path: Path, approximated: Iterable[str] = (), pattern: str = CRS_FILES) -> Loader:
    """Every ``REQUEST-9*.conf`` of a CRS rules directory, in name order (CRS's own order)."""
    if not path.is_dir():
        raise SecLangError(f"{path} is not a directory of rules files")
    files = sorted(path.glob(pattern))
    if not files:
        raise SecLangError(f"{path} has no {pattern} rules files")
    loader = Loader(approximated)
    for file in files:
        if "949" not in file.name:
            loader.load_file(file)
    return loader
