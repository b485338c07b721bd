"""What the WAF inspects in a request, by SecLang collection name.

``ARGS_GET`` (query), ``ARGS_POST`` (form, multipart and JSON fields: ``json.a.b``), ``ARGS``
and ``ARGS_NAMES``, ``REQUEST_HEADERS`` (names lower-cased), ``REQUEST_COOKIES``,
``REQUEST_FILENAME`` (the decoded path), ``REQUEST_URI`` / ``QUERY_STRING`` (raw), ``FILES``,
``XML`` (text of an XML body) and ``REQUEST_BODY`` (a form, text or XML body as sent).

Prompt text is not WAF input: it belongs to the prompt guard, and a coding question legitimately
contains SQL or HTML. In a JSON body, exactly the texts :func:`dsguard.promptguard.messages.prompt_paths`
names are left out (message contents and the ``text`` of every content part, tool-call arguments,
tool descriptions and parameter descriptions, ``prompt``, ``input``, ``instructions``); every other
field is inspected, and the raw JSON body is never offered as ``REQUEST_BODY``. A body is read as
JSON whenever it parses as JSON, whatever its declared Content-Type (other than
a form or multipart one), as applications parse it so. A JSON body with more than ``max_fields``
values raises :class:`TooManyFields` rather than being inspected in part.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree

from ..promptguard.messages import Path, parse_body, prompt_paths
from .normalize import decode_bytes, url_decode

Pair = tuple[str, str]
Collections = dict[str, list[Pair]]

DEFAULT_MAX_FIELDS = 4096


class TooManyFields(ValueError):
    """A JSON body holds more values than the WAF inspects."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} JSON values")
        self.limit = limit


def parse_form(text: str) -> list[Pair]:
    """``a=1&b=2`` as decoded pairs (``+`` is a space); a part without ``=`` is a name with no value."""
    pairs = []
    for part in text.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((url_decode(name), url_decode(value)))
    return pairs


def parse_cookies(header: str) -> list[Pair]:
    pairs = []
    for part in header.split(";"):
        part = part.strip()
        if part:
            name, _, value = part.partition("=")
            pairs.append((name.strip(), value.strip()))
    return pairs


def json_fields(value: Any, prefix: str = "json", *, limit: int = DEFAULT_MAX_FIELDS) -> Iterator[Pair]:
    """Leaves of a JSON document as ``(json.a.0.b, text)`` in document order, prompt texts left out.

    Raises :class:`TooManyFields` for a document of more than ``limit`` values (objects and arrays count too)."""
    skipped = prompt_paths(value)
    pending: deque[tuple[Path, Any]] = deque([((), value)])
    seen = 1
    while pending:
        path, node = pending.popleft()
        if isinstance(node, (dict, list)):
            seen += len(node)
            if seen > limit:
                raise TooManyFields(limit)
        if isinstance(node, dict):
            pending.extendleft(reversed([((*path, str(key)), child) for key, child in node.items()]))
        elif isinstance(node, list):
            pending.extendleft(reversed([((*path, i), child) for i, child in enumerate(node)]))
        elif path in skipped:
            continue
        elif isinstance(node, str):
            yield _name(prefix, path), node
        elif isinstance(node, bool):
            yield _name(prefix, path), "true" if node else "false"
        elif node is not None:
            yield _name(prefix, path), str(node)


def _name(prefix: str, path: Path) -> str:
    return ".".join((prefix, *map(str, path)))


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)
_DISPOSITION_PARAM = re.compile(r'\b(name|filename)\*?="?([^";\r\n]*)"?', re.I)


