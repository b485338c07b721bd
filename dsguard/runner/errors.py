"""Errors of the local runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def read_json_object(path: Path) -> dict[str, Any]:
    """A bundle's JSON file that must hold an object; BundleError naming the file when missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError("missing", file=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"unreadable JSON: {error}", file=path) from None
    if not isinstance(data, dict):
        raise BundleError(f"expected a JSON object, got {type(data).__name__}", file=path)
    return data
