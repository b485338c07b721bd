"""The controls a compliance report checks, each with pass/fail and its evidence.

Evidence comes from the configuration (a key and where it is written) and from the audit log
over the report's period (counts of decisions, denials by reason, the chain's verification).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from ..config import Config
from ..crypto.keys import PublicKey, shown
from .segment import record_epoch
from .verify import Verification, verify_log

Status = Literal["pass", "fail", "n/a"]

MAX_TTL = 900.0
RATE_LIMIT_CODES = frozenset({"rate_limited", "token_quota_exceeded", "token_request_too_large", "anomaly_throttled"})


@dataclasses.dataclass(frozen=True)
class Control:
    id: str
    title: str
    status: Status
    evidence: tuple[str, ...]


@dataclasses.dataclass
class LogEvidence:
    """What the audit log shows over the report's period."""

    paths: list[str]
    since: float | None
    until: float | None
    verification: Verification | None = None
    problem: str | None = None
    decisions: Counter[str] = dataclasses.field(default_factory=Counter)
    denials: Counter[str] = dataclasses.field(default_factory=Counter)
    prompt_digests: int = 0
    prompt_texts: int = 0
    first: str | None = None
    last: str | None = None

    @property
    def total(self) -> int:
        return sum(self.decisions.values())

    def visit(self, record: Mapping[str, Any]) -> None:
        moment = record_epoch(record.get("time"))
        if moment is None or (self.since is not None and moment < self.since) or (
                self.until is not None and moment >= self.until):
            return
        self.decisions[str(record.get("decision"))] += 1
        if record.get("decision") == "deny":
            self.denials[str(record.get("reason") or "unknown")] += 1
        prompt = record.get("prompt")
        if isinstance(prompt, Mapping):
            self.prompt_digests += 1
            self.prompt_texts += "content" in prompt
        self.first = self.first or str(record.get("time"))
        self.last = str(record.get("time"))


def collect_log(paths: Iterable[Path], *, since: float | None, until: float | None,
                public_keys: Mapping[str, PublicKey] | None) -> LogEvidence:
    """Verify the log and count its decisions within ``[since, until)``."""
    paths = list(paths)
    evidence = LogEvidence([str(p) for p in paths], since, until)
    if not paths:
        evidence.problem = "no audit log: [audit] is not configured and no --audit path was given"
        return evidence
    try:
        evidence.verification = verify_log(paths, public_keys=public_keys, visit=evidence.visit)
    except (OSError, ValueError) as exc:
        evidence.problem = f"the audit log cannot be read: {exc}"
    return evidence


def _at(config: Config, *path: str) -> str:
    line = config.line_of(*path)
    source = config.source or "configuration"
    return f" ({source}:{line})" if line else ""


def _seconds(value: float) -> str:
    return f"{value / 60:g} min" if value >= 60 else f"{value:g} s"


def token_ttl(config: Config) -> Control:
    title = "Access tokens expire within 15 minutes"
    identity = config.identity
    if identity.jwt is not None:
        ttl = identity.jwt.max_ttl
        status: Status = "pass" if ttl <= MAX_TTL else "fail"
        return Control("token_ttl", title, status, (
            f"[identity.jwt] max_ttl = {_seconds(ttl)}{_at(config, 'identity', 'jwt', 'max_ttl')}: tokens living "
            f"longer are refused{'' if status == 'pass' else '; the limit is 15 min'}",
            f"leeway = {_seconds(identity.jwt.leeway)}; required claims: {', '.join(identity.jwt.required_claims)}"))
    if identity.introspection is not None or identity.mtls is not None:
        return Control("token_ttl", title, "n/a", (
            "no JWTs are accepted: opaque tokens live as long as the authorization server says, client certificates "
            "as long as the CA issued them",))
    return Control("token_ttl", title, "fail", ("no [identity] token verification is configured",))


def tls(config: Config) -> Control:
    server = config.server
    ok = server.tls_cert is not None and server.tls_min_version == "1.3"
    evidence = [f"[server] tls_min_version = {server.tls_min_version}{_at(config, 'server', 'tls_min_version')}"]
    if server.tls_cert is None:
        evidence.append("[server] tls_cert is not set: `dsguard serve` does not terminate TLS itself")
    else:
        evidence.append(f"[server] tls_cert = {server.tls_cert}{_at(config, 'server', 'tls_cert')}")
    evidence.append(f"[transport] require_https = {str(config.transport.require_https).lower()}")
    return Control("tls", "TLS 1.3 enforced on every connection", "pass" if ok else "fail", tuple(evidence))


