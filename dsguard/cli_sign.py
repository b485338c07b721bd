"""``dsguard sign``: the signature fields of one request, printed as curl ``-H`` options."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

ALGORITHM_NAMES = ("ed25519", "ecdsa-p256-sha256", "rsa-pss-sha512", "hmac-sha256")
DEFAULT_COMPONENTS = ("@method", "@target-uri", "content-digest")


def _body(data: str | None) -> bytes:
    if data is None:
        return b""
    if data == "-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            raise click.ClickException(f"--data {data}: cannot read ({exc.strerror})") from None
    return data.encode("utf-8")


@click.command("sign")
@click.option("--key", "key_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="PEM private key, or for hmac-sha256 a file holding the shared secret.")
@click.option("--keyid", required=True, help="Key id, as in the guard's key directory.")
@click.option("--alg", type=click.Choice(ALGORITHM_NAMES),
              help="Algorithm; defaults to the one of the key's type (required for an HMAC secret).")
@click.option("--method", default="GET", show_default=True, help="HTTP method.")
@click.option("--url", required=True, help="The full URL the request is sent to, query included.")
@click.option("--data", help="Body: @FILE, - for standard input, or the text itself. Send it with curl "
                             "--data-binary, which keeps it byte for byte.")
@click.option("--component", "components", multiple=True,
              help=f"A component to cover (repeatable; default {' '.join(DEFAULT_COMPONENTS)}).")
@click.option("--digest", type=click.Choice(("sha-256", "sha-512")), default="sha-256", show_default=True,
              help="Content-Digest algorithm.")
@click.option("--tag", help="Application tag of the signature.")
@click.option("--expires-in", type=float, help="Seconds until the signature expires (adds expires).")
def sign(key_path: Path, keyid: str, alg: str | None, method: str, url: str, data: str | None,
         components: tuple[str, ...], digest: str, tag: str | None, expires_in: float | None) -> None:
    """Print Content-Digest, Signature-Input and Signature for one request as curl -H options.

    The signature is valid once, within the guard's max_age: make a new one for every request.
    """
    from .signatures.client import RequestSigner, SigningKeyError

    body = _body(data)
    try:
        signer = RequestSigner.from_file(key_path, keyid, algorithm=alg, components=components or DEFAULT_COMPONENTS,
                                         digest=digest, tag=tag, expires_in=expires_in)
        fields = signer.sign(method, url, body=body)
    except SigningKeyError as exc:
        raise click.ClickException(str(exc)) from None
    except ValueError as exc:
        raise click.ClickException(f"cannot sign this request: {exc}") from None
    for name, value in fields.items():
        click.echo(f"-H {shlex.quote(f'{name}: {value}')}")
