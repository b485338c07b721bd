"""dsguard's own rule set: SQL injection, XSS, path traversal, command and PHP injection, protocol checks.

Patterns describe the grammar of an attack (a quote closing a string and an operator opening a
condition, a command after a shell separator), not known payloads. Paranoia 1 rules are the ones
ordinary form and API traffic does not trip; paranoia 2 adds broader ones (SQL function names,
bare shell commands, any ``on...=`` attribute).
"""

from __future__ import annotations

from ..model import Rule
from .files import lfi_rules
from .php import php_rules
from .protocol import protocol_rules
from .shell import unix_rules
from .sqli import sqli_rules
from .windows import windows_rules
from .xss import xss_rules

__all__ = ["builtin_rules", "lfi_rules", "php_rules", "protocol_rules", "rce_rules", "sqli_rules", "xss_rules"]


def rce_rules() -> list[Rule]:
    return [*unix_rules(), *windows_rules()]


def builtin_rules() -> list[Rule]:
    return [*sqli_rules(), *xss_rules(), *lfi_rules(), *rce_rules(), *php_rules(), *protocol_rules()]
