"""RFC 9421 HTTP Message Signatures with RFC 9530 ``Content-Digest``, on both sides of a call.

- :mod:`.keys`: the client key directory (``[signatures] keys``), keys by ``keyid``.
- :mod:`.verify`: :class:`SignatureVerifier`, the stateless checks of one signed request.
- :mod:`.digest`: making and checking ``Content-Digest``.
- :mod:`.message`: requests in the shape http-message-signatures reads.
- :mod:`.client`: :class:`~.client.RequestSigner` and the httpx and requests auth classes
  (imported on its own: the guard does not load client libraries).

The library http-message-signatures builds signature bases and checks signatures; this
package adds the policy (which key, which algorithm, what must be covered, how fresh).
"""

from __future__ import annotations

from .algorithms import ALGORITHMS
from .digest import DigestMismatch, content_digest, verify_content_digest
from .keys import ClientKey, KeyDirectory, KeyDirectoryError, load_key_directory, parse_key_directory
from .verify import DEFAULT_COMPONENTS, SignatureError, SignatureVerifier, VerifiedSignature

__all__ = [
    "ALGORITHMS",
    "DEFAULT_COMPONENTS",
    "ClientKey",
    "DigestMismatch",
    "KeyDirectory",
    "KeyDirectoryError",
    "SignatureError",
    "SignatureVerifier",
    "VerifiedSignature",
    "content_digest",
    "load_key_directory",
    "parse_key_directory",
    "verify_content_digest",
]
