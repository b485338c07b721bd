"""``redis://host:port/db``: keys shared by every replica that points at the same Redis.

One round trip per call: ``add`` is ``SET key 1 NX PX ttl``, ``put`` is ``SET key 1 PX ttl``,
``contains`` is ``EXISTS``. Connect and read timeouts are short (0.5 s, or ``?timeout=2s`` in
the URL) so that a Redis outage costs a request a bounded wait, and every failure surfaces as
:class:`StorageError`. Broken connections are dropped and reopened on the next call, so the
storage recovers by itself when Redis comes back.

Asyncio connections belong to one event loop; used from another loop (a new ``asyncio.run``),
the storage opens a fresh connection pool for it.
"""

from __future__ import annotations

import asyncio
import math
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..units import parse_duration
from . import StorageError

PREFIX = "dsguard:"
DEFAULT_TIMEOUT = 0.5


def split_timeout(url: str) -> tuple[str, float]:
    """``url`` without its ``timeout`` query parameter, and that timeout in seconds."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    timeout = DEFAULT_TIMEOUT
    for name, value in query:
        if name == "timeout":
            try:
                timeout = parse_duration(value) if value[-1:].isalpha() else float(value)
            except ValueError:
                raise ValueError(f'storage URL timeout: expected a duration like "500ms", got {value!r}') from None
            if not 0 < timeout <= 60:
                raise ValueError(f"storage URL timeout: expected more than 0 and at most 60 seconds, got {value!r}")
    rest = urlencode([(name, value) for name, value in query if name != "timeout"])
    return urlunsplit(parts._replace(query=rest)), timeout


def redacted_location(url: str) -> str:
    """Where the storage points, without credentials (safe for messages and logs)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path}"


def _milliseconds(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


# What a Redis call can fail with: the client's errors, socket errors, and the RuntimeError
# asyncio raises when the server closes the connection under a call in flight.
FAILURES = (RedisError, OSError, RuntimeError)


class RedisConnection:
    """One ``redis.asyncio`` client per event loop, with bounded timeouts.

    A client's pool belongs to the loop that used it first; a guard driven from another loop (a
    WSGI portal, a fresh ``asyncio.run``) gets a fresh client instead of a closed loop's pool.
    """

    def __init__(self, url: str) -> None:
        self._url, self.timeout = split_timeout(url)
        self.location = redacted_location(url)
        try:
            self._client = self._new_client()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid Redis URL {self.location}: {exc}") from None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _new_client(self) -> Redis:
        # One immediate retry on a dropped connection: the first call after a Redis restart
        # finds its pooled connection dead and goes through on a fresh one.
        return Redis.from_url(self._url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                              retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                              retry_on_timeout=False)

    def client(self) -> Redis:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None:
                self._client = self._new_client()
            self._loop = loop
        return self._client

    async def close(self) -> None:
        """Close the pool; raises :class:`StorageError` if it does not close cleanly."""
        if self._loop is not None and self._loop is not asyncio.get_running_loop():
            self._client, self._loop = self._new_client(), None  # the old pool's loop cannot close it now
            return
        try:
            await self._client.aclose()
        except FAILURES as exc:
            raise StorageError(f"redis at {self.location} did not close cleanly: {exc}") from None


class RedisStorage:
    """Keys under ``dsguard:`` in one Redis database, with their expiry kept by Redis."""

    def __init__(self, url: str) -> None:
        self.connection = RedisConnection(url)
        self.location = self.connection.location
        self.timeout = self.connection.timeout

    def _redis(self) -> Redis:
        return self.connection.client()

    def _failure(self, exc: Exception) -> StorageError:
        return StorageError(f"redis at {self.location} did not answer: {type(exc).__name__}: {exc}")

    async def add(self, key: str, ttl: float) -> bool:
        try:
            created = await self._redis().set(PREFIX + key, b"1", nx=True, px=_milliseconds(ttl))
        except FAILURES as exc:
            raise self._failure(exc) from None
        return bool(created)

    async def put(self, key: str, ttl: float) -> None:
        try:
            await self._redis().set(PREFIX + key, b"1", px=_milliseconds(ttl))
        except FAILURES as exc:
            raise self._failure(exc) from None

    async def contains(self, key: str) -> bool:
        try:
            found = await self._redis().exists(PREFIX + key)
        except FAILURES as exc:
            raise self._failure(exc) from None
        return bool(found)

    async def close(self) -> None:
        await self.connection.close()

    def __repr__(self) -> str:
        return f"RedisStorage({self.location!r})"
