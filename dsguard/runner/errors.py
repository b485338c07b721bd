"""Errors of the local runner."""

from __future__ import annotations

from pathlib import Path

from dsguard.errors import DSGuardError


class BundleError(DSGuardError):
    """A model bundle is missing, incomplete, or does not match what the runner expects.

    ``str(error)`` names the file at fault first, then the key when one is known:
    ``models/x/config.json: num_attention_heads: expected a positive integer, got 'twelve'``.
    """

    def __init__(self, message: str, *, file: str | Path | None = None, key: str | None = None) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.key = key
        where = f"{self.file}: " if self.file else ""
        what = f"{key}: " if key else ""
        super().__init__(f"{where}{what}{message}")
