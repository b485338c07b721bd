"""`dsguard keys generate`, `dsguard token issue` and `dsguard token revoke`."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis.asyncio
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from dsguard import GuardMiddleware
from dsguard.cli import main
from dsguard.storage.redis import RedisStorage
from dsguard.tokens.keys import jwk_thumbprint
from dsguard.tokens.revocation import is_revoked, revocation_key

from .helpers import InProcess, starlette_app

KEY_TYPES = {"ed25519": ("OKP", "EdDSA"), "ec-p256": ("EC", "ES256"), "rsa": ("RSA", "RS256")}


def dsguard(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def generate(tmp_path: Path, key_type: str = "ed25519", private: str = "private.pem", *extra: str) -> Result:
    bits = ("--bits", "2048") if key_type == "rsa" else ()
    return dsguard("keys", "generate", "--type", key_type, *bits, "--out-jwks", str(tmp_path / "jwks.json"),
                   "--out-private", str(tmp_path / private), *extra)


def jwks(tmp_path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((tmp_path / "jwks.json").read_text())
    return document


def issue(private_key: Path, *args: str) -> str:
    result = dsguard("token", "issue", "--private-key", str(private_key), *args)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def verify(tmp_path: Path, token: str, **options: Any) -> dict[str, Any]:
    key = jwt.PyJWKSet(jwks(tmp_path)["keys"])[jwt.get_unverified_header(token)["kid"]]
    claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=[key.algorithm_name], **options)
    return claims


def assert_clear_error(result: Result, message: str) -> None:
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_generate_writes_a_jwks_that_pyjwt_loads(tmp_path: Path, key_type: str) -> None:
    result = generate(tmp_path, key_type)
    assert result.exit_code == 0, result.output
    [key] = jwt.PyJWKSet(jwks(tmp_path)["keys"]).keys
    kty, alg = KEY_TYPES[key_type]
    assert (key.key_type, key.algorithm_name, key.key_id) == (kty, alg, result.stdout.strip())
    assert jwks(tmp_path)["keys"][0]["use"] == "sig"


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_jwks_holds_no_private_key_material(tmp_path: Path, key_type: str) -> None:
    generate(tmp_path, key_type)
    [jwk] = jwks(tmp_path)["keys"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & jwk.keys()


def test_default_kid_is_the_rfc7638_thumbprint(tmp_path: Path) -> None:
    generate(tmp_path, "ec-p256")
    [jwk] = jwks(tmp_path)["keys"]
    assert jwk["kid"] == jwk_thumbprint(jwk)


def test_thumbprint_matches_the_rfc7638_example() -> None:
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZ"
        "Hzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kE"
        "gU8awapJzKnqDKgw")}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_issued_token_verifies_with_the_jwks_and_carries_the_requested_claims(tmp_path: Path, key_type: str) -> None:
    generate(tmp_path, key_type)
    token = issue(tmp_path / "private.pem", "--sub", "alice", "--iss", "https://idp.test", "--aud", "deepseek-api",
                  "--ttl", "10m", "--scope", "chat read", "--role", "admin", "--role", "user",
                  "--claim", "tenant=acme", "--claim", "tier=3", "--typ", "at+jwt")
    claims = verify(tmp_path, token, audience="deepseek-api", issuer="https://idp.test")
    assert claims["sub"] == "alice"
    assert claims["scope"] == "chat read"
    assert claims["roles"] == ["admin", "user"]
    assert (claims["tenant"], claims["tier"]) == ("acme", 3)
    assert claims["exp"] - claims["iat"] == 600
    assert claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - time.time()) < 60
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    assert jwt.get_unverified_header(token)["alg"] == KEY_TYPES[key_type][1]


def test_issued_tokens_get_a_fresh_random_jti_each(tmp_path: Path) -> None:
    generate(tmp_path)
    first, second = (verify(tmp_path, issue(tmp_path / "private.pem", "--sub", "alice")) for _ in range(2))
    assert first["jti"] != second["jti"]
    assert len(first["jti"]) >= 16


def test_issued_token_keeps_an_explicit_jti_and_kid(tmp_path: Path) -> None:
    generate(tmp_path, "ed25519", "private.pem", "--kid", "signing-2026")
    token = issue(tmp_path / "private.pem", "--sub", "alice", "--jti", "token-42", "--kid", "signing-2026")
    assert verify(tmp_path, token)["jti"] == "token-42"
    assert jwt.get_unverified_header(token)["kid"] == "signing-2026"


def test_issued_token_has_a_15_minute_lifetime_by_default(tmp_path: Path) -> None:
    generate(tmp_path)
    claims = verify(tmp_path, issue(tmp_path / "private.pem", "--sub", "alice"))
    assert claims["exp"] - claims["iat"] == 900


def test_rotation_adds_a_key_and_keeps_the_old_one_verifying(tmp_path: Path) -> None:
    old = generate(tmp_path, "rsa", "old.pem").stdout.strip()
    old_token = issue(tmp_path / "old.pem", "--sub", "alice")
    new = generate(tmp_path, "ed25519", "new.pem").stdout.strip()
    assert [key["kid"] for key in jwks(tmp_path)["keys"]] == [old, new]
    assert verify(tmp_path, old_token)["sub"] == "alice"
    assert verify(tmp_path, issue(tmp_path / "new.pem", "--sub", "bob"))["sub"] == "bob"


def test_a_kid_already_in_the_jwks_is_refused(tmp_path: Path) -> None:
    generate(tmp_path, "ed25519", "first.pem", "--kid", "k1")
    result = generate(tmp_path, "ed25519", "second.pem", "--kid", "k1")
    assert_clear_error(result, "already holds kid 'k1'")
    assert len(jwks(tmp_path)["keys"]) == 1


def test_private_key_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    generate(tmp_path)
    assert stat.S_IMODE((tmp_path / "private.pem").stat().st_mode) == 0o600


def test_an_existing_private_key_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "private.pem").write_text("the key in use")
    result = generate(tmp_path)
    assert_clear_error(result, "pass --force")
    assert (tmp_path / "private.pem").read_text() == "the key in use"
    assert not (tmp_path / "jwks.json").exists()


def test_force_overwrites_the_private_key_and_makes_it_owner_only(tmp_path: Path) -> None:
    (tmp_path / "private.pem").write_text("old")
    (tmp_path / "private.pem").chmod(0o644)
    result = generate(tmp_path, "ed25519", "private.pem", "--force")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "private.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE((tmp_path / "private.pem").stat().st_mode) == 0o600


def test_an_unknown_key_type_is_a_clear_error(tmp_path: Path) -> None:
    assert_clear_error(generate(tmp_path, "dsa"), "unknown key type 'dsa'")


def test_bits_for_a_non_rsa_key_is_a_clear_error(tmp_path: Path) -> None:
    assert_clear_error(generate(tmp_path, "ed25519", "private.pem", "--bits", "4096"), "--bits applies to rsa")


def test_a_jwks_file_that_is_not_a_jwks_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text('["not", "a", "jwks"]')
    assert_clear_error(generate(tmp_path), "not a JWKS")


def test_issue_refuses_a_file_that_is_not_a_private_key(tmp_path: Path) -> None:
    generate(tmp_path)
    result = dsguard("token", "issue", "--private-key", str(tmp_path / "jwks.json"), "--sub", "alice")
    assert_clear_error(result, "not an unencrypted PEM private key")


def test_issue_refuses_a_missing_private_key_file(tmp_path: Path) -> None:
    result = dsguard("token", "issue", "--private-key", str(tmp_path / "absent.pem"), "--sub", "alice")
    assert_clear_error(result, "cannot read the private key")


@pytest.mark.parametrize("make_key", [lambda: ec.generate_private_key(ec.SECP384R1()),
                                      x25519.X25519PrivateKey.generate], ids=["ec-p384", "x25519"])
def test_issue_refuses_a_private_key_of_an_unsupported_type(tmp_path: Path, make_key: Callable[[], Any]) -> None:
    pem = make_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    (tmp_path / "other.pem").write_bytes(pem)
    result = dsguard("token", "issue", "--private-key", str(tmp_path / "other.pem"), "--sub", "alice")
    assert_clear_error(result, "unsupported key")


@pytest.mark.parametrize("ttl", ["soon", "0s", "-5m"])
def test_issue_refuses_a_bad_ttl(tmp_path: Path, ttl: str) -> None:
    generate(tmp_path)
    result = dsguard("token", "issue", "--private-key", str(tmp_path / "private.pem"), "--sub", "a", "--ttl", ttl)
    assert_clear_error(result, "--ttl")


@pytest.mark.parametrize("alg", ["HS256", "none", "EdDSA"])
def test_issue_refuses_an_algorithm_that_does_not_fit_the_key(tmp_path: Path, alg: str) -> None:
    generate(tmp_path, "rsa")
    result = dsguard("token", "issue", "--private-key", str(tmp_path / "private.pem"), "--sub", "a", "--alg", alg)
    assert_clear_error(result, f"--alg {alg} does not fit a RSA key")


def test_issue_refuses_a_claim_without_a_value(tmp_path: Path) -> None:
    generate(tmp_path)
    result = dsguard("token", "issue", "--private-key", str(tmp_path / "private.pem"), "--sub", "a",
                     "--claim", "tenant")
    assert_clear_error(result, "expected NAME=VALUE")


def storage_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "dsguard.toml"
    path.write_text(f'[storage]\nurl = "{url}"\n')
    return path


def revocation_ttl(url: str, jti: str) -> float | None:
    """Seconds the revocation of ``jti`` has left in Redis; None if it is not revoked."""

    async def main() -> float | None:
        storage, client = RedisStorage(url), redis.asyncio.Redis.from_url(url)
        try:
            if not await is_revoked(storage, jti):
                return None
            return float(await client.pttl(f"dsguard:{revocation_key(jti)}")) / 1000
        finally:
            await storage.close()
            await client.aclose()

    return asyncio.run(main())


def test_revoke_writes_the_jti_to_redis_until_the_given_duration(tmp_path: Path, redis_server: str) -> None:
    result = dsguard("token", "revoke", "--config", str(storage_config(tmp_path, redis_server)),
                     "--jti", "jti-duration", "--until", "15m")
    assert result.exit_code == 0, result.output
    ttl = revocation_ttl(redis_server, "jti-duration")
    assert ttl is not None and 800 < ttl <= 900


def test_revoke_writes_the_jti_to_redis_until_a_unix_time(tmp_path: Path, redis_server: str) -> None:
    until = int(time.time()) + 3600
    result = dsguard("token", "revoke", "--config", str(storage_config(tmp_path, redis_server)),
                     "--jti", "jti-unix-time", "--until", str(until))
    assert result.exit_code == 0, result.output
    ttl = revocation_ttl(redis_server, "jti-unix-time")
    assert ttl is not None and 3500 < ttl <= 3600


def test_revoke_refuses_process_local_memory_storage(tmp_path: Path) -> None:
    result = dsguard("token", "revoke", "--config", str(storage_config(tmp_path, "memory://")),
                     "--jti", "j1", "--until", "15m")
    assert_clear_error(result, "revocations need shared storage")


def test_revoke_refuses_an_until_already_past(tmp_path: Path, redis_server: str) -> None:
    result = dsguard("token", "revoke", "--config", str(storage_config(tmp_path, redis_server)),
                     "--jti", "j-past", "--until", str(int(time.time()) - 10))
    assert_clear_error(result, "already past")
    assert revocation_ttl(redis_server, "j-past") is None


def test_revoke_with_redis_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = dsguard("token", "revoke", "--config", str(storage_config(tmp_path, f"redis://127.0.0.1:{port}/0")),
                     "--jti", "j1", "--until", "15m")
    assert_clear_error(result, "cannot write the revocation")


def test_a_token_revoked_with_the_cli_is_refused_by_a_guard_sharing_the_redis(tmp_path: Path,
                                                                               redis_server: str) -> None:
    generate(tmp_path)
    token = issue(tmp_path / "private.pem", "--sub", "alice", "--jti", "jti-end-to-end")
    path = tmp_path / "dsguard.toml"
    path.write_text(f'[transport]\nrequire_https = false\n[storage]\nurl = "{redis_server}"\n'
                    f'[identity.jwt]\nalgorithms = ["EdDSA"]\njwks_file = "{tmp_path / "jwks.json"}"\n')
    http = InProcess(GuardMiddleware(starlette_app(), config=str(path)))
    assert http.get("/whoami", headers={"authorization": f"Bearer {token}"}).json()["subject"] == "alice"
    result = dsguard("token", "revoke", "--config", str(path), "--jti", "jti-end-to-end", "--until", "15m")
    assert result.exit_code == 0, result.output
    response = http.get("/whoami", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_revoked"
