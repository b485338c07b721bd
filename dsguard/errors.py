"""Exceptions raised to the operator (not to callers of the guarded API)."""

from __future__ import annotations


class DSGuardError(Exception):
    """Base class of every error dsguard raises to the code embedding it."""


class ConfigError(DSGuardError):
    """A configuration problem, located as precisely as the source allows.

    ``str(error)`` reads ``dsguard.toml:12: [hygiene] max_body: expected a size ...``.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ClientDisconnected(DSGuardError):
    """The client went away before the request body was read."""
