"""Built-in checks and the protocol every check (built-in or plugin) follows."""

from __future__ import annotations

from .base import Check, Outcome, stage_rank

__all__ = ["Check", "Outcome", "stage_rank"]
