"""RFC 9421 HTTP Message Signatures, verified under dsguard's policy.

http-message-signatures parses the fields, builds the signature base (section 2.5) and checks
the signature. Around it, :class:`SignatureVerifier` decides which signature is checked (the
only one, or the one carrying the configured ``tag``), with which key (the ``keyid``'s entry in
the key directory) and which algorithm (the one that entry fixes: an ``alg`` parameter naming
another is refused, so a public key is never taken for an HMAC secret). It requires the
configured covered components, ``created`` within ``max_age`` and the clock skew, an unexpired
``expires``, and a ``Content-Digest`` that hashes the body actually received (RFC 9530).

Each failure is a :class:`SignatureError` with a stable ``code``. Remembering the nonce against
replay is left to the caller, which holds the storage (:attr:`VerifiedSignature.replay_id`).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import http_sf
from http_message_signatures import HTTPMessageSignaturesException, HTTPMessageVerifier

from .algorithms import ALGORITHMS
from .digest import DigestMismatch, verify_content_digest
from .keys import ClientKey, KeyDirectory
from .message import RequestMessage

logger = logging.getLogger("dsguard.signatures")

DEFAULT_COMPONENTS = ("@method", "@target-uri", "content-digest")
DERIVED_COMPONENTS = frozenset({"@method", "@target-uri", "@authority", "@scheme", "@request-target", "@path",
                                "@query"})
MAX_NONCE_CHARS = 256


class SignatureError(Exception):
    """A signature that does not hold; ``code`` is the stable reason, ``message`` never quotes it."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """A signature that passed every stateless check."""

    keyid: str
    algorithm: str
    label: str
    created: int
    expires: int | None
    nonce: str | None
    covered: tuple[str, ...]
    signature: bytes
    subject: str | None

    @property
    def replay_id(self) -> str:
        """What makes this request unique: its nonce, or else the signature itself (hashed)."""
        if self.nonce is not None:
            return self.nonce
        return "#" + base64.urlsafe_b64encode(hashlib.sha256(self.signature).digest()).rstrip(b"=").decode()


def check_algorithms(algorithms: Iterable[str]) -> frozenset[str]:
    """``algorithms`` as a set; raises ``ValueError`` naming one that is not supported."""
    chosen = frozenset(algorithms)
    unsupported = sorted(chosen - ALGORITHMS.keys())
    if unsupported:
        raise ValueError(f"unsupported algorithm {unsupported[0]!r}; expected some of {', '.join(ALGORITHMS)}")
    return chosen


def check_components(components: Iterable[str]) -> tuple[str, ...]:
    """``components`` without repeats; raises ``ValueError`` for one that is not a component name."""
    for component in components:
        if component.startswith("@") and component not in DERIVED_COMPONENTS:
            raise ValueError(f"unknown derived component {component!r}; expected one of "
                             f"{', '.join(sorted(DERIVED_COMPONENTS))} or a field name")
        if component != component.lower() or not component.isascii() or not component.isprintable() \
                or not component.strip("@") or any(char in component for char in '" ;,()'):
            raise ValueError(f"component {component!r}: expected a lower-case field name or derived component")
    return tuple(dict.fromkeys(components))


def _reject_duplicates(name: str, context: str) -> None:
    raise ValueError(f"{context} member {name!r} repeated")


def _dictionary(field: str) -> dict[str, Any]:
    """A Structured Field Dictionary (RFC 8941), refusing repeated labels and parameters."""
    try:
        parsed = http_sf.parse(field.encode("latin-1"), tltype="dictionary", on_duplicate_key=_reject_duplicates)
    except (ValueError, TypeError):
        raise SignatureError("the Signature-Input or Signature field is malformed or repeats a label",
                             "signature_invalid") from None
    if not isinstance(parsed, dict) or not parsed:
        raise SignatureError("the Signature-Input or Signature field is empty", "signature_invalid")
    return parsed


class SignatureVerifier:
    """Verifies one request's signature against the key directory, without shared state."""

    def __init__(self, keys: KeyDirectory, *, components: Sequence[str] = DEFAULT_COMPONENTS,
                 algorithms: Iterable[str] = tuple(ALGORITHMS), max_age: float = 300.0, clock_skew: float = 5.0,
                 nonce_required: bool = False, tag: str | None = None) -> None:
        self.algorithms = check_algorithms(algorithms)
        self.components = check_components(components)
        self.keys = keys
        self.max_age = max_age
        self.clock_skew = clock_skew
        self.nonce_required = nonce_required
        self.tag = tag
        self._verifiers: dict[str, HTTPMessageVerifier] = {}
        for algorithm in self.algorithms:
            verifier = HTTPMessageVerifier(signature_algorithm=ALGORITHMS[algorithm], key_resolver=keys)
            verifier.max_clock_skew = datetime.timedelta(seconds=clock_skew)
            self._verifiers[algorithm] = verifier

    @property
    def replay_window(self) -> float:
        """How long a nonce must be remembered: as long as a signature carrying it is accepted."""
        return self.max_age + 2 * self.clock_skew

    def verify(self, message: RequestMessage, body: bytes) -> VerifiedSignature:
        """Check the signature of ``message`` whose content is ``body``; raise :class:`SignatureError`."""
        headers = message.headers
        input_field, signature_field = headers.get("signature-input"), headers.get("signature")
        if input_field is None and signature_field is None:
            raise SignatureError("the request is not signed", "signature_missing")
        if input_field is None or signature_field is None:
            raise SignatureError("Signature-Input and Signature must be sent together", "signature_invalid")
        inputs, signatures = _dictionary(input_field), _dictionary(signature_field)
        if inputs.keys() != signatures.keys():
            raise SignatureError("Signature-Input and Signature name different labels", "signature_invalid")
        label, covered, params = self._select(inputs)
        signature = signatures[label][0]
        if not isinstance(signature, bytes):
            raise SignatureError("the Signature member is not a byte sequence", "signature_invalid")
        keyid = params.get("keyid")
        if not isinstance(keyid, str):
            raise SignatureError("the signature lacks its keyid", "signature_invalid")
        key = self.keys.get(keyid)
        if key is None:
            raise SignatureError("the signature's keyid is unknown", "unknown_key")
        algorithm = self._algorithm(params.get("alg"), key)
        missing = [name for name in self.components if name not in covered]
        if missing:
            raise SignatureError(f"the signature must cover {', '.join(missing)}", "components_missing")
        created, expires = self._check_time(params)
        nonce = self._nonce(params)
        digest = headers.get("content-digest")
        if "content-digest" in covered and digest is None:
            raise SignatureError("the signature covers Content-Digest but the request has none", "digest_missing")
        self._check_signature(message, algorithm)
        if digest is not None and "content-digest" in covered:
            try:
                verify_content_digest(digest, body)
            except DigestMismatch:
                raise SignatureError("Content-Digest does not match the request body", "digest_mismatch") from None
        return VerifiedSignature(keyid, algorithm, label, created, expires, nonce, covered, signature, key.subject)

    def _select(self, inputs: dict[str, Any]) -> tuple[str, tuple[str, ...], dict[str, Any]]:
        chosen = [label for label, (_, params) in inputs.items()
                  if self.tag is None or (isinstance(params, dict) and params.get("tag") == self.tag)]
        if not chosen:
            raise SignatureError(f'no signature carries the tag "{self.tag}"', "signature_missing")
        if len(chosen) > 1:
            which = f'carry the tag "{self.tag}"' if self.tag else "are sent and no tag selects one"
            raise SignatureError(f"several signatures {which}", "signature_invalid")
        label = chosen[0]
        members, params = inputs[label]
        if not isinstance(members, list) or not all(type(item) is str for item, _ in members):
            raise SignatureError("the Signature-Input member is not a list of components", "signature_invalid")
        return label, tuple(item for item, _ in members), params

    def _algorithm(self, alg: object, key: ClientKey) -> str:
        if alg is not None:
            if not isinstance(alg, str) or alg not in self.algorithms:
                raise SignatureError("the signature algorithm is not supported", "unsupported_algorithm")
            if alg != key.algorithm:
                raise SignatureError("the signature algorithm is not the one of its key", "key_algorithm_mismatch")
        if key.algorithm not in self.algorithms:
            raise SignatureError("the key's algorithm is not accepted", "unsupported_algorithm")
        return key.algorithm

    def _check_time(self, params: dict[str, Any]) -> tuple[int, int | None]:
        created, expires = params.get("created"), params.get("expires")
        if type(created) is not int:
            raise SignatureError("the signature needs an integer created parameter", "signature_invalid")
        if expires is not None and type(expires) is not int:
            raise SignatureError("the signature's expires parameter is not an integer", "signature_invalid")
        now = time.time()
        if created > now + self.clock_skew:
            raise SignatureError("the signature is created in the future", "signature_invalid")
        if created < now - self.max_age - self.clock_skew:
            raise SignatureError(f"the signature is older than {self.max_age:g} seconds", "signature_expired")
        if expires is not None and expires < now - self.clock_skew:
            raise SignatureError("the signature has expired", "signature_expired")
        return created, expires

    def _nonce(self, params: dict[str, Any]) -> str | None:
        nonce = params.get("nonce")
        if nonce is None:
            if self.nonce_required:
                raise SignatureError("the signature needs a nonce", "nonce_missing")
            return None
        if not isinstance(nonce, str) or not 0 < len(nonce) <= MAX_NONCE_CHARS:
            raise SignatureError(f"the nonce must be a string of 1 to {MAX_NONCE_CHARS} characters",
                                 "signature_invalid")
        return nonce

    def _check_signature(self, message: RequestMessage, algorithm: str) -> None:
        try:
            self._verifiers[algorithm].verify(message, max_age=None, expect_tag=self.tag)
        except HTTPMessageSignaturesException as exc:
            logger.debug("signature does not verify: %s", exc)
            raise SignatureError("the signature does not verify for this request", "signature_invalid") from None
