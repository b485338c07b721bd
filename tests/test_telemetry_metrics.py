"""The Prometheus endpoint, scraped over HTTP from real servers and parsed as Prometheus parses it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from dsguard import GuardMiddleware, GuardWSGIMiddleware
from dsguard.errors import ConfigError
from dsguard.guard import Guard
from dsguard.telemetry.prometheus import bearer_matches

from .conftest import run_redis_server, run_uvicorn, run_werkzeug
from .helpers import config, starlette_app

TELEMETRY = """
[transport]
require_https = false
[telemetry]
routes = ["/whoami"]
"""
SERVER_TIMING = re.compile(r"^dsguard;dur=(\d+\.\d{3})$")


def scrape(url: str, **kwargs: object) -> dict[str, Metric]:
    response = httpx.get(f"{url}/metrics", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def sample(families: dict[str, Metric], family: str, name: str, **labels: str) -> float | None:
    for found in families[family].samples if family in families else ():
        if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
            return float(found.value)
    return None


def requests_counted(families: dict[str, Metric], **labels: str) -> float | None:
    return sample(families, "dsguard_requests", "dsguard_requests_total", **labels)


@pytest.fixture
def served() -> Iterator[str]:
    with run_uvicorn(GuardMiddleware(starlette_app(), config=config(TELEMETRY))) as url:
        yield url


def test_an_allowed_call_is_counted_as_allow_with_code_none(served: str) -> None:
    assert httpx.get(f"{served}/whoami").status_code == 200
    assert requests_counted(scrape(served), decision="allow", code="none", route="/whoami") == 1


def test_a_denied_call_is_counted_under_its_denial_code(served: str) -> None:
    assert httpx.request("TRACE", f"{served}/whoami").status_code == 405
    families = scrape(served)
    assert requests_counted(families, decision="deny", code="method_not_allowed", route="/whoami") == 1
    assert requests_counted(families, decision="allow") is None


def test_a_call_a_report_mode_check_would_deny_is_counted_as_report() -> None:
    guarded = GuardMiddleware(starlette_app(), config=config('mode = "report"\n' + TELEMETRY))
    with run_uvicorn(guarded) as url:
        httpx.request("TRACE", f"{url}/whoami")
        assert requests_counted(scrape(url), decision="report", code="method_not_allowed", route="/whoami") == 1


def test_check_latency_is_a_histogram_per_check_that_ran(served: str) -> None:
    httpx.post(f"{served}/whoami", json={"q": 1})
    families = scrape(served)
    histogram = families["dsguard_check_duration_seconds"]
    assert histogram.type == "histogram"
    for check in ("transport", "hygiene", "json"):
        buckets = [s for s in histogram.samples if s.name.endswith("_bucket") and s.labels["check"] == check]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts) and buckets[-1].labels["le"] == "+Inf" and counts[-1] == 1
        assert sample(families, "dsguard_check_duration_seconds", "dsguard_check_duration_seconds_sum",
                      check=check) is not None


def test_http_server_duration_is_recorded_by_method_route_and_status(served: str) -> None:
    httpx.get(f"{served}/whoami")
    count = sample(scrape(served), "http_server_request_duration_seconds", "http_server_request_duration_seconds_count",
                   http_request_method="GET", http_route="/whoami", http_response_status_code="200")
    assert count == 1


def test_server_timing_is_a_number_of_milliseconds_on_allowed_and_denied_responses(served: str) -> None:
    allowed = httpx.get(f"{served}/whoami")
    denied = httpx.request("TRACE", f"{served}/whoami")
    for response in (allowed, denied):
        match = SERVER_TIMING.match(response.headers["server-timing"])
        assert match is not None and float(match.group(1)) >= 0


def test_server_timing_can_be_turned_off() -> None:
    guarded = GuardMiddleware(starlette_app(), config=config(TELEMETRY + "server_timing = false\n"))
    with run_uvicorn(guarded) as url:
        assert "server-timing" not in httpx.get(f"{url}/whoami").headers


def test_path_flooding_cannot_grow_the_series(served: str) -> None:
    for n in range(40):
        httpx.get(f"{served}/probe-{n}/admin.php")
    routes = {s.labels["route"] for s in scrape(served)["dsguard_requests"].samples}
    assert routes == {"other"}


def test_rate_limit_refusals_are_counted_as_rate_limit_hits() -> None:
    text = TELEMETRY + '[[rate_limits]]\nkey = "ip"\nlimit = "1/hour"\n'
    with run_uvicorn(GuardMiddleware(starlette_app(), config=config(text))) as url:
        assert [httpx.get(f"{url}/whoami").status_code for _ in range(3)] == [200, 429, 429]
        families = scrape(url)
        assert sample(families, "dsguard_rate_limit_hits", "dsguard_rate_limit_hits_total",
                      check="rate-limit-ip", code="rate_limited") == 2
        assert requests_counted(families, decision="deny", code="rate_limited") == 2


def test_calls_limited_per_process_while_redis_is_down_are_exported_as_fallbacks() -> None:
    with run_redis_server() as redis:
        text = (TELEMETRY + f'[storage]\nurl = "{redis.url}"\non_error = "local-fallback"\n'
                '[[rate_limits]]\nkey = "ip"\nlimit = "100/hour"\n')
        with run_uvicorn(GuardMiddleware(starlette_app(), config=config(text))) as url:
            assert httpx.get(f"{url}/whoami").status_code == 200
            assert sample(scrape(url), "dsguard_rate_limit_fallbacks", "dsguard_rate_limit_fallbacks_total") == 0
            redis.stop()
            assert httpx.get(f"{url}/whoami").status_code == 200
            assert sample(scrape(url), "dsguard_rate_limit_fallbacks", "dsguard_rate_limit_fallbacks_total") == 1


MODEL = """
[request_definition]
r = sub, obj, act
[policy_definition]
p = sub, obj, act
[policy_effect]
e = some(where (p.eft == allow))
[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
"""


def test_a_policy_reload_that_fails_is_exported_as_a_reload_error(tmp_path: Path) -> None:
    (tmp_path / "model.conf").write_text(MODEL)
    (tmp_path / "policy.csv").write_text("p, anonymous, /whoami, GET\n")
    text = (TELEMETRY + f'[identity]\nanonymous = true\n[policy]\nmodel = "{tmp_path / "model.conf"}"\n'
            f'policy = "{tmp_path / "policy.csv"}"\nreload_interval = "50ms"\n')
    with run_uvicorn(GuardMiddleware(starlette_app(), config=config(text))) as url:
        assert httpx.get(f"{url}/whoami").status_code == 200
        assert sample(scrape(url), "dsguard_policy_reload_errors", "dsguard_policy_reload_errors_total") == 0
        (tmp_path / "model.conf").write_text("[matchers]\nm = r.sub ==\n")
        deadline = time.monotonic() + 20
        errors = 0.0
        while errors == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            errors = sample(scrape(url), "dsguard_policy_reload_errors", "dsguard_policy_reload_errors_total") or 0
        assert errors >= 1
        assert httpx.get(f"{url}/whoami").status_code == 200


def test_audit_counters_are_exported_at_zero_until_the_audit_log_feeds_them(served: str) -> None:
    families = scrape(served)
    assert sample(families, "dsguard_audit_drops", "dsguard_audit_drops_total") == 0
    assert sample(families, "dsguard_audit_chain_failures", "dsguard_audit_chain_failures_total") == 0


def test_scrapes_and_probes_are_not_counted_as_calls(served: str) -> None:
    httpx.get(f"{served}/healthz")
    httpx.get(f"{served}/readyz")
    scrape(served)
    assert requests_counted(scrape(served)) is None


def test_the_metrics_token_is_required_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSGUARD_TEST_METRICS_TOKEN", "scrape-token-0123456789")
    text = TELEMETRY + 'metrics_token = "env:DSGUARD_TEST_METRICS_TOKEN"\n'
    with run_uvicorn(GuardMiddleware(starlette_app(), config=config(text))) as url:
        missing = httpx.get(f"{url}/metrics")
        wrong = httpx.get(f"{url}/metrics", headers={"authorization": "Bearer scrape-token-0123456780"})
        for refused in (missing, wrong):
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "metrics_token_required"
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "scrape-token" not in missing.text + wrong.text
        scrape(url, headers={"authorization": "Bearer scrape-token-0123456789"})


def test_an_empty_metrics_token_variable_is_refused_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSGUARD_TEST_EMPTY_TOKEN", "")
    with pytest.raises(ConfigError, match=r"\[telemetry\] metrics_token: the metrics token is empty"):
        Guard(config(TELEMETRY + 'metrics_token = "env:DSGUARD_TEST_EMPTY_TOKEN"\n'))


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer ", "bearer   "])
def test_empty_bearer_credentials_never_match_even_an_empty_token(authorization: str) -> None:
    assert not bearer_matches(authorization, "")
    assert not bearer_matches(authorization, "scrape-token")


def test_an_unset_metrics_token_variable_is_refused_at_startup() -> None:
    with pytest.raises(ConfigError, match=r"\[telemetry\] metrics_token: environment variable DSGUARD_NOT_SET"):
        Guard(config(TELEMETRY + 'metrics_token = "env:DSGUARD_NOT_SET"\n'))


def test_a_metrics_path_without_a_leading_slash_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r'dsguard.toml:6: \[telemetry\] metrics_path: expected a path starting'):
        Guard(config(TELEMETRY + 'metrics_path = "metrics"\n'))


def test_two_endpoints_on_one_path_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[telemetry\] ready_path: '/healthz' is already the health_path"):
        Guard(config(TELEMETRY + 'ready_path = "/healthz"\n'))


def test_telemetry_without_the_opentelemetry_sdk_is_refused_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "dsguard.telemetry.provider", raising=False)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.metrics", None)
    with pytest.raises(ConfigError, match=r"\[telemetry\]: needs opentelemetry-sdk.*dsguard\[telemetry\]"):
        Guard(config(TELEMETRY))


def test_the_metrics_path_can_be_moved() -> None:
    guarded = GuardMiddleware(starlette_app(), config=config(TELEMETRY + 'metrics_path = "/internal/metrics"\n'))
    with run_uvicorn(guarded) as url:
        assert httpx.get(f"{url}/internal/metrics").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 404


def test_without_telemetry_the_paths_reach_the_app_and_no_header_is_added() -> None:
    with run_uvicorn(GuardMiddleware(starlette_app(), config=config())) as url:
        assert httpx.get(f"{url}/metrics").status_code == 404
        assert httpx.get(f"{url}/healthz").status_code == 404
        assert "server-timing" not in httpx.get(f"{url}/whoami").headers


def wsgi_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"ok"]


def test_a_wsgi_app_is_measured_and_scraped_the_same_way() -> None:
    guarded = GuardWSGIMiddleware(wsgi_app, config=config(TELEMETRY))
    try:
        with run_werkzeug(guarded) as url:
            response = httpx.get(f"{url}/whoami")
            assert SERVER_TIMING.match(response.headers["server-timing"])
            assert httpx.request("TRACE", f"{url}/whoami").status_code == 405
            families = scrape(url)
            assert requests_counted(families, decision="allow", code="none", route="/whoami") == 1
            assert requests_counted(families, decision="deny", code="method_not_allowed", route="/whoami") == 1
    finally:
        guarded.close()


RUNNER_INSTRUMENTS = """
import asyncio
import httpx
from opentelemetry import metrics
from starlette.applications import Starlette
from dsguard import GuardMiddleware
from dsguard.config import parse_config

meter = metrics.get_meter("dsguard.runner")
meter.create_observable_gauge("dsguard.runner.queue_depth", [lambda options: [metrics.Observation(3)]])
first_token = meter.create_histogram("gen_ai.server.time_to_first_token", unit="s")
app = GuardMiddleware(Starlette(), config=parse_config('[transport]\\nrequire_https = false\\n[telemetry]\\n'))
first_token.record(0.05, {"gen_ai.request.model": "tiny"})

async def scrape() -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return (await client.get("/metrics")).text

print(asyncio.run(scrape()))
"""


def test_instruments_made_through_the_opentelemetry_api_are_scraped_with_the_guards() -> None:
    # A fresh interpreter: OpenTelemetry's global provider can be set once per process.
    result = subprocess.run([sys.executable, "-c", RUNNER_INSTRUMENTS], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    families = {family.name: family for family in text_string_to_metric_families(result.stdout)}
    assert sample(families, "dsguard_runner_queue_depth", "dsguard_runner_queue_depth") == 3
    assert sample(families, "gen_ai_server_time_to_first_token_seconds",
                  "gen_ai_server_time_to_first_token_seconds_count", gen_ai_request_model="tiny") == 1
