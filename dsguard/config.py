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

from ._schema import Loader, Parse, doc, render_key
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
    content_encodings: tuple[Literal["gzip", "deflate"], ...] = doc(
        'Content codings of request bodies to accept ("gzip", "deflate"): dsguard decodes them, the decoded '
        "body within max_body, so that every check reads the plain body, and hands the app the decoded "
        "body without Content-Encoding. Any other coding is refused with 415.", ())
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
    @dataclasses.dataclass(frozen=True)
    class Exclusion:
        """``[[waf.exclusions]]``: rules or inspected variables turned off for a path prefix."""

        path_prefix: str = doc('Requests whose path starts with this ("/v1/tools/").')
        rules: tuple[str, ...] = doc(
            'Rule ids ("942100") or families ("sqli", "xss", "lfi", "rce", "php") not applied there; '
            "empty: every rule.", ())
        targets: tuple[str, ...] = doc(
            'Variables not inspected there, SecLang style: "ARGS:callback", "ARGS_NAMES", '
            '"REQUEST_HEADERS:referer", "REQUEST_COOKIES:session", "REQUEST_FILENAME"; empty: every variable.', ())

    mode: ModeOverride = doc('"report" to log matches (and record them) instead of blocking, for this check only.',
                             None)
    paranoia: Literal[1, 2, 3, 4] = doc(
        "CRS paranoia level: 1 blocks what ordinary traffic never contains; 2 adds broader rules (more "
        "detection, more false positives); 3 and 4 apply to loaded CRS rules.", 1)
    anomaly_threshold: int = doc(
        "Inbound anomaly score that blocks a request (CRS default 5: one critical rule; warnings score 3, "
        "notices 2).", 5)
    max_body: Size = doc("Largest body the WAF inspects; a larger one is refused (413 waf_body_too_large).",
                         1024 * 1024)
    crs_path: str | None = doc(
        'OWASP CRS rules directory (its REQUEST-9*.conf files are loaded through dsguard\'s SecLang subset, '
        'skipped rules counted in the log); "auto" uses Debian\'s /usr/share/modsecurity-crs/rules when '
        "installed; unset: dsguard's built-in rules.", None)
    exclusions: tuple[Exclusion, ...] = doc("Per-route exclusions ([[waf.exclusions]] tables).", ())
    inspect_headers: bool = doc(
        "Inspect request header values (User-Agent, Referer, custom headers; protocol-structured ones such "
        "as Authorization and Accept-Encoding are skipped by the built-in rules).", True)
    inspect_json: bool = doc(
        "Inspect the fields of a JSON body, or of any body that parses as JSON whatever its Content-Type (never "
        "the prompt texts [prompt_guard] scans: message contents, tool descriptions, tool-call arguments).",
        True)
    max_fields: int = doc(
        "Most values of a JSON body the WAF inspects (objects, arrays and leaves each count); a body with more "
        "is refused whole (413 waf_too_many_fields), never inspected in part.", 4096)


@dataclasses.dataclass(frozen=True)
class PromptGuardConfig:
    action: Literal["block", "flag", "redact"] = doc(
        "What to do with a detected prompt attack or PII: block (403), flag (recorded in "
        'ctx.attributes["prompt_guard"], the call passes) or redact (PII replaced in the body the app receives; '
        "a prompt attack cannot be redacted and is blocked).", "block")
    mode: ModeOverride = doc('"report" to log instead of deny (and never rewrite a body) for this check only.',
                             None)
    injection_action: Literal["block", "flag", "off"] | None = doc(
        "Action for prompt injection and jailbreaks, overriding `action`; \"off\" skips their detection.", None)
    injection_threshold: float = doc(
        "Heuristic score at which a message counts as an attack (one strong sign weighs 1.0, weak signs less).", 1.0)
    injection_trusted_roles: tuple[str, ...] = doc(
        "Message roles not scanned for injection (every other role is). Empty by default: the caller writes "
        'every role of the body it sends, "system" and "developer" included. List a role here only where the '
        "application behind the guard, not the caller, writes those messages (tool definitions carry the role "
        '"tool_definition").', ())
    pii_action: Literal["block", "flag", "redact", "off"] | None = doc(
        "Action for personal data and secrets in prompts, overriding `action`; \"off\" skips their detection.",
        None)
    pii_categories: tuple[str, ...] = doc(
        "PII and secret kinds detected: email, phone, card, iban, us_ssn, uk_nino, cn_resident_id, "
        "aws_access_key, github_token, slack_token, api_key, private_key, jwt, secret (all by default).", ())
    redact_responses: bool = doc(
        "Redact the same PII kinds in the app's responses to LLM calls: OpenAI JSON and SSE streams "
        "(held back by `response_window` so a secret split across chunks is caught whole).", False)
    response_window: int = doc(
        "Characters of streamed text held back before release (at least 64; a word still being "
        "streamed is always held).", 128)
    classifier: Path | None = doc(
        "Directory of an ONNX text classifier (model.onnx, tokenizer.json, optional config.json with "
        "id2label) run on the scanned messages in addition to the heuristics.", None)
    classifier_label: str = doc("The classifier's label (id2label name, or index) meaning injection.", "INJECTION")
    classifier_threshold: float = doc("Probability of that label at which a prompt counts as an attack.", 0.9)
    classifier_max_tokens: int = doc("Tokens the classifier reads of each text's start (and of its end).", 512)
    max_scan_chars: int = doc(
        "Most characters of prompt text scanned per request; what happens to a longer prompt is "
        "`long_prompt_action`.", 131072)
    long_prompt_action: Literal["block", "scan_ends"] = doc(
        "A prompt longer than `max_scan_chars`: \"block\" refuses it (413 prompt_too_long_to_scan), as its middle "
        "would go unscanned; \"scan_ends\" scans its start and end (half each) and lets the middle through "
        "unscanned, for deployments that accept that.", "block")


