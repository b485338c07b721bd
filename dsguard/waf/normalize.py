"""Decoding normalisation: the transformations a value goes through before rules see it.

Each function maps ``str -> str`` and is total: malformed input (a lone ``%``, an invalid
escape, broken UTF-8) is kept as it is, never raised on. Bytes that are not valid UTF-8 become
the Latin-1 character of the same value; overlong UTF-8 forms (``%c0%af`` for ``/``) decode to
the character they encode, as lenient servers do. :data:`TRANSFORMS` names them as SecLang's
``t:`` actions do (lower-cased).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
from collections.abc import Callable

Transform = Callable[[str], str]

_OVERLONG = re.compile(rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80-\x9f][\x80-\xbf]|\xf0[\x80-\x8f][\x80-\xbf]{2}")
_PERCENT = re.compile(r"(?:%[0-9a-fA-F]{2})+")
_PERCENT_U = re.compile(r"%u([0-9a-fA-F]{4})")
# Escapes that a second decoding undoes: ASCII, and well-formed (or overlong) UTF-8 sequences.
# Others (``%da`` in ``%database``) are more likely text than an encoding layer.
_PERCENT_TEXT = re.compile(r"%[0-7][0-9a-fA-F]|%[c-fC-F][0-9a-fA-F](?:%[89abAB][0-9a-fA-F]){1,3}")


def _latin1_fallback(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    return error.object[error.start:error.end].decode("latin-1"), error.end


codecs.register_error("dsguard-latin1", _latin1_fallback)


def _overlong(match: re.Match[bytes]) -> bytes:
    raw = match.group()
    if len(raw) == 2:
        code = ((raw[0] & 0x1F) << 6) | (raw[1] & 0x3F)
    elif len(raw) == 3:
        code = ((raw[0] & 0x0F) << 12) | ((raw[1] & 0x3F) << 6) | (raw[2] & 0x3F)
    else:
        code = ((raw[0] & 0x07) << 18) | ((raw[1] & 0x3F) << 12) | ((raw[2] & 0x3F) << 6) | (raw[3] & 0x3F)
    return chr(code).encode("utf-8")


def decode_bytes(raw: bytes) -> str:
    """UTF-8 with overlong forms decoded and invalid bytes kept as Latin-1 characters."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return _OVERLONG.sub(_overlong, raw).decode("utf-8", "dsguard-latin1")


def _percent_run(match: re.Match[str]) -> str:
    return decode_bytes(bytes.fromhex(match.group().replace("%", "")))


def url_decode(value: str) -> str:
    """``%XX`` (runs decoded as UTF-8) and ``+`` as a space; invalid escapes kept."""
    if "+" in value:
        value = value.replace("+", " ")
    if "%" not in value:
        return value
    return _PERCENT.sub(_percent_run, value)


def url_decode_uni(value: str) -> str:
    """:func:`url_decode` plus IIS-style ``%uXXXX`` escapes."""
    if "%" in value and ("%u" in value or "%U" in value):
        value = _PERCENT_U.sub(lambda m: chr(int(m.group(1), 16)), value.replace("%U", "%u"))
    return url_decode(value)


# Entities for the characters that break up a keyword or a URL scheme, in any letter case (``&Tab;``, ``&NewLine;``,
# ``&colon;``): HTML5 spells some of them capitalised only, but lenient parsers and filters read them either way.
_LOOSE_ENTITIES = {
    "tab": "\t", "newline": "\n", "colon": ":", "lpar": "(", "rpar": ")", "sol": "/", "bsol": "\\", "semi": ";",
    "comma": ",", "period": ".", "excl": "!", "quot": '"', "apos": "'", "lt": "<", "gt": ">", "num": "#",
    "equals": "=", "grave": "`", "lsqb": "[", "rsqb": "]", "lcub": "{", "rcub": "}", "verbar": "|", "plus": "+",
    "ast": "*", "dollar": "$", "percnt": "%", "lowbar": "_", "hyphen": "-", "nbsp": "\xa0", "amp": "&",
}
_LOOSE_ENTITY = re.compile(r"&(" + "|".join(_LOOSE_ENTITIES) + r");", re.I)


def html_entity_decode(value: str) -> str:
    """Named, decimal and hex character references, with or without the final ``;``."""
    if "&" not in value:
        return value
    value = html.unescape(value)
    if "&" in value and ";" in value:
        value = _LOOSE_ENTITY.sub(lambda m: _LOOSE_ENTITIES[m.group(1).lower()], value)
    return value


_JS_ESCAPE = re.compile(r"\\(?:u\{?([0-9a-fA-F]{4})\}?|x([0-9a-fA-F]{2})|([0-7]{1,3})|(.))", re.S)
_JS_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", "v": "\v"}


def _js_escape(match: re.Match[str]) -> str:
    unicode, hex_, octal, other = match.groups()
    if unicode or hex_:
        return chr(int(unicode or hex_, 16))
    if octal:
        return chr(int(octal, 8) & 0xFF)
    return _JS_SIMPLE.get(other, other)


