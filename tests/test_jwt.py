"""The JWT check: valid tokens of each algorithm, the identity they make, the verified-token
cache, revocation, and the configuration it refuses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dsguard.checks.jwt import JWTCheck, build
from dsguard.context import RequestContext
from dsguard.decision import Denial
from dsguard.errors import ConfigError
from dsguard.services import Services
from dsguard.storage import StorageError
from dsguard.storage.memory import MemoryStorage
from dsguard.tokens.cache import TokenCache, VerifiedToken, token_digest
from dsguard.tokens.revocation import revoke

from .helpers import config
from .jwt_keys import (
    AUDIENCE,
    EC_P256,
    ED25519,
    HS_SECRET,
    ISSUER,
    RSA_A,
    GuardedApp,
    JWKSEndpoint,
    SigningKey,
    challenge_error,
    claims,
    error_code,
    jwt_config_text,
)


@pytest.fixture(scope="module")
def idp() -> Iterator[str]:
    endpoint = JWKSEndpoint(RSA_A, EC_P256, ED25519)
    with endpoint.running() as url:
        yield url


@pytest.fixture(scope="module")
def app(idp: str) -> GuardedApp:
    return GuardedApp(config(jwt_config_text(idp, extra='tenant_claim = "org"')))


class DownStorage:
    """A storage backend that cannot be reached."""

    async def add(self, key: str, ttl: float) -> bool:
        raise StorageError("connection refused")

    async def put(self, key: str, ttl: float) -> None:
        raise StorageError("connection refused")

    async def contains(self, key: str) -> bool:
        raise StorageError("connection refused")

    async def close(self) -> None:
        pass


def jwt_check(text: str, storage: Any = None) -> JWTCheck:
    cfg = config(text)
    check = build(cfg, Services(cfg, storage or MemoryStorage()))[0]
    assert isinstance(check, JWTCheck)
    return check


def run_check(check: JWTCheck, authorization: str) -> tuple[Denial | None, RequestContext]:
    ctx = RequestContext("GET", "/me", b"/me", b"", [(b"authorization", authorization.encode())], "127.0.0.1",
                         "http")

    async def go() -> Denial | None:
        outcome = check.check(ctx)
        if outcome is None or isinstance(outcome, Denial):
            return outcome
        try:
            return await outcome
        except Denial as denial:
            return denial

    return asyncio.run(go()), ctx


HS_ONLY = f"""
[identity.jwt]
algorithms = ["HS256"]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
secret = "{HS_SECRET}"
sender_constraint = "off"
"""
HS_KEY = SigningKey("hs", "HS256", HS_SECRET.encode())


@pytest.mark.parametrize("key", [RSA_A, EC_P256, ED25519], ids=lambda k: k.alg)
def test_valid_token_of_each_jwks_algorithm_identifies_the_caller(app: GuardedApp, key: SigningKey) -> None:
    response = app.call(key.sign(claims(sub=f"user-{key.alg}")))
    assert response.status_code == 200
    assert response.json()["subject"] == f"user-{key.alg}"
    assert response.json()["method"] == "jwt"
    assert response.json()["issuer"] == ISSUER


def test_hs256_token_verifies_with_the_static_secret() -> None:
    denial, ctx = run_check(jwt_check(HS_ONLY), "Bearer " + HS_KEY.sign(claims()))
    assert denial is None
    assert ctx.identity is not None and ctx.identity.subject == "alice"


def test_hs256_token_signed_with_another_secret_is_refused() -> None:
    other = SigningKey("hs", "HS256", b"another-secret-that-is-32-bytes-long!!")
    denial, _ = run_check(jwt_check(HS_ONLY), "Bearer " + other.sign(claims()))
    assert denial is not None and denial.code == "invalid_signature"


def test_roles_scopes_and_tenant_reach_the_app(app: GuardedApp) -> None:
    token = RSA_A.sign(claims(roles=["admin", "user"], scope="chat:write models:read", org="acme", jti="t-1",
                              cnf={"jkt": "thumb"}))
    body = app.call(token).json()
    assert body["roles"] == ["admin", "user"]
    assert body["scopes"] == ["chat:write", "models:read"]
    assert body["tenant"] == "acme"
    assert body["token_id"] == "t-1"
    assert body["confirmation"] == {"jkt": "thumb"}


def test_space_separated_roles_and_scp_list_are_read(app: GuardedApp) -> None:
    body = app.call(RSA_A.sign(claims(roles="reader writer", scp=["a", "b"]))).json()
    assert body["roles"] == ["reader", "writer"]
    assert body["scopes"] == ["a", "b"]


def test_identity_expires_with_the_token(app: GuardedApp) -> None:
    token_claims = claims()
    assert app.call(RSA_A.sign(token_claims)).json()["expires_at"] == token_claims["exp"]


def test_dpop_scheme_is_recorded_for_the_sender_check(app: GuardedApp) -> None:
    denial, ctx = run_check(app.check, "DPoP " + RSA_A.sign(claims()))
    assert denial is None
    assert ctx.attributes["auth_scheme"] == "DPoP"
    assert ctx.attributes["access_token"].count(".") == 2


def test_denial_on_dpop_scheme_challenges_with_dpop(app: GuardedApp) -> None:
    response = app.call(RSA_A.sign(claims(aud="elsewhere")), scheme="DPoP")
    assert response.headers["www-authenticate"].startswith("DPoP ")


def test_call_without_authorization_is_left_to_the_identity_gate(app: GuardedApp) -> None:
    response = app.call(None)
    assert response.status_code == 401
    assert error_code(response) == "unauthenticated"


def test_other_authorization_schemes_are_left_to_other_checks(app: GuardedApp) -> None:
    response = app.call("YWxpY2U6c2VjcmV0", scheme="Basic")
    assert response.status_code == 401
    assert error_code(response) == "unauthenticated"


def test_lower_case_bearer_scheme_is_accepted(app: GuardedApp) -> None:
    assert app.call(RSA_A.sign(claims()), scheme="bearer").status_code == 200


def test_empty_bearer_credentials_are_an_invalid_request(app: GuardedApp) -> None:
    response = app.call("", scheme="Bearer")
    assert response.status_code == 400
    assert error_code(response) == "malformed_authorization"
    assert challenge_error(response) == "invalid_request"


def test_repeated_authorization_header_is_an_invalid_request(app: GuardedApp) -> None:
    token = RSA_A.sign(claims())
    response = app.client.get("/me", headers=[("authorization", f"Bearer {token}"),
                                              ("authorization", f"Bearer {token}")])
    assert response.status_code == 400
    assert error_code(response) == "repeated_authorization"


def test_opaque_token_is_refused_without_introspection(app: GuardedApp) -> None:
    response = app.call("opaque-token-value")
    assert response.status_code == 401
    assert error_code(response) == "malformed_token"
    assert challenge_error(response) == "invalid_token"


def test_opaque_token_is_left_to_introspection_when_configured() -> None:
    text = HS_ONLY + """
