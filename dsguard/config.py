"""Load and validate ``dsguard.toml``.

Every key is declared below with its type and documentation. Errors name the file, the line
and the key (``dsguard.toml:12: [hygiene] max_body: expected a size like "1MiB", got "lots"``).
Durations are written ``"15m"``/``"5s"``, sizes ``"1MiB"``, secrets ``"env:NAME"``/``"file:PATH"``;
relative paths are relative to the configuration file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from limits import parse_many

from ._schema import Loader, Parse, doc
from ._tomlpos import key_lines, nearest_line
from .errors import ConfigError
from .units import IPNetwork, Secret, parse_duration, parse_networks, parse_size

Duration = Annotated[float, Parse(parse_duration)]
Size = Annotated[int, Parse(parse_size)]
Networks = Annotated[tuple[IPNetwork, ...], Parse(parse_networks)]
ModeOverride = Literal["enforce", "report"] | None
STAGES = ("transport", "hygiene", "pre-auth", "identity", "signature", "policy", "quota", "content", "anomaly")
Stage = Literal["transport", "hygiene", "pre-auth", "identity", "signature", "policy", "quota", "content",
                "anomaly"]


def _rate(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected a rate like "10/second" or "10/second;600/minute", got {value!r}')
    try:
        parse_many(value)
    except ValueError:
        raise ValueError(f'expected a rate like "10/second" or "10/second;600/minute", got {value!r}') from None
    return value


Rate = Annotated[str, Parse(_rate)]


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = doc("Address `dsguard serve` binds to.", "127.0.0.1")
    port: int = doc("Port `dsguard serve` listens on.", 8000)
    tls_cert: Path | None = doc("PEM certificate chain; turns on HTTPS.", None)
    tls_key: Path | None = doc("PEM private key of `tls_cert`.", None)
    tls_min_version: Literal["1.2", "1.3"] = doc("Oldest TLS version accepted.", "1.3")
    client_ca: Path | None = doc("PEM bundle of CAs for client certificates; its presence turns on mTLS.", None)
    trusted_proxies: Networks = doc(
        "CIDRs of reverse proxies whose Forwarded/X-Forwarded-* headers are believed.", ())


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    check_timeout: Duration = doc("Longest an asynchronous check may take before the call is denied (503).", 5.0)
    request_id_header: str = doc("Response header carrying the request id on every response.", "X-Request-ID")


@dataclasses.dataclass(frozen=True)
class TransportConfig:
    enabled: bool = doc("Run the transport check.", True)
    mode: ModeOverride = doc('"report" to log instead of deny for this check only.', None)
    require_https: bool = doc("Deny plain-HTTP calls (scheme taken from trusted proxies only).", True)
    hsts: bool = doc("Send Strict-Transport-Security on HTTPS responses.", True)
    hsts_max_age: Duration = doc("HSTS max-age.", 31536000.0)
    hsts_include_subdomains: bool = doc("Add includeSubDomains to HSTS.", True)


@dataclasses.dataclass(frozen=True)
class HygieneConfig:
    enabled: bool = doc("Run the hygiene check.", True)
    mode: ModeOverride = doc('"report" to log instead of deny for this check only.', None)
    methods: tuple[str, ...] = doc("Allowed HTTP methods (405 otherwise).",
                                   ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
    max_headers: int = doc("Most request header fields (431 beyond).", 100)
    max_header_bytes: Size = doc("Largest single header field, name and value (431 beyond).", 8192)
    max_headers_total: Size = doc("Largest sum of all header fields (431 beyond).", 65536)
    max_body: Size = doc("Largest request body (413 beyond), checked on Content-Length and while reading.",
                         1024 * 1024)
    content_types: tuple[str, ...] = doc(
        "Media types accepted for request bodies (415 otherwise).",
        ("application/json", "application/x-www-form-urlencoded", "multipart/form-data", "text/plain"))
    max_json_depth: int = doc("Deepest nesting of a JSON body (400 beyond).", 32)
    reject_duplicate_json_keys: bool = doc(
        "Deny JSON objects that repeat a key (parsers disagree on which one wins).", True)


@dataclasses.dataclass(frozen=True)
class JWTConfig:
    algorithms: tuple[str, ...] = doc("Accepted JWS algorithms; each key is used only with its own type.",
                                      ("EdDSA", "RS256", "ES256"))
    issuer: str | None = doc("Required `iss`.", None)
    audience: str | None = doc("Required `aud`.", None)
    jwks_url: str | None = doc("JWKS endpoint of the identity provider.", None)
    jwks_file: Path | None = doc("Local JWKS file (air-gapped setups).", None)
    secret: Secret | None = doc("HMAC key for HS* algorithms.", None)
    max_ttl: Duration = doc("Longest accepted token lifetime (exp - iat).", 900.0)
    leeway: Duration = doc("Clock skew allowed on exp/nbf/iat.", 5.0)
    required_claims: tuple[str, ...] = doc("Claims every token must carry.", ("exp", "iat", "sub"))
    roles_claim: str = doc("Claim holding the caller's roles (a list or a space-separated string).", "roles")
    scopes_claim: str = doc("Claim holding the granted scopes (RFC 8693 `scope`: space-separated).", "scope")
    tenant_claim: str | None = doc("Claim naming the caller's tenant.", None)
    require_typ: str | None = doc('Required JOSE `typ`, e.g. "at+jwt" (RFC 9068).', None)
    max_token_bytes: Size = doc("Largest accepted token (401 beyond).", 8192)
    cache_size: int = doc("Verified tokens kept (by digest, until they expire); 0 turns the cache off.", 10000)
    jwks_ttl: Duration = doc("How long fetched keys are used before they are fetched again.", 300.0)
    jwks_timeout: Duration = doc("Longest wait for the JWKS endpoint.", 2.0)
    jwks_refetch_cooldown: Duration = doc("Least time between fetches caused by an unknown `kid`.", 30.0)
    jwks_stale_grace: Duration = doc("How long known keys stay usable while the endpoint is down.", 3600.0)
    sender_constraint: Literal["off", "optional", "required"] = doc(
        "RFC 8705 certificate-bound and RFC 9449 DPoP tokens: off, verified when bound, or required.",
        "optional")


@dataclasses.dataclass(frozen=True)
class IntrospectionConfig:
    url: str = doc("RFC 7662 introspection endpoint.")
    client_id: str = doc("Client id used to authenticate to the endpoint.")
    client_secret: Secret = doc("Client secret (env: or file: reference).")
    auth_method: Literal["client_secret_basic", "client_secret_post"] = doc(
        "How dsguard authenticates to the endpoint.", "client_secret_basic")
    timeout: Duration = doc("Longest wait for the endpoint.", 2.0)
    cache_ttl: Duration = doc("Longest an answer is reused (never past the token's exp).", 60.0)
    cache_size: int = doc("Answers kept.", 10000)


@dataclasses.dataclass(frozen=True)
class MTLSConfig:
    subject_from: Literal["san_email", "san_dns", "san_uri", "cn"] = doc(
        "Which certificate name becomes the identity's subject.", "san_email")
    forwarded_header: str | None = doc(
        "Header carrying the client certificate (URL-encoded PEM) from a trusted proxy that terminated TLS.", None)
    required: bool = doc("Deny calls without a verified client certificate.", False)


@dataclasses.dataclass(frozen=True)
class DPoPConfig:
    max_age: Duration = doc("Oldest accepted proof (`iat`).", 60.0)
    leeway: Duration = doc("Clock skew allowed on a proof's `iat`.", 5.0)
    algorithms: tuple[str, ...] = doc("Accepted proof algorithms.", ("EdDSA", "ES256", "RS256", "PS256"))


@dataclasses.dataclass(frozen=True)
class IdentityConfig:
    anonymous: bool = doc("Let calls without a verified identity through (else 401).", False)
    public_paths: tuple[str, ...] = doc(
        'Paths that need no identity: exact ("/healthz") or prefixes ending in "*".', ())
    revocation: bool = doc("Check every token's `jti` against the revocation list in [storage].", True)
    jwt: JWTConfig | None = doc("Bearer JWT verification.", None)
    introspection: IntrospectionConfig | None = doc("Opaque token introspection.", None)
    mtls: MTLSConfig | None = doc("Identity from client certificates.", None)
    dpop: DPoPConfig | None = doc("RFC 9449 DPoP proof settings.", None)


def _llm_actions(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(path, str) and path.startswith("/") and isinstance(action, str) and action
            for path, action in value.items()):
        raise ValueError('expected a table of paths and actions, like { "/v1/chat/completions" = "chat" }')
    return dict(value)


LLMActions = Annotated[dict[str, str], Parse(_llm_actions)]


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    model: Path = doc("Casbin model file.")
    policy: Path = doc("Casbin policy file.")
    mode: ModeOverride = doc('"report" to log instead of deny for this check only.', None)
    reload: bool = doc("Reload when the files change; a broken change keeps the last good policy.", True)
    reload_interval: Duration = doc("How often the files are checked for changes (a change is loaded once "
                                    "it has stood still for one interval).", 1.0)
    redis_channel: str = doc("Redis pub/sub channel announcing reloads to the other replicas, used when "
                             "[storage] url is redis:// and reload is on.", "dsguard:policy")
    engine: Literal["auto", "casbin"] = doc(
        '"auto": compiled evaluation (casbin\'s decisions, indexed), casbin\'s Enforcer for models it does '
        'not support; "casbin": always casbin\'s Enforcer.', "auto")
    anonymous_subject: str = doc("Subject of calls let through without an identity.", "anonymous")
    actions: LLMActions = doc(
        "LLM routes and their action; a call to one whose JSON body names a `model` is decided on "
        "model:<name> with that action, any other call on its path and method.",
        factory=lambda: {"/v1/chat/completions": "chat", "/v1/completions": "complete", "/v1/embeddings": "embed"})


@dataclasses.dataclass(frozen=True)
class StorageConfig:
    url: str = doc('Counter/nonce storage: "memory://" or "redis://host:port/db".', "memory://")
    on_error: Literal["fail-closed", "local-fallback"] = doc("What to do when storage is unreachable.",
                                                             "fail-closed")


@dataclasses.dataclass(frozen=True)
class RateLimitConfig:
    key: str = doc('What is counted: "ip", "subject", "tenant", "route", "model" or "claim:NAME".')
    limit: Rate | None = doc(
        'Requests allowed, e.g. "10/second;600/minute"; every window must have room for a call to pass.', None)
    burst: int = doc("Extra requests that may arrive at once on top of each window's limit: a fresh key "
                     "takes limit + burst at once, then limit per window (a token bucket refilled evenly).", 0)
    tokens: Rate | None = doc('LLM tokens allowed, e.g. "200000/day": prompt estimate + max_tokens are reserved '
                              "before the call and settled with the usage the app reports.", None)
    cost: int = doc("Requests one call counts for.", 1)
    default_max_tokens: int = doc("Completion tokens reserved for a call whose body sets no max_tokens.", 4096)
    name: str | None = doc('Policy name in RateLimit headers and storage keys (letters, digits, "_.-"); '
                           'default: from `key` ("ip", "subject", "claim-org").', None)


@dataclasses.dataclass(frozen=True)
class SignaturesConfig:
    mode: ModeOverride = doc('"report" to log instead of deny for this check only.', None)
    required: bool = doc("Deny unsigned requests (a present but invalid signature is denied either way).", True)
    keys: Path | None = doc(
        "Client key directory (JSON, by keyid): public JWKs or PEMs, HMAC secrets as env:/file: references, "
        "each with its algorithm and an optional subject binding.", None)
    max_age: Duration = doc("Oldest accepted signature (`created`); nonces are remembered this long plus "
                            "twice the clock skew.", 300.0)
    clock_skew: Duration = doc("Clock difference allowed on `created` and `expires`.", 5.0)
    components: tuple[str, ...] = doc("Components every signature must cover (RFC 9421 section 2).",
                                      ("@method", "@target-uri", "content-digest"))
    algorithms: tuple[str, ...] = doc(
        "Accepted algorithms; a key is used only with the one its directory entry names.",
        ("ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512", "hmac-sha256"))
    nonce_required: bool = doc("Deny signatures without a `nonce` (without one, the signature itself is "
                               "remembered against replay).", False)
    tag: str | None = doc("Verify only the signature with this `tag` (an application id among several).", None)


@dataclasses.dataclass(frozen=True)
class WAFConfig:
    paranoia: Literal[1, 2, 3, 4] = doc("CRS paranoia level.", 1)
    max_body: Size = doc("Largest body the WAF inspects.", 1024 * 1024)


@dataclasses.dataclass(frozen=True)
class PromptGuardConfig:
    action: Literal["block", "flag", "redact"] = doc("What to do with a detected prompt attack or PII.", "block")


@dataclasses.dataclass(frozen=True)
class RunnerConfig:
    model: str = doc('"bundled:tiny-deepseek" or a model bundle directory.', "bundled:tiny-deepseek")
    dtype: Literal["fp32", "fp16", "int8", "q4", "q4f16"] = doc("Which ONNX file of the bundle to load.", "q4")
    providers: tuple[str, ...] = doc("ONNX Runtime execution providers, in order of preference.",
                                     ("CUDAExecutionProvider", "CPUExecutionProvider"))
    max_concurrency: int = doc("Generations run at once.", 4)
    max_queue: int = doc("Requests waiting beyond that (503 when full).", 64)


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    path: Path = doc("Audit log (JSON lines, hash-chained).")
    signing_key: Secret | None = doc("Key signing the checkpoints.", None)


@dataclasses.dataclass(frozen=True)
class TelemetryConfig:
    prometheus: bool = doc("Expose a Prometheus scrape endpoint.", True)
    otlp_endpoint: str = doc("OTLP collector; empty for none.", "")


@dataclasses.dataclass(frozen=True)
class PluginConfig:
    """``[plugins.NAME]``: a check from the ``dsguard.checks`` entry point group."""

    name: str
    enabled: bool = True
    mode: ModeOverride = None
    stage: Stage | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    line: int | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    mode: Literal["enforce", "report"] = doc('"enforce" blocks denied calls; "report" decides and logs only.',
                                             "enforce")
    on_unavailable: Literal["refuse", "warn"] = doc(
        "A configured security feature this version lacks: refuse to start, or only warn.", "refuse")
    server: ServerConfig = doc("Listener, TLS and proxy trust.", factory=ServerConfig)
    pipeline: PipelineConfig = doc("Pipeline-wide settings.", factory=PipelineConfig)
    transport: TransportConfig = doc("HTTPS, forwarded headers and HSTS.", factory=TransportConfig)
    hygiene: HygieneConfig = doc("Method, header, body and JSON limits.", factory=HygieneConfig)
    identity: IdentityConfig = doc("Who is calling.", factory=IdentityConfig)
    policy: PolicyConfig | None = doc("Casbin policy.", None)
    storage: StorageConfig = doc("Shared state backend.", factory=StorageConfig)
    rate_limits: tuple[RateLimitConfig, ...] = doc("Request and token limits.", ())
    signatures: SignaturesConfig | None = doc("RFC 9421 request signatures.", None)
    waf: WAFConfig | None = doc("Web application firewall.", None)
    prompt_guard: PromptGuardConfig | None = doc("Prompt-injection and PII guard.", None)
    runner: RunnerConfig | None = doc("Local ONNX model runner.", None)
    audit: AuditConfig | None = doc("Tamper-evident audit log.", None)
    telemetry: TelemetryConfig | None = doc("Metrics and traces.", None)
    plugins: dict[str, PluginConfig] = doc("Third-party checks by entry point name.", factory=dict)
    source: str | None = None
    present: frozenset[str] = frozenset()
    lines: dict[Any, int] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def plugin_configs(self) -> list[PluginConfig]:
        return list(self.plugins.values())

    def line_of(self, *path: str | int) -> int | None:
        return nearest_line(self.lines, path)


# Sections this version parses but whose feature is not built yet. A security feature that is
# configured but missing refuses to start in enforce mode (see ``on_unavailable``).
UNAVAILABLE: dict[str, tuple[str, bool]] = {
    "waf": ("WAF", True),
    "prompt_guard": ("prompt guard", True),
    "audit": ("audit log", True),
    "runner": ("ONNX runner", False),
    "telemetry": ("telemetry", False),
}


@dataclasses.dataclass(frozen=True)
class Unavailable:
    section: str
    feature: str
    security: bool
    line: int | None


def unavailable_features(config: Config) -> list[Unavailable]:
    """Sections present in ``config`` whose feature this version does not provide."""
    found = []
    for section, (feature, security) in UNAVAILABLE.items():
        if section in config.present:
            path = tuple(section.split("."))
            found.append(Unavailable(section, feature, security, config.line_of(*path)))
    return found


def _plugins(loader: Loader, raw: object) -> dict[str, PluginConfig]:
    if not isinstance(raw, dict):
        raise loader.error(("plugins",), "expected a table of [plugins.NAME] tables")
    plugins = {}
    for name, table in raw.items():
        path = ("plugins", name)
        if not isinstance(table, dict):
            raise loader.error(path, "expected a table")
        options = dict(table)
        enabled = loader.value(bool, options.pop("enabled", True), (*path, "enabled"))
        mode = loader.value(ModeOverride, options.pop("mode", None), (*path, "mode")) \
            if "mode" in table else None
        stage = loader.value(Stage, options.pop("stage"), (*path, "stage")) if "stage" in table else None
        plugins[name] = PluginConfig(name, enabled, mode, stage, options, nearest_line(loader.lines, path))
    return plugins


def parse_config(text: str, *, file: str | None = None, base: Path | None = None) -> Config:
    """Validate TOML text; ``file`` names it in errors, ``base`` anchors relative paths."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=file) from None
    lines = key_lines(text)
    loader = Loader(file, base or Path.cwd(), lines)
    plugins = _plugins(loader, data.pop("plugins", {}))
    present = {k for k, v in data.items() if isinstance(v, dict | list)}
    identity = data.get("identity")
    if isinstance(identity, dict):
        present |= {f"identity.{k}" for k in identity}
    if data.get("rate_limits") == []:
        present.discard("rate_limits")
    config: Config = loader.section(Config, {**data, "plugins": {}}, ())
    return dataclasses.replace(config, plugins=plugins, source=file, present=frozenset(present), lines=lines)


def load_config(path: str | Path) -> Config:
    """Load and validate a configuration file; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("configuration file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file: {exc}", file=str(path)) from None
    return parse_config(text, file=str(path), base=path.resolve().parent)


def default_config() -> Config:
    """The embedded default: loopback demo, example policies, in-memory storage."""
    text = resources.files("dsguard.defaults").joinpath("dsguard.toml").read_text(encoding="utf-8")
    return parse_config(text, file="<embedded default>")