def js_decode(value: str) -> str:
    """JavaScript escapes: ``\\uXXXX``, ``\\xHH``, octal and single-character escapes."""
    if "\\" not in value:
        return value
    return _JS_ESCAPE.sub(_js_escape, value)


_CSS_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})\s?|(\n)|(.))", re.S)


def _css_escape(match: re.Match[str]) -> str:
    hex_, newline, other = match.groups()
    if hex_:
        code = int(hex_, 16)
        return chr(code) if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF else "\ufffd"
    return "" if newline else other


def css_decode(value: str) -> str:
    """CSS escapes: ``\\HHHHHH`` (one optional trailing space), escaped newlines dropped."""
    if "\\" not in value:
        return value
    return _CSS_ESCAPE.sub(_css_escape, value)


def remove_nulls(value: str) -> str:
    return value.replace("\x00", "") if "\x00" in value else value


def replace_nulls(value: str) -> str:
    return value.replace("\x00", " ") if "\x00" in value else value


_WHITESPACE = re.compile(r"[\s\x0b\xa0]+")
_ASCII_SPACES = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


def _single_spaced(value: str) -> bool:
    """Whether compressing whitespace would leave ``value`` as it is (checked without a regex scan)."""
    return value.isascii() and "  " not in value and not any(c in value for c in _ASCII_SPACES)


def compress_whitespace(value: str) -> str:
    return value if _single_spaced(value) else _WHITESPACE.sub(" ", value)


def remove_whitespace(value: str) -> str:
    if _single_spaced(value):
        return value.replace(" ", "") if " " in value else value
    return _WHITESPACE.sub("", value)


_C_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.S)


def replace_comments(value: str) -> str:
    """Each C-style comment (an unterminated one runs to the end) becomes one space."""
    return _C_COMMENT.sub(" ", value) if "/*" in value else value


_SQL_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)|--[^\n]*|#[^\n]*", re.S)


def remove_comments(value: str) -> str:
    """C-style, ``--`` and ``#`` comments removed."""
    return _SQL_COMMENT.sub("", value)


def remove_comments_char(value: str) -> str:
    """The comment markers ``/*``, ``*/``, ``--`` and ``#`` removed, their content kept."""
    for marker in ("/*", "*/", "--", "#"):
        if marker in value:
            value = value.replace(marker, "")
    return value


_CMD_DROP = str.maketrans("", "", "\\\"'^")
_CMD_SPACE_BEFORE = re.compile(r"\s+(?=[/(])")
_CMD_SEPARATORS = str.maketrans(",;", "  ")


def cmd_line(value: str) -> str:
    """Shell obfuscation undone: ``\\ " ' ^`` dropped, ``, ;`` as spaces, spaces compressed, lower-cased."""
    value = value.translate(_CMD_DROP).translate(_CMD_SEPARATORS)
    value = compress_whitespace(value)
    return _CMD_SPACE_BEFORE.sub("", value).lower()


def normalize_path(value: str) -> str:
    """``./`` dropped, ``dir/../`` resolved, repeated slashes merged (leading ``../`` kept)."""
    if "/" not in value:
        return value
    absolute = value.startswith("/")
    trailing = value.endswith("/") or value.endswith("/.") or value.endswith("/..")
    parts: list[str] = []
    for part in value.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
        elif part != ".." or not absolute:
            parts.append(part)
    result = "/".join(parts)
    if absolute:
        result = "/" + result
    if trailing and result not in ("", "/"):
        result += "/"
    return result


def normalize_path_win(value: str) -> str:
    return normalize_path(value.replace("\\", "/"))


def lowercase(value: str) -> str:
    return value.lower()


def uppercase(value: str) -> str:
    return value.upper()


def trim(value: str) -> str:
    return value.strip()


_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def fold_width(value: str) -> str:
    """Full-width forms (``%uff53`` decodes to one) folded to ASCII."""
    if value.isascii():
        return value
    return value.translate(_FULL_WIDTH)


_SEVEN_BIT = {code: code & 0x7F for code in range(0x80, 0x100)}


def seven_bit(value: str) -> str:
    """Latin-1 characters with their high bit cleared, as a 7-bit charset reads them (``¼`` is ``<``)."""
    if value.isascii():
        return value
    return value.translate(_SEVEN_BIT)


def utf8_to_unicode(value: str) -> str:
    """Values are already decoded text: only compatibility forms are folded."""
    return fold_width(value)


def hex_decode(value: str) -> str:
    try:
        return decode_bytes(bytes.fromhex(value))
    except ValueError:
        return value


_SQL_HEX = re.compile(r"0x((?:[0-9a-fA-F]{2})+)")


def sql_hex_decode(value: str) -> str:
    """``0x414243`` literals decoded to ``ABC``."""
    if "0x" not in value:
        return value
    return _SQL_HEX.sub(lambda m: decode_bytes(bytes.fromhex(m.group(1))), value)