[identity.introspection]
url = "https://idp.test/introspect"
client_id = "dsguard"
client_secret = "s3cret"
"""
    denial, ctx = run_check(jwt_check(text), "Bearer opaque-token-value")
    assert denial is None and ctx.identity is None
    assert ctx.attributes["access_token"] == "opaque-token-value"


def test_required_claims_from_config_are_enforced() -> None:
    check = jwt_check(HS_ONLY + 'required_claims = ["exp", "iat", "sub", "org"]')
    denial, _ = run_check(check, "Bearer " + HS_KEY.sign(claims()))
    assert denial is not None and denial.code == "missing_claim"
    assert "org" in denial.message


def test_rfc9068_typ_is_required_when_configured() -> None:
    check = jwt_check(HS_ONLY + 'require_typ = "at+jwt"')
    denial, _ = run_check(check, "Bearer " + HS_KEY.sign(claims(), typ="JWT"))
    assert denial is not None and denial.code == "invalid_token_type"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
def test_rfc9068_typ_matches_case_insensitively_with_or_without_prefix(typ: str) -> None:
    check = jwt_check(HS_ONLY + 'require_typ = "at+jwt"')
    denial, _ = run_check(check, "Bearer " + HS_KEY.sign(claims(), typ=typ))
    assert denial is None


def test_cache_hit_returns_the_same_identity() -> None:
    check = jwt_check(HS_ONLY)
    token = "Bearer " + HS_KEY.sign(claims())
    _, first = run_check(check, token)
    _, second = run_check(check, token)
    assert first.identity is not None
    assert second.identity is first.identity


def test_cache_is_keyed_by_digest_never_by_the_token() -> None:
    check = jwt_check(HS_ONLY)
    token = HS_KEY.sign(claims())
    run_check(check, "Bearer " + token)
    assert check.cache is not None
    assert token_digest(token) in check.cache
    assert token not in check.cache and token.encode() not in check.cache


def test_cache_size_zero_turns_the_cache_off() -> None:
    check = jwt_check(HS_ONLY + "cache_size = 0")
    denial, _ = run_check(check, "Bearer " + HS_KEY.sign(claims()))
    assert denial is None and check.cache is None


def test_cached_entry_is_dropped_once_the_token_expires() -> None:
    now = [1000.0]
    cache = TokenCache(10, clock=lambda: now[0])
    cache.put(b"digest", VerifiedToken(object(), 1005.0, "key"))  # type: ignore[arg-type]
    assert cache.get(b"digest") is not None
    now[0] = 1005.0
    assert cache.get(b"digest") is None
    assert len(cache) == 0


def test_cache_evicts_the_least_recently_used_when_full() -> None:
    cache = TokenCache(2, clock=lambda: 0.0)
    for name in (b"a", b"b"):
        cache.put(name, VerifiedToken(object(), 10.0, "key"))  # type: ignore[arg-type]
    cache.get(b"a")
    cache.put(b"c", VerifiedToken(object(), 10.0, "key"))  # type: ignore[arg-type]
    assert b"a" in cache and b"c" in cache and b"b" not in cache


def test_revoked_jti_is_refused_even_when_cached(app: GuardedApp) -> None:
    token_claims = claims()
    token = RSA_A.sign(token_claims)
    assert app.call(token).status_code == 200
    asyncio.run(revoke(app.storage, token_claims["jti"], token_claims["exp"]))
    response = app.call(token)
    assert response.status_code == 401
    assert error_code(response) == "token_revoked"
    assert challenge_error(response) == "invalid_token"


def test_revoked_jti_is_refused_on_first_sight() -> None:
    check = jwt_check(HS_ONLY)
    token_claims = claims()
    asyncio.run(revoke(check.storage, token_claims["jti"], token_claims["exp"]))
    denial, ctx = run_check(check, "Bearer " + HS_KEY.sign(token_claims))
    assert denial is not None and denial.code == "token_revoked"
    assert ctx.identity is None


def test_unreachable_revocation_storage_refuses_with_503() -> None:
    denial, _ = run_check(jwt_check(HS_ONLY, DownStorage()), "Bearer " + HS_KEY.sign(claims()))
    assert denial is not None and denial.status == 503
    assert denial.code == "storage_unavailable"
    assert ("Retry-After", "1") in denial.headers


def test_local_fallback_storage_setting_still_fails_closed_on_revocation() -> None:
    text = '[storage]\non_error = "local-fallback"\n' + HS_ONLY
    denial, _ = run_check(jwt_check(text, DownStorage()), "Bearer " + HS_KEY.sign(claims()))
    assert denial is not None and denial.code == "storage_unavailable"


def test_revocation_off_never_reads_storage() -> None:
    text = HS_ONLY.replace("[identity.jwt]", "[identity]\nrevocation = false\n[identity.jwt]")
    denial, _ = run_check(jwt_check(text, DownStorage()), "Bearer " + HS_KEY.sign(claims()))
    assert denial is None


def test_alg_none_in_config_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[identity.jwt\] algorithms: .*none"):
        jwt_check(HS_ONLY.replace('["HS256"]', '["HS256", "none"]'))


def test_unknown_algorithm_in_config_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[identity.jwt\] algorithms: unsupported algorithm 'XS256'"):
        jwt_check(HS_ONLY.replace('["HS256"]', '["XS256"]'))


def test_unreadable_secret_is_a_config_error_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSGUARD_TEST_MISSING_SECRET", raising=False)
    text = HS_ONLY.replace(f'"{HS_SECRET}"', '"env:DSGUARD_TEST_MISSING_SECRET"')
    with pytest.raises(ConfigError, match=r"dsguard.toml:\d+: \[identity.jwt\] secret: .*DSGUARD_TEST_MISSING"):
        jwt_check(text)


def test_short_hmac_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[identity.jwt\] secret: .*32 bytes"):
        jwt_check(HS_ONLY.replace(HS_SECRET, "short"))


def test_plain_http_jwks_url_off_loopback_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[identity.jwt\] jwks_url: .*https"):
        jwt_check(jwt_config_text("http://idp.example.com/jwks.json"))


def test_jwt_section_without_any_key_source_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[identity.jwt\] jwks_url: no key source"):
        jwt_check('[identity.jwt]\nalgorithms = ["RS256"]')


def test_verified_token_is_not_reverified_while_cached() -> None:
    check = jwt_check(HS_ONLY)
    token = HS_KEY.sign(claims())
    run_check(check, "Bearer " + token)
    check._pyjwt = None  # type: ignore[assignment]  # a re-verification would now raise
    denial, ctx = run_check(check, "Bearer " + token)
    assert denial is None and ctx.identity is not None


def test_token_expired_within_the_leeway_is_accepted() -> None:
    now = int(time.time())
    check = jwt_check(HS_ONLY + 'leeway = "2m"')
    denial, _ = run_check(check, "Bearer " + HS_KEY.sign(claims(iat=now - 300, exp=now - 30)))
    assert denial is None


def test_token_lifetime_is_measured_from_now_without_iat() -> None:
    check = jwt_check(HS_ONLY + 'required_claims = ["exp", "sub"]')
    denial, _ = run_check(check, "Bearer " + HS_KEY.sign(claims(iat=None, exp=int(time.time()) + 3600)))
    assert denial is not None and denial.code == "token_ttl_too_long"
