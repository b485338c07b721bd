"""Hygiene: method allowlist, header limits, body size, type and coding, JSON shape.

Three checks share the ``[hygiene]`` section: :class:`HygieneCheck` looks only at the request
line and headers (before any body is read); :class:`ContentDecodingCheck` decodes a body sent
with an accepted ``Content-Encoding`` (gzip, deflate), bounded by ``max_body`` after decoding, so
that no check inspects compressed bytes the app would read decoded; :class:`JSONBodyCheck` parses
a JSON body once, bounded in size and depth, for the checks after it (``ctx.json``).

A body in a coding not accepted is refused before it is read (415, ``Accept-Encoding`` naming what
is): a check cannot inspect what it cannot read. For the same reason the WAF and the prompt guard
refuse a body still coded when they come to read it (:func:`undecoded_coding`), as happens when
``[hygiene]`` only reports.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable
from typing import Any

from ..config import HygieneConfig
from ..context import RequestContext
from ..decision import (
    BadRequest,
    Denial,
    HeadersTooLarge,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
)


class HygieneCheck:
    name = "hygiene"
    stage = "hygiene"

    def __init__(self, config: HygieneConfig) -> None:
        self.mode = config.mode
        self.methods = frozenset(m.upper() for m in config.methods)
        self._allow = ", ".join(sorted(self.methods))
        self.max_headers = config.max_headers
        self.max_header_bytes = config.max_header_bytes
        self.max_headers_total = config.max_headers_total
        self.max_body = config.max_body
        self.content_types = frozenset(t.lower() for t in config.content_types)
        self.encodings = frozenset(config.content_encodings)
        self._accept_encoding = ", ".join([*sorted(self.encodings), "identity"])

    def check(self, ctx: RequestContext) -> Denial | None:
        if ctx.method not in self.methods:
            return MethodNotAllowed(f"method {ctx.method} is not allowed", headers=[("Allow", self._allow)])
        raw = ctx.headers.raw
        if len(raw) > self.max_headers:
            return HeadersTooLarge(f"too many header fields (limit {self.max_headers})")
        total = 0
        limit = self.max_header_bytes
        for name, value in raw:
            size = len(name) + len(value)
            if size > limit:
                return HeadersTooLarge(f"a header field is larger than {limit} bytes")
            total += size
        if total > self.max_headers_total:
            return HeadersTooLarge(f"header fields are larger than {self.max_headers_total} bytes in all")
        if not ctx.has_body:
            return None
        return self._check_body_framing(ctx)

    def _check_body_framing(self, ctx: RequestContext) -> Denial | None:
        headers = ctx.headers
        if b"content-length" in headers.repeated:
            return BadRequest("Content-Length is repeated", code="bad_content_length")
        if "content-length" in headers and "transfer-encoding" in headers:
            return BadRequest("both Content-Length and Transfer-Encoding are set", code="bad_content_length")
        try:
            length = ctx.content_length
        except ValueError:
            return BadRequest("Content-Length is not a number", code="bad_content_length")
        if length is not None and length > self.max_body:
            return PayloadTooLarge(f"request body is larger than {self.max_body} bytes")
        media_type = ctx.media_type
        if media_type is None:
            return UnsupportedMediaType("a request body needs a Content-Type")
        if media_type not in self.content_types and not (
            media_type.endswith("+json") and "application/json" in self.content_types
        ):
            return UnsupportedMediaType(f"Content-Type {media_type} is not accepted")
        codings = content_codings(ctx)
        if not codings:
            return None
        refused = [c for c in codings if c not in self.encodings]
        if refused or len(codings) > 1:
            what = f"Content-Encoding {refused[0]} is" if refused else "more than one Content-Encoding is"
            return UnsupportedMediaType(f"{what} not accepted", code="unsupported_content_encoding",
                                        headers=[("Accept-Encoding", self._accept_encoding)])
        return None


DECODED = "content_encoding"
"""``ctx.attributes`` key: the coding :class:`ContentDecodingCheck` removed from the body."""
ENCODED_BODY = "content_encoding.body"
"""``ctx.attributes`` key: the body as received, before decoding (what a Content-Digest covers)."""
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_MEMBERS = 16
"""Most gzip members one body may chain (RFC 1952 allows several; more is a decompression trick)."""


def content_codings(ctx: RequestContext) -> list[str]:
    """The codings of ``Content-Encoding`` in the order applied, without ``identity`` (``x-gzip`` is gzip)."""
    value = ctx.headers.get("content-encoding")
    if not value:
        return []
    codings = [c.strip().lower() for c in value.split(",")]
    return ["gzip" if c == "x-gzip" else c for c in codings if c and c != "identity"]


def undecoded_coding(ctx: RequestContext) -> str | None:
    """The ``Content-Encoding`` of a body still coded (nothing decoded it), for checks that must read it plain."""
    if not ctx.body or DECODED in ctx.attributes:
        return None
    codings = content_codings(ctx)
    return ", ".join(codings) if codings else None


class BodyDecodingError(ValueError):
    pass


def decode_body(data: bytes, coding: str, limit: int) -> bytes:
    """``data`` decoded from ``coding`` ("gzip" or "deflate"); at most ``limit`` bytes are produced.

    Raises :class:`BodyDecodingError` for damaged or truncated data and :class:`OverflowError` past the
    limit, before producing more than ``limit + 1`` bytes however small the input (no decompression bomb).
    "deflate" is the zlib format (RFC 9110); raw deflate streams, which some clients send, are read too.
    """
    wbits = _WBITS[coding]
    out = bytearray()
    rest = data
    for _ in range(_MEMBERS):
        decoder = zlib.decompressobj(wbits)
        try:
            out += decoder.decompress(rest, limit + 1 - len(out))
        except zlib.error:
            if coding != "deflate" or out or wbits < 0:
                raise BodyDecodingError(f"the body is not valid {coding} data") from None
            wbits, rest = -zlib.MAX_WBITS, data
            continue
        if len(out) > limit:
            raise OverflowError(limit)
        if not decoder.eof:
            raise BodyDecodingError(f"the {coding} data ends early")
        rest = decoder.unused_data
        if not rest or coding == "deflate":
            if rest:
                raise BodyDecodingError(f"bytes follow the end of the {coding} data")
            return bytes(out)
    raise BodyDecodingError(f"the body chains more than {_MEMBERS} gzip members")


class ContentDecodingCheck:
    """Decodes a body sent with an accepted ``Content-Encoding``: checks read it plain, the app gets it plain."""

    name = "content-decoding"
    stage = "hygiene"
    needs_body = True

    def __init__(self, config: HygieneConfig) -> None:
        self.mode = config.mode
        self.max_body = config.max_body
        self.encodings = frozenset(config.content_encodings)

    def check(self, ctx: RequestContext) -> Denial | None:
        codings = content_codings(ctx)
        body = ctx.body
        if len(codings) != 1 or codings[0] not in self.encodings or not body:
            return None  # refused by HygieneCheck; in report mode left coded, for the checks that read it to refuse
        coding = codings[0]
        try:
            decoded = decode_body(body, coding, self.max_body)
        except OverflowError:
            return PayloadTooLarge(f"request body decodes to more than {self.max_body} bytes")
        except BodyDecodingError as exc:
            return BadRequest(str(exc), code="bad_content_encoding")
        ctx.attributes[DECODED] = coding
        ctx.attributes[ENCODED_BODY] = body
        ctx.body = decoded
        ctx.replace_body(decoded)
        return None


class DuplicateKeyError(ValueError):
    pass


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return obj


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays/objects deeper than ``limit`` (iterative, no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def is_json(media_type: str | None) -> bool:
    return media_type is not None and (media_type == "application/json" or media_type.endswith("+json"))


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _utf8_encodable(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class JSONBodyCheck:
    name = "json"
    stage = "hygiene"
    needs_body = True

    def __init__(self, config: HygieneConfig) -> None:
        self.mode = config.mode
        self.max_depth = config.max_json_depth
        self._hook = _unique_object if config.reject_duplicate_json_keys else None
        self._decoder = json.JSONDecoder(object_pairs_hook=self._hook)

    def check(self, ctx: RequestContext) -> Denial | None:
        body = ctx.body
        if not body or not is_json(ctx.media_type):
            return None
        try:
            value = self._decoder.decode(body.decode("utf-8"))
        except UnicodeDecodeError:
            return BadRequest("JSON body is not valid UTF-8", code="invalid_json")
        except DuplicateKeyError as exc:
            return BadRequest(f"JSON object repeats the key {str(exc)[:64]!r}", code="duplicate_json_key")
        except RecursionError:
            return BadRequest(f"JSON nests deeper than {self.max_depth} levels", code="json_too_deep")
        except ValueError as exc:
            return BadRequest(f"JSON body is malformed: {str(exc)[:120]}", code="invalid_json")
        # Nesting can't exceed the number of brackets: count them at C speed before walking.
        if body.count(b"{") + body.count(b"[") > self.max_depth and json_depth_exceeds(value, self.max_depth):
            return BadRequest(f"JSON nests deeper than {self.max_depth} levels", code="json_too_deep")
        # "\ud800" parses, yet no UTF-8 text holds it: apps, tokenizers and logs would fail on it later.
        if _SURROGATE_ESCAPE.search(body) is not None and not _utf8_encodable(value):
            return BadRequest("JSON body holds an unpaired UTF-16 surrogate escape", code="invalid_json")
        ctx.json = value
        return None
