"""Per-route requirements (roles, scopes) shared by the FastAPI and Flask helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .context import Identity
from .decision import Denial, Forbidden, Unauthenticated


@dataclasses.dataclass(frozen=True)
class Requirement:
    """A route needs a verified caller holding every scope in ``scopes`` and one role of ``roles``."""

    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, roles: Iterable[str] = (), scopes: Iterable[str] = ()) -> Requirement:
        return cls(frozenset(roles), frozenset(scopes))

    def evaluate(self, identity: Identity | None) -> Denial | None:
        if identity is None:
            return Unauthenticated("authentication is required", code="unauthenticated")
        missing = self.scopes - identity.scopes
        if missing:
            needed = " ".join(sorted(self.scopes))
            denial = Forbidden(f"this route needs the scope(s): {needed}", code="insufficient_scope")
            denial.headers.append(("WWW-Authenticate",
                                   f'Bearer realm="dsguard", error="insufficient_scope", scope="{needed}"'))
            return denial
        if self.roles and not (self.roles & identity.roles):
            return Forbidden("the caller's roles do not allow this route", code="missing_role")
        return None
