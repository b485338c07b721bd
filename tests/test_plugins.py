"""Third-party checks: found through the ``dsguard.checks`` entry point group, configured by
``[plugins.NAME]``, and enforced by real servers (uvicorn for ASGI, werkzeug for WSGI).

The plugin under test is ``dsguard-ipfilter`` from ``plugins/`` (``pip install -e plugins/dsguard-ipfilter``).
uvicorn runs with ``proxy_headers=False``: by default it rewrites the client address from
``X-Forwarded-For`` itself when the peer is loopback, and dsguard's ``trusted_proxies`` would
then not be what decides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from flask import Flask, jsonify, request

from dsguard import ConfigError, GuardMiddleware, GuardWSGIMiddleware
from dsguard.config import parse_config
from dsguard.guard import Guard
from dsguard.plugins import installed_plugins

from .helpers import starlette_app

pytest.importorskip("dsguard_ipfilter", reason="pip install -e plugins/dsguard-ipfilter")

DENIED = "203.0.113.9"
ALLOWED = "198.51.100.1"

BEHIND_LOOPBACK_PROXY = """\
[server]
trusted_proxies = ["127.0.0.1/32"]

[transport]
require_https = false
"""

DENY_TEST_NET = BEHIND_LOOPBACK_PROXY + """
[plugins.ipfilter]
deny = ["203.0.113.0/24"]
"""


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.get("/whoami")
    def whoami() -> Any:
        return jsonify(client_ip=request.environ["dsguard.context"].client_ip)

    return app


def forwarded_for(address: str) -> dict[str, str]:
    return {"x-forwarded-for": address}


def assert_ip_denied(response: httpx.Response) -> None:
    assert response.status_code == 403
    body = response.json()
    assert body["error"]["type"] == "permission_error"
    assert body["error"]["code"] == "ip_denied"
    assert "203.0.113" not in body["error"]["message"]
    assert body["request_id"] == response.headers["x-request-id"]


def test_ipfilter_is_installed_in_the_entry_point_group() -> None:
    assert installed_plugins()["ipfilter"].value == "dsguard_ipfilter:IPFilterCheck"


def test_asgi_denies_a_forwarded_address_in_the_deny_list(uvicorn_server: Callable[..., Any]) -> None:
    app = GuardMiddleware(starlette_app(), config=parse_config(DENY_TEST_NET, file="dsguard.toml"))
    with uvicorn_server(app, proxy_headers=False) as url, httpx.Client(base_url=url) as http:
        assert_ip_denied(http.get("/whoami", headers=forwarded_for(DENIED)))
        allowed = http.get("/whoami", headers=forwarded_for(ALLOWED))
    assert allowed.status_code == 200
    assert allowed.json()["client_ip"] == ALLOWED


def test_wsgi_denies_a_forwarded_address_in_the_deny_list(werkzeug_server: Callable[..., Any]) -> None:
    app = flask_app()
    app.wsgi_app = GuardWSGIMiddleware(app.wsgi_app, config=parse_config(DENY_TEST_NET, file="dsguard.toml"))
    with werkzeug_server(app) as url, httpx.Client(base_url=url) as http:
        assert_ip_denied(http.get("/whoami", headers=forwarded_for(DENIED)))
        allowed = http.get("/whoami", headers=forwarded_for(ALLOWED))
    assert allowed.status_code == 200
    assert allowed.json() == {"client_ip": ALLOWED}


def test_spoofed_x_forwarded_for_from_an_untrusted_peer_cannot_evade_the_deny_list(
        uvicorn_server: Callable[..., Any]) -> None:
    text = """
[transport]
require_https = false

[plugins.ipfilter]
deny = ["127.0.0.0/8"]
"""
    app = GuardMiddleware(starlette_app(), config=parse_config(text, file="dsguard.toml"))
    with uvicorn_server(app, proxy_headers=False) as url, httpx.Client(base_url=url) as http:
        response = http.get("/whoami", headers=forwarded_for(ALLOWED))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ip_denied"


def test_unknown_plugin_is_a_config_error_naming_file_line_and_table() -> None:
    text = BEHIND_LOOPBACK_PROXY + """
[plugins.nope]
level = 3
"""
    with pytest.raises(ConfigError) as error:
        Guard(parse_config(text, file="dsguard.toml"))
    message = str(error.value)
    assert message.startswith(f"dsguard.toml:{line_of(text, '[plugins.nope]')}: [plugins.nope]")
    assert "ipfilter" in message


def test_bad_plugin_option_is_a_config_error_naming_the_key_and_its_line() -> None:
    text = BEHIND_LOOPBACK_PROXY + """
