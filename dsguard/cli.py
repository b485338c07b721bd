"""The ``dsguard`` command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from . import __version__
from .config import Config, default_config, load_config, unavailable_features
from .errors import ConfigError, DSGuardError


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
              help="dsguard.toml; without it, the embedded default demo on 127.0.0.1:8000.")
@click.option("--host", help="Override [server] host.")
@click.option("--port", type=int, help="Override [server] port.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(config_path: Path | None, host: str | None, port: int | None, log_level: str) -> None:
    """Serve the API behind the guard (TLS 1.3 when a certificate is configured)."""
    from .adapters.asgi import GuardMiddleware
    from .demo import create_app
    from .guard import Guard
    from .server import build_server

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = _load(config_path)
    try:
        guard = Guard(config)
        server = build_server(GuardMiddleware(create_app(), config=guard), config, host=host, port=port,
                              log_level=log_level)
    except DSGuardError as exc:
        raise click.ClickException(str(exc)) from None
    scheme = "https" if config.server.tls_cert else "http"
    click.echo(f"dsguard {__version__}: {config.source or 'embedded default'} -> "
               f"{scheme}://{server.config.host}:{server.config.port}", err=True)
    server.run()
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

    from . import config as schema

    def walk(cls: type, prefix: str) -> None:
        for field in dataclasses.fields(cls):
            if "doc" not in field.metadata:
                continue
            if field.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(field.default_factory):
                walk(field.default_factory, f"{prefix}{field.name}.")
                continue
            if field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = field.default if field.default is not dataclasses.MISSING else "(required)"
            click.echo(f"{prefix}{field.name} = {default!r}\n    {field.metadata['doc']}")

    walk(schema.Config, "")
    for name, cls in (("identity.jwt", schema.JWTConfig), ("identity.introspection", schema.IntrospectionConfig),
                      ("policy", schema.PolicyConfig), ("rate_limits[]", schema.RateLimitConfig),
                      ("signatures", schema.SignaturesConfig), ("waf", schema.WAFConfig),
                      ("prompt_guard", schema.PromptGuardConfig), ("runner", schema.RunnerConfig),
                      ("audit", schema.AuditConfig), ("telemetry", schema.TelemetryConfig)):
        walk(cls, f"{name}.")


if __name__ == "__main__":
    main()
