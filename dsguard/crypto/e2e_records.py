"""The sealed response of ``dsguard-e2e``: AES-256-GCM records keyed from the request's HPKE context.

Key and base nonce are exported from the request's context (RFC 9180 section 5.3), so only the
client that sealed that request can open its answer. The stream is ``MAGIC`` then records, each
``flag (1 byte) | length of the sealed part (3 bytes) | sealed part``; record *i* uses the nonce
``base_nonce XOR i`` and authenticates its 4 header bytes. Every chunk the app sends becomes one
record as it arrives (server-sent events stay streamed); the last record has the ``FINAL`` flag.
A dropped, reordered, altered or foreign record fails to open, and a stream that ends without
its final record is truncated: both are refused.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .e2e import E2EError
from .hpke import Context, xor_counter

MAGIC = b"\x00DE\x01"
MORE = 0x00
FINAL = 0x01
HEADER_SIZE = 4
TAG_SIZE = 16
MAX_RECORD = 1 << 20
"""Most plaintext bytes in one record; a larger chunk is split."""

_KEY_LABEL = b"dsguard-e2e/1 response key"
_NONCE_LABEL = b"dsguard-e2e/1 response nonce"


class _Records:
    __slots__ = ("_aead", "_base_nonce", "_seq")

    def __init__(self, context: Context) -> None:
        self._aead = AESGCM(context.export(_KEY_LABEL, 32))
        self._base_nonce = context.export(_NONCE_LABEL, 12)
        self._seq = 0

    def _next_nonce(self) -> bytes:
        nonce = xor_counter(self._base_nonce, self._seq)
        self._seq += 1
        return nonce


class ResponseSealer(_Records):
    """A response filter (:class:`dsguard.context.ResponseFilter`) sealing each chunk as one record."""

    __slots__ = ("_state",)

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._state = 0  # 0: nothing sent, 1: streaming, 2: finished

    def _record(self, flag: int, data: bytes) -> bytes:
        header = bytes((flag,)) + (len(data) + TAG_SIZE).to_bytes(3, "big")
        return header + self._aead.encrypt(self._next_nonce(), data, header)

    def _start(self) -> bytes:
        if self._state == 2:
            raise RuntimeError("the sealed response is already finished")
        if self._state == 0:
            self._state = 1
            return MAGIC
        return b""

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        start = self._start()
        if len(data) <= MAX_RECORD:
            return start + self._record(MORE, data)
        view = memoryview(data)
        return start + b"".join(self._record(MORE, bytes(view[i:i + MAX_RECORD]))
                                for i in range(0, len(data), MAX_RECORD))

    def finish(self) -> bytes:
        start = self._start()
        self._state = 2
        return start + self._record(FINAL, b"")


class ResponseOpener(_Records):
    """Opens a sealed response fed in arbitrary pieces; raises :class:`E2EError` on any defect."""

    __slots__ = ("_buffer", "_done", "_started")

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self._buffer = bytearray()
        self._started = False
        self._done = False

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer
        buffer += data
        if not self._started:
            if len(buffer) < len(MAGIC):
                if not MAGIC.startswith(bytes(buffer)):
                    raise E2EError("e2e_response_unsealed", "the response is not sealed")
                return b""
            if not buffer.startswith(MAGIC):
                raise E2EError("e2e_response_unsealed", "the response is not sealed")
            del buffer[:len(MAGIC)]
            self._started = True
        out = []
        while len(buffer) >= HEADER_SIZE:
            if self._done:
                raise E2EError("e2e_response_malformed", "data follows the final record of the response")
            header = bytes(buffer[:HEADER_SIZE])
            flag, size = header[0], int.from_bytes(header[1:], "big")
            if flag not in (MORE, FINAL) or not TAG_SIZE <= size <= MAX_RECORD + TAG_SIZE:
                raise E2EError("e2e_response_malformed", "a record of the response has a malformed header")
            if len(buffer) < HEADER_SIZE + size:
                break
            sealed = bytes(buffer[HEADER_SIZE:HEADER_SIZE + size])
            del buffer[:HEADER_SIZE + size]
            try:
                out.append(self._aead.decrypt(self._next_nonce(), sealed, header))
            except InvalidTag:
                raise E2EError("e2e_response_tampered", "a record of the response does not open: it was altered, "
                                                        "reordered, dropped or belongs to another response") from None
            self._done = flag == FINAL
        return b"".join(out)

    def finish(self) -> None:
        """Call at the end of the stream: raises if the final record never came."""
        if not self._done or self._buffer:
            raise E2EError("e2e_response_truncated", "the response ended before its final record")
