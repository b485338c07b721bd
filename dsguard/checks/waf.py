"""The web application firewall check (``[waf]``), at the content stage.

It inspects the path, query arguments, headers, cookies and form/JSON fields, never the prompt
texts the prompt guard scans (see :mod:`dsguard.waf.targets`), with dsguard's built-in rules or a loaded
OWASP CRS directory (``crs_path``). A request whose anomaly score reaches ``anomaly_threshold``
is refused with 403 ``waf_blocked``; the message names the attack families, never the payload.
A body the WAF cannot inspect whole is refused: larger than ``max_body`` (413
``waf_body_too_large``), a JSON body of more than ``max_fields`` values (413 ``waf_too_many_fields``),
or a body still content-coded (415 ``waf_encoded_body``; ``[hygiene] content_encodings`` decodes gzip
and deflate before the WAF reads them).
``ctx.attributes["waf"]`` records the matched rule ids, families and score for the audit log,
in report mode too (where nothing is blocked).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import Config, WAFConfig
from ..context import RequestContext
from ..decision import Denial, Forbidden, PayloadTooLarge, UnsupportedMediaType
from ..services import Services
from ..waf import RuleSet, SecLangError, builtin_rule_set, crs_rule_set, resolve_crs_path
from ..waf.engine import HitFilter
from ..waf.model import FAMILIES, Hit, Selector
from ..waf.seclang import COLLECTIONS
from ..waf.targets import TooManyFields, collect
from .base import Check
from .hygiene import undecoded_coding

logger = logging.getLogger("dsguard.waf")

_ARGS_FAMILY = {"ARGS": ("ARGS", "ARGS_GET", "ARGS_POST")}


def parse_target(text: str) -> tuple[Selector, ...]:
    """``"ARGS:callback"`` as selectors (``ARGS`` covers ``ARGS_GET`` and ``ARGS_POST`` too)."""
    name, _, key = text.partition(":")
    name = name.strip().upper()
    if name not in COLLECTIONS:
        raise ValueError(f"unknown variable {name!r} (known: {', '.join(sorted(COLLECTIONS))})")
    lowered = key.strip().lower() or None
    return tuple(Selector(collection, key=lowered) for collection in _ARGS_FAMILY.get(name, (name,)))


class Exclusion:
    __slots__ = ("families", "prefix", "rule_ids", "targets")

    def __init__(self, config: WAFConfig.Exclusion) -> None:
        self.prefix = config.path_prefix
        self.rule_ids = frozenset(int(r) for r in config.rules if r.isdigit())
        self.families = frozenset(r for r in config.rules if not r.isdigit())
        unknown = sorted(self.families - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown rule family {unknown[0]!r} (rules are ids or {', '.join(FAMILIES)})")
        self.targets = tuple(s for target in config.targets for s in parse_target(target))

    def covers(self, hit: Hit) -> bool:
        if (self.rule_ids or self.families) and hit.rule not in self.rule_ids and hit.family not in self.families:
            return False
        return not self.targets or any(s.selects(hit.collection, hit.key) for s in self.targets)


class WAFCheck:
    name = "waf"
    stage = "content"
    needs_body = True

    def __init__(self, config: WAFConfig, rule_set: RuleSet) -> None:
        self.mode = config.mode
        self.config = config
        self.rule_set = rule_set
        self.engine = rule_set.engine(config.paranoia, config.anomaly_threshold)
        self.exclusions = [Exclusion(e) for e in config.exclusions]

    def _filter(self, path: str) -> HitFilter | None:
        active = [e for e in self.exclusions if path.startswith(e.prefix)]
        if not active:
            return None
        return lambda hit: not any(e.covers(hit) for e in active)

    def check(self, ctx: RequestContext) -> Denial | None:
        body = ctx.body
        coding = undecoded_coding(ctx)
        if coding is not None:
            return UnsupportedMediaType(f"the WAF cannot inspect a body with Content-Encoding {coding}; send it "
                                        "unencoded", code="waf_encoded_body",
                                        headers=[("Accept-Encoding", "identity")])
        if body is not None and len(body) > self.config.max_body:
            return PayloadTooLarge(f"request body is larger than the {self.config.max_body} bytes the WAF inspects",
                                   code="waf_body_too_large")
        try:
            collections = collect(ctx.method, ctx.path, ctx.raw_path, ctx.query_string, ctx.headers.raw, body,
                                  ctx.media_type, ctx.json, inspect_headers=self.config.inspect_headers,
                                  inspect_json=self.config.inspect_json, http_version=ctx.http_version,
                                  wanted=self.engine.collections, max_fields=self.config.max_fields)
        except TooManyFields as exc:
            return PayloadTooLarge(f"request body has more than the {exc.limit} JSON values the WAF inspects",
                                   code="waf_too_many_fields")
        verdict = self.engine.inspect(collections, self._filter(ctx.path))
        if not verdict.hits:
            return None
        ctx.attributes["waf"] = {
            "score": verdict.score,
            "threshold": verdict.threshold,
            "rules": [hit.rule for hit in verdict.hits],
            "families": verdict.families,
            "blocked": verdict.blocked,
        }
        if not verdict.blocked:
            return None
        return Forbidden(f"request blocked by the web application firewall: {verdict.describe()}",
                         code="waf_blocked")


def _rule_set(config: Config) -> RuleSet:
    waf = config.waf
    assert waf is not None
    crs = resolve_crs_path(waf.crs_path)
    if waf.crs_path == "auto" and crs is None:
        logger.warning("[waf] crs_path = \"auto\": no CRS at /usr/share/modsecurity-crs; using built-in rules")
    if crs is None:
        return builtin_rule_set()
    if not crs.is_absolute() and config.source:
        crs = Path(config.source).parent / crs
    try:
        rule_set = crs_rule_set(crs)
    except SecLangError as exc:
        raise config.error(str(exc), "waf", "crs_path") from None
    if rule_set.report is not None:
        logger.info("[waf] %s", rule_set.report.summary())
    return rule_set


def build(config: Config, services: Services) -> list[Check]:
    """The WAF check of ``[waf]``."""
    assert config.waf is not None
    if config.waf.max_fields < 1:
        raise config.error("must be at least 1", "waf", "max_fields")
    rule_set = _rule_set(config)
    try:
        check = WAFCheck(config.waf, rule_set)
    except ValueError as exc:
        raise config.error(str(exc), "waf", "exclusions") from None
    return [check]