def parse_multipart(body: str, content_type: str) -> tuple[list[Pair], list[Pair]]:
    """Fields and file names of a multipart body: ``([(name, value)], [(field name, file name)])``."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        return [], []
    fields: list[Pair] = []
    files: list[Pair] = []
    for part in body.split("--" + match.group(1).strip())[1:]:
        if part.startswith("--"):
            break
        head, sep, content = part.lstrip("\r\n").partition("\r\n\r\n")
        if not sep:
            head, sep, content = part.lstrip("\n").partition("\n\n")
        params = {k.lower(): v for k, v in _DISPOSITION_PARAM.findall(head)}
        name = params.get("name", "")
        content = content[:-2] if content.endswith("\r\n") else content.rstrip("\n")
        if "filename" in params:
            files.append((name, params["filename"]))
        else:
            fields.append((name, content))
    return fields, files


def xml_text(body: str) -> list[Pair]:
    """Text and attribute values of an XML document; the raw body if it does not parse."""
    try:
        root = ElementTree.fromstring(body)
    except (ElementTree.ParseError, ValueError):
        return [("", body)]
    texts: list[Pair] = []
    for element in root.iter():
        texts.extend(("", v) for v in element.attrib.values())
        for text in (element.text, element.tail):
            if text and text.strip():
                texts.append(("", text))
    return texts


_URI_VARIABLES = ("REQUEST_BASENAME", "REQUEST_URI", "REQUEST_URI_RAW", "REQUEST_LINE", "QUERY_STRING",
                  "REQUEST_PROTOCOL")


def collect(method: str, path: str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]],
            body: bytes | None, media_type: str | None, parsed_json: Any = None, *,
            inspect_headers: bool = True, inspect_json: bool = True, http_version: str = "1.1",
            wanted: frozenset[str] | None = None, max_fields: int = DEFAULT_MAX_FIELDS) -> Collections:
    """The collections of one request (see the module docstring); only ``wanted`` ones if given (the
    argument, header and cookie collections are always built). Raises :class:`TooManyFields`."""
    query_text = decode_bytes(query)
    args_get = parse_form(query_text) if query_text else []
    found: Collections = {"REQUEST_METHOD": [("", method)], "REQUEST_FILENAME": [("", path)], "ARGS_GET": args_get}
    if wanted is None or any(name in wanted for name in _URI_VARIABLES):
        uri = decode_bytes(raw_path) + ("?" + query_text if query_text else "")
        found.update({
            "REQUEST_PROTOCOL": [("", f"HTTP/{http_version}")],
            "REQUEST_BASENAME": [("", path.rsplit("/", 1)[-1])],
            "REQUEST_URI": [("", uri)],
            "REQUEST_URI_RAW": [("", uri)],
            "REQUEST_LINE": [("", f"{method} {uri} HTTP/{http_version}")],
            "QUERY_STRING": [("", query_text)],
        })
    request_headers: list[Pair] = []
    cookies: list[Pair] = []
    content_type = ""
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        value = decode_bytes(raw_value)
        if name == "cookie":
            cookies += parse_cookies(value)
        elif name == "content-type":
            content_type = value
        request_headers.append((name, value))
    if inspect_headers:
        found["REQUEST_HEADERS"] = request_headers
        if wanted is None or "REQUEST_HEADERS_NAMES" in wanted:
            found["REQUEST_HEADERS_NAMES"] = [(name, name) for name, _ in request_headers]
    found["REQUEST_COOKIES"] = cookies
    found["REQUEST_COOKIES_NAMES"] = [(name, name) for name, _ in cookies]
    args_post: list[Pair] = []
    if body:
        args_post = _body_args(found, body, media_type or "", content_type, parsed_json, inspect_json,
                               max_fields)
    found["ARGS_POST"] = args_post
    found["ARGS"] = args_get + args_post
    get_names = [(name, name) for name, _ in args_get]
    post_names = [(name, name) for name, _ in args_post]
    found["ARGS_NAMES"] = get_names + post_names
    if wanted is None or "ARGS_GET_NAMES" in wanted or "ARGS_POST_NAMES" in wanted:
        found["ARGS_GET_NAMES"] = get_names
        found["ARGS_POST_NAMES"] = post_names
    return found


def _body_args(found: Collections, body: bytes, media_type: str, content_type: str, parsed_json: Any,
               inspect_json: bool, max_fields: int) -> list[Pair]:
    if parsed_json is None:
        parsed_json = parse_body(body, media_type)
    if parsed_json is not None:
        return list(json_fields(parsed_json, limit=max_fields)) if inspect_json else []
    text = decode_bytes(body)
    if media_type == "multipart/form-data":
        fields, files = parse_multipart(text, content_type)
        found["FILES"] = [(name, filename) for name, filename in files]
        found["FILES_NAMES"] = [(name, name) for name, _ in files]
        return fields
    found["REQUEST_BODY"] = [("", text)]
    if media_type == "application/x-www-form-urlencoded":
        return parse_form(text)
    if media_type.endswith("xml"):
        found["XML"] = xml_text(text)
    return []
