"""dsguard: a zero-trust guard for LLM inference endpoints, embedded as one middleware."""

from __future__ import annotations

from .adapters.asgi import GuardMiddleware
from .adapters.wsgi import GuardWSGIMiddleware
from .config import Config, load_config
from .context import Identity, RequestContext, ResponseInfo
from .decision import (
    BadRequest,
    CheckFailed,
    Denial,
    Forbidden,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
)
from .errors import ConfigError, DSGuardError
from .guard import Guard
from .plugins import PluginOptionError

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "CheckFailed",
    "Config",
    "ConfigError",
    "DSGuardError",
    "Denial",
    "Forbidden",
    "Guard",
    "GuardMiddleware",
    "GuardWSGIMiddleware",
    "Identity",
    "Overloaded",
    "PayloadTooLarge",
    "PluginOptionError",
    "RateLimited",
    "RequestContext",
    "ResponseInfo",
    "Unauthenticated",
    "__version__",
    "load_config",
]
