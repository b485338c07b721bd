"""Casbin model and policy files, read the way casbin reads them, with a line number per rule.

The model file is parsed by casbin's own loader (:class:`casbin.model.Model`). The policy file
is split into rules exactly as casbin's ``FileAdapter`` does (commas inside ``[]``/``()`` do not
split, ``#`` starts a comment line, lines of a type the model does not declare are dropped), but
each rule keeps its file and line. Where casbin would fail later (a ``p`` rule of the wrong size,
a ``g`` rule too short for its role definition), loading fails here, naming the line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from casbin.model import Model

from .errors import PolicyError

SECTIONS = {"r": "request_definition", "p": "policy_definition", "g": "role_definition", "e": "policy_effect",
            "m": "matchers"}
_CONFIG_ERROR_LINE = re.compile(r"line (\d+)")
_BRACKETS = frozenset("[]()")


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One policy line: its type (``p``, ``g``, ``g2`` ...), its values, and where it was written."""

    ptype: str
    values: tuple[str, ...]
    file: str
    line: int

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:
        return ", ".join((self.ptype, *self.values))


@dataclasses.dataclass(frozen=True)
class PolicySource:
    """A loaded model and the rules of its policy file, in file order, by type."""

    model: Model
    model_path: str
    policy_path: str
    rules: dict[str, tuple[Rule, ...]]
    ignored: tuple[Rule, ...]
    """Lines whose type the model does not declare: casbin drops them silently."""
    digest: str
    """SHA-256 over both files' bytes: equal digests mean the same policy."""

    def definition_line(self, section: str, key: str) -> int | None:
        """Line of ``key = ...`` in ``[section]`` of the model file (``section`` as in ``"m"``)."""
        return definition_line(Path(self.model_path).read_text(encoding="utf-8"), SECTIONS[section], key)

    def tokens(self, section: str, key: str) -> list[str]:
        assertion = (self.model[section] or {}).get(key)
        return list(assertion.tokens) if assertion is not None else []

    def error(self, section: str, key: str, message: str) -> PolicyError:
        try:
            line = self.definition_line(section, key)
        except (OSError, UnicodeDecodeError):
            line = None
        return PolicyError(message, file=self.model_path, line=line)


def definition_line(text: str, section_name: str, key: str) -> int | None:
    section = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == section_name and line.split("=", 1)[0].strip() == key and "=" in line:
            return number
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PolicyError("file not found", file=str(path)) from None
    except OSError as exc:
        raise PolicyError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None


def read_model(path: Path, text: str) -> Model:
    """The model in ``text`` (read from ``path``), loaded by casbin, its required sections checked."""
    model = Model()
    try:
        model.load_model_from_text(text)
    except RuntimeError as exc:
        match = _CONFIG_ERROR_LINE.search(str(exc))
        raise PolicyError(f"not a valid casbin model: {exc}", file=str(path),
                          line=int(match.group(1)) if match else None) from None
    for section in ("r", "p", "e", "m"):
        if model[section] is None or section not in model[section]:
            raise PolicyError(f"[{SECTIONS[section]}] {section} is missing", file=str(path))
    return model


def split_line(line: str) -> list[str]:
    """The fields of one policy line, as casbin's ``load_policy_line`` splits them."""
    if not _BRACKETS.intersection(line):
        return [token.strip() for token in line.split(",")]
    depth = 0
    tokens: list[str] = []
    for char in line:
        if char in "[(":
            if not tokens:
                raise ValueError("a line cannot start with a bracket")
            depth += 1
            tokens[-1] += char
        elif char in "])":
            if depth == 0 or not tokens:
                raise ValueError(f"unbalanced {char!r}")
            depth -= 1
            tokens[-1] += char
        elif char == "," and depth == 0:
            tokens.append("")
        elif not tokens:
            tokens.append(char)
        else:
            tokens[-1] += char
    return [token.strip() for token in tokens]


def _role_arity(model: Model, ptype: str) -> int:
    return int(model["g"][ptype].value.count("_"))


def read_rules(path: Path, data: bytes, model: Model) -> tuple[dict[str, tuple[Rule, ...]], tuple[Rule, ...]]:
    """The rules of a policy file by type, and the lines casbin would drop."""
    file = str(path)
    rules: dict[str, list[Rule]] = {}
    ignored: list[Rule] = []
    p_size = len(model["p"]["p"].tokens)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode().strip()
        except UnicodeDecodeError:
            raise PolicyError("not valid UTF-8", file=file, line=number) from None
        if not line or line.startswith("#"):
            continue
        try:
            tokens = split_line(line)
        except ValueError as exc:
            raise PolicyError(f"cannot split the line: {exc}", file=file, line=number) from None
        key = tokens[0]
        if not key:
            raise PolicyError("the line has no policy type", file=file, line=number)
        rule = Rule(key, tuple(tokens[1:]), file, number)
        section = model[key[0]]
        if key[0] not in ("p", "g") or section is None or key not in section:
            ignored.append(rule)
            continue
        if key == "p" and len(rule.values) != p_size:
            raise PolicyError(f"a p rule needs {p_size} fields (policy_definition), this one has "
                              f"{len(rule.values)}", file=file, line=number)
        if key[0] == "g" and len(rule.values) < _role_arity(model, key):
            raise PolicyError(f"a {key} rule needs {_role_arity(model, key)} fields (role_definition), this one has "
                              f"{len(rule.values)}", file=file, line=number)
        rules.setdefault(key, []).append(rule)
    return {key: _sorted_by_priority(model, key, found) for key, found in rules.items()}, tuple(ignored)


def _sorted_by_priority(model: Model, ptype: str, rules: list[Rule]) -> tuple[Rule, ...]:
    """casbin's ``sort_policies_by_priority``: p rules ordered by a ``priority`` field, if the model has one."""
    if ptype[0] != "p" or f"{ptype}_priority" not in model["p"][ptype].tokens:
        return tuple(rules)
    index = model["p"][ptype].tokens.index(f"{ptype}_priority")

    def key(rule: Rule) -> int | str:
        value = rule.values[index]
        return int(value) if value.isdigit() else value

    try:
        return tuple(sorted(rules, key=key))
    except TypeError:
        raise PolicyError("priority values mix numbers and words; casbin cannot order them",
                          file=rules[0].file, line=rules[0].line) from None


def read_source(model_path: str | Path, policy_path: str | Path) -> PolicySource:
    """Both files, read once each (the digest covers exactly the bytes that were parsed)."""
    model_path, policy_path = Path(model_path), Path(policy_path)
    model_bytes = _read_bytes(model_path)
    policy_bytes = _read_bytes(policy_path)
    try:
        model_text = model_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError("not valid UTF-8", file=str(model_path)) from None
    model = read_model(model_path, model_text)
    rules, ignored = read_rules(policy_path, policy_bytes, model)
    digest = hashlib.sha256(b"%d:" % len(model_bytes) + model_bytes + policy_bytes).hexdigest()
    return PolicySource(model, str(model_path), str(policy_path), rules, ignored, digest)
