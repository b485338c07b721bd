"""PKCS#11 keys through python-pkcs11: signing and key wrapping happen inside the token.

Keys are named by RFC 7512 URIs (:mod:`dsguard.crypto.rfc7512`). Each token is logged in once per
process; its session is kept open and shared by every key of the token. python-pkcs11 initialises a
module with ``C_Initialize(NULL)``, which promises the module that no two threads call it at once, so
every call into a module holds that module's lock (threads take turns; nothing is opened per call).
Signers use CKM_EDDSA (Ed25519) or CKM_ECDSA over SHA-256 (P-256); KEKs are AES-256 keys wrapping
data keys with CKM_AES_KEY_WRAP (RFC 3394: the same bytes as :class:`~dsguard.crypto.keys.LocalWrapper`).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from dsguard.crypto.errors import KeyProviderError
from dsguard.crypto.keys import KEY_BYTES, PublicKey, kek_id, public_key_id
from dsguard.crypto.rfc7512 import MODULE_DIRS, Pkcs11URI

__all__ = ["KEY_TYPES", "MODULE_DIRS", "Pkcs11Signer", "Pkcs11URI", "Pkcs11Wrapper", "TokenSession", "close_all",
           "generate_key"]

KEY_TYPES = ("ed25519", "ec-p256", "aes-256")
P256_OID = bytes.fromhex("06082a8648ce3d030107")
T = TypeVar("T")

_module_locks: dict[str, threading.RLock] = {}
_sessions: dict[tuple[str, str, str, str], TokenSession] = {}
_registry_lock = threading.Lock()


def require_pkcs11() -> None:
    """Raises KeyProviderError when python-pkcs11 (the ``hsm`` extra) is not installed."""
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        raise KeyProviderError("pkcs11: keys need python-pkcs11: pip install 'dsguard[hsm]'",
                               reason="unavailable") from None


def module_lock(module: str) -> threading.RLock:
    with _registry_lock:
        return _module_locks.setdefault(module, threading.RLock())


class TokenSession:
    """The logged-in session of one token, shared by every key of that token in this process."""

    def __init__(self, uri: Pkcs11URI) -> None:
        require_pkcs11()
        self.uri = uri
        self.module = uri.module()
        self.lock = module_lock(self.module)
        with self.lock:
            self._session = self._open()

    def _open(self) -> Any:
        import pkcs11

        try:
            self.token = _find_token(pkcs11.lib(self.module), self.uri)
            try:
                return self.token.open(user_pin=self.uri.pin())
            except pkcs11.UserAlreadyLoggedIn:  # login is per process: another session of the token holds it
                return self.token.open()
        except pkcs11.PinIncorrect:
            raise KeyProviderError(f"{self.uri.shown}: the token refused the PIN", reason="login") from None
        except pkcs11.PKCS11Error as exc:
            raise KeyProviderError(f"{self.uri.shown}: cannot open the token ({type(exc).__name__})",
                                   reason="unavailable") from None

    def run(self, operation: Callable[[Any], T]) -> T:
        """``operation(session)`` holding the module's lock; a session lost to the token is reopened once."""
        import pkcs11

        lost = (pkcs11.SessionHandleInvalid, pkcs11.SessionClosed, pkcs11.UserNotLoggedIn, pkcs11.DeviceRemoved)
        with self.lock:
            try:
                return operation(self._session)
            except lost:
                self._session = self._open()
                return operation(self._session)

    @contextlib.contextmanager
    def read_write(self) -> Iterator[Any]:
        """A read/write session of the logged-in token, for creating token objects."""
        with self.lock:
            session = self.token.open(rw=True)
            try:
                yield session
            finally:
                session.close()

    def close(self) -> None:
        with self.lock, contextlib.suppress(Exception):
            self._session.close()


def token_session(uri: Pkcs11URI) -> TokenSession:
    """The shared session of the token ``uri`` selects (opened and logged in on first use)."""
    key = (uri.module(), uri.text("token") or "", uri.text("serial") or "", uri.text("slot-id") or "")
    with _registry_lock:
        found = _sessions.get(key)
    if found is not None:
        return found
    opened = TokenSession(uri)
    with _registry_lock:
        found = _sessions.setdefault(key, opened)
    if found is not opened:
        opened.close()
    return found


def close_all() -> None:
    """Close every token session and finalize the loaded modules; the next use reads each module's configuration
    anew (SoftHSM2 reads ``SOFTHSM2_CONF`` when initialised)."""
    import pkcs11

    with _registry_lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for session in sessions:
        session.close()
    for module in {session.module for session in sessions}:
        with module_lock(module), contextlib.suppress(Exception):
            pkcs11.lib(module).finalize()


