"""Signing outgoing requests for a guard that verifies them (RFC 9421 with an RFC 9530 digest).

:class:`RequestSigner` adds ``Content-Digest``, ``Signature-Input`` and ``Signature`` (with
``created``, ``keyid``, ``alg`` and a fresh ``nonce``) covering ``@method``, ``@target-uri``
and ``content-digest`` by default. :class:`HTTPSignatureAuth` plugs it into httpx and
:class:`RequestsSignatureAuth` into requests (a ``requests.auth.AuthBase`` when requests is
installed; dsguard itself does not need requests)::

    signer = RequestSigner.from_file("keys/billing.pem", keyid="billing-2025")
    httpx.post(url, json=payload, auth=HTTPSignatureAuth(signer))
    requests.post(url, json=payload, auth=RequestsSignatureAuth(signer))
"""

from __future__ import annotations

import datetime
import secrets
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from http_message_signatures import HTTPMessageSignaturesException, HTTPMessageSigner, HTTPSignatureKeyResolver

from .algorithms import ALGORITHMS, MIN_HMAC_BYTES, SYMMETRIC, PrivateKey, algorithm_of
from .digest import digest_class
from .message import FieldLines, RequestMessage
from .verify import DEFAULT_COMPONENTS

try:
    from requests.auth import AuthBase
except ModuleNotFoundError:  # requests is optional: the class below then only lacks the base
    AuthBase = object  # type: ignore[misc, assignment]

if TYPE_CHECKING:
    from requests import PreparedRequest

SIGNATURE_FIELDS = ("Content-Digest", "Signature-Input", "Signature")


class SigningKeyError(ValueError):
    """The key cannot sign with the requested algorithm (or cannot be read)."""


class SigningError(ValueError):
    """The request cannot be signed as asked (a malformed URL or component, a mismatched digest)."""


class _OneKey(HTTPSignatureKeyResolver):
    def __init__(self, keyid: str, key: PrivateKey | bytes) -> None:
        self._keyid = keyid
        self._key = key

    def resolve_private_key(self, key_id: str) -> PrivateKey | bytes:
        if key_id != self._keyid:
            raise KeyError(key_id)
        return self._key

    def resolve_public_key(self, key_id: str) -> None:
        return None


def _algorithm_for(key: PrivateKey | bytes, algorithm: str | None) -> str:
    if isinstance(key, bytes):
        if algorithm not in (None, *SYMMETRIC):
            raise SigningKeyError(f"a shared secret signs with hmac-sha256, not {algorithm}")
        if len(key) < MIN_HMAC_BYTES:
            raise SigningKeyError(f"an HMAC secret must be at least {MIN_HMAC_BYTES} bytes")
        return "hmac-sha256"
    try:
        fitting = algorithm_of(key)
    except ValueError as exc:
        raise SigningKeyError(str(exc)) from None
    if algorithm is not None and algorithm != fitting:
        raise SigningKeyError(f"this key signs with {fitting}, not {algorithm}")
    return fitting


def load_signing_key(path: str | Path, algorithm: str | None = None) -> tuple[PrivateKey | bytes, str]:
    """A private key (PEM) or, for ``hmac-sha256``, a shared secret (the file's text), and its algorithm."""
    path = Path(path)
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise SigningKeyError(f"unsupported algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read the key ({exc.strerror})") from None
    if algorithm in SYMMETRIC:
        return data.strip(), _algorithm_for(data.strip(), algorithm)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SigningKeyError(f"{path}: not an unencrypted PEM private key (for a shared secret, use "
                              "algorithm hmac-sha256)") from None
    if not isinstance(key, PrivateKey):
        raise SigningKeyError(f"{path}: unsupported key type {type(key).__name__}")
    return key, _algorithm_for(key, algorithm)


class RequestSigner:
    """Signs requests with one key; each signature gets its own ``created`` and ``nonce``.

    ``components`` are covered in order; with ``content-digest`` among them the body's digest
    (``digest``: sha-256 or sha-512) is added unless the request already carries one, which
    must then match. ``expires_in`` adds ``expires``; ``tag`` and ``label`` name the signature.
    """

    def __init__(self, key: PrivateKey | bytes, keyid: str, *, algorithm: str | None = None,
                 components: Sequence[str] = DEFAULT_COMPONENTS, digest: str = "sha-256", tag: str | None = None,
                 label: str = "sig1", nonce: bool = True, expires_in: float | None = None, include_alg: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.keyid = keyid
        self.algorithm = _algorithm_for(key, algorithm)
        self.components = tuple(components)
        self.tag = tag
        self.label = label
        self.nonce = nonce
        self.expires_in = expires_in
        self.include_alg = include_alg
        self._clock = clock
        self._signer = HTTPMessageSigner(signature_algorithm=ALGORITHMS[self.algorithm],
                                         key_resolver=_OneKey(keyid, key))
        self._signer.content_digest_class = digest_class(digest)

    @classmethod
    def from_file(cls, path: str | Path, keyid: str, *, algorithm: str | None = None,
                  **options: Any) -> RequestSigner:
        """A signer for the key in ``path`` (see :func:`load_signing_key`)."""
        key, algorithm = load_signing_key(path, algorithm)
        return cls(key, keyid, algorithm=algorithm, **options)

    def sign(self, method: str, url: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> dict[str, str]:
        """The fields to add to the request ``method url`` with ``headers`` and ``body``."""
        fields = FieldLines(headers)
        del fields["signature-input"]
        del fields["signature"]
        created = self._clock()
        covers_digest = "content-digest" in self.components
        try:
            self._sign(RequestMessage(method.upper(), url, fields), created, body if covers_digest else None)
        except HTTPMessageSignaturesException as exc:
            raise SigningError(str(exc)) from None
        added = {name: fields.get(name) for name in SIGNATURE_FIELDS}
        return {name: value for name, value in added.items() if value is not None}

    def _sign(self, message: RequestMessage, created: float, body: bytes | None) -> None:
        expires = None if self.expires_in is None else created + self.expires_in
        self._signer.sign(
            message,
            key_id=self.keyid,
            created=datetime.datetime.fromtimestamp(created, datetime.UTC),
            expires=None if expires is None else datetime.datetime.fromtimestamp(expires, datetime.UTC),
            nonce=secrets.token_urlsafe(18) if self.nonce else None,
            label=self.label,
            tag=self.tag,
            include_alg=self.include_alg,
            covered_component_ids=self.components,
            body=body,
            use_existing_digest=body is not None,
        )

    def __repr__(self) -> str:
        return f"RequestSigner(keyid={self.keyid!r}, algorithm={self.algorithm!r})"


class HTTPSignatureAuth(httpx.Auth):
    """httpx authentication that signs every request (sync and async clients)."""

    requires_request_body = True

    def __init__(self, signer: RequestSigner) -> None:
        self.signer = signer

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        signed = self.signer.sign(request.method, str(request.url), request.headers.multi_items(), request.content)
        request.headers.update(signed)
        yield request


class RequestsSignatureAuth(AuthBase):
    """requests authentication that signs every prepared request; its body must be bytes or text."""

    def __init__(self, signer: RequestSigner) -> None:
        self.signer = signer

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        body = request.body
        if body is None:
            content = b""
        elif isinstance(body, str):
            content = body.encode("utf-8")
        elif isinstance(body, bytes):
            content = body
        else:
            raise TypeError("a streamed request body cannot be signed; pass bytes or text")
        headers = [(name, value.decode("latin-1") if isinstance(value, bytes) else value)
                   for name, value in request.headers.items()]
        request.headers.update(self.signer.sign(request.method or "GET", request.url or "", headers, content))
        return request
