"""IPFilterCheck as a specification: options, then decisions on ``ctx.client_ip``."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest
from dsguard_ipfilter import IPFilterCheck

from dsguard.context import RequestContext
from dsguard.decision import Forbidden
from dsguard.plugins import PluginOptionError


def request_from(client_ip: str | None, headers: list[tuple[bytes, bytes]] | None = None) -> RequestContext:
    return RequestContext("GET", "/v1/models", b"/v1/models", b"", headers or [], client_ip, "https")


def decide(options: dict[str, Any], client_ip: str | None) -> Forbidden | None:
    return IPFilterCheck(options).check(request_from(client_ip))  # type: ignore[return-value]


# Options


def test_no_options_lets_every_address_through() -> None:
    assert decide({}, "203.0.113.9") is None


def test_unknown_option_is_named() -> None:
    with pytest.raises(PluginOptionError) as error:
        IPFilterCheck({"deny": [], "alow": ["10.0.0.0/8"]})
    assert error.value.key == "alow"
    assert "alow" in error.value.message


@pytest.mark.parametrize("key", ["allow", "deny"])
def test_bad_cidr_names_its_list(key: str) -> None:
    with pytest.raises(PluginOptionError) as error:
        IPFilterCheck({key: ["10.0.0.0/8", "not-a-cidr"]})
    assert error.value.key == key
    assert "not-a-cidr" in error.value.message


@pytest.mark.parametrize("value", ["10.0.0.0/8", [10], None, {"net": "10.0.0.0/8"}])
def test_list_that_is_not_a_list_of_strings_is_refused(value: object) -> None:
    with pytest.raises(PluginOptionError) as error:
        IPFilterCheck({"deny": value})
    assert error.value.key == "deny"


def test_host_address_is_a_single_address_network() -> None:
    check = IPFilterCheck({"deny": ["192.0.2.7"]})
    assert check.check(request_from("192.0.2.7")) is not None
    assert check.check(request_from("192.0.2.8")) is None


def test_is_found_through_the_entry_point_group() -> None:
    (entry,) = [ep for ep in entry_points(group="dsguard.checks") if ep.name == "ipfilter"]
    assert entry.load() is IPFilterCheck


def test_defaults_to_the_pre_auth_stage() -> None:
    check = IPFilterCheck({})
    assert (check.name, check.stage, check.mode) == ("ipfilter", "pre-auth", None)


# Decisions


def test_address_in_deny_list_is_forbidden_with_code_ip_denied() -> None:
    denial = decide({"deny": ["203.0.113.0/24"]}, "203.0.113.9")
    assert isinstance(denial, Forbidden)
    assert (denial.status, denial.type, denial.code) == (403, "permission_error", "ip_denied")


def test_address_outside_deny_list_passes() -> None:
    assert decide({"deny": ["203.0.113.0/24"]}, "198.51.100.1") is None


def test_address_in_allow_list_passes() -> None:
    assert decide({"allow": ["10.0.0.0/8"]}, "10.1.2.3") is None


def test_address_outside_allow_list_is_forbidden() -> None:
    denial = decide({"allow": ["10.0.0.0/8"]}, "192.0.2.1")
    assert denial is not None and denial.code == "ip_denied"


def test_deny_wins_over_allow() -> None:
    options = {"allow": ["10.0.0.0/8"], "deny": ["10.66.0.0/16"]}
    assert decide(options, "10.66.1.1") is not None
    assert decide(options, "10.1.1.1") is None


def test_empty_allow_list_means_no_allow_list() -> None:
    assert decide({"allow": [], "deny": ["203.0.113.0/24"]}, "192.0.2.1") is None


def test_ipv6_networks_match_ipv6_addresses() -> None:
    options = {"allow": ["2001:db8::/32"]}
    assert decide(options, "2001:db8::1") is None
    assert decide(options, "2001:db9::1") is not None


def test_bracketed_ipv6_with_zone_is_matched_as_its_address() -> None:
    assert decide({"deny": ["fe80::/10"]}, "[fe80::1%eth0]") is not None


@pytest.mark.parametrize("client_ip", [None, "unknown", "_hidden", "", "not-an-ip"])
def test_unknown_client_address_is_denied_when_an_allow_list_is_set(client_ip: str | None) -> None:
    denial = decide({"allow": ["0.0.0.0/0", "::/0"]}, client_ip)
    assert denial is not None and denial.code == "ip_denied"


@pytest.mark.parametrize("client_ip", [None, "unknown"])
def test_unknown_client_address_passes_a_deny_only_filter(client_ip: str | None) -> None:
    assert decide({"deny": ["0.0.0.0/0", "::/0"]}, client_ip) is None


# Attacks


def test_ipv4_mapped_ipv6_address_cannot_evade_an_ipv4_deny_list() -> None:
    assert decide({"deny": ["203.0.113.0/24"]}, "::ffff:203.0.113.9") is not None


def test_ipv4_mapped_ipv6_address_is_allowed_by_an_ipv4_allow_list() -> None:
    assert decide({"allow": ["10.0.0.0/8"]}, "::ffff:10.0.0.1") is None


def test_spoofed_forwarding_headers_cannot_evade_the_deny_list() -> None:
    spoofed = [(b"x-forwarded-for", b"198.51.100.1"), (b"forwarded", b"for=198.51.100.1"),
               (b"x-real-ip", b"198.51.100.1")]
    check = IPFilterCheck({"deny": ["203.0.113.0/24"]})
    assert check.check(request_from("203.0.113.9", spoofed)) is not None


def test_spoofed_forwarding_headers_cannot_enter_the_allow_list() -> None:
    check = IPFilterCheck({"allow": ["10.0.0.0/8"]})
    assert check.check(request_from("192.0.2.1", [(b"x-forwarded-for", b"10.0.0.1")])) is not None


def test_denial_message_does_not_reveal_the_lists() -> None:
    denial = decide({"allow": ["10.0.0.0/8"], "deny": ["10.66.0.0/16"]}, "10.66.0.1")
    assert denial is not None
    for secret in ("10.0.0.0", "10.66", "/8", "/16"):
        assert secret not in denial.message


def test_verdicts_are_cached_per_address_and_the_cache_is_bounded() -> None:
    check = IPFilterCheck({"deny": ["10.0.0.0/8"]})
    for i in range(5000):
        check.check(request_from(f"10.0.{i // 256}.{i % 256}"))
    assert 0 < len(check._verdicts) <= 4096
    assert check.check(request_from("10.0.0.1")) is not None
    assert check.check(request_from("192.0.2.1")) is None
