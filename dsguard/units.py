"""Value types used in configuration: durations, sizes, CIDR lists and secret references."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_duration(value: object) -> float:
    """``"15m"``, ``"5s"``, ``"250ms"``, ``"1h30m"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "5s" or "15m", got {value!r}')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, got {value!r}")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ValueError(f'expected a duration like "5s" or "15m", got {value!r}')


def parse_size(value: object) -> int:
    """``"1MiB"``, ``"512KiB"``, ``"10MB"`` or a number of bytes -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match:
            unit = (match.group(2) or "b").lower()
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f'expected a size like "1MiB" or "64KiB", got {value!r}')


def parse_networks(value: object) -> tuple[IPNetwork, ...]:
    """A list of CIDRs (``"10.0.0.0/8"``) or addresses (``"127.0.0.1"``)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f'expected a list of CIDRs like ["127.0.0.1/32"], got {value!r}')
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network or address") from None
    return tuple(networks)


def parse_ip(text: str) -> IPAddress | None:
    """An address from a header or a socket, tolerating brackets and an IPv6 zone; None if invalid."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


class NetworkSet:
    """Membership test of an address in a set of networks, cached per address string."""

    __slots__ = ("_cache", "networks")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, str):
            return False
        hit = self._cache.get(address)
        if hit is None:
            ip = parse_ip(address)
            if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            hit = ip is not None and any(ip in net for net in self.networks if net.version == ip.version)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[address] = hit
        return hit


class Secret:
    """A reference to a secret: ``env:NAME``, ``file:PATH`` or (discouraged) a literal.

    The value is read when :meth:`reveal` is called, never at load time, so a configuration
    can be validated on a machine that does not hold the secrets. ``repr`` never shows it.
    """

    __slots__ = ("_base", "reference")

    def __init__(self, reference: str, base: Path | None = None) -> None:
        self.reference = reference
        self._base = base

    @property
    def source(self) -> str:
        if self.reference.startswith(("env:", "file:")):
            return self.reference
        return "literal"

    def reveal(self) -> str:
        """The secret's value; raises ``LookupError`` naming the variable or file if unavailable."""
        ref = self.reference
        if ref.startswith("env:"):
            name = ref[4:]
            try:
                return os.environ[name]
            except KeyError:
                raise LookupError(f"environment variable {name} is not set") from None
        if ref.startswith("file:"):
            path = Path(ref[5:])
            if not path.is_absolute() and self._base is not None:
                path = self._base / path
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise LookupError(f"cannot read secret file {path}: {exc.strerror}") from None
        return ref

    def __repr__(self) -> str:
        return f"Secret({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.reference == self.reference

    def __hash__(self) -> int:
        return hash(self.reference)
