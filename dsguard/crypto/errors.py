"""The crypto error family: one type per failure family, each with a stable ``reason`` and the file at fault."""

from __future__ import annotations

from pathlib import Path

from dsguard.errors import DSGuardError


class CryptoError(DSGuardError):
    """Base of the crypto errors; ``str(error)`` names the file (when there is one) before the message."""

    def __init__(self, message: str, *, reason: str, file: str | Path | None = None) -> None:
        self.message = message
        self.reason = reason
        self.file = str(file) if file is not None else None
        super().__init__(f"{self.file}: {message}" if self.file else message)


class KeyProviderError(CryptoError):
    """A key URL that cannot be opened or used; the message names the URL without its query (no PIN or secret)."""

    def __init__(self, message: str, *, reason: str = "key", file: str | Path | None = None) -> None:
        super().__init__(message, reason=reason, file=file)


class EnvelopeError(CryptoError):
    """An encrypted file that does not decrypt: ``reason`` is one of ``format``, ``no-key``, ``wrong-key``,
    ``header``, ``context``, ``tampered``, ``truncated``, ``trailing-data`` or ``changed``."""


class ManifestError(CryptoError):
    """A bundle that does not match its signed manifest: ``reason`` is one of ``unsigned``, ``malformed``,
    ``untrusted-key``, ``signature``, ``file-missing``, ``file-extra``, ``file-changed`` or ``unsafe-path``."""