def key_urls(config: Config) -> list[tuple[str, str]]:
    """The private keys the configuration names: ``(setting, key URL)``."""
    keys = []
    if config.audit is not None and config.audit.signing_key:
        keys.append(("[audit] signing_key", config.audit.signing_key))
    if config.runner is not None and config.runner.decryption_key:
        keys.append(("[runner] decryption_key", config.runner.decryption_key))
    return keys


def hsm_keys(config: Config) -> Control:
    keys = key_urls(config)
    title = "Signing and key-encryption keys are held in an HSM"
    if not keys:
        return Control("hsm_keys", title, "fail", ("no signing or key-encryption key is configured",))
    evidence = []
    for setting, url in keys:
        scheme = url.partition(":")[0].lower()
        where = "in the HSM (PKCS#11); it never leaves the token" if scheme == "pkcs11" else \
            f"a {scheme}: key held in process memory, not in an HSM"
        evidence.append(f"{setting} = {shown(url)}: {where}")
    ok = all(url.lower().startswith("pkcs11:") for _, url in keys)
    return Control("hsm_keys", title, "pass" if ok else "fail", tuple(evidence))


def encryption_at_rest(config: Config) -> Control:
    title = "Model weights encrypted at rest"
    runner = config.runner
    if runner is None:
        return Control("encryption_at_rest", title, "n/a", ("no [runner]: no model weights are served",))
    evidence = [f"[runner] model = {runner.model}"]
    if runner.decryption_key:
        evidence.append(f"[runner] decryption_key = {shown(runner.decryption_key)}"
                        f"{_at(config, 'runner', 'decryption_key')}: the weights are stored encrypted (AES-256-GCM "
                        "envelope) and decrypted into memory only")
    else:
        evidence.append("[runner] decryption_key is not set: the weights are stored in plaintext")
    pinned = runner.manifest_public_key is not None
    evidence.append(f"[runner] manifest_public_key {'= ' + str(runner.manifest_public_key) if pinned else 'not set'}"
                    f": the bundle's files are {'' if pinned else 'not '}pinned by a signed manifest")
    return Control("encryption_at_rest", title, "pass" if runner.decryption_key else "fail", tuple(evidence))


def audit_records(config: Config, log: LogEvidence) -> Control:
    title = "Every decision is recorded in the audit log"
    if config.audit is None and not log.paths:
        return Control("audit_records", title, "fail", ("[audit] is not configured",))
    evidence = []
    if config.audit is not None:
        evidence.append(f"[audit] path = {config.audit.path}{_at(config, 'audit', 'path')}; fsync = "
                        f"{config.audit.fsync}, on_full = {config.audit.on_full}")
    if log.problem is not None:
        return Control("audit_records", title, "fail", (*evidence, log.problem))
    counts = ", ".join(f"{name} {count}" for name, count in sorted(log.decisions.items())) or "none"
    span = f"; first {log.first}, last {log.last}" if log.first else ""
    evidence.append(f"{log.total} decisions recorded in the period ({counts}){span}")
    return Control("audit_records", title, "pass" if log.total else "fail", tuple(evidence))


def audit_chain(log: LogEvidence) -> Control:
    title = "Audit log integrity verified (hash chain and signed checkpoints)"
    result = log.verification
    if result is None:
        return Control("audit_chain", title, "fail", (log.problem or "no audit log",))
    evidence = [result.summary(), f"files: {', '.join(result.files)}"]
    evidence += [str(f) for f in result.findings if f.severity != "info"][:20]
    evidence.append("checkpoint keys pinned: " + (", ".join(sorted(result.key_ids)) if result.pinned and
                                                  result.key_ids else "no (checked with the keys the log names)"))
    ok = result.intact and result.anchored_seq is not None and result.pinned
    return Control("audit_chain", title, "pass" if ok else "fail", tuple(evidence))