@dataclasses.dataclass(frozen=True)
class AnomalyConfig:
    action: Literal["flag", "throttle", "block"] = doc(
        'What to do with a caller whose behaviour is anomalous: "flag" (the app sees request.state.dsguard.'
        'attributes["anomaly"]), "throttle" (429 anomaly_throttled beyond throttle_rate) or "block" '
        "(403 anomaly_blocked).", "flag")
    mode: ModeOverride = doc('"report" to log instead of deny for this check only.', None)
    threshold: float = doc("Score at or above which a caller is anomalous: the root of the summed squares of its "
                           "features' one-sided deviations, each counted in spreads of the baseline.", 8.0)
    window: Duration = doc("Sliding window the behaviour features are counted over.", 600.0)
    slots: int = doc("Steps the window slides by; also the least time (window / slots) between two baseline "
                     "updates learned from one caller.", 10)
    warmup: int = doc("Observations the population baseline (and each of its features) must have learned before "
                      "any caller is scored: until then nothing is flagged, throttled or blocked.", 500)
    identity_warmup: int = doc("Observations of one caller before its own baseline is consulted too (a feature "
                               "then deviates only as far as it deviates from both).", 50)
    min_requests: int = doc("Calls a caller must make within the window before it is scored.", 5)
    population_span: int = doc("Observations the population baseline averages over (EWMA span).", 5000)
    identity_span: int = doc("Observations a caller's own baseline averages over (EWMA span).", 200)
    hold: Duration = doc("How long a caller stays flagged, throttled or blocked after its last anomalous score.",
                         300.0)
    throttle_rate: Rate = doc('Calls an anomalous caller may still make under action "throttle".', "6/minute")
    features: tuple[str, ...] = doc(
        "Features scored (empty: all): rate, denial_ratio, tokens, max_tokens, prompt_length, routes, models, "
        "ips, time_of_day, regularity (see dsguard.anomaly.features).", ())
    model: Path | None = doc("IsolationForest exported to ONNX by dsguard.anomaly.model.train: when set, its score "
                             "decides and the baselines give the reasons.", None)
    model_threshold: float | None = doc("Model score at or above which a caller is anomalous; default: the "
                                        "threshold stored in the model when it was trained.", None)
    max_keys: int = doc("Callers kept in memory (memory:// storage and the local fallback); the least recently "
                        "seen are forgotten first.", 100_000)
    retention: Duration = doc("How long an idle caller's state and own baseline are kept in Redis.", 7 * 86400.0)


@dataclasses.dataclass(frozen=True)
class RunnerConfig:
    model: str = doc('"bundled:tiny-deepseek" or a model bundle directory.', "bundled:tiny-deepseek")
    dtype: Literal["fp32", "fp16", "int8", "q4", "q4f16"] = doc("Which ONNX file of the bundle to load.", "q4")
    providers: tuple[str, ...] = doc("ONNX Runtime execution providers, in order of preference.",
                                     ("CUDAExecutionProvider", "CPUExecutionProvider"))
    max_concurrency: int = doc("Generations run at once.", 4)
    max_queue: int = doc("Requests waiting beyond that (503 when full).", 64)
    sampling_defaults: Literal["model", "openai"] = doc(
        'What a request\'s missing temperature, top_p, top_k and repetition_penalty default to: "model" (the '
        "bundle's generation_config.json, as vLLM does: DeepSeek-R1 recommends temperature 0.6, top_p 0.95) or "
        '"openai" (temperature 1, top_p 1).', "model")
    manifest_public_key: Path | None = doc(
        "Public key (PEM) or JWKS trusted to sign the bundle's dsguard-manifest.json; set, the bundle is refused "
        "before anything is loaded unless its manifest is signed by that key and every file matches it.", None)
    require_manifest: bool = doc("Refuse to load a bundle without `manifest_public_key` (pinning is mandatory).",
                                 False)
    decryption_key: str | None = doc(
        'Key URL of the key-encryption key of an encrypted bundle ("file:PATH", "env:NAME", "pkcs11:..."); the '
        "weights are decrypted into memory only.", None)


