"""Casbin model and policy files read with their line numbers, for `dsguard policy`.

pycasbin drops a policy line whose type the model does not define and only notices a line of the
wrong length when a request reaches it; these readers keep every line with its position so that
such problems are reported as ``FILE:LINE`` before any request is decided.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

SECTIONS = {"request_definition": "r", "policy_definition": "p", "role_definition": "g", "policy_effect": "e",
            "matchers": "m"}
MODEL_FILE = "model.conf"
POLICY_FILE = "policy.csv"
TESTS_FILE = "tests.yaml"


class PolicyFileError(Exception):
    """A model, policy or tests file that cannot be used, located as ``FILE:LINE: message``."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    key: str
    value: str
    line: int


@dataclasses.dataclass(frozen=True)
class ModelFile:
    path: Path
    entries: dict[str, dict[str, ModelEntry]]
    """Section letter (r, p, g, e, m) -> key (p, p2, g, ...) -> entry."""

    def entry(self, section: str, key: str) -> ModelEntry | None:
        return self.entries.get(section, {}).get(key)

    def tokens(self, section: str, key: str) -> list[str]:
        entry = self.entry(section, key)
        return [token.strip() for token in entry.value.split(",")] if entry else []

    @property
    def ptypes(self) -> list[str]:
        return list(self.entries.get("p", {}))

    @property
    def gtypes(self) -> list[str]:
        return list(self.entries.get("g", {}))

    def arity(self, ptype: str) -> int:
        return len(self.tokens(ptype[0], ptype))

    def line_of(self, section: str, key: str) -> int:
        entry = self.entry(section, key)
        return entry.line if entry else 1


@dataclasses.dataclass(frozen=True)
class PolicyLine:
    path: Path
    line: int
    ptype: str
    values: tuple[str, ...]

    @property
    def text(self) -> str:
        return ", ".join((self.ptype, *self.values))

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def read_model(path: Path) -> ModelFile:
    """Parse ``path`` the way casbin's config reader does, keeping where each key starts."""
    entries: dict[str, dict[str, ModelEntry]] = {}
    section: str | None = None
    pending: list[str] = []
    start = 0

    def flush() -> None:
        nonlocal pending
        if not pending:
            return
        key, sep, value = "".join(pending).partition("=")
        pending = []
        if not sep:
            raise PolicyFileError(path, start, f"expected KEY = VALUE, found {key.strip()!r}")
        if section is None:
            raise PolicyFileError(path, start, f"{key.strip()!r} is outside any [section]")
        letter = SECTIONS[section]
        key = key.strip()
        if not re.fullmatch(rf"{letter}([2-9]|[1-9][0-9]+)?", key):
            raise PolicyFileError(path, start, f"[{section}] key {key!r}: expected {letter}, {letter}2, ...")
        entries.setdefault(letter, {})[key] = ModelEntry(key, value.strip(), start)

    for number, raw in enumerate(_read_text(path).splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            flush()
            continue
        if line.startswith("[") and line.endswith("]"):
            flush()
            section = line[1:-1].strip()
            if section not in SECTIONS:
                raise PolicyFileError(path, number, f"unknown section [{section}]; expected one of "
                                      + ", ".join(f"[{name}]" for name in SECTIONS))
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip() + " ")
        else:
            pending.append(line)
            flush()
    flush()
    for letter, name in (("r", "request_definition"), ("p", "policy_definition"), ("e", "policy_effect"),
                         ("m", "matchers")):
        if letter not in entries:
            raise PolicyFileError(path, None, f"missing [{name}] with {letter} = ...")
    return ModelFile(path, entries)


def split_policy_line(text: str) -> list[str]:
    """casbin's CSV split: commas inside () or [] do not separate fields."""
    depth = 0
    fields = [""]
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            fields.append("")
            continue
        fields[-1] += char
    return [field.strip() for field in fields]


def read_policy(path: Path) -> list[PolicyLine]:
    lines = []
    for number, raw in enumerate(_read_text(path).splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        ptype, *values = split_policy_line(text)
        lines.append(PolicyLine(path, number, ptype, tuple(values)))
    return lines


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyFileError(path, None, "no such file") from None
    except IsADirectoryError:
        raise PolicyFileError(path, None, "is a directory, expected a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(path, None, f"cannot read ({exc})") from None


def structural_errors(model: ModelFile, lines: list[PolicyLine]) -> list[tuple[PolicyLine, str]]:
    """Policy lines casbin would drop silently or fail on at request time."""
    known = model.ptypes + model.gtypes
    problems = []
    for line in lines:
        if line.ptype not in known:
            problems.append((line, f"unknown policy type {line.ptype!r}: the model defines {', '.join(known)} "
                                   "(casbin would ignore this line)"))
            continue
        expected = model.arity(line.ptype)
        if len(line.values) != expected:
            names = ", ".join(model.tokens(line.ptype[0], line.ptype))
            problems.append((line, f"{line.ptype} line has {len(line.values)} fields, the model expects "
                                   f"{expected} ({names})"))
        elif any(value == "" for value in line.values):
            problems.append((line, "empty field"))
        elif line.ptype in model.ptypes and "eft" in model.tokens("p", line.ptype):
            effect = line.values[model.tokens("p", line.ptype).index("eft")]
            if effect not in ("allow", "deny"):
                problems.append((line, f"effect {effect!r} is neither allow nor deny (casbin would ignore it)"))
    return problems
