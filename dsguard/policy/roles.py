"""Role inheritance (``g`` rules) as casbin's default role managers answer it, precomputed.

casbin's ``RoleManager.has_link(a, b)`` is a breadth-first walk from ``a`` that gives up after
``max_hierarchy_level`` (10) levels: ``b`` is reached when it is at most 9 links above ``a``, or
is ``a`` itself. With a domain role definition (``g = _, _, _``) each domain has its own links
(``DomainManager``). Here each node's distances are computed once and kept, so a check is a
dict lookup.

Roles a verified identity carries (token claims) count as extra ``g`` links from the request's
subject, in the request's domain, for that one request: exactly as if ``g, subject, role[, domain]``
lines had been added to the policy file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

MAX_HIERARCHY_LEVEL = 10
"""casbin's default (``CoreEnforcer.init_rm_map``): roles more than 9 links up are not inherited."""
MAX_DEPTH = MAX_HIERARCHY_LEVEL - 1

_NO_DOMAIN: Any = object()


@dataclasses.dataclass(frozen=True, slots=True)
class RoleContext:
    """The request's subject, its domain, and the roles its identity carries."""

    subject: Any
    domain: str
    roles: frozenset[str]


class RoleGraph:
    """The links of one role definition (``g``, ``g2`` ...), by domain (``""`` without domains)."""

    def __init__(self, name: str, links: Iterable[Sequence[str]], *, domains: bool, primary: bool) -> None:
        self.name = name
        self.domains = domains
        self.primary = primary
        self._parents: dict[str, dict[Hashable, list[Hashable]]] = {}
        for link in links:
            domain = link[2] if domains else ""
            parents = self._parents.setdefault(domain, {}).setdefault(link[0], [])
            parents.append(link[1])
        self._distances_memo: dict[tuple[str, Hashable], dict[Hashable, int]] = {}
        self._reach_memo: dict[tuple[str, Hashable, int], frozenset[Hashable]] = {}

    def _domain(self, domain: Any) -> str:
        return "" if not self.domains or domain is _NO_DOMAIN else str(domain)

    def distances(self, node: Hashable, domain: str) -> dict[Hashable, int]:
        """Links from ``node`` up to each role within reach (``node`` itself at 0)."""
        key = (domain, node)
        found = self._distances_memo.get(key)
        if found is not None:
            return found
        parents = self._parents.get(domain, {})
        found = {node: 0}
        if node not in parents:
            return found
        frontier = [node]
        for depth in range(1, MAX_DEPTH + 1):
            upper = []
            for current in frontier:
                for parent in parents.get(current, ()):
                    if parent not in found:
                        found[parent] = depth
                        upper.append(parent)
            if not upper:
                break
            frontier = upper
        self._distances_memo[key] = found
        return found

    def reach(self, node: Hashable, domain: str, depth: int = MAX_DEPTH) -> frozenset[Hashable]:
        """``node`` and every role at most ``depth`` links above it."""
        parents = self._parents.get(domain)
        if parents is None or node not in parents:
            return frozenset((node,))
        key = (domain, node, depth)
        found = self._reach_memo.get(key)
        if found is None:
            distances = self.distances(node, domain)
            found = frozenset(n for n, d in distances.items() if d <= depth)
            self._reach_memo[key] = found
        return found

    def _hops_to_subject(self, x: RoleContext | None, node: Hashable, domain: str) -> int | None:
        """Links from ``node`` to the subject whose identity roles apply here, if within reach."""
        if x is None or not x.roles or not self.primary or (self.domains and domain != x.domain):
            return None
        hops = self.distances(node, domain).get(x.subject)
        return hops if hops is not None and hops < MAX_DEPTH else None

    def has_link(self, x: RoleContext | None, user: Any, role: Any, domain: Any = _NO_DOMAIN) -> bool:
        """casbin's ``g(user, role[, domain])`` for this request."""
        if user == role:
            return True
        domain = self._domain(domain)
        if role in self.distances(user, domain):
            return True
        hops = self._hops_to_subject(x, user, domain)
        if hops is None or x is None:
            return False
        budget = MAX_DEPTH - 1 - hops
        for extra in x.roles:
            distance = self.distances(extra, domain).get(role)
            if distance is not None and distance <= budget:
                return True
        return False

    def reach_for(self, x: RoleContext | None, user: Any, domain: Any = _NO_DOMAIN) -> frozenset[Hashable]:
        """Every ``role`` for which ``g(user, role[, domain])`` holds in this request."""
        domain = self._domain(domain)
        found = self.reach(user, domain)
        hops = self._hops_to_subject(x, user, domain)
        if hops is None or x is None:
            return found
        budget = MAX_DEPTH - 1 - hops
        extended = set(found)
        for extra in x.roles:
            extended |= self.reach(extra, domain, budget)
        return frozenset(extended)

    def roles_for(self, user: str, domain: str | None = None) -> list[str]:
        """The roles ``user`` inherits from the policy file (not itself), sorted."""
        reach = self.reach(user, self._domain(_NO_DOMAIN if domain is None else domain))
        return sorted(str(role) for role in reach if role != user)

    @property
    def domain_names(self) -> list[str]:
        return sorted(self._parents)
