"""Bounded attribute values: whatever paths and methods callers send, the series stay few."""

from __future__ import annotations

from collections.abc import Iterable

OTHER_ROUTE = "other"
OTHER_METHOD = "_OTHER"  # the OpenTelemetry HTTP semantic conventions' value for an unknown method
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})


def method_name(method: str) -> str:
    return method if method in METHODS else OTHER_METHOD


class RouteNames:
    """The ``route`` of a path: a configured path, a configured ``prefix/*``, or ``"other"``."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, routes: Iterable[str]) -> None:
        routes = tuple(routes)
        for route in routes:
            if not route.startswith("/"):
                raise ValueError(f'expected paths starting with "/", got {route!r}')
        self.exact = frozenset(r for r in routes if not r.endswith("/*"))
        self.prefixes = tuple((r[:-1], r) for r in routes if r.endswith("/*"))

    def __call__(self, path: str) -> str:
        if path in self.exact:
            return path
        for prefix, name in self.prefixes:
            if path.startswith(prefix):
                return name
        return OTHER_ROUTE
