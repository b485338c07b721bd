"""Denials: why a call is refused, in the one JSON shape every dsguard response uses.

A check returns (or raises) a :class:`Denial`. Each subclass fixes the HTTP status and error
type; ``code`` is the stable, machine-readable reason (``https_required``, ``body_too_large``,
``invalid_token`` ...). Messages are written for the caller and never carry secrets.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .types import RawHeaders


class Denial(Exception):
    """A refused call. ``status``, ``type`` and ``code`` are what callers and tests match on."""

    status: int = 403
    type: str = "permission_error"
    code: str = "forbidden"

    def __init__(self, message: str, *, code: str | None = None,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers: list[tuple[str, str]] = list(headers)
        self.check: str | None = None

    def body(self, request_id: str | None) -> bytes:
        error = {"type": self.type, "code": self.code, "message": self.message}
        return json.dumps({"error": error, "request_id": request_id}, separators=(",", ":")).encode()

    def raw_headers(self) -> RawHeaders:
        """The denial's own headers (content type, challenges, Retry-After), without per-call ones."""
        headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers)
        return headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, message={self.message!r})"


class BadRequest(Denial):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Unauthenticated(Denial):
    """401 with an RFC 6750 ``WWW-Authenticate`` challenge."""

    status = 401
    type = "authentication_error"
    code = "unauthenticated"

    def __init__(self, message: str, *, code: str | None = None, error: str | None = None,
                 scheme: str = "Bearer", realm: str = "dsguard", challenge: Iterable[tuple[str, str]] = (),
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message, code=code, headers=headers)
        params = [f"realm={_quote(realm)}"]
        if error:
            params += [f"error={_quote(error)}", f"error_description={_quote(message)}"]
        params += [f"{name}={_quote(value)}" for name, value in challenge]
        self.headers.insert(0, ("WWW-Authenticate", f"{scheme} {', '.join(params)}"))


class Forbidden(Denial):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(Denial):
    status = 404
    type = "not_found_error"
    code = "not_found"


class MethodNotAllowed(Denial):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(Denial):
    status = 413
    type = "invalid_request_error"
    code = "body_too_large"


class UnsupportedMediaType(Denial):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class HeadersTooLarge(Denial):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class _RetryAfter(Denial):
    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message, code=code, headers=headers)
        self.retry_after = retry_after
        if retry_after is not None:
            self.headers.insert(0, ("Retry-After", str(max(1, int(retry_after + 0.999)))))


class RateLimited(_RetryAfter):
    """429 with ``Retry-After`` (and ``RateLimit-*`` headers passed in ``headers``)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"


class Overloaded(_RetryAfter):
    """503 with ``Retry-After``."""

    status = 503
    type = "overloaded_error"
    code = "overloaded"


class CheckFailed(Overloaded):
    """A check raised or timed out: the call is refused (fail closed), never let through."""

    code = "check_error"

    def __init__(self, message: str = "a security check could not complete; try again",
                 *, code: str | None = None) -> None:
        super().__init__(message, retry_after=1, code=code)
