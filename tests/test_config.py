from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from dsguard import ConfigError, Guard, load_config
from dsguard import config as dsguard_config
from dsguard.config import default_config, parse_config, unavailable_features
from dsguard.units import Secret, parse_duration, parse_size

SAMPLE = Path(__file__).parent / "data" / "design_sample.toml"


def test_design_sample_loads_with_every_contract_key() -> None:
    config = load_config(SAMPLE)
    assert config.mode == "enforce"
    assert config.server.tls_min_version == "1.3"
    assert config.server.trusted_proxies == (ipaddress.ip_network("127.0.0.1/32"),)
    assert config.identity.jwt is not None and config.identity.jwt.max_ttl == 900
    assert config.identity.jwt.leeway == 5
    assert config.rate_limits[0].limit == "10/second" and config.rate_limits[0].burst == 20
    assert config.rate_limits[1].tokens == "200000/day"
    assert config.signatures is not None and config.signatures.max_age == 300
    assert config.waf is not None and config.waf.max_body == 1024 * 1024
    assert config.runner is not None and config.runner.max_queue == 64
    assert config.server.tls_cert == SAMPLE.parent / "certs" / "server.pem"


def test_secrets_are_references_read_only_when_revealed(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(SAMPLE)
    secret = config.identity.introspection.client_secret  # type: ignore[union-attr]
    assert repr(secret) == "Secret('env:DSGUARD_INTROSPECTION_SECRET')"
    monkeypatch.delenv("DSGUARD_INTROSPECTION_SECRET", raising=False)
    with pytest.raises(LookupError, match="DSGUARD_INTROSPECTION_SECRET"):
        secret.reveal()
    monkeypatch.setenv("DSGUARD_INTROSPECTION_SECRET", "s3cret")
    assert secret.reveal() == "s3cret"
    assert "s3cret" not in repr(config)


def test_file_secret_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "hmac.key").write_text("k3y\n")
    (tmp_path / "dsguard.toml").write_text('on_unavailable = "warn"\n[identity.jwt]\nsecret = "file:hmac.key"\n')
    secret = load_config(tmp_path / "dsguard.toml").identity.jwt.secret  # type: ignore[union-attr]
    assert isinstance(secret, Secret) and secret.reveal() == "k3y"


@pytest.mark.parametrize(("text", "where", "message"), [
    ('[hygiene]\nmax_body = "lots"\n', "dsguard.toml:2: [hygiene] max_body", "expected a size"),
    ('mode = "enforcing"\n', "dsguard.toml:1: mode", "expected 'enforce' or 'report'"),
    ('[server]\nport = "8000"\n', "dsguard.toml:2: [server] port", "expected an integer"),
    ('[server]\ntrusted_proxies = ["10.0.0.0/33"]\n', "dsguard.toml:2: [server] trusted_proxies",
     "not an IP network"),
    ('[hygiene]\nmax_bdy = 10\n', "dsguard.toml:2: [hygiene] max_bdy", "unknown key"),
    ('[pipeline]\ncheck_timeout = "soon"\n', "dsguard.toml:2: [pipeline] check_timeout", "expected a duration"),
    ('[[rate_limits]]\nkey = "ip"\nlimit = "10/second"\n[[rate_limits]]\nkey = "ip"\nlimit = "lots"\n',
     "dsguard.toml:6: [rate_limits] #2 limit", "expected a rate"),
    ('[[rate_limits]]\nlimit = "10/second"\n', "dsguard.toml:1: [rate_limits] #1 key", "required key is missing"),
    ('[transport]\nrequire_https = "yes"\n', "dsguard.toml:2: [transport] require_https", "expected true or false"),
])
def test_errors_name_file_line_and_key(text: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(text, file="dsguard.toml")
    assert str(error.value).startswith(where)
    assert message in str(error.value)


def test_invalid_toml_names_the_file_and_position() -> None:
    with pytest.raises(ConfigError, match=r"^dsguard.toml: invalid TOML: .*line 2"):
        parse_config('mode = "enforce"\n[server\n', file="dsguard.toml")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("5s", 5), ("250ms", 0.25), ("1h30m", 5400), (3, 3)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 parsecs", "-1", True, "m5"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [("1MiB", 1048576), ("64KiB", 65536), ("10MB", 10_000_000), (512, 512)])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_embedded_default_is_loopback_demo_with_memory_storage() -> None:
    config = default_config()
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert config.transport.require_https is False
    assert config.storage.url == "memory://"
    assert unavailable_features(config) == []


@pytest.fixture
def waf_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if this version parsed [waf] without providing it (every configured section is available today)."""
    monkeypatch.setitem(dsguard_config.UNAVAILABLE, "waf", ("WAF", True))


def test_every_section_of_the_design_sample_is_available() -> None:
    assert unavailable_features(load_config(SAMPLE)) == []


@pytest.mark.usefixtures("waf_unavailable")
def test_unavailable_security_feature_refuses_to_start_in_enforce_mode() -> None:
    config = parse_config("[waf]\nparanoia = 1\n", file="dsguard.toml")
    with pytest.raises(ConfigError, match=r"dsguard.toml:1: \[waf\]: WAF is configured but not available"):
        Guard(config)


@pytest.mark.usefixtures("waf_unavailable")
def test_unavailable_feature_can_be_accepted_explicitly(caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config('on_unavailable = "warn"\n[waf]\nparanoia = 1\n', file="dsguard.toml")
    Guard(config)
    assert "WAF is configured but not available" in caplog.text


@pytest.mark.usefixtures("waf_unavailable")
def test_unavailable_feature_only_warns_in_report_mode(caplog: pytest.LogCaptureFixture) -> None:
    Guard(parse_config('mode = "report"\n[waf]\nparanoia = 1\n'))
    assert "WAF is configured but not available" in caplog.text


def test_defaults_without_any_file_require_https(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSGUARD_CONFIG", raising=False)
    guard = Guard.build(None)
    assert guard.config.transport.require_https is True
    assert [c.name for c in guard.pipeline.checks] == ["transport", "hygiene", "json"]


def test_dsguard_config_environment_variable_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dsguard.toml"
    path.write_text("[hygiene]\nenabled = false\n")
    monkeypatch.setenv("DSGUARD_CONFIG", str(path))
    assert [c.name for c in Guard.build(None).pipeline.checks] == ["transport"]
