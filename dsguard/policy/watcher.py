"""Policy-change announcements between replicas, over Redis pub/sub.

A replica that reloaded its policy publishes ``{"origin": ..., "digest": ...}`` on the channel;
the others reload from their own files when the digest differs from theirs. Announcements are
hints, never policy: a replica only ever loads its own files, so a forged message can at most
cause a reload. A Redis outage is logged and retried with backoff; decisions go on meanwhile.

:class:`PolicyChannel` serves the guard (asyncio). :class:`RedisWatcher` is the same channel
behind casbin's ``Watcher`` interface, for plain casbin enforcers that should follow along.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger("dsguard.policy")

CONNECT_TIMEOUT = 2.0
MAX_BACKOFF = 5.0
_MAX_MESSAGE = 1024

OnAnnouncement = Callable[[str], Awaitable[None]]


def redis_url(url: str) -> str:
    """The storage URL without dsguard's own ``timeout`` parameter."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "timeout"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def encode(origin: str, digest: str) -> str:
    return json.dumps({"origin": origin, "digest": digest}, separators=(",", ":"))


def decode(data: Any) -> tuple[str, str] | None:
    """``(origin, digest)`` of an announcement, or None for anything else on the channel."""
    if isinstance(data, bytes):
        data = data[:_MAX_MESSAGE].decode("utf-8", "replace")
    try:
        message = json.loads(data)
    except (TypeError, ValueError):
        return None
    if not isinstance(message, dict):
        return None
    origin, digest = message.get("origin"), message.get("digest")
    if isinstance(origin, str) and isinstance(digest, str):
        return origin, digest
    return None


class PolicyChannel:
    """Publish this process's reloads; call back on the other processes' ones."""

    def __init__(self, url: str, channel: str) -> None:
        self.url = redis_url(url)
        self.channel = channel
        self.origin = secrets.token_hex(8)
        self._client: Redis | None = None
        self._task: asyncio.Task[None] | None = None

    def _redis(self) -> Redis:
        if self._client is None:
            self._client = Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT,
                                          socket_timeout=CONNECT_TIMEOUT)
        return self._client

    async def publish(self, digest: str) -> None:
        try:
            await self._redis().publish(self.channel, encode(self.origin, digest))
        except (RedisError, OSError) as exc:
            logger.warning("could not announce the policy reload on %s: %s", self.channel, exc)

    async def start(self, on_announcement: OnAnnouncement) -> None:
        """Subscribe and listen in the background; returns once the first subscription attempt is over."""
        first_attempt = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._listen(on_announcement, first_attempt))
        try:
            await asyncio.wait_for(asyncio.shield(first_attempt), CONNECT_TIMEOUT * 2)
        except TimeoutError:
            logger.warning("policy channel %s: Redis did not answer yet; still trying", self.channel)

    async def _listen(self, on_announcement: OnAnnouncement, first_attempt: asyncio.Future[None]) -> None:
        backoff = 0.1
        client = Redis.from_url(self.url, socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=15)
        try:
            while True:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(self.channel)
                    if not first_attempt.done():
                        first_attempt.set_result(None)
                    backoff = 0.1
                    async for message in pubsub.listen():
                        announcement = decode(message.get("data")) if message.get("type") == "message" else None
                        if announcement is not None and announcement[0] != self.origin:
                            await on_announcement(announcement[1])
                except (RedisError, OSError) as exc:
                    logger.warning("policy channel %s: %s; retrying in %.1fs", self.channel, exc, backoff)
                    if not first_attempt.done():
                        first_attempt.set_result(None)
                finally:
                    await _quietly(pubsub.aclose())  # type: ignore[no-untyped-call]
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            await _quietly(client.aclose())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await _quietly(client.aclose())


async def _quietly(closing: Awaitable[Any]) -> None:
    with contextlib.suppress(RedisError, OSError):
        await closing


class RedisWatcher:
    """casbin's ``Watcher`` over the same channel: ``enforcer.set_watcher(RedisWatcher(url))``.

    ``update()`` announces a change; the callback (given the message, or nothing if it takes no
    argument, like ``enforcer.load_policy``) runs in a listener thread when another process does.
    """

    def __init__(self, url: str, channel: str = "dsguard:policy", digest: str = "") -> None:
        self.channel = channel
        self.origin = secrets.token_hex(8)
        self.digest = digest
        self._client = redis.Redis.from_url(redis_url(url), socket_connect_timeout=CONNECT_TIMEOUT)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(self.channel)
        self._callback: Callable[..., Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dsguard-policy-watcher", daemon=True)
        self._thread.start()

    def set_update_callback(self, func: Callable[..., Any]) -> None:
        self._callback = func

    def update(self) -> bool:
        self._client.publish(self.channel, encode(self.origin, self.digest))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except (RedisError, OSError) as exc:
                logger.warning("policy watcher %s: %s", self.channel, exc)
                self._stop.wait(1.0)
                continue
            if not message or message.get("type") != "message":
                continue
            announcement = decode(message.get("data"))
            callback = self._callback
            if announcement is None or announcement[0] == self.origin or callback is None:
                continue
            try:
                takes_message = bool(inspect.signature(callback).parameters)
                callback(json.dumps({"digest": announcement[1]})) if takes_message else callback()
            except Exception:
                logger.exception("policy watcher callback failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()
        self._client.close()
