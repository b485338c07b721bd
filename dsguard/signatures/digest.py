"""RFC 9530 ``Content-Digest``: made for a body, and checked against the body actually received.

Only ``sha-256`` and ``sha-512`` are made or accepted; a field naming another algorithm, or
repeating one, does not verify. Every member of the field must match the body.
"""

from __future__ import annotations

from http_message_signatures import ContentDigest, HTTPMessageSignaturesException

DIGEST_ALGORITHMS = ("sha-256", "sha-512")


class DigestMismatch(ValueError):
    """The field is malformed, names an unsupported algorithm, or does not hash the body."""


class _SHA512Digest(ContentDigest):
    algorithm = "sha-512"


_DIGESTS: dict[str, type[ContentDigest]] = {"sha-256": ContentDigest, "sha-512": _SHA512Digest}


def digest_class(algorithm: str) -> type[ContentDigest]:
    """The http-message-signatures digest maker for ``algorithm``; ``ValueError`` if unsupported."""
    try:
        return _DIGESTS[algorithm]
    except KeyError:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}; expected sha-256 or sha-512") from None


def content_digest(body: bytes, algorithm: str = "sha-256") -> str:
    """The ``Content-Digest`` field value for ``body``, e.g. ``sha-256=:...:``."""
    return digest_class(algorithm).create(body)


def verify_content_digest(field: str, body: bytes) -> None:
    """Raise :class:`DigestMismatch` unless every digest in ``field`` hashes ``body``."""
    try:
        ContentDigest.verify(field, body)
    except HTTPMessageSignaturesException as exc:
        raise DigestMismatch(str(exc)) from None