def _find_token(lib: Any, uri: Pkcs11URI) -> Any:
    wanted = {name: uri.text(name) for name in ("token", "serial", "manufacturer", "model") if name in uri.path}
    slot_id = uri.text("slot-id")
    found = []
    for slot in lib.get_slots(token_present=True):
        if slot_id is not None and str(slot.slot_id) != slot_id:
            continue
        token = slot.get_token()
        have = {"token": token.label, "serial": token.serial.decode("ascii", errors="replace"),
                "manufacturer": token.manufacturer_id, "model": token.model}
        if all(have[name].strip() == value for name, value in wanted.items()):
            found.append(token)
    if not found:
        raise KeyProviderError(f"{uri.shown}: no token matches", reason="unavailable")
    if len(found) > 1:
        raise KeyProviderError(f"{uri.shown}: {len(found)} tokens match; add serial= or slot-id=")
    return found[0]


def _find_key(session: Any, uri: Pkcs11URI, object_class: Any) -> Any:
    import pkcs11

    try:
        return session.get_key(object_class=object_class, **uri.object_selector())
    except pkcs11.NoSuchKey:
        raise KeyProviderError(f"{uri.shown}: no {_class_name(object_class)} with this object/id in the token",
                               reason="unavailable") from None
    except pkcs11.MultipleObjectsReturned:
        raise KeyProviderError(f"{uri.shown}: several {_class_name(object_class)}s match; add id=") from None


def _class_name(object_class: Any) -> str:
    name = str(object_class.name)
    return {"PRIVATE_KEY": "private key", "PUBLIC_KEY": "public key", "SECRET_KEY": "secret key"}.get(name, name)


