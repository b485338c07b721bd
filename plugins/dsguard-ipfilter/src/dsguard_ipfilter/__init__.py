"""CIDR allow and deny lists on the client address, as a dsguard check.

::

    [plugins.ipfilter]
    allow = ["10.0.0.0/8", "2001:db8::/32"]   # optional: only these networks may call
    deny = ["10.66.0.0/16"]                   # optional: these never may; deny wins over allow

The address matched is ``ctx.client_ip``: the socket peer, or what ``[server] trusted_proxies``
report for it after the transport check. Headers are never read here, so a caller cannot pick
the address it is judged by. An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) is also judged
as the IPv4 address it carries. With an allow list, a client address that is missing or not an
IP (``Forwarded: for=unknown``) is denied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsguard.config import Stage
from dsguard.context import RequestContext
from dsguard.decision import Denial, Forbidden
from dsguard.plugins import PluginOptionError
from dsguard.types import Mode
from dsguard.units import IPNetwork, NetworkSet, parse_ip, parse_networks

__all__ = ["IPFilterCheck"]

OPTIONS = ("allow", "deny")
_CACHE_SIZE = 4096


class IPFilterCheck:
    """``IPFilterCheck({"allow": [...], "deny": [...]})``; the ``dsguard.checks`` entry point ``ipfilter``.

    Raises :class:`~dsguard.plugins.PluginOptionError` for an unknown option or a bad CIDR.
    """

    name = "ipfilter"
    stage: Stage = "pre-auth"
    mode: Mode | None = None

    def __init__(self, options: Mapping[str, Any]) -> None:
        for key in options:
            if key not in OPTIONS:
                raise PluginOptionError(key, f"unknown option {key!r}; expected one of {', '.join(OPTIONS)}")
        self.allow = NetworkSet(_networks(options, "allow"))
        self.deny = NetworkSet(_networks(options, "deny"))
        self._verdicts: dict[str | None, bool] = {}

    def check(self, ctx: RequestContext) -> Denial | None:
        address = ctx.client_ip
        allowed = self._verdicts.get(address)
        if allowed is None:
            allowed = self._judge(address)
            if len(self._verdicts) >= _CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[address] = allowed
        if allowed:
            return None
        return Forbidden("calls from your network address are not allowed", code="ip_denied")

    def _judge(self, address: str | None) -> bool:
        ip = parse_ip(address) if address is not None else None
        if ip is None:
            return not self.allow
        candidates = [str(ip)]
        if ip.version == 6 and ip.ipv4_mapped is not None:
            candidates.append(str(ip.ipv4_mapped))
        if any(c in self.deny for c in candidates):
            return False
        return not self.allow or any(c in self.allow for c in candidates)

    def __repr__(self) -> str:
        return f"IPFilterCheck(allow={len(self.allow.networks)} networks, deny={len(self.deny.networks)} networks)"


def _networks(options: Mapping[str, Any], key: str) -> tuple[IPNetwork, ...]:
    value = options.get(key, [])
    try:
        return parse_networks(value)
    except ValueError as exc:
        raise PluginOptionError(key, str(exc)) from None
