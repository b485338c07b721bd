"""What a limit counts by: the ``key`` of a ``[[rate_limits]]`` entry, read from one call.

``ip`` is ``ctx.client_ip`` as the transport check resolved it (forwarding headers believed only
from trusted proxies). ``subject``, ``tenant`` and ``claim:NAME`` come from the verified identity;
``route`` is the request path; ``model`` is the ``model`` field of the JSON body. A call for which
the key has no value (no identity, no such claim, no model) is not counted by that entry.
Values longer than 128 characters (or not encodable as UTF-8) are replaced by their SHA-256, so
keys stay bounded.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

from ..context import RequestContext
from .tokens import llm_body

KeyFunction = Callable[[RequestContext], str | None]
KEYS = ("ip", "subject", "tenant", "route", "model", "claim:NAME")
_MAX_VALUE = 128
_HASHED = "sha256:"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def bounded(value: str) -> str:
    """``value`` itself when short and plain; else its SHA-256 (long, unencodable or hash-like values)."""
    if len(value) <= _MAX_VALUE and not value.startswith(_HASHED) and (value.isascii() or _encodable(value)):
        return value
    return _HASHED + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _ip(ctx: RequestContext) -> str | None:
    return ctx.client_ip


def _subject(ctx: RequestContext) -> str | None:
    identity = ctx.identity
    return None if identity is None else bounded(identity.subject)


def _tenant(ctx: RequestContext) -> str | None:
    identity = ctx.identity
    return None if identity is None or identity.tenant is None else bounded(identity.tenant)


def _route(ctx: RequestContext) -> str:
    return bounded(ctx.path)


def _model(ctx: RequestContext) -> str | None:
    body = llm_body(ctx)
    model = None if body is None else body.get("model")
    return bounded(model) if isinstance(model, str) and model else None


def _claim(name: str) -> KeyFunction:
    def claim(ctx: RequestContext) -> str | None:
        identity = ctx.identity
        if identity is None:
            return None
        value = identity.claims.get(name)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            return None
        return bounded(str(value)) if value != "" else None

    return claim


_FUNCTIONS: dict[str, KeyFunction] = {
    "ip": _ip, "subject": _subject, "tenant": _tenant, "route": _route, "model": _model}


def key_function(spec: str) -> KeyFunction:
    """The function reading ``spec`` from a call; raises ``ValueError`` for an unknown key."""
    function = _FUNCTIONS.get(spec)
    if function is not None:
        return function
    kind, _, name = spec.partition(":")
    if kind == "claim" and name:
        return _claim(name)
    raise ValueError(f"unknown key {spec!r}; expected one of {', '.join(KEYS)}")


def default_name(spec: str) -> str:
    """A policy name for a key: ``"ip"``, ``"subject"``, ``"claim-org"``."""
    return _UNSAFE.sub("_", spec.replace(":", "-", 1))