@dataclasses.dataclass(frozen=True)
class E2EConfig:
    """``[e2e]``: request and response bodies encrypted end to end between a client and the runner.

    HPKE (RFC 9180) to the server's X25519 key; see :mod:`dsguard.checks.e2e` and
    :mod:`dsguard.crypto.e2e_client` for the client side.
    """

    private_key: Secret = doc(
        "X25519 private key: `file:PATH` (PKCS#8 PEM, or base64 of the 32 raw bytes) or `env:NAME` (base64 of the "
        "32 raw bytes). Its public half is published at `key_path`.")
    retired_keys: tuple[Secret, ...] = doc(
        "Earlier private keys, still accepted (not published) while clients move to the new one.", ())
    required: bool = doc("Refuse plaintext calls to `paths` (400 `e2e_required`); false accepts both there.", True)
    paths: tuple[str, ...] = doc(
        'Paths whose calls must be encrypted when `required` ("/v1/*" covers the prefix); an encrypted call is '
        "opened on any path.", ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"))
    max_age: Duration = doc("Oldest accepted request timestamp; each request's encapsulated key is remembered "
                            "in [storage] this long (plus twice `clock_skew`) against replay.", 300.0)
    clock_skew: Duration = doc("Clock difference allowed between client and server.", 5.0)
    key_path: str = doc("Path where the guard answers the public key document, before any check.",
                        "/.well-known/dsguard-e2e")


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """``[audit]``: every decision appended to a hash-chained JSON-lines log (see :mod:`dsguard.audit`)."""

    path: Path = doc("Audit log (JSON lines, hash-chained); rotated files sit beside it as "
                     "<name>.<first seq>.jsonl.")
    signing_key: str | None = doc(
        'Key URL signing the checkpoints (Ed25519 or P-256): "file:keys/audit.pem" (relative to this file), '
        '"env:NAME" or "pkcs11:token=...;object=..." (the key stays in the HSM); unset, checkpoints are unsigned.',
        None)
    checkpoint_every: int = doc("Records between two signed checkpoints (each anchors the chain head).", 1000)
    checkpoint_interval: Duration = doc(
        "Longest time records stay after the last checkpoint before the next one is written.", 60.0)
    rotate_size: Size = doc("Size at which the log is rotated (the chain continues in the new file); 0: never.",
                            100 * 1024 * 1024)
    rotate_interval: Duration = doc("Age at which the log is rotated; 0: never.", 86400.0)
    fsync: Literal["always", "interval", "never"] = doc(
        '"always": records are synced to disk as each batch is written; "interval": every fsync_interval; '
        '"never": left to the operating system (a process crash loses nothing written, a power loss may).',
        "always")
    fsync_interval: Duration = doc('Time between syncs under fsync = "interval".', 1.0)
    queue_size: int = doc("Records waiting for the writer thread before on_full applies.", 10000)
    on_full: Literal["block", "drop"] = doc(
        '"block": a record waits up to full_wait for room (under durability = "queued" after its response is '
        'sent: the call is not delayed), then is dropped; "drop": dropped at once. Drops are counted in '
        'dsguard.audit.drops; under durability = "written" a dropped record refuses its call (503).', "block")
    full_wait: Duration = doc('Longest a record waits for room under on_full = "block".', 1.0)
    durability: Literal["queued", "written"] = doc(
        '"queued": a call\'s record is queued once its response is sent, so writing never holds up a response, '
        "but a kill -9 loses the records still queued (those of the last responses). "
        '"written": the record is handed to the writer before the last chunk of the response (or the denial) is '
        'sent, and that chunk goes out only once the writer reports the record written (and synced, under '
        'fsync = "always"): every response a client received whole is in the log. If the record is not written '
        "within written_timeout, or cannot be (disk full, writer stopped, queue full), the response does not end "
        "as a success: one not yet started is answered 503 audit_unavailable instead; a started (streamed) one "
        "is cut off: its last chunk is never sent and the connection is closed. A call whose client left before "
        "its last chunk is still recorded, afterwards.", "queued")
    written_timeout: Duration = doc(
        'Longest a response waits for its record under durability = "written" before it is refused (the wait is '
        "also bounded by [pipeline] check_timeout, which answers 503 check_timeout). A record the writer has "
        "already started writing is waited for to the end, so that the answer matches the log: a refused call's "
        "record is never written later.", 2.0)
    log_prompts: bool = doc(
        "Write prompt fields (messages, prompt, input ...) into the log; off, only their SHA-256 and length.",
        False)


@dataclasses.dataclass(frozen=True)
class TelemetryConfig:
    """``[telemetry]``: metrics, traces, health endpoints and the Server-Timing header (see :mod:`dsguard.telemetry`).

    The metrics, health and readiness paths are answered by the guard itself, before any check:
    they are never passed to the app, never need credentials (but ``metrics_token``) and never
    count against rate limits.
    """

    prometheus: bool = doc("Expose a Prometheus scrape endpoint at `metrics_path`.", True)
    metrics_path: str = doc("Path of the Prometheus scrape endpoint.", "/metrics")
    metrics_token: Secret | None = doc(
        "Bearer token a scraper must send (Prometheus `authorization.credentials_file`); unset, the endpoint "
        "answers whoever reaches it, so keep its path off public listeners (the nginx example refuses it).", None)
    otlp_endpoint: str = doc(
        'OTLP/HTTP collector, e.g. "http://otel-collector:4318" (spans go to /v1/traces, metrics to /v1/metrics); '
        "empty for none. Needs opentelemetry-exporter-otlp-proto-http; headers come from "
        "OTEL_EXPORTER_OTLP_HEADERS.", "")
    otlp_interval: Duration = doc("How often metrics are pushed to the OTLP collector.", 15.0)
    service_name: str = doc("`service.name` of every metric and span.", "dsguard")
    traces: bool = doc("One span per call with a child span per check, sent to the OTLP collector and to span "
                       "processors added with `guard.telemetry.add_span_processor`.", True)
    trace_sample_ratio: float = doc("Fraction of calls traced, from 0 to 1 (a continued trace keeps its caller's "
                                    "choice).", 1.0)
    trace_context: Literal["trusted", "always", "never"] = doc(
        "With `traces` on, continue the caller's trace from its W3C `traceparent` (and `tracestate`): \"trusted\" "
        "only when the socket peer is in `[server] trusted_proxies`, \"always\", or \"never\". The app receives a "
        "`traceparent` naming dsguard's span, so its own spans nest under it; one that is not continued never "
        "reaches the app. With traces off, trace headers pass to the app untouched.",
        "trusted")
    routes: tuple[str, ...] = doc(
        'Paths named as themselves in the `route` attribute of metrics and spans ("/v1/models/*" names every path '
        'under the prefix); any other path is named "other", so callers cannot multiply the series.',
        ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/v1/models/*"))
    server_timing: bool = doc(
        "Add `Server-Timing: dsguard;dur=<ms>`, the time spent in the checks, to allowed and denied responses.", True)
    health_path: str = doc('Liveness endpoint: 200 {"status": "ok"} while the process serves; empty for none.',
                           "/healthz")
    ready_path: str = doc(
        'Readiness endpoint: 200 {"status": "ok"} when the checks have started, the storage answers, the policy is '
        'loaded and every registered probe (the runner\'s model) passes, else 503 {"status": "unavailable"}; '
        "empty for none.", "/readyz")
    ready_timeout: Duration = doc("Longest the readiness probes may take together before the answer is 503.", 1.0)
    global_providers: bool = doc(
        "Also make the meter and tracer providers OpenTelemetry's global ones (unless the process already has "
        "SDK providers), so instruments made through the OpenTelemetry API, the runner's and the app's, are "
        "exported too.", True)


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
    anomaly: AnomalyConfig | None = doc("Per-identity behaviour anomaly scoring.", None)
    runner: RunnerConfig | None = doc("Local ONNX model runner.", None)
    e2e: E2EConfig | None = doc("End-to-end encryption of request and response bodies.", None)
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

    def error(self, message: str, *path: str | int) -> ConfigError:
        """A ConfigError for the key at ``path`` (``"waf", "max_fields"``; ``"rate_limits", 0, "limit"``): the
        file, the key's line and its name as written (``[rate_limits] #1 limit``)."""
        return ConfigError(message, file=self.source, line=self.line_of(*path), key=render_key(path))


# Sections this version parses but whose feature is not built yet. A security feature that is
# configured but missing refuses to start in enforce mode (see ``on_unavailable``).
UNAVAILABLE: dict[str, tuple[str, bool]] = {}


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
    files = resources.files("dsguard.defaults")
    text = files.joinpath("dsguard.toml").read_text(encoding="utf-8")
    return parse_config(text, file="<embedded default>", base=Path(str(files)))
