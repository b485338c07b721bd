"""Hot reload: the current policy, replaced whole when its files change.

Every ``interval`` the model and policy files are looked at (size, mtime, inode). A change is
loaded once it has stood still for one more interval, in a worker thread, and only swapped in if
the files did not change again while being read: a half-written file is never the policy. The
swap is one attribute assignment, so a request sees the old policy or the new one, never a mix.
A file that fails to load leaves the last good policy in place, is logged with its file and line,
and counts in :attr:`PolicyReloader.errors`; it is not retried until it changes again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from .engine import Engine, Policy, load_policy
from .errors import PolicyError

logger = logging.getLogger("dsguard.policy")

FileState = tuple[tuple[int, int, int, int] | None, ...]
OnReload = Callable[[Policy], Awaitable[None]]


def file_state(*paths: Path) -> FileState:
    """What tells a changed file apart: mtime, size, inode and device (``None`` if missing)."""
    states: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            states.append(None)
        else:
            states.append((stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev))
    return tuple(states)


class PolicyReloader:
    """Holds :attr:`policy`; :meth:`watch` keeps it in step with the files."""

    def __init__(self, model_path: str | Path, policy_path: str | Path, *, engine: Engine = "auto",
                 interval: float = 1.0) -> None:
        self.model_path = Path(model_path)
        self.policy_path = Path(policy_path)
        self.engine: Engine = engine
        self.interval = interval
        self._state = file_state(self.model_path, self.policy_path)
        self.policy: Policy = load_policy(self.model_path, self.policy_path, engine=engine)
        self.reloads = 0
        self.errors = 0
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        """A reload is under way (it will read the files as they are now)."""
        return self._lock.locked()

    async def reload(self, *, reason: str) -> bool:
        """Load the files now; True if a different policy was swapped in."""
        async with self._lock:
            before = file_state(self.model_path, self.policy_path)
            try:
                policy = await asyncio.to_thread(load_policy, self.model_path, self.policy_path, engine=self.engine)
            except PolicyError as exc:
                self.errors += 1
                logger.error("policy reload (%s) failed; the last good policy stays in force: %s", reason, exc)
                return False
            except Exception:
                self.errors += 1
                logger.exception("policy reload (%s) failed; the last good policy stays in force", reason)
                return False
            if file_state(self.model_path, self.policy_path) != before:
                logger.info("policy files changed while being read; loading them again later")
                return False
            if policy.digest == self.policy.digest:
                return False
            self.policy = policy
            self.reloads += 1
            logger.info("policy reloaded (%s): %s, %d rules, %s evaluation", reason, self.policy_path,
                        len(policy.rules), policy.engine)
            return True

    async def watch(self, on_reload: OnReload | None = None) -> None:
        """Poll the files until cancelled; ``on_reload`` runs after each change this process loaded."""
        pending: FileState | None = None
        while True:
            await asyncio.sleep(self.interval)
            state = file_state(self.model_path, self.policy_path)
            if state == self._state:
                pending = None
                continue
            if state != pending:
                pending = state  # changed since the last look: let it settle for one interval
                continue
            pending = None
            changed = await self.reload(reason="files changed")
            if file_state(self.model_path, self.policy_path) == state:
                self._state = state
            if changed and on_reload is not None:
                try:
                    await on_reload(self.policy)
                except Exception:
                    logger.exception("announcing the policy reload failed")