def _octets(point: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING (some modules give the raw point)."""
    if len(point) > 2 and point[0] == 0x04 and point[1] == len(point) - 2 and point[1] < 0x80:
        return point[2:]
    if len(point) > 3 and point[0] == 0x04 and point[1] == 0x81 and point[2] == len(point) - 3:
        return point[3:]
    return point


def _public_key(uri: Pkcs11URI, public: Any) -> tuple[str, PublicKey]:
    import pkcs11

    point = _octets(bytes(public[pkcs11.Attribute.EC_POINT]))
    if public.key_type == pkcs11.KeyType.EC_EDWARDS and len(point) == KEY_BYTES:
        return "EdDSA", ed25519.Ed25519PublicKey.from_public_bytes(point)
    if public.key_type == pkcs11.KeyType.EC and bytes(public[pkcs11.Attribute.EC_PARAMS]) == P256_OID:
        return "ES256", ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    raise KeyProviderError(f"{uri.shown}: unsupported key; expected Ed25519 or EC P-256")


class Pkcs11Signer:
    """An Ed25519 or P-256 private key inside a token; signs there."""

    def __init__(self, url: str) -> None:
        import pkcs11

        self.uri = Pkcs11URI.parse(url)
        if self.uri.path.get("type", b"private") != b"private":
            raise KeyProviderError(f"{self.uri.shown}: a signer needs type=private (or no type)")
        self._token = token_session(self.uri)

        def describe(session: Any) -> tuple[str, PublicKey]:
            _find_key(session, self.uri, pkcs11.ObjectClass.PRIVATE_KEY)
            return _public_key(self.uri, _find_key(session, self.uri, pkcs11.ObjectClass.PUBLIC_KEY))

        self.algorithm, self._public = self._token.run(describe)
        self.key_id = public_key_id(self._public)

    def sign(self, data: bytes) -> bytes:
        import pkcs11

        def sign(session: Any) -> bytes:
            key = _find_key(session, self.uri, pkcs11.ObjectClass.PRIVATE_KEY)
            if self.algorithm == "EdDSA":
                return bytes(key.sign(data, mechanism=pkcs11.Mechanism.EDDSA))
            return bytes(key.sign(hashlib.sha256(data).digest(), mechanism=pkcs11.Mechanism.ECDSA))

        try:
            return self._token.run(sign)
        except pkcs11.PKCS11Error as exc:
            raise KeyProviderError(f"{self.uri.shown}: the token did not sign ({type(exc).__name__})",
                                   reason="sign") from None

    def public_key(self) -> PublicKey:
        return self._public


class Pkcs11Wrapper:
    """An AES-256 KEK inside a token: data keys are wrapped and unwrapped there (CKM_AES_KEY_WRAP)."""

    def __init__(self, url: str) -> None:
        import pkcs11

        self.uri = Pkcs11URI.parse(url)
        if self.uri.path.get("type", b"secret-key") != b"secret-key":
            raise KeyProviderError(f"{self.uri.shown}: a key-encryption key needs type=secret-key (or no type)")
        self._token = token_session(self.uri)

        def is_aes_256(session: Any) -> bool:
            kek = _find_key(session, self.uri, pkcs11.ObjectClass.SECRET_KEY)
            return bool(kek.key_type == pkcs11.KeyType.AES and kek[pkcs11.Attribute.VALUE_LEN] == KEY_BYTES)

        if not self._token.run(is_aes_256):
            raise KeyProviderError(f"{self.uri.shown}: expected an AES-256 key")
        self.key_id = kek_id(self.wrap)

    def wrap(self, data_key: bytes) -> bytes:
        import pkcs11

        def wrap(session: Any) -> bytes:
            kek = _find_key(session, self.uri, pkcs11.ObjectClass.SECRET_KEY)
            data = session.create_object({
                pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY, pkcs11.Attribute.KEY_TYPE: pkcs11.KeyType.AES,
                pkcs11.Attribute.VALUE: data_key, pkcs11.Attribute.TOKEN: False, pkcs11.Attribute.EXTRACTABLE: True,
                pkcs11.Attribute.SENSITIVE: False})
            try:
                return bytes(kek.wrap_key(data, mechanism=pkcs11.Mechanism.AES_KEY_WRAP))
            finally:
                data.destroy()

        try:
            return self._token.run(wrap)
        except pkcs11.PKCS11Error as exc:
            raise KeyProviderError(f"{self.uri.shown}: the token did not wrap the key ({type(exc).__name__})",
                                   reason="wrap") from None

    def unwrap(self, wrapped: bytes) -> bytes:
        import pkcs11

        def unwrap(session: Any) -> bytes:
            kek = _find_key(session, self.uri, pkcs11.ObjectClass.SECRET_KEY)
            try:
                data = kek.unwrap_key(pkcs11.ObjectClass.SECRET_KEY, pkcs11.KeyType.AES, wrapped,
                                      mechanism=pkcs11.Mechanism.AES_KEY_WRAP, store=False,
                                      template={pkcs11.Attribute.EXTRACTABLE: True, pkcs11.Attribute.SENSITIVE: False})
            except pkcs11.PKCS11Error:
                raise KeyProviderError(f"{self.uri.shown}: the wrapped key does not unwrap with this KEK",
                                       reason="unwrap") from None
            try:
                return bytes(data[pkcs11.Attribute.VALUE])
            finally:
                data.destroy()

        return self._token.run(unwrap)


def generate_key(url: str, key_type: str) -> str:
    """Generate a key inside the token at ``url`` (its object= label and/or id=): an Ed25519 or P-256 key pair
    for signing, or an AES-256 key-encryption key; private and secret keys are sensitive and never extractable.
    Returns the key id that :func:`open_signer` / :func:`open_wrapper` will report."""
    require_pkcs11()
    import pkcs11
    from pkcs11.util.ec import encode_named_curve_parameters

    if key_type not in KEY_TYPES:
        raise KeyProviderError(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")
    uri = Pkcs11URI.parse(url)
    selector = uri.object_selector()
    label, key_id = selector.get("label"), selector.get("id")
    kept = {pkcs11.Attribute.TOKEN: True, pkcs11.Attribute.PRIVATE: True, pkcs11.Attribute.SENSITIVE: True,
            pkcs11.Attribute.EXTRACTABLE: False}
    with token_session(uri).read_write() as session:
        attributes = {pkcs11.Attribute.LABEL: label} if label is not None else {}
        if key_id is not None:
            attributes[pkcs11.Attribute.ID] = key_id
        if next(iter(session.get_objects(attributes)), None) is not None:
            raise KeyProviderError(f"{uri.shown}: the token already holds an object with this object/id")
        try:
            if key_type == "aes-256":
                session.generate_key(pkcs11.KeyType.AES, 8 * KEY_BYTES, label=label, id=key_id, store=True,
                                     capabilities=pkcs11.MechanismFlag.WRAP | pkcs11.MechanismFlag.UNWRAP,
                                     template=kept)
            else:
                edwards = key_type == "ed25519"
                params = session.create_domain_parameters(
                    pkcs11.KeyType.EC_EDWARDS if edwards else pkcs11.KeyType.EC,
                    {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters(
                        "1.3.101.112" if edwards else "secp256r1")}, local=True)
                params.generate_keypair(label=label, id=key_id, store=True, private_template=kept,
                                        capabilities=pkcs11.MechanismFlag.SIGN | pkcs11.MechanismFlag.VERIFY)
        except pkcs11.PKCS11Error as exc:
            raise KeyProviderError(f"{uri.shown}: the token did not generate the key ({type(exc).__name__})",
                                   reason="generate") from None
    opened: Pkcs11Wrapper | Pkcs11Signer = Pkcs11Wrapper(url) if key_type == "aes-256" else Pkcs11Signer(url)
    return opened.key_id
