"""Streaming envelope encryption: a fresh AES-256-GCM data key per file, wrapped by a key-encryption key.

Layout (version 1)::

    "DSGE" | version u8 | header length u16 | header (JSON) | header tag (32) | chunk 0 | ... | chunk n-1

The header names the KEK (``kek``), holds the wrapped data key, the chunk size, the plaintext size,
a random 8-byte nonce prefix and a context (the file's path inside its bundle). The header tag is
HMAC-SHA256 of the header under the data key: it authenticates the header and commits to the key.
Chunk ``i`` is AES-GCM with nonce ``prefix || i`` (u32) and associated data ``SHA-256(header) || i
(u64) || final (u8)``, so a flipped bit, a truncated, reordered or dropped chunk, a chunk taken from
another file and trailing bytes are all refused. Memory stays at one chunk whatever the file size.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import secrets
import struct
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dsguard.crypto.errors import EnvelopeError, KeyProviderError
from dsguard.crypto.keys import KEY_BYTES, Wrapper

MAGIC = b"DSGE"
VERSION = 1
CHUNK_SIZE = 1 << 20
MIN_CHUNK, MAX_CHUNK = 4096, 64 << 20
TAG_BYTES = 16
PREFIX_BYTES = 8
MAX_HEADER = 4096
MAX_CHUNKS = 1 << 32
_FIELDS = frozenset({"alg", "kek", "wrapped", "chunk", "size", "prefix", "context"})

Progress = Callable[[int], None]
"""Called with the number of plaintext bytes just processed."""


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


@dataclasses.dataclass(frozen=True)
class EnvelopeHeader:
    """What the header of an encrypted file says, and its exact bytes (from the magic to the JSON's end)."""

    key_id: str
    wrapped_key: bytes
    chunk_size: int
    size: int
    nonce_prefix: bytes
    context: str
    raw: bytes

    @classmethod
    def build(cls, wrapper: Wrapper, data_key: bytes, size: int, chunk_size: int, context: str) -> EnvelopeHeader:
        fields = {"alg": "A256GCM", "kek": wrapper.key_id, "wrapped": _b64(wrapper.wrap(data_key)),
                  "chunk": chunk_size, "size": size, "prefix": _b64(secrets.token_bytes(PREFIX_BYTES)),
                  "context": context}
        text = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return cls.parse(MAGIC + struct.pack(">BH", VERSION, len(text)) + text)

    @classmethod
    def parse(cls, raw: bytes, file: str | Path | None = None) -> EnvelopeHeader:
        try:
            fields = json.loads(raw[7:].decode("utf-8"))
            if not isinstance(fields, dict) or set(fields) != _FIELDS or fields["alg"] != "A256GCM":
                raise ValueError
            header = cls(key_id=_text(fields["kek"]), wrapped_key=_unb64(fields["wrapped"]),
                         chunk_size=_integer(fields["chunk"]), size=_integer(fields["size"]),
                         nonce_prefix=_unb64(fields["prefix"]), context=_text(fields["context"]), raw=raw)
        except (ValueError, TypeError, binascii.Error):
            raise EnvelopeError("malformed envelope header", reason="format", file=file) from None
        if not MIN_CHUNK <= header.chunk_size <= MAX_CHUNK or len(header.nonce_prefix) != PREFIX_BYTES or (
                header.chunks > MAX_CHUNKS):
            raise EnvelopeError("envelope header out of range", reason="format", file=file)
        return header

    @property
    def chunks(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    @property
    def encrypted_size(self) -> int:
        return len(self.raw) + hashlib.sha256().digest_size + self.size + self.chunks * TAG_BYTES

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def nonce(self, index: int) -> bytes:
        return self.nonce_prefix + struct.pack(">I", index)

    @cached_property
    def digest(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    def associated_data(self, index: int) -> bytes:
        return self.digest + struct.pack(">QB", index, index == self.chunks - 1)

    def tag(self, data_key: bytes) -> bytes:
        return hmac.new(data_key, b"dsguard-envelope-header\x00" + self.raw, hashlib.sha256).digest()


def encrypt_stream(source: BinaryIO, target: BinaryIO, wrapper: Wrapper, size: int, *, context: str = "",
                   chunk_size: int = CHUNK_SIZE, progress: Progress | None = None) -> EnvelopeHeader:
    """Encrypt ``size`` bytes of ``source`` into ``target``, one chunk in memory at a time."""
    data_key = AESGCM.generate_key(8 * KEY_BYTES)
    header = EnvelopeHeader.build(wrapper, data_key, size, chunk_size, context)
    target.write(header.raw + header.tag(data_key))
    aead = AESGCM(data_key)
    buffer = memoryview(bytearray(chunk_size))
    for index in range(header.chunks):
        length = header.chunk_length(index)
        if source.readinto(buffer[:length]) != length:  # type: ignore[attr-defined]
            raise EnvelopeError("the file shrank while it was encrypted", reason="changed", file=context or None)
        target.write(aead.encrypt(header.nonce(index), buffer[:length], header.associated_data(index)))
        if progress:
            progress(length)
    if source.read(1):
        raise EnvelopeError("the file grew while it was encrypted", reason="changed", file=context or None)
    return header


def read_header(source: Readable, file: str | Path | None = None) -> EnvelopeHeader:
    start = source.read(7)
    if len(start) < 7 or start[:4] != MAGIC:
        raise EnvelopeError("not a dsguard encrypted file", reason="format", file=file)
    version, length = struct.unpack(">BH", start[4:])
    if version != VERSION:
        raise EnvelopeError(f"unsupported envelope version {version}", reason="format", file=file)
    if length > MAX_HEADER:
        raise EnvelopeError("envelope header too long", reason="format", file=file)
    text = source.read(length)
    if len(text) != length:
        raise EnvelopeError("truncated inside the header", reason="truncated", file=file)
    return EnvelopeHeader.parse(start + text, file)


def open_envelope(source: Readable, wrapper: Wrapper, *, context: str | None = None,
                  file: str | Path | None = None) -> tuple[EnvelopeHeader, bytes]:
    """Read and authenticate the header: returns it and the data key."""
    header = read_header(source, file)
    if header.key_id != wrapper.key_id:
        raise EnvelopeError(f"encrypted with the key-encryption key {header.key_id}, not with {wrapper.key_id}",
                            reason="wrong-key", file=file)
    try:
        data_key = wrapper.unwrap(header.wrapped_key)
    except KeyProviderError:
        raise EnvelopeError("the wrapped data key does not unwrap: the header was edited", reason="header",
                            file=file) from None
    tag = source.read(hashlib.sha256().digest_size)
    if len(data_key) != KEY_BYTES or not hmac.compare_digest(tag, header.tag(data_key)):
        raise EnvelopeError("the header does not authenticate: it was edited", reason="header", file=file)
    if context is not None and header.context != context:
        raise EnvelopeError(f"this is the encrypted content of {header.context!r}, not of {context!r}",
                            reason="context", file=file)
    return header, data_key


def decrypt_chunks(source: Readable, header: EnvelopeHeader, data_key: bytes,
                   file: str | Path | None = None) -> Iterator[bytes]:
    """The plaintext chunks, each yielded only once authenticated; the whole file is checked to its end."""
    aead = AESGCM(data_key)
    for index, sealed in _sealed_chunks(source, header, file):
        with _authenticating(index, header, file):
            plaintext = aead.decrypt(header.nonce(index), sealed, header.associated_data(index))
        yield plaintext


def _sealed_chunks(source: Readable, header: EnvelopeHeader, file: str | Path | None) -> Iterator[tuple[int, bytes]]:
    for index in range(header.chunks):
        expected = header.chunk_length(index) + TAG_BYTES
        sealed = source.read(expected)
        if len(sealed) != expected:
            raise EnvelopeError(f"truncated: chunk {index + 1} of {header.chunks} is incomplete",
                                reason="truncated", file=file)
        yield index, sealed
    if source.read(1):
        raise EnvelopeError("data after the final chunk", reason="trailing-data", file=file)


@contextlib.contextmanager
def _authenticating(index: int, header: EnvelopeHeader, file: str | Path | None) -> Iterator[None]:
    try:
        yield
    except InvalidTag:
        raise EnvelopeError(f"chunk {index + 1} of {header.chunks} does not authenticate: altered, reordered or "
                            "from another file", reason="tampered", file=file) from None


def encrypt_file(source: Path, target: Path, wrapper: Wrapper, *, context: str = "", chunk_size: int = CHUNK_SIZE,
                 progress: Progress | None = None) -> EnvelopeHeader:
    """Encrypt ``source`` into ``target`` (written beside it under a temporary name, then renamed)."""
    with source.open("rb") as reader, _replacing(target) as writer:
        return encrypt_stream(reader, writer, wrapper, os.fstat(reader.fileno()).st_size, context=context,
                              chunk_size=chunk_size, progress=progress)


def decrypt_file(source: Path, target: Path, wrapper: Wrapper, *, context: str | None = None,
                 progress: Progress | None = None) -> EnvelopeHeader:
    """Decrypt ``source`` into ``target``; nothing is left at ``target`` unless the whole file authenticates."""
    with source.open("rb") as reader, _replacing(target) as writer:
        header, data_key = open_envelope(reader, wrapper, context=context, file=source)
        for chunk in decrypt_chunks(reader, header, data_key, source):
            writer.write(chunk)
            if progress:
                progress(len(chunk))
        return header


def decrypt_to_memory(source: Path, wrapper: Wrapper, *, context: str | None = None,
                      expected_sha256: str | None = None) -> bytearray:
    """The plaintext of ``source``, in memory only. With ``expected_sha256`` the encrypted file as read must have
    that digest (pinned by a signed manifest), so a file swapped after verification is refused too."""
    digest = hashlib.sha256()
    with source.open("rb") as raw:
        reader = _Hashing(raw, digest)
        header, data_key = open_envelope(reader, wrapper, context=context, file=source)
        aead = AESGCM(data_key)
        plaintext = bytearray(header.size)
        view = memoryview(plaintext)
        for index, sealed in _sealed_chunks(reader, header, source):
            start = index * header.chunk_size
            with _authenticating(index, header, source):
                aead.decrypt_into(header.nonce(index), sealed, header.associated_data(index),
                                  view[start:start + len(sealed) - TAG_BYTES])
    if expected_sha256 is not None and not hmac.compare_digest(digest.hexdigest(), expected_sha256):
        raise EnvelopeError("changed since its signed manifest was verified", reason="changed", file=source)
    return plaintext


class _Hashing:
    """A reader that hashes what passes through it."""

    def __init__(self, raw: BinaryIO, digest: Any) -> None:
        self._raw = raw
        self._digest = digest

    def read(self, size: int) -> bytes:
        data = self._raw.read(size)
        self._digest.update(data)
        return data


@contextlib.contextmanager
def _replacing(target: Path) -> Iterator[BinaryIO]:
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    try:
        with partial.open("xb") as writer:
            yield writer
            writer.flush()
            os.fsync(writer.fileno())
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError
    return base64.b64decode(value, validate=True)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError
    return value
