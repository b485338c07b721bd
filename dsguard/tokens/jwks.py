"""Verification keys for JWTs: a JWKS endpoint, a local JWKS file and a static HMAC secret.

Each key is bound to the algorithms of its own type (RSA: RS*/PS*, EC: the ES* of its curve,
OKP: EdDSA, symmetric: HS*), so a token cannot choose how its key is used. Keys come only from
configuration: ``jku``/``x5u``/``jwk``/``x5c`` token headers are never consulted.

:class:`RemoteJWKS` caches the endpoint's keys for ``jwks_ttl``, refetches on an unknown ``kid``
at most once per ``jwks_refetch_cooldown`` (with a bounded negative cache of unknown kids), keeps
the last good keys for ``jwks_stale_grace`` while the endpoint is down, and shares one in-flight
fetch between concurrent calls.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..config import JWTConfig
from .keys import (
    HMAC_MIN_BYTES,
    MAX_CANDIDATES,
    JWKSError,
    KeyAlgorithmMismatch,
    KeySet,
    KeySourceError,
    KeysUnavailable,
    UnknownKey,
    VerificationKey,
    parse_jwks,
    secret_key,
)

logger = logging.getLogger("dsguard.jwks")

MAX_JWKS_BYTES = 1024 * 1024
MAX_UNKNOWN_KIDS = 4096
MAX_KID_LENGTH = 256
Clock = Callable[[], float]


class JWKSFile:
    """A JWKS file, read at startup and again when its modification time changes."""

    recheck_interval = 1.0

    def __init__(self, path: Path, clock: Clock = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self._mtime, self.keys = self._read()
        self._checked_at = clock()

    def _read(self) -> tuple[int, KeySet]:
        try:
            mtime = self.path.stat().st_mtime_ns
            document = json.loads(self.path.read_bytes())
        except OSError as exc:
            raise KeySourceError("jwks_file", f"cannot read {self.path}: {exc.strerror}") from None
        except ValueError:
            raise KeySourceError("jwks_file", f"{self.path} is not valid JSON") from None
        try:
            return mtime, parse_jwks(document, source=str(self.path), allow_symmetric=True)
        except JWKSError as exc:
            raise KeySourceError("jwks_file", f"{self.path}: {exc}") from None

    def current(self) -> KeySet:
        now = self.clock()
        if now - self._checked_at >= self.recheck_interval:
            self._checked_at = now
            try:
                if os.stat(self.path).st_mtime_ns != self._mtime:
                    self._mtime, self.keys = self._read()
                    logger.info("reloaded %d keys from %s", len(self.keys), self.path)
            except (OSError, KeySourceError) as exc:
                logger.warning("keeping the keys read earlier from %s: %s", self.path, exc)
        return self.keys


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise KeySourceError("jwks_url", "the JWKS URL must use https (plain http only on loopback)")


class RemoteJWKS:
    """Keys from a JWKS endpoint, fetched with httpx without blocking the event loop."""

    def __init__(self, url: str, *, ttl: float, timeout: float, cooldown: float, grace: float,
                 clock: Clock = time.monotonic) -> None:
        _check_url(url)
        self.url = url
        self.ttl = ttl
        self.timeout = timeout
        self.cooldown = cooldown
        self.grace = grace
        self.retry_backoff = min(cooldown, 5.0)
        self.clock = clock
        self.keys = KeySet()
        self.generation = 0
        self._fetched = False
        self._fresh_until = -math.inf
        self._next_attempt = -math.inf
        self._last_kid_fetch = -math.inf
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._inflight: asyncio.Task[None] | None = None

    @property
    def fresh(self) -> bool:
        return self.clock() < self._fresh_until

    def _usable(self, now: float) -> KeySet | None:
        return self.keys if self._fetched and now < self._fresh_until + self.grace else None

    def _usable_or_raise(self) -> KeySet:
        now = self.clock()
        keys = self._usable(now)
        if keys is None:
            raise KeysUnavailable(max(1.0, self._next_attempt - now))
        return keys

    def _pending(self) -> bool:
        task = self._inflight
        return task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()

    async def startup(self) -> None:
        await self._refresh()
        if not self._fetched:
            logger.warning("JWKS endpoint %s is unreachable at startup; retrying on first use", self.url)

    async def current(self) -> KeySet:
        """The endpoint's keys: cached, refreshed after ``ttl``, or stale within ``grace``."""
        now = self.clock()
        if now < self._fresh_until:
            return self.keys
        if now >= self._next_attempt or (self._pending() and self._usable(now) is None):
            await self._refresh()
        return self._usable_or_raise()

    async def refetch_for(self, kid: str, seen: int) -> KeySet:
        """Fetch again for a ``kid`` missing from generation ``seen`` of the keys, unless newer keys
        came meanwhile, the kid is known to be unknown, or the last such fetch is within ``cooldown``."""
        now = self.clock()
        expiry = self._unknown.get(kid)
        if expiry is not None and now < expiry:
            return self._usable_or_raise()
        if self.generation == seen:
            if self._pending():
                await self._refresh()
            elif now >= self._last_kid_fetch + self.cooldown and len(kid) <= MAX_KID_LENGTH:
                self._last_kid_fetch = now
                await self._refresh()
            else:
                return self._usable_or_raise()
        keys = self._usable_or_raise()
        if kid not in keys.kids and len(kid) <= MAX_KID_LENGTH:
            self._unknown[kid] = self.clock() + self.ttl
            while len(self._unknown) > MAX_UNKNOWN_KIDS:
                self._unknown.popitem(last=False)
        return keys

    async def _refresh(self) -> None:
        """Start a fetch, or join the one in flight on this event loop."""
        loop = asyncio.get_running_loop()
        task = self._inflight
        if task is None or task.done() or task.get_loop() is not loop:
            self._next_attempt = self.clock() + self.retry_backoff
            task = self._inflight = loop.create_task(self._fetch())
        await asyncio.shield(task)

    async def _fetch(self) -> None:
        started = self.clock()
        try:
            async with asyncio.timeout(self.timeout):
                document = await self._download()
            keys = parse_jwks(document, source=self.url)
        except (httpx.HTTPError, JWKSError, TimeoutError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            fallback = "using the keys fetched earlier" if self._usable(started) else "no keys to fall back on"
            logger.warning("cannot fetch JWKS from %s (%s); %s", self.url, reason, fallback)
            return
        except Exception:
            logger.exception("unexpected error fetching JWKS from %s", self.url)
            return
        self.keys = keys
        self.generation += 1
        self._fetched = True
        self._fresh_until = self._next_attempt = started + self.ttl
        for kid in keys.kids:
            self._unknown.pop(kid, None)
        logger.info("fetched %d signing keys from %s", len(keys), self.url)

    async def _download(self) -> Any:
        headers = {"accept": "application/jwk-set+json, application/json"}
        async with httpx.AsyncClient(timeout=self.timeout) as client, \
                client.stream("GET", self.url, headers=headers) as response:
            if response.status_code != 200:
                raise JWKSError(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JWKSError(f"the document is larger than {MAX_JWKS_BYTES} bytes")
        return json.loads(body)


class KeyStore:
    """Every configured key source, looked up by ``kid`` and ``alg``."""

    def __init__(self, static: Iterable[VerificationKey] = (), file: JWKSFile | None = None,
                 remote: RemoteJWKS | None = None) -> None:
        self.static = KeySet(static)
        self.file = file
        self.remote = remote

    def _local(self) -> KeySet:
        if self.file is None:
            return self.static
        return KeySet((*self.static.keys, *self.file.current().keys))

    def holds(self, fingerprint: str) -> bool:
        """Whether a key is still current (cheap: used on every verified-token cache hit)."""
        if fingerprint in self.static.fingerprints:
            return True
        if self.file is not None and fingerprint in self.file.current().fingerprints:
            return True
        remote = self.remote
        return remote is not None and remote.fresh and fingerprint in remote.keys.fingerprints

    async def startup(self) -> None:
        if self.remote is not None:
            await self.remote.startup()

    async def find(self, kid: str | None, alg: str) -> list[VerificationKey]:
        """Keys to try for a token, exact ``kid`` first.

        Raises :class:`UnknownKey`, :class:`KeyAlgorithmMismatch` or :class:`KeysUnavailable`.
        """
        local = self._local()
        found = local.candidates(kid, alg)
        remote = self.remote
        if remote is None or alg in HMAC_MIN_BYTES:
            return self._or_raise(found, kid, local, *([remote.keys] if remote is not None else []))
        try:
            generation = remote.generation
            keys = await remote.current()
            if kid is not None and kid not in keys.kids and not keys.candidates(kid, alg) and not found:
                keys = await remote.refetch_for(kid, generation)
        except KeysUnavailable:
            if found:
                return found
            raise
        return self._or_raise([*found, *keys.candidates(kid, alg)][:MAX_CANDIDATES], kid, local, keys)

    @staticmethod
    def _or_raise(found: list[VerificationKey], kid: str | None, *sets: KeySet) -> list[VerificationKey]:
        if found:
            return found
        if kid is not None and any(kid in keys.kids for keys in sets):
            raise KeyAlgorithmMismatch()
        raise UnknownKey()


def open_key_store(config: JWTConfig) -> KeyStore:
    """The key sources of ``[identity.jwt]``; raises :class:`KeySourceError` naming the setting."""
    static = []
    if config.secret is not None:
        try:
            static.append(secret_key(config.secret.reveal()))
        except LookupError as exc:
            raise KeySourceError("secret", str(exc)) from None
    file = JWKSFile(config.jwks_file) if config.jwks_file is not None else None
    remote = None
    if config.jwks_url is not None:
        remote = RemoteJWKS(config.jwks_url, ttl=config.jwks_ttl, timeout=config.jwks_timeout,
                            cooldown=config.jwks_refetch_cooldown, grace=config.jwks_stale_grace)
    if not static and file is None and remote is None:
        raise KeySourceError("jwks_url", "no key source: set jwks_url, jwks_file or secret")
    return KeyStore(static, file, remote)
