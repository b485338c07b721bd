"""The framework-neutral view of one call that every check reads."""

from __future__ import annotations

import dataclasses
import itertools
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Protocol

from .types import RawHeaders

_UNSET: Any = object()
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)


_KEYS: dict[str, bytes] = {}
_NO_REPEATS: frozenset[bytes] = frozenset()


def _key(name: str) -> bytes:
    key = _KEYS.get(name)
    if key is None:
        key = name.lower().encode("latin-1")
        if len(_KEYS) < 1024:
            _KEYS[name] = key
    return key


class Headers(Mapping[str, str]):
    """Request headers, case-insensitive, over the raw ``(name, value)`` list (names lower-case).

    ``headers[name]`` joins repeated fields with ``", "`` (``"; "`` for ``cookie``);
    :meth:`getlist` returns them one by one and :attr:`repeated` names those that repeat.
    """

    __slots__ = ("_map", "_repeated", "raw")

    def __init__(self, raw: RawHeaders) -> None:
        self.raw = raw
        self._map: dict[bytes, bytes] | None = None
        self._repeated = _NO_REPEATS

    def _build(self) -> dict[bytes, bytes]:
        raw = self.raw
        mapping = dict(raw)
        if len(mapping) != len(raw):
            mapping, repeated = {}, set()
            for name, value in raw:
                if name in mapping:
                    repeated.add(name)
                    mapping[name] = mapping[name] + (b"; " if name == b"cookie" else b", ") + value
                else:
                    mapping[name] = value
            self._repeated = frozenset(repeated)
        self._map = mapping
        return mapping

    @property
    def repeated(self) -> frozenset[bytes]:
        """Names of the fields sent more than once."""
        if self._map is None:
            self._build()
        return self._repeated

    def __getitem__(self, key: str) -> str:
        return (self._map or self._build())[_key(key)].decode("latin-1")

    def get(self, key: str, default: Any = None) -> Any:
        value = (self._map or self._build()).get(_key(key))
        return default if value is None else value.decode("latin-1")

    def getlist(self, key: str) -> list[str]:
        name = _key(key)
        return [v.decode("latin-1") for k, v in self.raw if k == name]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and _key(key) in (self._map or self._build())

    def __iter__(self) -> Iterator[str]:
        return (k.decode("latin-1") for k in (self._map or self._build()))

    def __len__(self) -> int:
        return len(self._map or self._build())

    def __repr__(self) -> str:
        return f"Headers({len(self.raw)} fields)"


@dataclasses.dataclass(frozen=True, slots=True)
class TLSInfo:
    """What the TLS layer established (from the ASGI TLS extension or the WSGI server).

    ``client_cert`` is the verified client certificate in DER form (first of ``client_cert_chain``).
    """

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
    expires_at: float | None = None
    confirmation: Mapping[str, Any] | None = None
    certificate_thumbprint: str | None = None


AfterHook = Callable[["RequestContext", "ResponseInfo"], Awaitable[None] | None]


class ResponseFilter(Protocol):
    """Rewrites the app's response body as it streams: ``feed`` each chunk, ``finish`` at the end.

    Either may hold bytes back and return them later; what they return is what the client gets.
    """

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _FilterChain:
    __slots__ = ("filters",)

    def __init__(self, filters: list[ResponseFilter]) -> None:
        self.filters = filters

    def feed(self, data: bytes) -> bytes:
        for stage in self.filters:
            data = stage.feed(data)
        return data

    def finish(self) -> bytes:
        data = b""
        for stage in self.filters:
            data = stage.feed(data) + stage.finish()
        return data


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
        "_after", "_filters", "_finish", "_has_body", "_json", "_media_type", "_request_id", "attributes", "body",
        "body_limit", "body_replacement", "client_ip", "denials_reported", "forward_headers", "headers",
        "http_version", "identity", "method", "path", "peer",
        "query_string", "raw_path", "response_headers", "route_denial", "scheme", "timings", "tls",
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
        self.body_replacement: bytes | None = None
        self.forward_headers: list[tuple[bytes, bytes | None]] | None = None
        """Request header fields the app receives instead of those of the same (lowercase) name; None removes."""
        self.identity: Identity | None = None
        self.attributes: dict[str, Any] = {}
        self.response_headers: RawHeaders = []
        self.route_denial: Any = None
        self.timings: list[tuple[str, int]] = []
        self.denials_reported: list[Any] = []
        self._after: list[AfterHook] | None = None
        self._finish: list[AfterHook] | None = None
        self._filters: list[ResponseFilter] | None = None
        self._json: Any = _UNSET
        self._has_body: bool | None = None
        self._media_type: Any = _UNSET
        self._request_id = request_id

    @property
    def request_id(self) -> str:
        """An id for this call, unique across processes (random prefix) and made on first use."""
        if self._request_id is None:
            self._request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"
        return self._request_id

    @property
    def has_body(self) -> bool:
        """Whether the request may carry a body: Content-Length > 0, chunked, or HTTP/2+ framing."""
        has = self._has_body
        if has is None:
            length = self.headers.get("content-length")
            if length is not None:
                has = length.strip() != "0"
            else:
                has = "transfer-encoding" in self.headers or self.http_version[:1] in ("2", "3")
            self._has_body = has
        return has

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
        media_type = self._media_type
        if media_type is _UNSET:
            value = self.headers.get("content-type")
            media_type = None if value is None else value.split(";", 1)[0].strip().lower()
            self._media_type = media_type
        return media_type  # type: ignore[no-any-return]

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

    def before_finish(self, hook: AfterHook) -> None:
        """Run ``hook(ctx, response)`` before the last body chunk of the response (or the denial) is sent.

        The response ends only once the hook returns (or its awaitable completes). If it raises (a
        :class:`~dsguard.decision.Denial`, or anything else: 503 ``check_error``) or outlives the
        check timeout, the response does not end as a success: one not yet started is answered with
        the denial instead; a started one is cut off (its last chunk withheld, the connection closed).
        A call that never reaches its last chunk (the client left) does not run it.
        """
        if self._finish is None:
            self._finish = []
        self._finish.append(hook)

    @property
    def finish_hooks(self) -> list[AfterHook]:
        return self._finish or []

    def replace_body(self, data: bytes) -> None:
        """Forward ``data`` to the app instead of the body received (``ctx.body`` keeps the original)."""
        self.body_replacement = data

    def filter_response(self, response_filter: ResponseFilter) -> None:
        """Pass the app's response body through ``response_filter`` (after those registered before)."""
        if self._filters is None:
            self._filters = []
        self._filters.append(response_filter)

    @property
    def response_filter(self) -> ResponseFilter | None:
        """The registered response filters as one, or ``None``."""
        filters = self._filters
        if not filters:
            return None
        return filters[0] if len(filters) == 1 else _FilterChain(filters)

    def add_response_header(self, name: str, value: str) -> None:
        """A header for the app's response (and for denials), e.g. HSTS or RateLimit."""
        self.response_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))

    def __repr__(self) -> str:
        return f"<RequestContext {self.method} {self.path} from {self.client_ip}>"
