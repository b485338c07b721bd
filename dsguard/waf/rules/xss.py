"""Cross-site scripting: active tags, event handlers, script URLs, script code and CSS expressions."""

from __future__ import annotations

from ..model import Rule
from .common import DECODED, MARKUP, MARKUP_TIGHT, SCRIPT, UNESCAPED, WITH_PATH, rule, spelled, spelled_with_break

TAGS = (r"script|iframe|frame|frameset|object|embed|applet|meta|link|style|base|form|svg|math|img|image|"
        r"video|audio|source|body|isindex|marquee|details|dialog|select|input|button|textarea|keygen|template|"
        r"import|xss|layer|ilayer|bgsound|xml|vmlframe|animate|animatetransform|animatemotion|set|handler|"
        r"listener|foreignobject|noscript|title|portal|[a-z]+:[a-z]+")
SPACED_TAGS = (r"script|iframe|form|object|embed|applet|svg|img|meta|link|style|base|x:script|math|frameset|"
               r"isindex|dialog|marquee|video|audio|body|input|textarea|select|details|frame|animate|xss|html")
_CONTROL = r"[\x00-\x1f]*"
SCRIPT_SCHEME = r"(?:java|vb|live|ecma)" + _CONTROL + spelled("script", _CONTROL) + r"[\s\x00-\x1f]*:"
BROKEN_SCHEME = (r"(?:" + spelled_with_break("javascript", _CONTROL) + "|" + spelled_with_break("vbscript", _CONTROL)
                 + r")[\s\x00-\x1f]*:")
# After "javascript:", code (not "javascript:void(0)", not prose such as "JavaScript: the basics").
_CODE_AFTER_SCHEME = (r"(?:[^\s;v]|v(?:$|[^o]|o(?:$|[^i]|i(?:$|[^d]|d\s*(?:$|[^\s(]|\(\s*(?:[^\s0)]|0\s*[^\s)])))))"
                      r"|\s+[\w$.]*\s*[(=\[`])")
MARKUP_MEDIA = (r"text/(?:html|xml|javascript|ecmascript)|image/svg|"
                r"application/(?:xhtml|xml|(?:x-)?javascript|ecmascript)")
DOM_GLOBALS = r"document|window|self|top|parent|frames|globalthis|content|opener"
DOM_MEMBERS = (r"cookie|domain|location|write|writeln|open|eval|alert|prompt|confirm|settimeout|setinterval|"
               r"execscript|body|head|forms|referrer|localstorage|sessionstorage|queryselector|queryselectorall|"
               r"getelementbyid|getelementsby\w+|createelement|defaultview|importnode|adoptnode")


def xss_rules() -> list[Rule]:
    return [
        rule(140100, "xss", r"<\s*/?\s*(?:[\w-]*:)?(?:" + TAGS + r")\b", MARKUP, targets=WITH_PATH,
             message="active HTML tag"),
        rule(140105, "xss", r"<!?/?(?:" + SPACED_TAGS + r")(?:[^\w]|$)|<\??importimplementation=", MARKUP_TIGHT,
             targets=WITH_PATH, message="spaced-out HTML tag"),
        rule(140190, "xss", r"[\s\"'`;/]+(?:formaction|srcdoc|xlink:href)\s*=|\bstyle\s*=\s*[\"']?[\w-]+\s*:",
             MARKUP, targets=WITH_PATH, message="dangerous attribute"),
        rule(140110, "xss", r"[\s\"'`;/0-9=(,]on[a-z]{3,40}\s*=(?:[^=]|$)", MARKUP, targets=WITH_PATH,
             message="event handler attribute"),
        rule(140120, "xss", SCRIPT_SCHEME + _CODE_AFTER_SCHEME + "|" + BROKEN_SCHEME +
             r"|\bdata\s*:\s*(?:" + MARKUP_MEDIA + r")|\bdata\s*:[^,]*,.*(?:<[a-z!/?]|script\s*:|\balert\s*\()",
             MARKUP, targets=WITH_PATH, message="script URL"),
        rule(140130, "xss", r"<!\s*(?:entity|doctype|\[cdata\[)|!entity\s|<!--\s*#\s*(?:exec|include|echo|set|"
             r"config|printenv)|\bxmlns(?::\w+)?\s*=|\bxlink:href|\bxi:include|<\?xml\b|"
             r"\bsystem\s+[\"'](?:https?|file|ftp|php|expect|jar|data):", MARKUP, message="markup declaration"),
        rule(140140, "xss", r"\b(?:alert|prompt|confirm|eval|settimeout|setinterval|execscript|atob|btoa|"
             r"fromcharcode|globaleval|importscripts|unescape|function)\s*[(`]|\bdocument\s*\.\s*(?:" + DOM_MEMBERS +
             r")|\bwindow\s*\.\s*(?:location|open|name|eval)|\blocation\s*\.\s*(?:href|hash|replace|assign|search)"
             r"\b|\.(?:inner|outer)html\b|\.insertadjacenthtml\b|\bconstructor\s*\.\s*constructor\b|"
             r"\b(?:self|top|window|parent|frames|globalthis|this)\s*\[|"
             r"\{\{.*(?:constructor|\$on|\$eval|\$emit).*\}\}|\breflect\s*\.\s*(?:apply|construct)|"
             r"[\w\])]\s*`[^`]*\$\{|!\s*\[\s*\]|\[\s*\]\s*\[|\bimport\s*\(|\.\s*(?:call|apply|bind)\s*`",
             MARKUP, message="script code"),
        rule(140200, "xss", r"(?:^|[^\w$.])\(*(?:" + DOM_GLOBALS + r")\)*(?:\.|\[[\"'`])(?:" + DOM_MEMBERS +
             r")\b", SCRIPT, message="browser object reached through comments or brackets"),
        rule(140150, "xss", r"\bexpression\s*\(|\burl\s*\(\s*[\"']?\s*(?:java|vb)script|-moz-binding|\bbehavior\s*:"
             r"|@import\b|\bstyle\s*=.*(?:expression|javascript|url\s*\()", MARKUP, message="script in CSS"),
        rule(140160, "xss", r"(?:^|\W)ad[w4]-", DECODED, message="UTF-7 markup"),
        rule(140210, "xss", r"\xbc\s*/?[a-z][\w:-]*[^\xbe>]{0,256}[\xbe>]", UNESCAPED,
             message="tag spelled in bytes a 7-bit charset reads as angle brackets"),
        rule(140170, "xss", r"<[a-z][\w:-]*\s[^>]*\b(?:src|href|action|formaction|data|dynsrc|lowsrc|poster|srcdoc|"
             r"background|code|codebase|language|rel|http-equiv|charset|content)\s*=", MARKUP,
             message="HTML attribute"),
        rule(140180, "xss", r"<[a-z][\w:-]*[\s/>]|\bon[a-z]{3,40}\s*=", MARKUP, paranoia=2, targets=WITH_PATH,
             message="HTML tag"),
    ]
