"""The framework-neutral view of one call that every check reads."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from .types import RawHeaders

_UNSET: Any = object()


class Headers(Mapping[str, str]):
    """Request headers, case-insensitive, built lazily from the raw ``(name, value)`` list.

    ``headers[name]`` joins repeated fields with ``", "`` (``"; "`` for ``cookie``);
    :meth:`getlist` returns them one by one.
    """

    __slots__ = ("_map", "raw")

    def __init__(self, raw: RawHeaders) -> None:
        self.raw = raw
        self._map: dict[str, str] | None = None

    def _build(self) -> dict[str, str]:
        mapping: dict[str, str] = {}
        for name, value in self.raw:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            if key in mapping:
                mapping[key] = f"{mapping[key]}{'; ' if key == 'cookie' else ', '}{text}"
            else:
                mapping[key] = text
        self._map = mapping
        return mapping

    def __getitem__(self, key: str) -> str:
        return (self._map or self._build())[key.lower()]

    def get(self, key: str, default: Any = None) -> Any:
        return (self._map or self._build()).get(key.lower(), default)

    def getlist(self, key: str) -> list[str]:
        name = key.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.raw if k.lower() == name]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in (self._map or self._build())

    def __iter__(self) -> Iterator[str]:
        return iter(self._map or self._build())

    def __len__(self) -> int:
        return len(self._map or self._build())

    def __repr__(self) -> str:
        return f"Headers({len(self.raw)} fields)"


@dataclasses.dataclass(frozen=True, slots=True)
class TLSInfo:
    """What the TLS layer established (from the ASGI TLS extension or the WSGI server)."""

    version: str | None = None
    cipher: str | None = None
    client_cert: bytes | None = None
    client_cert_chain: tuple[bytes, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """The verified caller. Only checks create it; nothing here comes from unverified input."""

    subject: str
    method: str
    issuer: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    tenant: str | None = None
    claims: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    token_id: str | None = None


AfterHook = Callable[["RequestContext", "ResponseInfo"], Awaitable[None] | None]


@dataclasses.dataclass(slots=True)
class ResponseInfo:
    """What the guard saw of the response, handed to after-hooks (token accounting, audit)."""

    status: int | None = None
    complete: bool = False
    disconnected: bool = False
    denied_by: str | None = None
    bytes_sent: int = 0


class RequestContext:
    """One call as the checks see it, whatever framework or server carries it.

    ``client_ip`` and ``scheme`` start as what the socket says; the transport check replaces
    them with what trusted proxies report. ``body`` is ``None`` until the pipeline has read it
    (bounded by ``body_limit``) for the first check that needs it.
    """

    __slots__ = (
        "_after", "_json", "_request_id", "attributes", "body", "body_limit", "client_ip", "denials_reported",
        "headers", "http_version", "identity", "method", "path", "peer", "query_string", "raw_path",
        "response_headers", "route_denial", "scheme", "timings", "tls",
    )

    def __init__(self, method: str, path: str, raw_path: bytes, query_string: bytes, headers: RawHeaders,
                 peer: str | None, scheme: str, http_version: str = "1.1", tls: TLSInfo | None = None,
                 request_id: str | None = None) -> None:
        self.method = method
        self.path = path
        self.raw_path = raw_path
        self.query_string = query_string
        self.headers = Headers(headers)
        self.peer = peer
        self.client_ip = peer
        self.scheme = scheme
        self.http_version = http_version
        self.tls = tls
        self.body: bytes | None = None
        self.body_limit: int | None = None
        self.identity: Identity | None = None
        self.attributes: dict[str, Any] = {}
        self.response_headers: RawHeaders = []
        self.route_denial: Any = None
        self.timings: list[tuple[str, int]] = []
        self.denials_reported: list[Any] = []
        self._after: list[AfterHook] | None = None
        self._json: Any = _UNSET
        self._request_id = request_id

    @property
    def request_id(self) -> str:
        """A random id for this call, made on first use (responses, logs, audit)."""
        if self._request_id is None:
            self._request_id = secrets.token_hex(8)
        return self._request_id

    @property
    def has_body(self) -> bool:
        """Whether the request may carry a body: Content-Length > 0, chunked, or HTTP/2+ framing."""
        length = self.headers.get("content-length")
        if length is not None:
            return length.strip() != "0"
        return "transfer-encoding" in self.headers or self.http_version[:1] in ("2", "3")

    @property
    def content_length(self) -> int | None:
        """The declared body length; ``None`` if absent. Raises ``ValueError`` if malformed."""
        value = self.headers.get("content-length")
        if value is None:
            return None
        value = value.strip()
        if not value.isdigit() or not value.isascii():
            raise ValueError(value)
        return int(value)

    @property
    def media_type(self) -> str | None:
        """The lower-cased media type of the body, without parameters."""
        value = self.headers.get("content-type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower()

    @property
    def json(self) -> Any:
        """The JSON body once a check has parsed it (hygiene does), else ``None``."""
        return None if self._json is _UNSET else self._json

    @json.setter
    def json(self, value: Any) -> None:
        self._json = value

    def after(self, hook: AfterHook) -> None:
        """Run ``hook(ctx, response)`` once the response is sent or the client went away."""
        if self._after is None:
            self._after = []
        self._after.append(hook)

    @property
    def after_hooks(self) -> list[AfterHook]:
        return self._after or []

    def add_response_header(self, name: str, value: str) -> None:
        """A header for the app's response (and for denials), e.g. HSTS or RateLimit."""
        self.response_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    def __repr__(self) -> str:
        return f"<RequestContext {self.method} {self.path} from {self.client_ip}>"
