"""Decode the payloads an attack hides in a prompt: base64, hex and rot13.

Only blobs that decode to readable text are returned, so images, hashes and keys (which decode
to binary) cost a decode attempt and nothing more.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re

_BASE64 = re.compile(r"(?<![A-Za-z0-9+/_\-])[A-Za-z0-9+/_\-]{20,}={0,2}(?![A-Za-z0-9+/=_\-])")
_HEX = re.compile(r"(?<![0-9a-fA-F])(?:[0-9a-fA-F]{2}[ :]?){12,}(?![0-9a-fA-F])|(?:\\x[0-9a-fA-F]{2}){8,}")
_LONG_RUN = re.compile(r"\S{20}")
_HEX_RUN = re.compile(r"[0-9a-fA-F]{2}[ :][0-9a-fA-F]{2}[ :][0-9a-fA-F]{2}[ :][0-9a-fA-F]{2}")
_MAX_BLOBS = 8
_MAX_BLOB = 8192


def _readable(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\n\t")
    letters = sum(1 for c in text if c.isalpha())
    if printable < 0.95 * len(text) or letters < 0.5 * len(text.replace(" ", "")):
        return None
    return text


def _base64(blob: str) -> str | None:
    blob = blob.rstrip("=")
    if len(blob) % 4 == 1:
        return None
    padded = blob + "=" * (-len(blob) % 4)
    try:
        if "-" in blob or "_" in blob:
            data = base64.urlsafe_b64decode(padded)
        else:
            data = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _readable(data)


def _hex(blob: str) -> str | None:
    digits = re.sub(r"[^0-9a-fA-F]", "", blob.replace("\\x", ""))
    if len(digits) % 2:
        return None
    return _readable(bytes.fromhex(digits))


def decoded_payloads(text: str) -> list[tuple[str, str]]:
    """``(encoding, decoded text)`` for each base64 or hex blob of ``text`` that decodes to readable text."""
    found: list[tuple[str, str]] = []
    if len(text) < 20 or not (_LONG_RUN.search(text) or _HEX_RUN.search(text)):
        return found
    for encoding, pattern, decode in (("hex", _HEX, _hex), ("base64", _BASE64, _base64)):
        for match in pattern.finditer(text):
            if len(found) >= _MAX_BLOBS:
                return found
            blob = match.group()
            if len(blob) > _MAX_BLOB:
                continue
            if encoding == "base64" and blob.isalpha() and (blob.islower() or blob.isupper()):
                continue  # a long word, not an encoding
            decoded = decode(blob)
            if decoded:
                found.append((encoding, decoded))
    return found


def rot13(text: str) -> str:
    return codecs.encode(text, "rot13")
