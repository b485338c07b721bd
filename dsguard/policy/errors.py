"""What goes wrong with a policy: files that cannot be loaded, and requests it cannot decide."""

from __future__ import annotations

from ..errors import ConfigError, DSGuardError


class PolicyError(ConfigError):
    """A model or policy file that cannot be loaded; ``str()`` reads ``policy.csv:12: message``."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        super().__init__(message, file=file, line=line)


class PolicyEvaluationError(DSGuardError):
    """The matcher failed on a request (where casbin's ``enforce`` raises too): the call is refused."""
