"""Storage backends: the same behaviour from memory:// and from a real redis-server, and Redis outages."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis.asyncio

from dsguard.storage import Storage, StorageError, open_storage
from dsguard.storage.redis import RedisStorage

from .conftest import RedisServer, run_redis_server


@pytest.fixture(params=["memory", "redis"])
def storage_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("redis_server"))


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server this test may stop and restart."""
    with run_redis_server() as server:
        yield server


def fresh_key() -> str:
    return f"test:{uuid.uuid4().hex}"


def with_storage(url: str, body: Callable[[Storage], Awaitable[None]]) -> None:
    async def main() -> None:
        storage = open_storage(url)
        try:
            await body(storage)
        finally:
            await storage.close()

    asyncio.run(main())


async def eventually_absent(storage: Storage, key: str, within: float = 10.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await storage.contains(key):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def test_add_is_true_for_a_first_use_and_false_for_a_repeat(storage_url: str) -> None:
    async def body(storage: Storage) -> None:
        key = fresh_key()
        assert await storage.add(key, 60) is True
        assert await storage.add(key, 60) is False

    with_storage(storage_url, body)


def test_add_accepts_a_key_again_once_it_expired(storage_url: str) -> None:
    async def body(storage: Storage) -> None:
        key = fresh_key()
        assert await storage.add(key, 0.2) is True
        assert await eventually_absent(storage, key)
        assert await storage.add(key, 60) is True

    with_storage(storage_url, body)


def test_contains_is_false_for_a_key_never_stored(storage_url: str) -> None:
    async def body(storage: Storage) -> None:
        assert await storage.contains(fresh_key()) is False

    with_storage(storage_url, body)


def test_put_stores_a_key_that_contains_then_finds(storage_url: str) -> None:
    async def body(storage: Storage) -> None:
        key = fresh_key()
        await storage.put(key, 60)
        assert await storage.contains(key) is True
        assert await storage.add(key, 60) is False

    with_storage(storage_url, body)


def test_put_replaces_a_longer_expiry_with_a_shorter_one(storage_url: str) -> None:
    async def body(storage: Storage) -> None:
        key = fresh_key()
        await storage.put(key, 3600)
        await storage.put(key, 0.2)
        assert await eventually_absent(storage, key)

    with_storage(storage_url, body)


def test_put_extends_the_expiry_of_a_key_added_earlier(storage_url: str) -> None:
    async def body(storage: Storage) -> None:
        key = fresh_key()
        await storage.add(key, 0.2)
        await storage.put(key, 3600)
        await asyncio.sleep(0.4)
        assert await storage.contains(key) is True

    with_storage(storage_url, body)


def test_two_replicas_share_keys_through_redis(redis_server: str) -> None:
    async def main() -> None:
        first, second = RedisStorage(redis_server), RedisStorage(redis_server)
        key = fresh_key()
        try:
            assert await first.add(key, 60) is True
            assert await second.add(key, 60) is False
            await second.put(f"{key}:put", 60)
            assert await first.contains(f"{key}:put") is True
        finally:
            await first.close()
            await second.close()

    asyncio.run(main())


def test_redis_keys_live_under_the_dsguard_prefix(redis_server: str) -> None:
    async def main() -> None:
        storage = RedisStorage(redis_server)
        client = redis.asyncio.Redis.from_url(redis_server)
        key = fresh_key()
        try:
            await storage.put(key, 60)
            assert await client.exists(f"dsguard:{key}") == 1
            assert 0 < await client.pttl(f"dsguard:{key}") <= 60_000
        finally:
            await storage.close()
            await client.aclose()

    asyncio.run(main())


def test_every_operation_raises_storage_error_while_redis_is_down(own_redis: RedisServer) -> None:
    async def main() -> None:
        storage = RedisStorage(own_redis.url)
        try:
            await storage.put(fresh_key(), 60)
            own_redis.stop()
            for operation in (storage.add(fresh_key(), 60), storage.put(fresh_key(), 60),
                              storage.contains(fresh_key())):
                with pytest.raises(StorageError) as caught:
                    await operation
                assert caught.value.__cause__ is None and caught.value.__suppress_context__
        finally:
            await storage.close()

    asyncio.run(main())


def test_storage_recovers_by_itself_after_a_failed_call_and_a_redis_restart(own_redis: RedisServer) -> None:
    async def main() -> None:
        storage = RedisStorage(own_redis.url)
        try:
            await storage.put(fresh_key(), 60)
            own_redis.stop()
            with pytest.raises(StorageError):
                await storage.contains(fresh_key())
            own_redis.start()
            key = fresh_key()
            assert await storage.add(key, 60) is True
            assert await storage.contains(key) is True
        finally:
            await storage.close()

    asyncio.run(main())


def test_pooled_connections_killed_by_a_redis_restart_are_replaced_without_an_error(
        own_redis: RedisServer) -> None:
    async def main() -> None:
        storage = RedisStorage(own_redis.url)
        try:
            await storage.put(fresh_key(), 60)
            own_redis.stop()
            own_redis.start()
            assert await storage.add(fresh_key(), 60) is True
        finally:
            await storage.close()

    asyncio.run(main())


def test_a_redis_that_never_answers_fails_within_the_url_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]

        async def main() -> None:
            storage = RedisStorage(f"redis://127.0.0.1:{port}/0?timeout=100ms")
            try:
                async with asyncio.timeout(3):  # redis-py's own default would wait 5 s
                    with pytest.raises(StorageError, match="did not answer"):
                        await storage.contains(fresh_key())
            finally:
                await storage.close()

        asyncio.run(main())


def test_storage_errors_do_not_reveal_the_redis_password() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]

    async def main() -> None:
        storage = RedisStorage(f"redis://dsguard:hunter2-secret@127.0.0.1:{port}/0")
        try:
            with pytest.raises(StorageError) as caught:
                await storage.add(fresh_key(), 60)
            assert "hunter2-secret" not in str(caught.value)
            assert f"127.0.0.1:{port}" in str(caught.value)
        finally:
            await storage.close()

    asyncio.run(main())


@pytest.mark.parametrize("timeout", ["0", "soon", "-1s", "5m"])
def test_an_invalid_url_timeout_is_refused(timeout: str) -> None:
    with pytest.raises(ValueError, match="timeout"):
        RedisStorage(f"redis://127.0.0.1:6379/0?timeout={timeout}")


def test_redis_storage_keeps_working_when_used_from_a_new_event_loop(redis_server: str) -> None:
    storage = RedisStorage(redis_server)
    key = fresh_key()
    assert asyncio.run(storage.add(key, 60)) is True
    assert asyncio.run(storage.add(key, 60)) is False
    asyncio.run(storage.close())
