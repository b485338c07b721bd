"""Requests as http-message-signatures reads them: an uppercase ``method``, the absolute ``url``
and ``headers`` whose ``items()`` yields every field line in order.

:func:`request_message` adapts a :class:`~dsguard.context.RequestContext` on the server;
:class:`FieldLines` also carries the headers of an outgoing request while it is signed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..context import RequestContext


class FieldLines:
    """Header field lines, in order and repeats kept; names compare case-insensitively."""

    __slots__ = ("_lines",)

    def __init__(self, lines: Iterable[tuple[str, str]] = ()) -> None:
        self._lines = list(lines)

    @classmethod
    def from_raw(cls, raw: Iterable[tuple[bytes, bytes]]) -> FieldLines:
        return cls((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw)

    def items(self) -> list[tuple[str, str]]:
        return list(self._lines)

    def get(self, name: str) -> str | None:
        """The field's lines joined with ``", "``, or ``None`` if absent."""
        values = [value for field, value in self._lines if field.lower() == name.lower()]
        return ", ".join(values) if values else None

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self._lines))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(field.lower() == name.lower() for field, _ in self._lines)

    def __setitem__(self, name: str, value: str) -> None:
        del self[name]
        self._lines.append((name, value))

    def __delitem__(self, name: str) -> None:
        self._lines = [(field, value) for field, value in self._lines if field.lower() != name.lower()]


class RequestMessage:
    """One request in the shape http-message-signatures signs and verifies."""

    __slots__ = ("headers", "method", "url")

    def __init__(self, method: str, url: str, headers: FieldLines) -> None:
        self.method = method
        self.url = url
        self.headers = headers


def target_uri(ctx: RequestContext) -> str | None:
    """``@target-uri`` as the client addressed it (RFC 9421 section 2.2.2): the scheme after the
    transport check, the Host field, the raw path and the raw query. ``None`` without a Host."""
    host = ctx.headers.get("host")
    if not host or b"host" in ctx.headers.repeated:
        return None
    path = ctx.raw_path.decode("latin-1") or "/"
    query = ctx.query_string.decode("latin-1")
    return f"{ctx.scheme}://{host}{path}?{query}" if query else f"{ctx.scheme}://{host}{path}"


def request_message(ctx: RequestContext, url: str) -> RequestMessage:
    return RequestMessage(ctx.method.upper(), url, FieldLines.from_raw(ctx.headers.raw))
