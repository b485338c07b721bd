"""`dsguard audit verify|report`: check the audit log's integrity, report on a compliance standard."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .errors import DSGuardError

if TYPE_CHECKING:
    from .crypto.keys import PublicKey

EXIT_CODES = """Exit codes: 0 verified and anchored; 1 tampering found; 2 unreadable or no records;
3 intact but incomplete (records after the last signed checkpoint, a torn last line, unsigned checkpoints)."""


class UsageProblem(click.ClickException):
    exit_code = 2


def _pinned(key_urls: Sequence[str], public_key_files: Sequence[Path]) -> dict[str, PublicKey] | None:
    from .audit.signing import load_public_keys, open_checkpoint_signer

    if not key_urls and not public_key_files:
        return None
    keys: dict[str, PublicKey] = {}
    for url in key_urls:
        try:
            signer = open_checkpoint_signer(url)
        except DSGuardError as exc:
            raise UsageProblem(str(exc)) from None
        keys[signer.key_id] = signer.public_key()
    for path in public_key_files:
        try:
            keys.update(load_public_keys(path))
        except (OSError, ValueError) as exc:
            raise UsageProblem(f"{path}: {exc}") from None
    return keys


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log: verify it, report on it."""


@audit_group.command("verify", epilog=EXIT_CODES)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--key", "key_urls", multiple=True, metavar="URL",
              help="Pin the checkpoint key of this key URL (file:, env:, pkcs11:); repeatable.")
@click.option("--public-key", "public_key_files", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Pin a checkpoint key from a PEM public key, a JWK or a JWKS file; repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(paths: tuple[Path, ...], key_urls: tuple[str, ...], public_key_files: tuple[Path, ...],
           as_json: bool) -> None:
    """Verify the audit log in PATHS: an active file (its rotated files are included), files or directories.

    Every record is checked against its hash and linked to the one before; every checkpoint's
    signature is verified (against the pinned keys when given).
    """
    from .audit.verify import EXIT_UNREADABLE, verify_log

    pinned = _pinned(key_urls, public_key_files)
    try:
        result = verify_log(paths, public_keys=pinned)
    except OSError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_UNREADABLE)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        for finding in result.findings:
            click.echo(str(finding))
        click.echo(result.summary())
    sys.exit(result.exit_code)


def parse_moment(option: str, text: str | None, now: float) -> float | None:
    """A unix time from an ISO 8601 date or date-time (UTC unless it says otherwise) or a duration ago ("7d")."""
    from .units import parse_duration

    if text is None:
        return None
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageProblem(f'{option} {text!r}: expected a date ("2024-05-01"), a date and time '
                           '("2024-05-01T12:00:00Z") or a duration ago ("7d")') from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@audit_group.command("report", epilog="Exit codes: 0 every control passes (or is not applicable); 1 a control "
                                      "fails; 2 a usage or configuration error.")
@click.option("--standard", required=True, type=click.Choice(["pci-dss", "gdpr", "hipaa"]), help="Standard.")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="dsguard.toml the evidence is taken from.")
@click.option("--audit", "audit_paths", multiple=True, type=click.Path(path_type=Path),
              help="Audit log (default: [audit] path of the configuration); repeatable.")
@click.option("--since", help='Start of the period: "2024-05-01", "2024-05-01T12:00:00Z" or "30d" (ago).')
@click.option("--until", help="End of the period (excluded), in the same forms; default: now.")
@click.option("--format", "output_format", type=click.Choice(["json", "html"]), default="json", show_default=True)
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), help="Write here instead of stdout.")
@click.option("--public-key", "public_key_files", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Pin the checkpoint key (PEM, JWK or JWKS); default: the public key of [audit] signing_key.")
def report(standard: str, config_path: Path, audit_paths: tuple[Path, ...], since: str | None, until: str | None,
           output_format: str, output: Path | None, public_key_files: tuple[Path, ...]) -> None:
    """Report on a standard's controls: pass/fail with the evidence of the configuration and the audit log."""
    from .audit.log import open_signer_of
    from .audit.report import build_report, render_html, render_json
    from .config import load_config

    try:
        config = load_config(config_path)
        pinned = _pinned((), public_key_files)
        if pinned is None and config.audit is not None and config.audit.signing_key:
            signer = open_signer_of(config)
            if signer is not None:
                pinned = {signer.key_id: signer.public_key()}
    except DSGuardError as exc:
        raise UsageProblem(f"{exc}; pass --public-key to pin the checkpoint key without opening the private key"
                           if "signing_key" in str(exc) else str(exc)) from None
    now = time.time()
    paths = list(audit_paths) or ([Path(config.audit.path)] if config.audit is not None else [])
    document = build_report(config, standard, audit_paths=paths, since=parse_moment("--since", since, now),
                            until=parse_moment("--until", until, now), public_keys=pinned, now=now)
    text = render_html(document) if output_format == "html" else render_json(document)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        summary = document["summary"]
        click.echo(f"{output}: {summary['result'].upper()}: {summary['passed']} passed, {summary['failed']} failed, "
                   f"{summary['not_applicable']} not applicable", err=True)
    sys.exit(0 if document["summary"]["result"] == "pass" else 1)
