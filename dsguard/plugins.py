"""Third-party checks, discovered through the ``dsguard.checks`` entry point group.

A plugin package declares an entry point whose object is a *factory*::

    [project.entry-points."dsguard.checks"]
    ipfilter = "dsguard_ipfilter:IPFilterCheck"

and is turned on by a table of the same name in ``dsguard.toml``::

    [plugins.ipfilter]
    stage = "pre-auth"          # optional: where it runs (default: the check's own ``stage``)
    mode = "report"             # optional: report-only for this check
    deny = ["203.0.113.0/24"]   # everything else is the plugin's own options

The factory is called as ``factory(options)`` - or ``factory(options, config=config)`` when it
accepts a ``config`` keyword - with the table minus ``enabled``/``stage``/``mode``, and returns
an object following :class:`dsguard.checks.Check`. Raise :class:`PluginOptionError` (or
``ValueError``) for a bad option: dsguard reports it with the file, line and key.
"""

from __future__ import annotations

import inspect
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .checks.base import Check, stage_rank
from .config import Config, PluginConfig
from .errors import ConfigError

ENTRY_POINT_GROUP = "dsguard.checks"


class PluginOptionError(ValueError):
    """A plugin option is wrong; ``key`` names it inside the plugin's table."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def installed_plugins() -> dict[str, EntryPoint]:
    """Entry points of the ``dsguard.checks`` group, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_plugin(plugin: PluginConfig, config: Config) -> Check:
    """Build the check of one ``[plugins.NAME]`` table; raises :class:`ConfigError`."""
    table = f"[plugins.{plugin.name}]"

    def fail(message: str, key: str | None = None) -> ConfigError:
        line = config.line_of("plugins", plugin.name, key) if key else plugin.line
        return ConfigError(message, file=config.source, line=line, key=f"{table} {key}" if key else table)

    found = installed_plugins()
    entry = found.get(plugin.name)
    if entry is None:
        names = ", ".join(sorted(found)) or "none"
        raise fail(f"no installed plugin provides the check {plugin.name!r} "
                   f"(entry point group {ENTRY_POINT_GROUP}; installed: {names})")
    try:
        factory = entry.load()
    except Exception as exc:
        raise fail(f"plugin {entry.value} failed to import: {type(exc).__name__}: {exc}") from exc
    try:
        check: Check
        if _accepts_config(factory):
            check = factory(dict(plugin.options), config=config)
        else:
            check = factory(dict(plugin.options))
    except PluginOptionError as exc:
        raise fail(exc.message, exc.key) from None
    except ValueError as exc:
        raise fail(f"invalid options: {exc}") from None
    except Exception as exc:
        raise fail(f"plugin {entry.value} failed to build its check: {type(exc).__name__}: {exc}") from exc
    if not callable(getattr(check, "check", None)) or not isinstance(getattr(check, "name", None), str):
        raise fail(f"plugin {entry.value} did not return a check (needs a name and a check(ctx) method)")
    if plugin.stage is not None or plugin.mode is not None:
        check = Placed(check, plugin.stage, plugin.mode)
    try:
        stage_rank(getattr(check, "stage", ""))
    except ValueError as exc:
        raise fail(f"plugin {entry.value}: {exc}") from None
    return check


class Placed:
    """A plugin's check with the ``stage``/``mode`` its table sets, leaving the plugin's object untouched."""

    def __init__(self, inner: Check, stage: str | None, mode: str | None) -> None:
        self.inner = inner
        self.name = inner.name
        self.stage = stage or inner.stage
        self.mode = mode or getattr(inner, "mode", None)
        self.needs_body = getattr(inner, "needs_body", False)
        self.check = inner.check
        for hook in ("startup", "shutdown"):
            if hasattr(inner, hook):
                setattr(self, hook, getattr(inner, hook))


def _accepts_config(factory: Any) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "config" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
