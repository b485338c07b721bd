"""JWKS keys from a real HTTP endpoint and from a file: caching, rotation without restart,
unknown-kid storms, the identity provider going down, and the keys that are skipped."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from pathlib import Path

import httpx
import pytest

from dsguard.tokens.jwks import RemoteJWKS
from dsguard.tokens.keys import parse_jwks

from .helpers import config
from .jwt_keys import (
    AUDIENCE,
    EC_P256,
    ED25519,
    ISSUER,
    RSA_A,
    RSA_B,
    GuardedApp,
    JWKSEndpoint,
    ManualClock,
    claims,
    error_code,
    jwks,
    jwt_config_text,
)

TIMINGS = """
jwks_ttl = "5m"
jwks_refetch_cooldown = "30s"
jwks_stale_grace = "1h"
"""


def guarded(url: str, clock: ManualClock, extra: str = TIMINGS) -> GuardedApp:
    return GuardedApp(config(jwt_config_text(url, extra=extra)), clock)


def test_keys_are_fetched_once_and_reused_within_the_ttl() -> None:
    idp = JWKSEndpoint(RSA_A)
    with idp.running() as url:
        app = guarded(url, ManualClock())
        statuses = [app.call(RSA_A.sign(claims())).status_code for _ in range(5)]
    assert statuses == [200] * 5
    assert idp.hits == 1


def test_keys_are_fetched_again_after_the_ttl() -> None:
    idp, clock = JWKSEndpoint(RSA_A), ManualClock()
    with idp.running() as url:
        app = guarded(url, clock)
        app.call(RSA_A.sign(claims()))
        clock.advance(301)
        response = app.call(RSA_A.sign(claims()))
    assert response.status_code == 200
    assert idp.hits == 2


def test_rotation_mid_traffic_needs_no_restart() -> None:
    idp, clock = JWKSEndpoint(RSA_A), ManualClock()
    with idp.running() as url:
        app = guarded(url, clock)
        old_token = RSA_A.sign(claims())
        assert app.call(old_token).status_code == 200
        idp.serve(RSA_A, RSA_B)
        assert app.call(RSA_B.sign(claims())).status_code == 200
        assert app.call(RSA_A.sign(claims())).status_code == 200
        idp.serve(RSA_B)
        assert app.call(old_token).status_code == 200  # keys still fresh: A is not known to be gone
        clock.advance(301)
        retired = app.call(old_token)
        assert app.call(RSA_B.sign(claims())).status_code == 200
    assert retired.status_code == 401
    assert error_code(retired) == "unknown_key"
    assert idp.hits == 3


def test_unknown_kid_storm_fetches_at_most_once_per_cooldown() -> None:
    idp, clock = JWKSEndpoint(RSA_A), ManualClock()
    with idp.running() as url:
        app = guarded(url, clock)
        app.call(RSA_A.sign(claims()))
        forged = [RSA_A.sign(claims(), kid=uuid.uuid4().hex) for _ in range(40)]
        statuses = {app.call(token).status_code for token in forged}
        hits_during_storm = idp.hits
        clock.advance(31)
        app.call(RSA_A.sign(claims(), kid=uuid.uuid4().hex))
    assert statuses == {401}
    assert hits_during_storm == 2
    assert idp.hits == 3


def test_a_kid_found_unknown_does_not_trigger_fetches_again() -> None:
    idp, clock = JWKSEndpoint(RSA_A), ManualClock()
    with idp.running() as url:
        app = guarded(url, clock)
        probe = RSA_A.sign(claims(), kid="no-such-key")
        app.call(probe)
        for _ in range(3):
            clock.advance(31)
            response = app.call(probe)
    assert error_code(response) == "unknown_key"
    assert idp.hits == 2


def test_new_kid_seen_by_concurrent_calls_is_fetched_once() -> None:
    idp = JWKSEndpoint(RSA_A)
    with idp.running() as url:
        app = guarded(url, ManualClock())
        app.call(RSA_A.sign(claims()))
        idp.serve(RSA_A, RSA_B)
        tokens = [RSA_B.sign(claims()) for _ in range(20)]

        async def burst() -> list[int]:
            async with httpx.AsyncClient(transport=app.client.transport, base_url="http://testserver") as http:
                calls = [http.get("/me", headers={"authorization": f"Bearer {t}"}) for t in tokens]
                return [r.status_code for r in await asyncio.gather(*calls)]

        statuses = asyncio.run(burst())
    assert statuses == [200] * 20
    assert idp.hits == 2


def test_stale_keys_keep_working_while_the_idp_is_down_within_grace() -> None:
    idp, clock = JWKSEndpoint(RSA_A), ManualClock()
    with idp.running() as url:
        app = guarded(url, clock)
        app.call(RSA_A.sign(claims()))
        idp.failing = True
        clock.advance(301 + 1800)
        response = app.call(RSA_A.sign(claims()))
    assert response.status_code == 200
    assert idp.hits == 2


def test_keys_past_grace_with_the_idp_down_are_a_503() -> None:
    idp, clock = JWKSEndpoint(RSA_A), ManualClock()
    with idp.running() as url:
        app = guarded(url, clock)
        app.call(RSA_A.sign(claims()))
    clock.advance(300 + 3600 + 1)
    response = app.call(RSA_A.sign(claims()))
    assert response.status_code == 503
    assert error_code(response) == "idp_unavailable"
    assert int(response.headers["retry-after"]) >= 1


def test_idp_down_is_retried_at_most_once_per_backoff() -> None:
    idp, clock = JWKSEndpoint(RSA_A), ManualClock()
    with idp.running() as url:
        app = guarded(url, clock)
        app.call(RSA_A.sign(claims()))
        idp.failing = True
        clock.advance(301)
        statuses = {app.call(RSA_A.sign(claims())).status_code for _ in range(10)}
    assert statuses == {200}
    assert idp.hits == 2


def test_idp_down_at_startup_is_not_fatal_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    idp, clock = JWKSEndpoint(RSA_A), ManualClock()
    idp.failing = True
    with idp.running() as url:
        app = guarded(url, clock)
        with caplog.at_level(logging.WARNING, logger="dsguard.jwks"):
            down = app.call(RSA_A.sign(claims()))
        idp.failing = False
        clock.advance(6)
        up = app.call(RSA_A.sign(claims()))
    assert down.status_code == 503 and error_code(down) == "idp_unavailable"
    assert "unreachable at startup" in caplog.text
    assert up.status_code == 200


def test_concurrent_calls_share_one_fetch() -> None:
    idp = JWKSEndpoint(RSA_A)
    remote = None
    with idp.running() as url:
        remote = RemoteJWKS(url, ttl=300, timeout=2, cooldown=30, grace=3600, clock=ManualClock())

        async def many() -> None:
            await asyncio.gather(*(remote.current() for _ in range(25)))

        asyncio.run(many())
    assert idp.hits == 1
    assert remote.keys.kids == {"rsa-a"}


def test_jwks_file_keys_verify_tokens(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(ED25519, EC_P256)))
    app = GuardedApp(config(file_config(path)))
    assert app.call(ED25519.sign(claims())).status_code == 200
    assert app.call(EC_P256.sign(claims())).status_code == 200


def test_jwks_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(ED25519)))
    app = GuardedApp(config(file_config(path)))
    app.check.keys.file.recheck_interval = 0
    path.write_text(json.dumps(jwks(EC_P256)))
    os.utime(path, ns=(1, 1))
    assert app.call(EC_P256.sign(claims())).status_code == 200
    assert error_code(app.call(ED25519.sign(claims()))) == "unknown_key"


def file_config(path: Path) -> str:
    return f"""