def denials(log: LogEvidence) -> Control:
    title = "Denied requests, by reason"
    if log.problem is not None:
        return Control("denials", title, "fail", (log.problem,))
    lines = [f"{reason}: {count}" for reason, count in log.denials.most_common()]
    return Control("denials", title, "pass", tuple(lines) or ("no request was denied in the period",))


def rate_limits(config: Config, log: LogEvidence) -> Control:
    title = "Rate limits and token quotas active"
    evidence = []
    for limit in config.rate_limits:
        amount = "; ".join(part for part in (limit.limit and f"{limit.limit} requests", limit.tokens and
                                             f"{limit.tokens} tokens") if part)
        evidence.append(f"[[rate_limits]] per {limit.key}: {amount}" + (f" (+{limit.burst} burst)"
                                                                        if limit.burst else ""))
    limited = sum(count for code, count in log.denials.items() if code in RATE_LIMIT_CODES)
    if log.problem is None:
        evidence.append(f"{limited} calls limited in the period")
    return Control("rate_limits", title, "pass" if config.rate_limits else "fail",
                   tuple(evidence) if config.rate_limits else ("no [[rate_limits]] are configured",))


def data_minimisation(config: Config, log: LogEvidence) -> Control:
    title = "Prompts are not logged (digest and length only)"
    log_prompts = config.audit.log_prompts if config.audit is not None else False
    evidence = [f"[audit] log_prompts = {str(log_prompts).lower()}"
                f"{_at(config, 'audit', 'log_prompts') if log_prompts else ' (default)'}"]
    if log.problem is None:
        evidence.append(f"{log.prompt_digests} records carry a prompt digest; {log.prompt_texts} hold prompt text")
    if config.prompt_guard is not None:
        pii = config.prompt_guard.pii_action or config.prompt_guard.action
        evidence.append(f"[prompt_guard] personal data in prompts: {pii}")
    ok = not log_prompts and log.prompt_texts == 0
    return Control("data_minimisation", title, "pass" if ok else "fail", tuple(evidence))


def access_policy(config: Config) -> Control:
    title = "Access decided by a least-privilege policy"
    policy = config.policy
    if policy is None:
        return Control("access_policy", title, "fail", ("no [policy]: every authenticated caller may call everything",))
    return Control("access_policy", title, "pass", (
        f"[policy] model = {policy.model}, policy = {policy.policy}{_at(config, 'policy', 'policy')}",
        f"reload = {str(policy.reload).lower()}; mode = {policy.mode or config.mode}"))


def identity(config: Config) -> Control:
    title = "Every caller is identified and authenticated"
    ident = config.identity
    methods = [name for name, on in (("JWT", ident.jwt), ("token introspection", ident.introspection),
                                     ("client certificates (mTLS)", ident.mtls)) if on is not None]
    evidence = [f"identity methods: {', '.join(methods) or 'none'}",
                f"[identity] anonymous = {str(ident.anonymous).lower()}"]
    if ident.public_paths:
        evidence.append(f"paths open without identity: {', '.join(ident.public_paths)}")
    ok = bool(methods) and not ident.anonymous and "identity" in config.present
    return Control("identity", title, "pass" if ok else "fail", tuple(evidence))


def mfa(config: Config) -> Control:
    title = "Two factors: a token bound to a client key or certificate"
    ident = config.identity
    token = ident.jwt is not None or ident.introspection is not None
    certificate = config.server.client_ca is not None or (ident.mtls is not None and ident.mtls.required)
    bound = ident.jwt is not None and ident.jwt.sender_constraint == "required"
    evidence = [f"bearer tokens: {'verified' if token else 'not configured'}",
                f"client certificates: {'required' if certificate else 'not required'}",
                f"sender-constrained tokens (RFC 8705 / RFC 9449): {'required' if bound else 'not required'}"]
    return Control("mfa", title, "pass" if token and (certificate or bound) else "fail", tuple(evidence))


def evaluate(config: Config, log: LogEvidence) -> dict[str, Control]:
    """Every control, by id."""
    controls = [token_ttl(config), tls(config), hsm_keys(config), encryption_at_rest(config),
                audit_records(config, log), audit_chain(log), denials(log), rate_limits(config, log),
                data_minimisation(config, log), access_policy(config), identity(config), mfa(config)]
    return {control.id: control for control in controls}


def utc(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
