"""The identity gate: after every identity check has run, a call without a verified caller is
refused (401), unless its path is public or ``[identity] anonymous = true``."""

from __future__ import annotations

from ..config import IdentityConfig
from ..context import RequestContext
from ..decision import Denial, Unauthenticated


class IdentityRequired:
    name = "identity-required"
    stage = "identity"
    priority = 100  # after every other identity check, plugins included

    def __init__(self, config: IdentityConfig) -> None:
        self.exact = frozenset(p for p in config.public_paths if not p.endswith("*"))
        self.prefixes = tuple(p[:-1] for p in config.public_paths if p.endswith("*"))

    def check(self, ctx: RequestContext) -> Denial | None:
        if ctx.identity is not None or ctx.path in self.exact or ctx.path.startswith(self.prefixes):
            return None
        return Unauthenticated("authentication is required", code="unauthenticated")
