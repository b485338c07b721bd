"""Hygiene: method allowlist, header limits, body size and type, JSON shape.

Two checks share the ``[hygiene]`` section: :class:`HygieneCheck` looks only at the request
line and headers (before any body is read); :class:`JSONBodyCheck` parses a JSON body once,
bounded in size and depth, for the checks after it (``ctx.json``).
"""

from __future__ import annotations

import json
import re
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
