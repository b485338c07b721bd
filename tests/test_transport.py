"""The transport check: HTTPS, forwarded headers believed from trusted proxies only, HSTS."""

from __future__ import annotations

import pytest

from dsguard import GuardMiddleware
from dsguard.checks.transport import ForwardedError, parse_forwarded

from .helpers import InProcess, config, starlette_app

BEHIND_PROXY = """
[server]
trusted_proxies = ["10.0.0.0/8", "2001:db8::/32"]
"""


def client(text: str, peer: str, scheme: str = "http") -> InProcess:
    return InProcess(GuardMiddleware(starlette_app(), config=config(text)), peer=peer, scheme=scheme)


def test_plain_http_is_refused_by_default() -> None:
    response = client(BEHIND_PROXY, "192.0.2.1").get("/whoami")
    assert response.status_code == 403
    assert response.json()["error"] == {"type": "permission_error", "code": "https_required",
                                         "message": "HTTPS is required"}


def test_https_socket_is_accepted_and_gets_hsts() -> None:
    response = client(BEHIND_PROXY, "192.0.2.1", scheme="https").get("/whoami")
    assert response.status_code == 200
    assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


def test_spoofed_forwarded_proto_from_untrusted_peer_is_ignored() -> None:
    response = client(BEHIND_PROXY, "192.0.2.1").get("/whoami", headers={"x-forwarded-proto": "https"})
    assert response.status_code == 403


def test_spoofed_x_forwarded_for_from_untrusted_peer_is_ignored() -> None:
    response = client(BEHIND_PROXY, "192.0.2.1", "https").get("/whoami", headers={"x-forwarded-for": "198.51.100.7"})
    assert response.json()["client_ip"] == "192.0.2.1"


def test_trusted_proxy_sets_client_ip_and_scheme() -> None:
    headers = {"x-forwarded-for": "198.51.100.7", "x-forwarded-proto": "https"}
    response = client(BEHIND_PROXY, "10.1.2.3").get("/whoami", headers=headers)
    assert response.status_code == 200
    assert response.json()["client_ip"] == "198.51.100.7"
    assert response.json()["scheme"] == "https"


def test_client_prepended_addresses_are_skipped_through_a_proxy_chain() -> None:
    # The caller sent "X-Forwarded-For: 1.1.1.1"; two trusted proxies appended their view.
    headers = {"x-forwarded-for": "1.1.1.1, 198.51.100.7, 10.9.9.9", "x-forwarded-proto": "https"}
    response = client(BEHIND_PROXY, "10.1.2.3").get("/whoami", headers=headers)
    assert response.json()["client_ip"] == "198.51.100.7"


def test_rfc7239_forwarded_wins_over_x_forwarded_for() -> None:
    headers = {"forwarded": 'for=192.0.2.60;proto=https, for="[2001:db8:cafe::17]:4711"',
               "x-forwarded-for": "203.0.113.1"}
    response = client(BEHIND_PROXY, "10.1.2.3").get("/whoami", headers=headers)
    # 2001:db8:cafe::17 is inside the trusted 2001:db8::/32, so the client is the first hop.
    assert response.json()["client_ip"] == "192.0.2.60"
    assert response.json()["scheme"] == "https"


def test_malformed_forwarded_from_trusted_proxy_is_a_400() -> None:
    response = client(BEHIND_PROXY, "10.1.2.3").get("/whoami", headers={"forwarded": 'for="unterminated'})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_forwarded_header"


def test_unknown_proto_from_trusted_proxy_is_a_400() -> None:
    headers = {"x-forwarded-for": "198.51.100.7", "x-forwarded-proto": "gopher"}
    response = client(BEHIND_PROXY, "10.1.2.3").get("/whoami", headers=headers)
    assert response.status_code == 400


def test_garbage_address_from_trusted_proxy_is_a_400() -> None:
    headers = {"x-forwarded-for": "<script>", "x-forwarded-proto": "https"}
    response = client(BEHIND_PROXY, "10.1.2.3").get("/whoami", headers=headers)
    assert response.status_code == 400


def test_hsts_can_be_turned_off() -> None:
    text = BEHIND_PROXY + "[transport]\nhsts = false\n"
    response = client(text, "192.0.2.1", scheme="https").get("/whoami")
    assert "strict-transport-security" not in response.headers


@pytest.mark.parametrize(("header", "expected"), [
    ("for=192.0.2.43", [{"for": "192.0.2.43"}]),
    ('For="[2001:db8:cafe::17]:4711"', [{"for": "[2001:db8:cafe::17]:4711"}]),
    ("for=192.0.2.60;proto=http;by=203.0.113.43", [{"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}]),
    ("for=192.0.2.43, for=198.51.100.17", [{"for": "192.0.2.43"}, {"for": "198.51.100.17"}]),
    ('for="a,b";proto=https', [{"for": "a,b", "proto": "https"}]),
])
def test_parse_forwarded(header: str, expected: list[dict[str, str]]) -> None:
    assert parse_forwarded(header) == expected


@pytest.mark.parametrize("header", ['for="x', "for", "=x"])
def test_parse_forwarded_rejects_malformed(header: str) -> None:
    with pytest.raises(ForwardedError):
        parse_forwarded(header)


def test_ipv4_mapped_peer_matches_an_ipv4_trusted_proxy() -> None:
    headers = {"x-forwarded-for": "198.51.100.7", "x-forwarded-proto": "https"}
    response = client(BEHIND_PROXY, "::ffff:10.1.2.3").get("/whoami", headers=headers)
    assert response.json()["client_ip"] == "198.51.100.7"
