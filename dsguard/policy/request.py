"""The Casbin request of one call: who (subject, roles, tenant), on what, doing what, with which attributes.

========================  =================================================================
request token             value
========================  =================================================================
``sub``                   the verified identity's subject (``anonymous_subject`` without one)
``dom``                   the identity's tenant (``""`` without one)
``obj``                   ``model:<name>`` for an LLM call naming a model, else the path
``act``                   ``chat`` / ``complete`` / ``embed`` for such a call, else the method
``attrs``                 :class:`Attributes`: ``claims`` (every verified claim), ``sub``,
                          ``tenant``, ``roles``, ``scopes``, ``method``, ``path``, ``model``,
                          ``max_tokens`` (``inf`` when the body sets none)
========================  =================================================================

An LLM call is a request to one of the ``actions`` paths (``/v1/chat/completions`` -> ``chat``,
``/v1/completions`` -> ``complete``, ``/v1/embeddings`` -> ``embed``) whose JSON body is an
object with a non-empty string ``model``; otherwise the route and method are the object and
action. The identity's roles count as ``g`` links from the subject (in its tenant) for the call.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..context import Identity

REQUEST_TOKENS = ("sub", "obj", "act", "dom", "attrs")
LLM_ACTIONS: Mapping[str, str] = {"/v1/chat/completions": "chat", "/v1/completions": "complete",
                                  "/v1/embeddings": "embed"}
MODEL_PREFIX = "model:"


class Attributes(dict[str, Any]):
    """``r.attrs``: read as ``r.attrs.name`` (or ``r.attrs["name"]``); a name it lacks reads as None."""

    def __missing__(self, key: str) -> None:
        return None


def _max_tokens(body: Mapping[str, Any]) -> float:
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return math.inf


@dataclasses.dataclass(frozen=True)
class AccessRequest:
    """One request as the policy sees it (see the module documentation for each field)."""

    sub: str
    obj: str
    act: str
    dom: str | None = None
    roles: frozenset[str] = frozenset()
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=Attributes)


def access_request(identity: Identity | None, method: str, path: str, body: Any = None, *,
                   actions: Mapping[str, str] = LLM_ACTIONS, anonymous_subject: str = "anonymous",
                   with_attributes: bool = True) -> AccessRequest:
    """The request for a call, from its verified identity, method, path and parsed JSON body.

    ``with_attributes=False`` leaves ``attrs`` empty, for models that do not read them.
    """
    body = body if isinstance(body, dict) else {}
    model = body.get("model")
    model = model if isinstance(model, str) and model else None
    action = actions.get(path)
    if action is not None and model is not None:
        obj, act = MODEL_PREFIX + model, action
    else:
        obj, act = path, method.upper()
    sub = identity.subject if identity is not None else anonymous_subject
    tenant = identity.tenant if identity is not None else None
    roles = identity.roles if identity is not None else frozenset()
    if not with_attributes:
        return AccessRequest(sub, obj, act, tenant, frozenset(roles))
    claims = Attributes(identity.claims) if identity is not None else Attributes()
    attrs = Attributes(claims=claims, sub=sub, tenant=tenant, roles=sorted(roles),
                       scopes=sorted(identity.scopes) if identity is not None else [],
                       method=method.upper(), path=path, model=model,
                       max_tokens=_max_tokens(body))
    return AccessRequest(sub, obj, act, tenant, frozenset(roles), attrs)


def attributes(values: Mapping[str, Any] | None) -> Attributes:
    if isinstance(values, Attributes):
        return values
    return Attributes(values or {})


def request_values(tokens: Iterable[str], sub: Any, obj: Any, act: Any, dom: Any, attrs: Any) -> tuple[Any, ...]:
    by_name = {"sub": sub, "obj": obj, "act": act, "dom": dom, "attrs": attrs}
    return tuple(by_name[token] for token in tokens)