[plugins.ipfilter]
allow = ["10.0.0.0/8"]
deny = ["not-a-cidr"]
"""
    with pytest.raises(ConfigError) as error:
        GuardMiddleware(starlette_app(), config=parse_config(text, file="dsguard.toml"))
    assert str(error.value).startswith(f"dsguard.toml:{line_of(text, 'not-a-cidr')}: [plugins.ipfilter] deny: ")
    assert "not-a-cidr" in str(error.value)


def test_unknown_plugin_option_is_a_config_error_naming_it() -> None:
    text = BEHIND_LOOPBACK_PROXY + """
[plugins.ipfilter]
deny = ["203.0.113.0/24"]
alow = ["10.0.0.0/8"]
"""
    with pytest.raises(ConfigError) as error:
        Guard(parse_config(text, file="dsguard.toml"))
    assert str(error.value).startswith(f"dsguard.toml:{line_of(text, 'alow')}: [plugins.ipfilter] alow: ")


def test_disabled_plugin_is_not_loaded() -> None:
    text = DENY_TEST_NET + "enabled = false\n"
    guard = Guard(parse_config(text, file="dsguard.toml"))
    assert "ipfilter" not in [check.name for check in guard.pipeline.checks]


def test_report_mode_lets_a_denied_address_through_and_logs_a_warning(
        uvicorn_server: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    text = DENY_TEST_NET + 'mode = "report"\n'
    caplog.set_level(logging.WARNING, logger="dsguard")
    app = GuardMiddleware(starlette_app(), config=parse_config(text, file="dsguard.toml"))
    with uvicorn_server(app, proxy_headers=False) as url, httpx.Client(base_url=url) as http:
        response = http.get("/whoami", headers=forwarded_for(DENIED))
    assert response.status_code == 200
    assert response.json()["client_ip"] == DENIED
    warnings = [r.getMessage() for r in caplog.records if r.name == "dsguard" and r.levelno == logging.WARNING]
    assert any("report-only: ipfilter would deny" in m and "403 ip_denied" in m for m in warnings), warnings


def test_plugin_runs_at_its_own_stage_by_default() -> None:
    guard = Guard(parse_config(DENY_TEST_NET, file="dsguard.toml"))
    assert [c.name for c in guard.pipeline.checks] == ["transport", "hygiene", "json", "ipfilter"]
    assert guard.pipeline.checks[-1].stage == "pre-auth"


def test_stage_override_moves_the_plugin_in_the_pipeline() -> None:
    guard = Guard(parse_config(DENY_TEST_NET + 'stage = "transport"\n', file="dsguard.toml"))
    assert [c.name for c in guard.pipeline.checks] == ["transport", "ipfilter", "hygiene", "json"]


@pytest.mark.parametrize(("stage", "status", "code"), [
    ("pre-auth", 405, "method_not_allowed"),
    ("transport", 403, "ip_denied"),
])
def test_stage_override_decides_which_denial_a_blocked_network_sees(
        werkzeug_server: Callable[..., Any], stage: str, status: int, code: str) -> None:
    text = DENY_TEST_NET + f'stage = "{stage}"\n'
    app = flask_app()
    app.wsgi_app = GuardWSGIMiddleware(app.wsgi_app, config=parse_config(text, file="dsguard.toml"))
    with werkzeug_server(app) as url, httpx.Client(base_url=url) as http:
        response = http.request("TRACE", "/whoami", headers=forwarded_for(DENIED))
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def _fake_entry_point(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    from importlib.metadata import EntryPoint

    import dsguard.plugins

    entry = EntryPoint(name=name, value=value, group="dsguard.checks")
    monkeypatch.setattr(dsguard.plugins, "installed_plugins", lambda: {name: entry})


def test_a_plugin_that_fails_to_build_is_a_config_error_naming_its_table(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_point(monkeypatch, "broken", "tests.helpers:broken_factory")
    config = parse_config("\n[plugins.broken]\n", file="dsguard.toml")
    with pytest.raises(ConfigError) as error:
        Guard(config)
    assert str(error.value).startswith("dsguard.toml:2: [plugins.broken]: plugin tests.helpers:broken_factory")
    assert "RuntimeError: cannot reach the plugin's backend" in str(error.value)


def test_stage_and_mode_overrides_leave_an_immutable_plugin_check_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_entry_point(monkeypatch, "frozen", "tests.helpers:FrozenCheck")
    text = '[transport]\nrequire_https = false\n[plugins.frozen]\nstage = "pre-auth"\nmode = "report"\n'
    guard = Guard(parse_config(text, file="dsguard.toml"))
    placed = guard.pipeline.checks[-1]
    assert (placed.name, placed.stage, getattr(placed, "mode", None)) == ("frozen", "pre-auth", "report")
    assert [c.name for c in guard.pipeline.checks] == ["transport", "hygiene", "json", "frozen"]
