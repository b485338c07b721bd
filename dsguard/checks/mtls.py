"""mTLS identity: the caller named by its client certificate (``[identity.mtls]``).

The certificate is the one ``dsguard serve`` verified against ``[server] client_ca`` during the
TLS handshake. Behind a proxy that terminates TLS, it comes from ``forwarded_header`` instead
(URL-encoded PEM of the leaf certificate: nginx ``$ssl_client_escaped_cert``, an AWS ALB
``X-Amzn-Mtls-Clientcert``, or an Envoy ``x-forwarded-client-cert`` element with ``Cert=`` only),
and only when the socket peer is in ``[server] trusted_proxies``; anyone else's header is ignored.
The proxy must verify the certificate against the client CA (nginx ``ssl_verify_client on``)
and overwrite the header on every request: dsguard cannot tell a certificate the proxy checked
from one it merely passed on. From a trusted proxy only the header counts: the socket's own
certificate is the proxy's, never the caller's.

Every call with a certificate gets ``ctx.attributes["client_cert_thumbprint"]`` (RFC 8705
``x5t#S256``) for certificate-bound tokens; the identity is set only when no earlier check
set one, and a bearer token verified later replaces it.

Calls refused for a missing certificate get ``WWW-Authenticate: Bearer realm="dsguard"``: HTTP
has no challenge scheme for TLS client certificates (RFC 8120 "Mutual" is a password scheme),
and a 401 must carry a challenge, so the realm's bearer challenge is sent without an error.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ..config import Config, MTLSConfig
from ..context import Identity, RequestContext
from ..decision import BadRequest, Denial, Unauthenticated
from ..services import Services
from ..units import NetworkSet
from .base import Check

logger = logging.getLogger("dsguard")

_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
_SANKind = type[x509.RFC822Name] | type[x509.DNSName] | type[x509.UniformResourceIdentifier]
_SAN_KINDS: dict[str, _SANKind] = {
    "san_email": x509.RFC822Name, "san_dns": x509.DNSName, "san_uri": x509.UniformResourceIdentifier}
_NAME_LABELS = {"san_email": "e-mail address", "san_dns": "DNS name", "san_uri": "URI", "cn": "common name"}


class CertificateError(ValueError):
    """A client certificate that cannot be read."""


def certificate_thumbprint(der: bytes) -> str:
    """RFC 8705 ``x5t#S256``: base64url SHA-256 of the DER certificate, without padding."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """What the checks need from a client certificate, read once per distinct certificate."""

    thumbprint: str
    subject_dn: str
    issuer_dn: str
    serial: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    names: Mapping[str, str | None]

    def summary(self) -> dict[str, str]:
        return {"subject": self.subject_dn, "issuer": self.issuer_dn, "serial": self.serial,
                "not_after": self.not_after.isoformat()}


def _first_name(cert: x509.Certificate, kind: _SANKind) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    values = san.get_values_for_type(kind)
    return str(values[0]) if values else None


def _common_name(cert: x509.Certificate) -> str | None:
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not values:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


@functools.lru_cache(maxsize=1024)
def read_certificate(der: bytes) -> ClientCertificate:
    """Parse a DER certificate; raises :class:`CertificateError`."""
    try:
        cert = x509.load_der_x509_certificate(der)
        names = {kind: _first_name(cert, general) for kind, general in _SAN_KINDS.items()}
        names["cn"] = _common_name(cert)
        return ClientCertificate(
            thumbprint=certificate_thumbprint(der), subject_dn=cert.subject.rfc4514_string(),
            issuer_dn=cert.issuer.rfc4514_string(), serial=format(cert.serial_number, "x"),
            not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, names=names)
    except ValueError as exc:
        raise CertificateError(str(exc)) from None


@functools.lru_cache(maxsize=1024)
def decode_forwarded_certificate(value: str) -> bytes:
    """The DER leaf certificate from a URL-encoded PEM header value; raises :class:`CertificateError`."""
    blocks = _PEM_BLOCK.findall(unquote(value))
    if len(blocks) != 1:
        raise CertificateError(f"expected one PEM certificate, found {len(blocks)}")
    try:
        return x509.load_pem_x509_certificate(blocks[0].encode("ascii")).public_bytes(Encoding.DER)
    except ValueError as exc:
        raise CertificateError(str(exc)) from None


class MTLSIdentityCheck:
    name = "mtls"
    stage = "identity"

    def __init__(self, config: MTLSConfig, trusted_proxies: NetworkSet,
                 clock: Callable[[], datetime.datetime] | None = None) -> None:
        self.subject_from = config.subject_from
        self.required = config.required
        self.header = config.forwarded_header.lower() if config.forwarded_header else None
        self.trusted = trusted_proxies
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))

    def check(self, ctx: RequestContext) -> Denial | None:
        try:
            der = self._certificate_der(ctx)
            if der is None:
                return self._absent("a client certificate is required")
            cert = read_certificate(der)
        except CertificateError:
            return BadRequest("the client certificate cannot be read", code="bad_client_certificate")
        now = self._clock()
        if not cert.not_before <= now <= cert.not_after:
            return Unauthenticated("the client certificate is outside its validity period",
                                   code="client_certificate_expired")
        ctx.attributes["client_cert_thumbprint"] = cert.thumbprint
        subject = cert.names[self.subject_from]
        if subject is None:
            label = _NAME_LABELS[self.subject_from]
            return self._absent(f"the client certificate carries no {label} to identify the caller",
                                code="client_certificate_unnamed")
        if ctx.identity is None:
            ctx.identity = Identity(
                subject=subject, method="mtls", issuer=cert.issuer_dn, claims={"certificate": cert.summary()},
                expires_at=cert.not_after.timestamp(), certificate_thumbprint=cert.thumbprint)
        return None

    def _certificate_der(self, ctx: RequestContext) -> bytes | None:
        if self.header is not None and ctx.peer in self.trusted:
            values = [v for v in ctx.headers.getlist(self.header) if v.strip()]
            if len(values) > 1:
                raise CertificateError("repeated certificate header")
            return decode_forwarded_certificate(values[0].strip()) if values else None
        tls = ctx.tls
        return tls.client_cert if tls is not None else None

    def _absent(self, message: str, code: str = "client_certificate_required") -> Denial | None:
        return Unauthenticated(message, code=code) if self.required else None


def build(config: Config, services: Services) -> list[Check]:
    mtls = config.identity.mtls
    if mtls is None:
        return []
    trusted = NetworkSet(config.server.trusted_proxies)
    if mtls.forwarded_header and not trusted:
        logger.warning("[identity.mtls] forwarded_header is set but [server] trusted_proxies is empty; "
                       "the header will never be honoured")
    return [MTLSIdentityCheck(mtls, trusted)]
