"""Protocol checks: requests no conforming client sends, and probes aimed at the server, not the app."""

from __future__ import annotations

from ..model import Operator, Rule, Selector
from .common import DECODED, INPUTS, rule

_CONTENT_TYPE = (Selector("REQUEST_HEADERS", key="content-type"),)
# The charsets a WAF reads as the server does; any other (UTF-7, UTF-16, US-ASCII's 7-bit folding) hides markup.
_DECODED_CHARSETS = r"utf-?8|iso-8859-15?|windows-1252"
_HEADER_INJECTED = (r"location|refresh|(?:set-)?cookie2?|content-(?:type|length|disposition|security-policy)|"
                    r"x-forwarded-(?:for|host|server|proto)|host|via|remote-ip|remote-addr|originating-ip|"
                    r"access-control-allow-[a-z-]+|transfer-encoding")
_OVERFLOW_NUMBERS = r"-?0*2147483648|-0*2147483649|0*429496729[56]|2\.225073858507201\d*e-0*308|1e309"


def _chained(rule_id: int, message: str, head: Rule, *links: Rule) -> Rule:
    chain: Rule | None = None
    for link in reversed(links):
        chain = Rule(rule_id, head.family, head.paranoia, head.score, link.selectors, link.operator,
                     link.transforms, "", chain)
    return Rule(rule_id, head.family, head.paranoia, head.score, head.selectors, head.operator, head.transforms,
                message, chain)


def _link(selectors: tuple[Selector, ...], pattern: str, *, negated: bool = False) -> Rule:
    return Rule(0, "protocol", 1, 5, selectors, Operator("rx", negated=negated, pattern=pattern))


def protocol_rules() -> list[Rule]:
    get_with_body = _chained(
        100120, "GET or HEAD request with a body",
        _link((Selector("REQUEST_METHOD"),), r"^(?:GET|HEAD)$"),
        _link((Selector("REQUEST_HEADERS", key="content-length"),), r"^\s*0*[1-9]"))
    undecoded_charset = _chained(
        100130, "request body in a charset the firewall does not decode",
        _link(_CONTENT_TYPE, r"(?i)charset\s*="),
        _link((Selector("MATCHED_VAR"),), r"(?i)charset\s*=\s*[\"']?(?:" + _DECODED_CHARSETS + r")[\"']?\s*(?:;|$)",
              negated=True))
    return [
        rule(100100, "protocol", r"[<>(){}\[\]\\`]", (), targets=(Selector("REQUEST_HEADERS", key="accept"),),
             message="characters a media range never contains in Accept"),
        rule(100110, "protocol", r"[\r\n]", (), targets=(Selector("ARGS_NAMES"),),
             message="line break in an argument name"),
        get_with_body,
        undecoded_charset,
        rule(100135, "protocol", r"(?i)charset.*charset", (), targets=_CONTENT_TYPE,
             message="two charsets in Content-Type"),
        rule(100140, "protocol", r"[\r\n]\s*(?:" + _HEADER_INJECTED + r")\s*:|[\r\n]\s*http/\d", DECODED,
             message="header or status line injected after a line break"),
        rule(100150, "protocol", r"\x00", (), targets=(*INPUTS[:6], Selector("REQUEST_HEADERS"),
                                                      Selector("REQUEST_FILENAME")),
             message="NUL character in a request value"),
        rule(100160, "other", r"^\s*(?:" + _OVERFLOW_NUMBERS + r")\s*$", DECODED,
             message="number at a 32-bit boundary or a float parser's denial-of-service value"),
    ]
