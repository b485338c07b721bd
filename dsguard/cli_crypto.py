"""`dsguard model encrypt|decrypt|sign|verify` and `dsguard keys generate-kek|hsm-generate|softhsm-init`."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from ._cli import operator_errors

KEY_URL_HELP = "Key URL: file:PATH, env:NAME, pkcs11:...?module-path=...&pin-source=env:PIN, or a plugin's scheme."


@contextlib.contextmanager
def _byte_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.advance(task, done)


def _bundle(path: Path) -> Path:
    if str(path).startswith("bundled:"):
        raise click.UsageError("work on a copy of a bundled model: dsguard model make-tiny --output DIR")
    if not path.is_dir():
        raise click.ClickException(f"{path}: model bundle directory does not exist")
    return path


def _output(output: Path | None) -> Path | None:
    if output is not None and output.exists() and any(output.iterdir()):
        raise click.ClickException(f"{output}: exists and is not empty; choose another --output or remove it")
    return output


@click.command("encrypt")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key_url", required=True, metavar="URL", help=f"Key-encryption key. {KEY_URL_HELP}")
@click.option("--output", type=click.Path(path_type=Path, file_okay=False),
              help="Write the encrypted bundle here; without it, encrypt in place (plaintext weights removed).")
@click.option("--sign-key", metavar="URL", help="Also sign the encrypted bundle's manifest with this key.")
def encrypt(bundle: Path, key_url: str, output: Path | None, sign_key: str | None) -> None:
    """Encrypt BUNDLE's ONNX graphs and external data (AES-256-GCM, a fresh data key per file)."""
    from .crypto.keys import open_signer, open_wrapper
    from .crypto.manifest import sign_bundle
    from .crypto.weights import encrypt_bundle, total_size, weight_files

    source, target = _bundle(bundle), _output(output)
    with operator_errors():
        wrapper = open_wrapper(key_url)
        signer = open_signer(sign_key) if sign_key else None
        weights = weight_files(source)
        if not weights:
            raise click.ClickException(f"{source}: no ONNX graphs to encrypt")
        with _byte_progress("encrypting", total_size(source, weights)) as progress:
            written = encrypt_bundle(source, wrapper, target, progress=progress)
        result = target or source
        click.echo(f"encrypted {len(written)} files with {wrapper.key_id} into {result}")
        if signer is not None:
            sign_bundle(result, signer)
            click.echo(f"signed {result} with {signer.key_id}")
        else:
            click.echo(f"pin it: dsguard model sign {result} --key URL", err=True)


@click.command("decrypt")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key_url", required=True, metavar="URL", help=f"Key-encryption key. {KEY_URL_HELP}")
@click.option("--output", type=click.Path(path_type=Path, file_okay=False),
              help="Write the decrypted bundle here; without it, decrypt in place.")
def decrypt(bundle: Path, key_url: str, output: Path | None) -> None:
    """Decrypt BUNDLE's *.dsenc files (each written only once it authenticates completely)."""
    from .crypto.keys import open_wrapper
    from .crypto.weights import decrypt_bundle, encrypted_files, total_size

    source, target = _bundle(bundle), _output(output)
    with operator_errors():
        wrapper = open_wrapper(key_url)
        encrypted = encrypted_files(source)
        if not encrypted:
            raise click.ClickException(f"{source}: no encrypted files (*.dsenc)")
        with _byte_progress("decrypting", total_size(source, encrypted)) as progress:
            written = decrypt_bundle(source, wrapper, target, progress=progress)
    click.echo(f"decrypted {len(written)} files into {target or source}")


@click.command("sign")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key_url", required=True, metavar="URL", help=f"Ed25519 or P-256 signing key. {KEY_URL_HELP}")
def sign(bundle: Path, key_url: str) -> None:
    """Write BUNDLE/dsguard-manifest.json: the SHA-256 and size of every file, signed."""
    from .crypto.keys import open_signer
    from .crypto.manifest import sign_bundle

    with operator_errors():
        signer = open_signer(key_url)
        path = sign_bundle(_bundle(bundle), signer)
    click.echo(f"{path}: signed by {signer.key_id} ({signer.algorithm})")


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--public-key", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Trusted public key: PEM, or a JWKS (dsguard keys generate --out-jwks).")
def verify(bundle: Path, public_key: Path) -> None:
    """Check BUNDLE against its signed manifest; exit 1 naming the first file that does not match."""
    from .crypto.manifest import TrustedKeys, verify_bundle

    with operator_errors():
        verified = verify_bundle(_bundle(bundle), TrustedKeys.from_file(public_key))
    click.echo(f"{bundle}: ok, {len(verified.files)} files match the manifest signed by {verified.key_id}")


@click.command("generate-kek")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="File for the 32-byte AES-256 key (mode 0600); use it as --key file:PATH.")
def generate_kek(out: Path) -> None:
    """Make a key-encryption key file for development (production keys live in an HSM: hsm-generate)."""
    from .crypto.keys import LocalWrapper

    key = secrets.token_bytes(32)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{out} exists; a key-encryption key is never overwritten") from None
    except OSError as exc:
        raise click.ClickException(f"{out}: cannot write ({exc.strerror})") from None
    with os.fdopen(fd, "wb") as writer:
        writer.write(key)
    click.echo(LocalWrapper(key, str(out)).key_id)


@click.command("hsm-generate")
@click.argument("url", metavar="PKCS11_URL")
@click.option("--type", "key_type", required=True, type=click.Choice(("ed25519", "ec-p256", "aes-256")),
              help="ed25519 / ec-p256: a signing key pair; aes-256: a key-encryption key.")
@click.option("--out-public", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the public key (PEM) of a signing key here, for model verify or manifest_public_key.")
def hsm_generate(url: str, key_type: str, out_public: Path | None) -> None:
    """Generate a key inside the PKCS#11 token of PKCS11_URL (object= names it); it can never be exported."""
    from cryptography.hazmat.primitives import serialization

    from .crypto.keys import open_signer
    from .crypto.pkcs11 import generate_key

    if out_public is not None and key_type == "aes-256":
        raise click.UsageError("--out-public applies to signing keys (ed25519, ec-p256)")
    with operator_errors():
        key_id = generate_key(url, key_type)
        if out_public is not None:
            pem = open_signer(url).public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo)
            out_public.write_bytes(pem)
    click.echo(key_id)


@click.command("softhsm-init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--label", default="dsguard", show_default=True, help="Token label (token= in key URLs).")
@click.option("--pin-env", default="DSGUARD_HSM_PIN", show_default=True,
              help="Variable holding the user PIN (and the SO PIN, for this development token).")
def softhsm_init(directory: Path, label: str, pin_env: str) -> None:
    """Create a SoftHSM2 token in DIRECTORY for development; prints the SOFTHSM2_CONF line and a key URL."""
    from .crypto.softhsm import create_token

    pin = os.environ.get(pin_env)
    if not pin:
        raise click.ClickException(f"set {pin_env} to the PIN first")
    with operator_errors():
        token = create_token(directory, label, pin)
    click.echo(f"export SOFTHSM2_CONF={token.config}")
    click.echo(token.url("OBJECT", pin_source=f"env:{pin_env}"))


def register_model_commands(group: click.Group) -> None:
    for command in (encrypt, decrypt, sign, verify):
        group.add_command(command)


def register_key_commands(group: click.Group) -> None:
    for command in (generate_kek, hsm_generate, softhsm_init):
        group.add_command(command)