[transport]
require_https = false
[identity.jwt]
algorithms = ["ES256", "EdDSA"]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = "{path}"
sender_constraint = "off"
"""


def test_private_encryption_and_unsupported_keys_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    private = {**ED25519.public_jwk(), "kid": "private", "d": "AAAA"}
    encryption = {**RSA_A.public_jwk(), "kid": "enc", "use": "enc"}
    unknown = {"kty": "XYZ", "kid": "odd"}
    symmetric = {"kty": "oct", "kid": "sym", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}
    mismatched = {**EC_P256.public_jwk(), "kid": "mismatch", "alg": "RS256"}
    with caplog.at_level(logging.WARNING, logger="dsguard.jwks"):
        keys = parse_jwks({"keys": [private, encryption, unknown, symmetric, mismatched, RSA_B.public_jwk()]},
                          source="test")
    assert keys.kids == {"rsa-b"}
    for kid in ("private", "enc", "odd", "sym", "mismatch"):
        assert kid in caplog.text


def test_each_key_is_bound_to_the_algorithms_of_its_type() -> None:
    rsa_without_alg = {k: v for k, v in RSA_A.public_jwk().items() if k != "alg"}
    keys = parse_jwks({"keys": [rsa_without_alg, EC_P256.public_jwk(), ED25519.public_jwk()]}, source="test")
    by_kid = {k.kid: k.algorithms for k in keys.keys}
    assert by_kid["rsa-a"] == {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
    assert by_kid["ec-1"] == {"ES256"}
    assert by_kid["ed-1"] == {"EdDSA"}


def test_rsa_keys_under_2048_bits_are_skipped() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from .jwt_keys import SigningKey

    weak = SigningKey("weak", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    assert len(parse_jwks({"keys": [weak.public_jwk()]}, source="test")) == 0
