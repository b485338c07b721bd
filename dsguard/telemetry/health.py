"""Liveness and readiness: ``/healthz`` and ``/readyz``, answered before any check.

``/healthz`` says the process serves calls. ``/readyz`` runs every registered probe at once (the
checks started, the storage answers, the policy is loaded, the runner's model is loaded) and
answers 200 only if all pass within the timeout. Either way the body is ``{"status": "ok"}`` or
``{"status": "unavailable"}``: which probe failed and why goes to the log (once per change),
never to the caller.

A component registers its own probe: ``services.readiness.register("model", lambda: runner.loaded)``.
A probe returns (or awaits to) True when ready; False, an exception or the timeout means not ready.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..storage import Storage
from .endpoints import READ_METHODS, Answer, json_answer, method_not_allowed

logger = logging.getLogger("dsguard.health")

Probe = Callable[[], bool | Awaitable[bool]]
PING_KEY = "health:ping"
OK = {"status": "ok"}
UNAVAILABLE = {"status": "unavailable"}


class Readiness:
    """Named readiness probes, run together by ``/readyz``."""

    def __init__(self) -> None:
        self._probes: dict[str, Probe] = {}
        self._failing: set[str] = set()

    def register(self, name: str, probe: Probe) -> None:
        """Add ``probe`` under ``name``, replacing a probe of the same name."""
        self._probes[name] = probe

    def unregister(self, name: str) -> None:
        self._probes.pop(name, None)

    @property
    def names(self) -> list[str]:
        return list(self._probes)

    async def ready(self, timeout: float) -> bool:
        """Whether every probe passes, each given at most ``timeout`` seconds."""
        probes = list(self._probes.items())
        results = await asyncio.gather(*(self._passes(name, probe, timeout) for name, probe in probes))
        return all(results)

    async def _passes(self, name: str, probe: Probe, timeout: float) -> bool:
        reason = "reported not ready"
        try:
            async with asyncio.timeout(timeout):
                result = probe()
                if inspect.isawaitable(result):
                    result = await result
            passed = result is True
        except TimeoutError:
            passed, reason = False, f"did not answer within {timeout} s"
        except Exception as exc:
            passed, reason = False, f"failed: {type(exc).__name__}: {exc}"
        if passed and name in self._failing:
            self._failing.discard(name)
            logger.info("readiness probe %s passes again", name)
        elif not passed and name not in self._failing:
            self._failing.add(name)
            logger.warning("readiness probe %s %s", name, reason)
        return passed


def storage_probe(storage: Storage) -> Probe:
    """Ready while the storage answers a lookup (one round trip to Redis)."""

    async def storage_answers() -> bool:
        await storage.contains(PING_KEY)
        return True

    return storage_answers


def policy_probe(checks: Sequence[Any]) -> Probe:
    """Ready while every policy check holds a loaded policy."""

    def policy_loaded() -> bool:
        return all(getattr(check, "policy", None) is not None for check in checks)

    return policy_loaded


class Liveness:
    async def __call__(self, method: str, authorization: str | None) -> Answer:
        if method not in READ_METHODS:
            return method_not_allowed(method)
        return json_answer(method, 200, OK)


class ReadinessEndpoint:
    def __init__(self, readiness: Readiness, timeout: float) -> None:
        self.readiness = readiness
        self.timeout = timeout

    async def __call__(self, method: str, authorization: str | None) -> Answer:
        if method not in READ_METHODS:
            return method_not_allowed(method)
        if await self.readiness.ready(self.timeout):
            return json_answer(method, 200, OK)
        return json_answer(method, 503, UNAVAILABLE)
