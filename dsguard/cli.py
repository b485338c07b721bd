"""The ``dsguard`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__
from .cli_policy import policy_group
from .config import Config, default_config, load_config, unavailable_features
from .errors import ConfigError, DSGuardError
from .tokens.keys import jwk_thumbprint
from .units import parse_duration

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

    SigningKey = Ed25519PrivateKey | EllipticCurvePrivateKey | RSAPrivateKey


def _load(path: Path | None) -> Config:
    try:
        return load_config(path) if path is not None else default_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dsguard")
def main() -> None:
    """dsguard: a zero-trust guard for LLM inference endpoints."""


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              help="dsguard.toml; without it, the embedded default: the runner on the bundled tiny model, "
                   "example policies, on 127.0.0.1:8000.")
@click.option("--host", help="Override [server] host.")
@click.option("--port", type=int, help="Override [server] port.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(config_path: Path | None, host: str | None, port: int | None, log_level: str) -> None:
    """Serve the runner's OpenAI-compatible API behind the guard (TLS 1.3 when a certificate is configured).

    A configuration without [runner] serves the demo app that shows what the guard verified.
    """
    from .adapters.asgi import GuardMiddleware
    from .guard import Guard
    from .server import build_server, embedded_default_path, open_runner

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with embedded_default_path() as default_path:
        config = _load(config_path or default_path)
    runner = None
    try:
        guard = Guard(config)
        if config.runner is not None:
            runner = open_runner(config.runner)
            app = runner.app
        else:
            from .demo import create_app

            app = create_app()
        server = build_server(GuardMiddleware(app, config=guard), config, host=host, port=port,
                              log_level=log_level)
    except DSGuardError as exc:
        if runner is not None:
            runner.close()
        raise click.ClickException(str(exc)) from None
    scheme = "https" if config.server.tls_cert else "http"
    served = f", {runner.summary}" if runner is not None else ""
    click.echo(f"dsguard {__version__}: {config_path or 'embedded default'} -> "
               f"{scheme}://{server.config.host}:{server.config.port}{served}", err=True)
    try:
        server.run()
    finally:
        if runner is not None:
            runner.close()
    if not server.started:
        sys.exit(1)


@main.group("config")
def config_group() -> None:
    """Inspect configuration files."""


@config_group.command("check")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def config_check(path: Path) -> None:
    """Validate PATH; exit 1 on an error or a configured security feature that is unavailable."""
    from .guard import Guard

    config = _load(path)
    problems = 0
    for missing in unavailable_features(config):
        where = f"{path}:{missing.line}" if missing.line else str(path)
        severity = "error" if missing.security and config.on_unavailable == "refuse" else "warning"
        problems += severity == "error"
        click.echo(f"{where}: {severity}: [{missing.section}] {missing.feature} is not available in this version",
                   err=True)
    if problems:
        raise SystemExit(1)
    try:
        Guard(config)
    except DSGuardError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{path}: ok")


@config_group.command("keys")
def config_keys() -> None:
    """List every configuration key with its default and meaning."""
    import dataclasses
    import types
    import typing

    from . import config as schema

    def section_of(hint: object) -> tuple[type, str] | None:
        """The dataclass a field holds (``X``, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``) and its suffix."""
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return hint, ""
        if origin in (typing.Union, types.UnionType):
            inner = [arg for arg in args if arg is not type(None)]
            return section_of(inner[0]) if len(inner) == 1 else None
        if origin is tuple and args:
            found = section_of(args[0])
            return (found[0], "[]") if found else None
        if origin is dict and len(args) == 2:
            found = section_of(args[1])
            return (found[0], ".NAME") if found else None
        return None

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if "doc" not in field.metadata:
                continue
            section = section_of(hints[field.name])
            if section is not None:
                walk(section[0], f"{prefix}{field.name}{section[1]}.")
                continue
            if field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = field.default if field.default is not dataclasses.MISSING else "(required)"
            click.echo(f"{prefix}{field.name} = {default!r}\n    {field.metadata['doc']}")

    walk(schema.Config, "")


# --- keys and dev/test tokens ------------------------------------------------------------------------------------

KEY_TYPES = ("ed25519", "ec-p256", "rsa")
RSA_BITS = (2048, 3072, 4096)
_ALGORITHMS = {"OKP": ("EdDSA",), "EC": ("ES256",), "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")}


def _new_private_key(key_type: str, bits: int | None) -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if key_type not in KEY_TYPES:
        raise click.ClickException(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")
    if bits is not None and key_type != "rsa":
        raise click.ClickException("--bits applies to rsa keys only")
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    bits = 3072 if bits is None else bits
    if bits not in RSA_BITS:
        raise click.ClickException(f"--bits {bits}: expected one of {', '.join(map(str, RSA_BITS))}")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _public_jwk(key: PublicKeyTypes) -> dict[str, Any]:
    """The public JWK of ``key`` (Ed25519, EC P-256 or RSA), without ``kid``/``alg``/``use``."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    if isinstance(key, ed25519.Ed25519PublicKey):
        return dict(OKPAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return dict(ECAlgorithm.to_jwk(key, as_dict=True))
    if isinstance(key, rsa.RSAPublicKey):
        return dict(RSAAlgorithm.to_jwk(key, as_dict=True))
    raise click.ClickException(f"unsupported key ({type(key).__name__}); expected Ed25519, EC P-256 or RSA")


def _read_jwks(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{path}: not a readable JWKS ({exc})") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not all(isinstance(key, dict) for key in keys):
        raise click.ClickException(f'{path}: not a JWKS (expected {{"keys": [...]}})')
    return keys


def _write_private_key(path: Path, key: SigningKey, *, force: bool) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{path} exists; pass --force to overwrite the private key") from None
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(pem)


def _write_json(path: Path, document: object) -> None:
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(path)


def _load_private_key(path: Path) -> SigningKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise click.ClickException(f"{path}: cannot read the private key ({exc.strerror})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise click.ClickException(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise click.ClickException(f"{path}: unsupported key ({type(key).__name__}); expected Ed25519, EC P-256 "
                                   "or RSA")
    return key


def _duration(option: str, text: str) -> float:
    try:
        seconds = float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError:
        raise click.ClickException(f'{option} {text!r}: expected a duration like "15m" or "30s"') from None
    if seconds <= 0:
        raise click.ClickException(f"{option} {text!r}: expected a duration above zero")
    return seconds


def _claim_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@main.group("keys")
def keys_group() -> None:
    """Signing keys for tokens: a private PEM for the issuer, a public JWKS for dsguard."""


@keys_group.command("generate")
@click.option("--type", "key_type", required=True, metavar="|".join(KEY_TYPES), help="Key type.")
@click.option("--bits", type=int, help="RSA modulus size: 2048, 3072 (default) or 4096.")
@click.option("--kid", help="Key id; defaults to the RFC 7638 thumbprint.")
@click.option("--out-jwks", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Public JWKS; an existing file keeps its keys and gains this one (rotation).")
@click.option("--out-private", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Private key, PKCS#8 PEM, written with mode 0600.")
@click.option("--force", is_flag=True, help="Overwrite an existing private key file.")
def keys_generate(key_type: str, bits: int | None, kid: str | None, out_jwks: Path, out_private: Path,
                  force: bool) -> None:
    """Make a key pair: add its public key to a JWKS and write its private key."""
    if out_private.exists() and not force:
        raise click.ClickException(f"{out_private} exists; pass --force to overwrite the private key")
    keys = _read_jwks(out_jwks)
    key = _new_private_key(key_type, bits)
    jwk = _public_jwk(key.public_key())
    jwk["kid"] = kid or jwk_thumbprint(jwk)
    if any(existing.get("kid") == jwk["kid"] for existing in keys):
        raise click.ClickException(f"{out_jwks} already holds kid {jwk['kid']!r}; choose another --kid")
    jwk.pop("key_ops", None)  # RFC 7517 4.3: "use" alone says what the key is for
    jwk = {"kid": jwk.pop("kid"), "kty": jwk["kty"], "alg": _ALGORITHMS[jwk["kty"]][0], "use": "sig", **jwk}
    try:
        _write_private_key(out_private, key, force=force)
        _write_json(out_jwks, {"keys": [*keys, jwk]})
    except OSError as exc:
        raise click.ClickException(f"{exc.filename}: cannot write ({exc.strerror})") from None
    click.echo(jwk["kid"])


@main.group("token")
def token_group() -> None:
    """Dev/test tokens and revocation."""


@token_group.command("issue")
@click.option("--private-key", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="PEM private key (from `dsguard keys generate`).")
@click.option("--kid", help="Key id in the header; defaults to the key's RFC 7638 thumbprint.")
@click.option("--alg", help="JWS algorithm; defaults to EdDSA, ES256 or RS256 after the key type.")
@click.option("--sub", required=True, help="Subject.")
@click.option("--iss", help="Issuer.")
@click.option("--aud", help="Audience.")
@click.option("--ttl", default="15m", show_default=True, help="Lifetime (exp - iat).")
@click.option("--scope", help='Granted scopes, space-separated ("chat read").')
@click.option("--role", "roles", multiple=True, help="A role (repeatable).")
@click.option("--claim", "claims", multiple=True, metavar="NAME=VALUE",
              help="Another claim, VALUE as JSON or else text (repeatable; applied last).")
@click.option("--typ", help='JOSE header typ, e.g. "at+jwt" (RFC 9068).')
@click.option("--jti", default="auto", show_default=True, help="Token id; auto makes a random one.")
def token_issue(private_key: Path, kid: str | None, alg: str | None, sub: str, iss: str | None, aud: str | None,
                ttl: str, scope: str | None, roles: tuple[str, ...], claims: tuple[str, ...], typ: str | None,
                jti: str) -> None:
    """Print a signed JWT for development and tests."""
    import jwt

    key = _load_private_key(private_key)
    jwk = _public_jwk(key.public_key())
    allowed = _ALGORITHMS[jwk["kty"]]
    if alg is None:
        alg = allowed[0]
    elif alg not in allowed:
        raise click.ClickException(f"--alg {alg} does not fit a {jwk['kty']} key; use one of {', '.join(allowed)}")
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, "nbf": now, "exp": now + round(_duration("--ttl", ttl)),
                               "jti": secrets.token_urlsafe(16) if jti == "auto" else jti}
    optional = {"iss": iss, "aud": aud, "scope": scope, "roles": list(roles) or None}
    payload.update({name: value for name, value in optional.items() if value is not None})
    for item in claims:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.ClickException(f"--claim {item!r}: expected NAME=VALUE")
        payload[name] = _claim_value(value)
    headers: dict[str, Any] = {"kid": kid or jwk_thumbprint(jwk)}
    if typ:
        headers["typ"] = typ
    click.echo(jwt.encode(payload, key, algorithm=alg, headers=headers))


def _revocation_end(text: str, now: float) -> float:
    """``--until`` as a unix time: given as one, or as a duration from now."""
    try:
        until = float(text)
    except ValueError:
        until = now + _duration("--until", text)
    if not math.isfinite(until):
        raise click.ClickException(f"--until {text!r}: expected a unix time or a duration like \"15m\"")
    if until <= now:
        raise click.ClickException(f"--until {text!r} is already past")
    return until


async def _revoke(config: Config, jti: str, until: float) -> None:
    from .storage import StorageError, open_storage
    from .tokens.revocation import revoke

    storage = open_storage(config.storage.url)
    try:
        await revoke(storage, jti, until)
    except StorageError as exc:
        raise click.ClickException(f"cannot write the revocation: {exc}") from None
    finally:
        await storage.close()


@token_group.command("revoke")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="dsguard.toml whose [storage] the guards share.")
@click.option("--jti", required=True, help="Id of the token to revoke.")
@click.option("--until", required=True,
              help='Unix time, or a duration from now ("15m"), after which the token is expired anyway.')
def token_revoke(config_path: Path, jti: str, until: str) -> None:
    """Deny the token with this jti on every replica until it expires."""
    config = _load(config_path)
    if config.storage.url.startswith("memory:"):
        raise click.ClickException(f"{config_path}: [storage] url is memory://, which lives inside each guard "
                                   "process; revocations need shared storage (redis://)")
    end = _revocation_end(until, time.time())
    try:
        asyncio.run(_revoke(config, jti, end))
    except ValueError as exc:
        raise click.ClickException(f"{config_path}: [storage] url: {exc}") from None
    click.echo(f"revoked {jti} until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(end))}", err=True)


from .cli_audit import audit_group  # noqa: E402
from .cli_backup import backup_group  # noqa: E402
from .cli_bench import bench  # noqa: E402
from .cli_crypto import register_key_commands  # noqa: E402
from .cli_model import model_group  # noqa: E402
from .cli_sign import sign  # noqa: E402

register_key_commands(keys_group)
main.add_command(sign)
main.add_command(policy_group)
main.add_command(model_group)
main.add_command(bench)
main.add_command(audit_group)
main.add_command(backup_group)


if __name__ == "__main__":
    main()
