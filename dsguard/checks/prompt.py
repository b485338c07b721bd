"""Prompt guard (``[prompt_guard]``): prompt injection, jailbreaks and PII in LLM request bodies.

Reads the prompt texts (:mod:`dsguard.promptguard.messages`: message contents, every content
part's text, tool descriptions, tool-call arguments) of an OpenAI-style body, of any Content-Type
but form and multipart as long as it parses as JSON, as applications parse it whatever its
declared type; never the rest of the request, which is the WAF's: a prompt may legitimately
contain SQL or HTML. Prompt text longer than ``max_scan_chars`` is refused (413
``prompt_too_long_to_scan``) unless ``long_prompt_action = "scan_ends"``. Two detectors, each
with its action (``action``, overridden by ``injection_action`` / ``pii_action``):

- injection: the heuristics of :mod:`dsguard.promptguard.injection` on every text whose role
  is not in ``injection_trusted_roles`` (none by default), then the optional ONNX classifier on
  the same texts; block (403 ``prompt_injection``) or flag;
- PII and secrets (:mod:`dsguard.promptguard.pii`) in every message: block (403
  ``pii_detected``), flag, or redact (the app receives the body with each finding replaced by
  ``[REDACTED:<kind>]``).

Findings are recorded in ``ctx.attributes["prompt_guard"]`` (kinds, scores and rule names, never
the text). With ``redact_responses`` the app's answer to an LLM call is redacted too, streamed or
not (:mod:`dsguard.promptguard.stream`). Denial messages name the categories found, never the
prompt. In report mode nothing is rewritten.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

from ..config import Config, PromptGuardConfig
from ..context import RequestContext
from ..decision import Denial, Forbidden, PayloadTooLarge, UnsupportedMediaType
from ..errors import ConfigError
from ..promptguard.classifier import ClassifierError, InjectionClassifier
from ..promptguard.injection import CATEGORY_NAMES, InjectionDetector, Verdict
from ..promptguard.messages import Path, Segment, is_llm_body, parse_body, segments, with_texts
from ..promptguard.pii import CATEGORIES, Match, PIIScanner
from ..promptguard.stream import ResponseRedactor
from ..services import Services
from .base import Check
from .hygiene import undecoded_coding

logger = logging.getLogger("dsguard.prompt")
Outcome = Denial | None | Awaitable[Denial | None]


def _windows(text: str, limit: int) -> list[tuple[int, str]]:
    """``(offset, piece)``: the whole text, or its start and end when it is longer than ``limit``."""
    if len(text) <= limit:
        return [(0, text)]
    half = limit // 2
    return [(0, text[:half]), (len(text) - half, text[-half:])]


class PromptGuardCheck:
    name = "prompt_guard"
    stage = "content"
    needs_body = True

    def __init__(self, config: PromptGuardConfig, *, classifier: InjectionClassifier | None = None,
                 report: bool = False) -> None:
        self.mode = config.mode
        self.injection_action = config.injection_action or ("flag" if config.action == "flag" else "block")
        self.pii_action = config.pii_action or config.action
        self.detector = InjectionDetector(config.injection_threshold) if self.injection_action != "off" else None
        self.classifier = classifier if self.injection_action != "off" else None
        self.classifier_threshold = config.classifier_threshold
        self.scanner = PIIScanner(config.pii_categories or CATEGORIES)
        self.trusted_roles = frozenset(role.lower() for role in config.injection_trusted_roles)
        self.max_scan_chars = config.max_scan_chars
        self.block_long = config.long_prompt_action == "block"
        self.rewrites = not report
        self.redact_responses = config.redact_responses and not report
        self.response_window = config.response_window

    def check(self, ctx: RequestContext) -> Outcome:
        coding = undecoded_coding(ctx)
        if coding is not None:
            return UnsupportedMediaType(f"the prompt guard cannot read a body with Content-Encoding {coding}; send "
                                        "it unencoded", code="prompt_encoded_body",
                                        headers=[("Accept-Encoding", "identity")])
        body = self._body(ctx)
        if not is_llm_body(body):
            return None
        if self.redact_responses:
            ctx.filter_response(ResponseRedactor(self.scanner, window=self.response_window))
        found = segments(body)
        if not found:
            return None
        if self.block_long and sum(len(s.text) for s in found) > self.max_scan_chars:
            return PayloadTooLarge(f"the prompt is longer than the {self.max_scan_chars} characters the prompt "
                                   "guard scans", code="prompt_too_long_to_scan")
        pieces = self._pieces(found)
        record: dict[str, Any] = {}
        untrusted = [text for segment, windows in pieces if segment.role not in self.trusted_roles
                     for _, text in windows]
        if self.detector is not None and untrusted:
            verdict = max((self.detector.analyze(text) for text in untrusted), key=lambda v: v.score)
            if self.detector.is_attack(verdict):
                record["injection"] = _injection_record(verdict)
                if self.injection_action == "block":
                    return self._deny_injection(ctx, record, verdict.categories)
        if self.classifier is not None and untrusted and "injection" not in record:
            return self._classify(ctx, body, pieces, untrusted, record)
        return self._pii(ctx, body, pieces, record)

    async def _classify(self, ctx: RequestContext, body: Any, pieces: list[tuple[Segment, list[tuple[int, str]]]],
                        texts: list[str], record: dict[str, Any]) -> Denial | None:
        assert self.classifier is not None
        probability = await asyncio.to_thread(self.classifier.probability, texts)
        if probability >= self.classifier_threshold:
            record["injection"] = {"score": round(probability, 3), "categories": ["classifier"],
                                   "reasons": ["classifier"]}
            if self.injection_action == "block":
                return self._deny_injection(ctx, record, ("classifier",))
        return self._pii(ctx, body, pieces, record)

    def _pii(self, ctx: RequestContext, body: Any, pieces: list[tuple[Segment, list[tuple[int, str]]]],
             record: dict[str, Any]) -> Denial | None:
        if self.pii_action != "off":
            by_path = self._find_pii(pieces)
            if by_path:
                kinds = sorted({m.category for _, matches in by_path.values() for m in matches})
                count = sum(len(matches) for _, matches in by_path.values())
                record["pii"] = {"categories": kinds, "count": count, "action": self.pii_action}
                if self.pii_action == "block":
                    _record(ctx, record)
                    return Forbidden(f"the prompt contains personal data or secrets ({', '.join(kinds)}); "
                                     "remove them and try again", code="pii_detected")
                if self.pii_action == "redact":
                    self._redact(ctx, body, by_path, record)
        if record:
            _record(ctx, record)
        return None

    def _find_pii(self, pieces: list[tuple[Segment, list[tuple[int, str]]]]) -> dict[Path, tuple[str, list[Match]]]:
        by_path = {}
        for segment, windows in pieces:
            matches = [Match(m.category, m.start + offset, m.end + offset)
                       for offset, text in windows for m in self.scanner.find(text)]
            if matches:
                by_path[segment.path] = (segment.text, matches)
        return by_path

    def _redact(self, ctx: RequestContext, body: Any, by_path: dict[Path, tuple[str, list[Match]]],
                record: dict[str, Any]) -> None:
        if not self.rewrites:
            record["pii"]["action"] = "flag"
            return
        texts = {path: self.scanner.redact(text, matches) for path, (text, matches) in by_path.items()}
        redacted = with_texts(body, texts)
        ctx.json = redacted
        ctx.replace_body(json.dumps(redacted, ensure_ascii=False, separators=(",", ":")).encode())
        logger.info("redacted %s in the prompt of request %s", ", ".join(record["pii"]["categories"]),
                    ctx.request_id)

    def _pieces(self, found: list[Segment]) -> list[tuple[Segment, list[tuple[int, str]]]]:
        total = sum(len(s.text) for s in found)
        if total <= self.max_scan_chars:
            return [(s, [(0, s.text)]) for s in found]
        return [(s, _windows(s.text, max(256, self.max_scan_chars * len(s.text) // total))) for s in found]

    def _deny_injection(self, ctx: RequestContext, record: dict[str, Any], categories: tuple[str, ...]) -> Denial:
        _record(ctx, record)
        names = ", ".join(CATEGORY_NAMES.get(c, c) for c in categories)
        return Forbidden(f"the prompt was refused as a prompt-injection attempt ({names})", code="prompt_injection")

    @staticmethod
    def _body(ctx: RequestContext) -> Any:
        body = ctx.json
        return parse_body(ctx.body, ctx.media_type) if body is None else body


def _injection_record(verdict: Verdict) -> dict[str, Any]:
    return {"score": verdict.score, "categories": list(verdict.categories), "reasons": verdict.reasons}


def _record(ctx: RequestContext, record: dict[str, Any]) -> None:
    ctx.attributes["prompt_guard"] = record
    logger.info("prompt guard findings for request %s: %s", ctx.request_id,
                {k: v.get("categories") for k, v in record.items()})


def _config_error(config: Config, key: str, message: str) -> ConfigError:
    return config.error(message, "prompt_guard", key)


def build(config: Config, services: Services) -> list[Check]:
    """The prompt guard of ``[prompt_guard]``, its classifier loaded (errors name the key)."""
    section = config.prompt_guard
    if section is None:
        return []
    unknown = sorted(set(section.pii_categories) - set(CATEGORIES))
    if unknown:
        raise _config_error(config, "pii_categories", f"unknown kind {unknown[0]!r} (known: {', '.join(CATEGORIES)})")
    if section.response_window < 64:
        raise _config_error(config, "response_window", "must be at least 64 characters")
    if section.max_scan_chars < 1024:
        raise _config_error(config, "max_scan_chars", "must be at least 1024 characters")
    if section.injection_threshold <= 0:
        raise _config_error(config, "injection_threshold", "must be above 0")
    if not 0 < section.classifier_threshold <= 1:
        raise _config_error(config, "classifier_threshold", "must be a probability above 0 and at most 1")
    classifier = None
    if section.classifier is not None:
        try:
            classifier = InjectionClassifier(section.classifier, label=section.classifier_label,
                                             max_tokens=section.classifier_max_tokens)
        except ClassifierError as exc:
            raise _config_error(config, "classifier", str(exc)) from None
    report = config.mode == "report" or section.mode == "report"
    return [PromptGuardCheck(section, classifier=classifier, report=report)]
