"""Reading an access token from ``Authorization: Bearer`` or ``Authorization: DPoP`` (RFC 6750, RFC 9449).

Shared by every token check, so they agree on what a token is and on which check claims it.
"""

from __future__ import annotations

import re

from ..context import RequestContext
from ..decision import BadRequest, Unauthenticated

SCHEMES = {"bearer": "Bearer", "dpop": "DPoP"}
_JWS_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def access_token(ctx: RequestContext) -> tuple[str, str] | None:
    """``(scheme, token)`` of a Bearer or DPoP credential, or None when the call carries neither."""
    authorization = ctx.headers.get("authorization")
    if authorization is None:
        return None
    scheme_name, _, token = authorization.partition(" ")
    scheme = SCHEMES.get(scheme_name.lower())
    if scheme is None:
        return None
    return scheme, token.strip(" ")


def credentials_problem(ctx: RequestContext, scheme: str, token: str) -> BadRequest | None:
    """400 ``invalid_request`` for a repeated Authorization header or empty credentials."""
    if b"authorization" in ctx.headers.repeated:
        return invalid_request("the Authorization header is repeated", "repeated_authorization")
    if not token:
        return invalid_request(f"the {scheme} credentials are missing", "malformed_authorization")
    return None


def invalid_request(message: str, code: str) -> BadRequest:
    challenge = Unauthenticated(message, error="invalid_request").headers
    return BadRequest(message, code=code, headers=challenge)


def looks_like_jwt(token: str) -> bool:
    """The shape the JWT check claims for itself (compact JWS); other tokens go to introspection."""
    return _JWS_COMPACT.fullmatch(token) is not None
