"""Transport: HTTPS required, client address and scheme from trusted proxies only, HSTS.

``Forwarded`` (RFC 7239) is preferred over ``X-Forwarded-For``/``X-Forwarded-Proto``. Either is
read only when the socket peer is in ``[server] trusted_proxies``; the chain is walked from the
right, skipping trusted proxies, and the first untrusted hop is the client.
"""

from __future__ import annotations

import functools

from ..config import TransportConfig
from ..context import RequestContext
from ..decision import BadRequest, Denial, Forbidden
from ..units import NetworkSet, parse_ip


@functools.lru_cache(maxsize=4096)
def _is_ip(text: str) -> bool:
    return parse_ip(text) is not None


class ForwardedError(ValueError):
    """A trusted proxy sent a forwarding header we cannot read."""


def _node(value: str) -> str:
    """The address part of an RFC 7239 node (``"[2001:db8::1]:443"`` -> ``2001:db8::1``)."""
    value = value.strip().strip('"')
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ForwardedError(value)
        return value[1:end]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def parse_forwarded(header: str) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded`` into one dict per element, parameter names lower-cased."""
    elements = []
    for element in _split_outside_quotes(header, ","):
        params: dict[str, str] = {}
        for pair in _split_outside_quotes(element, ";"):
            if not pair.strip():
                continue
            name, sep, value = pair.partition("=")
            if not sep or not name.strip():
                raise ForwardedError(pair)
            params[name.strip().lower()] = value.strip().strip('"')
        elements.append(params)
    return elements


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise ForwardedError(text)
    parts.append("".join(current))
    return parts


class TransportCheck:
    name = "transport"
    stage = "transport"

    def __init__(self, config: TransportConfig, trusted_proxies: NetworkSet) -> None:
        self.mode = config.mode
        self.require_https = config.require_https
        self.trusted = trusted_proxies
        hsts = f"max-age={int(config.hsts_max_age)}"
        if config.hsts_include_subdomains:
            hsts += "; includeSubDomains"
        self._hsts = (b"strict-transport-security", hsts.encode()) if config.hsts else None

    def check(self, ctx: RequestContext) -> Denial | None:
        if self.trusted and ctx.peer in self.trusted:
            try:
                self._apply_forwarded(ctx)
            except ForwardedError:
                return BadRequest("a forwarding header from the proxy is malformed", code="bad_forwarded_header")
        if ctx.scheme != "https":
            if self.require_https:
                return Forbidden("HTTPS is required", code="https_required")
        elif self._hsts is not None:
            ctx.response_headers.append(self._hsts)
        return None

    def _apply_forwarded(self, ctx: RequestContext) -> None:
        headers = ctx.headers
        forwarded = headers.get("forwarded")
        if forwarded is not None:
            elements = parse_forwarded(forwarded)
            hops = [e.get("for", "unknown") for e in elements]
            protos = [e.get("proto") for e in elements]
        else:
            xff = headers.get("x-forwarded-for")
            if xff is None:
                return
            hops = [h for h in (p.strip() for p in xff.split(",")) if h]
            proto_header = headers.get("x-forwarded-proto")
            values = [p.strip().lower() for p in proto_header.split(",")] if proto_header else []
            # One value per hop when the counts agree; otherwise the nearest proxy's value speaks for all.
            protos = values if len(values) == len(hops) else [values[-1] if values else None] * len(hops)
        index = len(hops) - 1
        while index > 0 and _node(hops[index]) in self.trusted:
            index -= 1
        if index < 0:
            return
        client = _node(hops[index])
        if not _is_ip(client) and client != "unknown" and not client.startswith("_"):
            raise ForwardedError(client)
        ctx.client_ip = client
        proto = protos[index]
        if proto is not None:
            proto = proto.lower()
            if proto not in ("http", "https"):
                raise ForwardedError(proto)
            ctx.scheme = proto
