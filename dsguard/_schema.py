"""Turn TOML tables into typed, frozen dataclasses, naming the key and line of any error.

A section is a dataclass whose fields carry their documentation in ``metadata["doc"]``; the
field's annotation says how its value is parsed (see :class:`Parse`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from ._tomlpos import Path_, nearest_line
from .errors import ConfigError
from .units import Secret


@dataclasses.dataclass(frozen=True)
class Parse:
    """Annotation marker: parse the raw TOML value with ``fn`` (raising ``ValueError``)."""

    fn: Callable[[Any], Any]


def doc(text: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING) -> Any:
    """A documented configuration field."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"doc": text})
    return dataclasses.field(default=default, metadata={"doc": text})


class Loader:
    """Parsing state for one file: its name, base directory and key line numbers."""

    def __init__(self, file: str | None, base: Path, lines: dict[Path_, int]) -> None:
        self.file = file
        self.base = base
        self.lines = lines

    def error(self, path: Path_, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, line=nearest_line(self.lines, path), key=render_key(path))

    def section(self, cls: type[Any], table: object, path: Path_) -> Any:
        if not isinstance(table, dict):
            raise self.error(path, f"expected a table, got {type(table).__name__}")
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {f.name: f for f in dataclasses.fields(cls) if "doc" in f.metadata}
        unknown = sorted(set(table) - set(fields))
        if unknown:
            known = ", ".join(sorted(fields))
            raise self.error((*path, unknown[0]), f"unknown key (known keys: {known})")
        values = {}
        for name, field in fields.items():
            if name in table:
                values[name] = self.value(hints[name], table[name], (*path, name))
            elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise self.error((*path, name), "required key is missing")
        return cls(**values)

    def value(self, hint: Any, raw: Any, path: Path_) -> Any:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            base, *extras = typing.get_args(hint)
            parser = next((e for e in extras if isinstance(e, Parse)), None)
            if parser is None:
                return self.value(base, raw, path)
            try:
                return parser.fn(raw)
            except ValueError as exc:
                raise self.error(path, str(exc)) from None
        if origin in (types.UnionType, typing.Union):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            return self.value(args[0], raw, path)
        if origin is Literal:
            choices = typing.get_args(hint)
            if raw not in choices:
                options = " or ".join(repr(c) for c in choices)
                raise self.error(path, f"expected {options}, got {raw!r}")
            return raw
        if origin is tuple:
            item = typing.get_args(hint)[0]
            if not isinstance(raw, list):
                raise self.error(path, f"expected a list, got {type(raw).__name__}")
            return tuple(self.value(item, v, (*path, i)) for i, v in enumerate(raw))
        if origin is dict:
            if not isinstance(raw, dict):
                raise self.error(path, f"expected a table, got {type(raw).__name__}")
            return dict(raw)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self.section(hint, raw, path)
        if hint is Path:
            if not isinstance(raw, str) or not raw:
                raise self.error(path, f"expected a file path, got {raw!r}")
            return self.path(raw)
        if hint is Secret:
            if not isinstance(raw, str) or raw in ("env:", "file:"):
                raise self.error(path, 'expected a secret reference like "env:NAME" or "file:PATH"')
            return Secret(raw, self.base)
        if hint is bool:
            if not isinstance(raw, bool):
                raise self.error(path, f"expected true or false, got {raw!r}")
            return raw
        if hint is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise self.error(path, f"expected an integer, got {raw!r}")
            return raw
        if hint is float:
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise self.error(path, f"expected a number, got {raw!r}")
            return float(raw)
        if hint is str:
            if not isinstance(raw, str):
                raise self.error(path, f"expected a string, got {raw!r}")
            return raw
        if hint is Any:
            return raw
        raise TypeError(f"unsupported configuration annotation {hint!r}")

    def path(self, raw: str) -> Path:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else self.base / path


def render_key(path: Path_) -> str:
    """Human form of a key path: ``[rate_limits] #2 limit``, ``[waf] paranoia``."""
    if not path:
        return ""
    parts = [p for p in path if isinstance(p, str)]
    index = next((p for p in path if isinstance(p, int)), None)
    if len(parts) == 1 and index is None and len(path) == 1:
        return parts[0]
    table = ".".join(parts[:-1]) if len(parts) > 1 else parts[0]
    key = parts[-1] if len(parts) > 1 else ""
    if index is not None and path[1] == index:
        table = f"[{parts[0]}] #{index + 1}"
        key = ".".join(parts[1:])
        return f"{table} {key}".strip()
    return f"[{table}] {key}".strip()


def field_docs(cls: type[Any]) -> dict[str, str]:
    """The documentation of each key of a section."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls)}