def base64_decode(value: str) -> str:
    try:
        return decode_bytes(base64.b64decode(value + "=" * (-len(value) % 4), validate=False))
    except (binascii.Error, ValueError):
        return value


def hex_encode(value: str) -> str:
    return value.encode("utf-8", "surrogatepass").hex()


def length(value: str) -> str:
    return str(len(value))


def escape_seq_decode(value: str) -> str:
    """ANSI C escapes (``\\n``, ``\\x41``, octal)."""
    return js_decode(value)


_SQL_VERSIONED = re.compile(r"/\*!\d*(.*?)(?:\*/|\Z)", re.S)
_SQL_SPACES = re.compile(r"[\s\x0b\xa0]+|/\*.*?(?:\*/|\Z)", re.S)


def sql_normalize(value: str) -> str:
    """SQL as a parser reads it: MySQL ``/*!50000 ..*/`` bodies kept, other comments as spaces, lower-cased."""
    if "/*" in value:
        value = _SQL_VERSIONED.sub(r" \1 ", value) if "/*!" in value else value
    if "/*" not in value and _single_spaced(value):
        return value.lower()
    return _SQL_SPACES.sub(" ", value).lower()


_SHELL_IFS = re.compile(r"\$\{?ifs\}?(?:\$\d)?", re.I)
# Expansions that are empty, spliced into a word, expand to nothing: ``c$@at``, ``c${u}at``, ``sh$x -c``, ``w$()ho``.
_SHELL_SPLICED = re.compile(r"\$[@*]|\$\d|\$\(\s*\)|``|(?<=\w)\$(?:\{[a-z_]\w*\}|[a-z_]\w*(?=[^\w]|$))|"
                            r"\$\{[a-z_]\w*\}(?=\w)", re.I)
_SHELL_QUOTES = str.maketrans("", "", "\\\"'^")
_SHELL_BRACES = re.compile(r"\{([^{}\s,]+(?:,[^{}\s,]*)+)\}")


def shell_normalize(value: str) -> str:
    """A command line as a shell runs it: quotes, backslashes, ``^``, ``$IFS``, spliced variables and ``{a,b}``
    undone; lower-cased.

    Separators (``; | & `` ` ``, ``$(``, newlines) are kept, unlike :func:`cmd_line`.
    """
    value = value.replace("\\\n", "")
    if "$" in value or "`" in value:
        value = _SHELL_SPLICED.sub("", _SHELL_IFS.sub(" ", value))
    value = value.translate(_SHELL_QUOTES)
    if "{" in value:
        value = _SHELL_BRACES.sub(lambda m: m.group(1).replace(",", " "), value)
    return compress_whitespace(value).lower()


def _none(value: str) -> str:
    return value


def decode_all(value: str, rounds: int = 3) -> str:
    """Every encoding layer peeled: URL (``%``, ``%u``, overlong UTF-8), HTML entities, NULs, width.

    Repeated while it changes (double URL encoding, entities inside percent escapes), at most
    ``rounds`` times. ``+`` is left alone: it is a space only in a form's first decoding.
    """
    if "%" not in value and "&" not in value and (value.isascii() and "\x00" not in value):
        return value
    for _ in range(rounds):
        decoded = value
        if "%" in decoded:
            if "%u" in decoded or "%U" in decoded:
                decoded = _PERCENT_U.sub(lambda m: chr(int(m.group(1), 16)), decoded.replace("%U", "%u"))
            decoded = _PERCENT_TEXT.sub(_percent_run, decoded)
        decoded = fold_width(remove_nulls(html_entity_decode(decoded)))
        if decoded == value:
            break
        value = decoded
    return value


TRANSFORMS: dict[str, Transform] = {
    "none": _none,
    "urldecode": url_decode,
    "urldecodeuni": url_decode_uni,
    "htmlentitydecode": html_entity_decode,
    "jsdecode": js_decode,
    "cssdecode": css_decode,
    "lowercase": lowercase,
    "uppercase": uppercase,
    "removenulls": remove_nulls,
    "replacenulls": replace_nulls,
    "compresswhitespace": compress_whitespace,
    "removewhitespace": remove_whitespace,
    "replacecomments": replace_comments,
    "removecomments": remove_comments,
    "removecommentschar": remove_comments_char,
    "cmdline": cmd_line,
    "normalizepath": normalize_path,
    "normalisepath": normalize_path,
    "normalizepathwin": normalize_path_win,
    "normalisepathwin": normalize_path_win,
    "utf8tounicode": utf8_to_unicode,
    "trim": trim,
    "trimleft": str.lstrip,
    "trimright": str.rstrip,
    "hexdecode": hex_decode,
    "sqlhexdecode": sql_hex_decode,
    "base64decode": base64_decode,
    "base64decodeext": base64_decode,
    "hexencode": hex_encode,
    "length": length,
    "escapeseqdecode": escape_seq_decode,
    "decodeall": decode_all,
    "foldwidth": fold_width,
    "sevenbit": seven_bit,
    "sqlnormalize": sql_normalize,
    "shellnormalize": shell_normalize,
}
