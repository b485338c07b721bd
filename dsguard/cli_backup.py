"""`dsguard backup create|verify|restore`: the configuration, policies, keys (wrapped) and audit logs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .errors import DSGuardError

if TYPE_CHECKING:
    from .crypto.keys import PublicKey


def _pinned(public_key_files: tuple[Path, ...]) -> dict[str, PublicKey] | None:
    from .audit.signing import load_public_keys

    if not public_key_files:
        return None
    keys: dict[str, PublicKey] = {}
    for path in public_key_files:
        try:
            keys.update(load_public_keys(path))
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"{path}: {exc}") from None
    return keys


@click.group("backup")
def backup_group() -> None:
    """Back up and restore policies, keys (wrapped only) and audit logs, as a tar with a manifest of digests."""


@backup_group.command("create")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="dsguard.toml naming the policies, keys and audit log.")
@click.option("--output", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Archive to write.")
@click.option("--wrap-key", metavar="URL", help="KEK URL (file:, env:, pkcs11:) wrapping the file: and env: private "
                                                "keys; without it they are left out (named in the manifest).")
@click.option("--sign-key", metavar="URL", help="Key URL signing the manifest (e.g. the audit signing key).")
def create(config_path: Path, output: Path, wrap_key: str | None, sign_key: str | None) -> None:
    """Write a backup archive."""
    from .backup import create_backup
    from .config import load_config

    if output.exists():
        raise click.ClickException(f"{output} exists; choose another --output")
    try:
        manifest = create_backup(load_config(config_path), output, wrap_url=wrap_key, sign_url=sign_key)
    except (DSGuardError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    roles: dict[str, int] = {}
    for entry in manifest["files"]:
        roles[entry["role"]] = roles.get(entry["role"], 0) + 1
    click.echo(f"{output}: " + ", ".join(f"{count} {role}" for role, count in sorted(roles.items())), err=True)
    for key in manifest["keys"]:
        if not key["stored"]:
            click.echo(f"  {key['setting']} ({key['reference']}): {key['reason']}", err=True)


@backup_group.command("verify")
@click.argument("archive", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--public-key", "public_key_files", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Require the manifest to be signed by this key (PEM, JWK or JWKS); repeatable.")
def verify(archive: Path, public_key_files: tuple[Path, ...]) -> None:
    """Check every member of ARCHIVE against its manifest (and signature) without writing anything."""
    from .backup import check_backup

    try:
        checked = check_backup(archive, public_keys=_pinned(public_key_files))
    except DSGuardError as exc:
        raise click.ClickException(str(exc)) from None
    signed = f", manifest signed by {checked.signed_by}" if checked.signed_by else ", manifest unsigned"
    click.echo(f"{archive}: OK: {len(checked.manifest['files'])} files match their digests{signed}")


@backup_group.command("restore")
@click.argument("archive", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--target", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="New or empty directory to restore into.")
@click.option("--unwrap-key", metavar="URL", help="KEK URL unsealing the wrapped keys (else restored sealed).")
@click.option("--public-key", "public_key_files", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Require the manifest to be signed by this key (PEM, JWK or JWKS); repeatable.")
def restore(archive: Path, target: Path, unwrap_key: str | None, public_key_files: tuple[Path, ...]) -> None:
    """Check ARCHIVE whole, then write its files under TARGET and verify the restored audit log."""
    from .audit.verify import verify_log
    from .backup import restore_backup

    try:
        checked = restore_backup(archive, target, public_keys=_pinned(public_key_files), unwrap_url=unwrap_key)
    except DSGuardError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{target}: restored {len(checked.manifest['files'])} files", err=True)
    audit = target / "audit"
    if audit.is_dir() and any(audit.glob("*.jsonl")):
        result = verify_log([audit])
        click.echo(f"audit log: {result.summary()}", err=True)
        if result.errors:
            raise click.ClickException("the restored audit log does not verify")
