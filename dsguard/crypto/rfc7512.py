"""RFC 7512 PKCS#11 URIs: which module, token and object a ``pkcs11:`` key URL names, and where its PIN is.

``pkcs11:token=dsguard;object=audit-signing?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:PIN``

Path attributes select the token and object, query attributes the module and the PIN. The PIN comes
only from ``pin-source`` (``env:NAME`` or ``file:PATH``); a ``pin-value`` in the URI is refused.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from dsguard.crypto.errors import KeyProviderError
from dsguard.crypto.keys import shown

PATH_ATTRIBUTES = frozenset({"id", "library-description", "library-manufacturer", "library-version", "manufacturer",
                             "model", "object", "serial", "slot-description", "slot-id", "slot-manufacturer",
                             "token", "type"})
QUERY_ATTRIBUTES = frozenset({"module-name", "module-path", "pin-source", "pin-value"})
MODULE_DIRS = ("/usr/lib/softhsm", "/usr/lib/x86_64-linux-gnu/softhsm", "/usr/lib/aarch64-linux-gnu/softhsm",
               "/usr/lib/pkcs11", "/usr/lib/x86_64-linux-gnu/pkcs11", "/usr/local/lib/softhsm", "/usr/local/lib")


@dataclasses.dataclass(frozen=True)
class Pkcs11URI:
    """A parsed RFC 7512 URI: path attributes select the token and object, query attributes the module and PIN."""

    url: str
    path: Mapping[str, bytes]
    query: Mapping[str, str]

    @classmethod
    def parse(cls, url: str) -> Pkcs11URI:
        if not url.startswith("pkcs11:"):
            raise KeyProviderError(f"{shown(url)}: not a pkcs11: URI")
        body, _, query_text = url[len("pkcs11:"):].partition("?")
        path: dict[str, bytes] = {}
        for part in filter(None, body.split(";")):
            name, value = _attribute(part, url)
            if name not in PATH_ATTRIBUTES and not name.startswith("x-"):
                raise KeyProviderError(f"{shown(url)}: unknown attribute {name!r} (RFC 7512)")
            if name in path:
                raise KeyProviderError(f"{shown(url)}: attribute {name!r} given twice")
            path[name] = unquote_to_bytes(value)
        query: dict[str, str] = {}
        for part in filter(None, query_text.split("&")):
            name, value = _attribute(part, url)
            if name == "pin-value":
                raise KeyProviderError(f"{shown(url)}: a PIN in the URI is refused; use pin-source=env:NAME or "
                                       "pin-source=file:PATH")
            if name not in QUERY_ATTRIBUTES and not name.startswith("x-"):
                raise KeyProviderError(f"{shown(url)}: unknown query attribute {name!r} (RFC 7512)")
            if name in query:
                raise KeyProviderError(f"{shown(url)}: query attribute {name!r} given twice")
            query[name] = unquote(value)
        if "type" in path and path["type"] not in (b"private", b"public", b"secret-key", b"cert", b"data"):
            raise KeyProviderError(f"{shown(url)}: type must be private, public, secret-key, cert or data")
        return cls(url, path, query)

    def text(self, name: str) -> str | None:
        value = self.path.get(name)
        return None if value is None else value.decode("utf-8", errors="replace")

    @property
    def shown(self) -> str:
        return shown(self.url)

    def module(self) -> str:
        """The PKCS#11 module to load: ``module-path``, or ``module-name`` found in the usual directories."""
        if "module-path" in self.query:
            path = Path(self.query["module-path"])
            if not path.is_file():
                raise KeyProviderError(f"{self.shown}: module-path {path} does not exist", reason="unavailable")
            return str(path)
        name = self.query.get("module-name")
        if name is None:
            raise KeyProviderError(f"{self.shown}: name the PKCS#11 module with module-path= or module-name=")
        for directory in MODULE_DIRS:
            for candidate in (f"{name}.so", f"lib{name}.so", name):
                path = Path(directory) / candidate
                if path.is_file():
                    return str(path)
        raise KeyProviderError(f"{self.shown}: module-name {name!r} not found in {', '.join(MODULE_DIRS)}",
                               reason="unavailable")

    def pin(self) -> str:
        """The user PIN from ``pin-source``: ``env:NAME`` or ``file:PATH`` (``file:///PATH`` too)."""
        source = self.query.get("pin-source")
        if source is None:
            raise KeyProviderError(f"{self.shown}: no pin-source; add ?pin-source=env:NAME or pin-source=file:PATH")
        kind, _, where = source.partition(":")
        if kind == "env":
            pin = os.environ.get(where)
            if not where or pin is None:
                raise KeyProviderError(f"{self.shown}: pin-source environment variable {where or '(none)'} is not "
                                       "set", reason="unavailable")
            return pin
        if kind == "file":
            path = Path(where[2:] if where.startswith("//") else where)
            try:
                return path.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyProviderError(f"{self.shown}: cannot read the pin-source file {path} ({exc})",
                                       reason="unavailable") from None
        raise KeyProviderError(f"{self.shown}: pin-source must be env:NAME or file:PATH")

    def object_selector(self) -> dict[str, Any]:
        selector: dict[str, Any] = {}
        if "object" in self.path:
            selector["label"] = self.text("object")
        if "id" in self.path:
            selector["id"] = self.path["id"]
        if not selector:
            raise KeyProviderError(f"{self.shown}: name the key with object= (its label) or id=")
        return selector


def _attribute(part: str, url: str) -> tuple[str, str]:
    name, equals, value = part.partition("=")
    if not equals or not name:
        raise KeyProviderError(f"{shown(url)}: expected name=value attributes, got {name or part!r}")
    return name, value
