"""Which controls each standard asks for, under which of its requirement ids."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Standard:
    key: str
    title: str
    requirements: tuple[tuple[str, tuple[str, ...]], ...]
    """``(control id, requirement ids)`` in the order the report lists them."""


PCI_DSS = Standard("pci-dss", "PCI DSS v4.0", (
    ("encryption_at_rest", ("3.5.1",)),
    ("hsm_keys", ("3.6.1", "3.7.1")),
    ("data_minimisation", ("3.2.1",)),
    ("tls", ("4.2.1",)),
    ("access_policy", ("7.2.1", "7.2.2")),
    ("identity", ("8.2.1", "8.3.1")),
    ("token_ttl", ("8.2.8",)),
    ("rate_limits", ("8.3.4", "6.4.2")),
    ("mfa", ("8.4.2",)),
    ("audit_records", ("10.2.1", "10.2.2")),
    ("denials", ("10.2.1.4", "10.4.1")),
    ("audit_chain", ("10.3.2", "10.3.4")),
))

GDPR = Standard("gdpr", "GDPR (Regulation (EU) 2016/679)", (
    ("data_minimisation", ("Art. 5(1)(c)", "Art. 25(2)")),
    ("access_policy", ("Art. 25(2)", "Art. 32(4)")),
    ("token_ttl", ("Art. 25(1)",)),
    ("audit_records", ("Art. 30", "Art. 5(2)")),
    ("denials", ("Art. 30",)),
    ("audit_chain", ("Art. 5(1)(f)", "Art. 32(1)(b)")),
    ("tls", ("Art. 5(1)(f)", "Art. 32(1)(a)")),
    ("encryption_at_rest", ("Art. 32(1)(a)",)),
    ("hsm_keys", ("Art. 32(1)(a)",)),
    ("identity", ("Art. 32(1)(b)",)),
    ("mfa", ("Art. 32(1)(b)",)),
    ("rate_limits", ("Art. 32(1)(b)",)),
))

HIPAA = Standard("hipaa", "HIPAA Security Rule, 45 CFR §164.312 technical safeguards", (
    ("access_policy", ("§164.312(a)(1)",)),
    ("identity", ("§164.312(a)(2)(i)", "§164.312(d)")),
    ("token_ttl", ("§164.312(a)(2)(iii)",)),
    ("encryption_at_rest", ("§164.312(a)(2)(iv)",)),
    ("hsm_keys", ("§164.312(a)(2)(iv)",)),
    ("audit_records", ("§164.312(b)",)),
    ("denials", ("§164.312(b)",)),
    ("audit_chain", ("§164.312(c)(1)", "§164.312(c)(2)")),
    ("mfa", ("§164.312(d)",)),
    ("tls", ("§164.312(e)(1)", "§164.312(e)(2)(ii)")),
    ("data_minimisation", ("§164.502(b)",)),
))

STANDARDS = {standard.key: standard for standard in (PCI_DSS, GDPR, HIPAA)}
