"""PII and secret detection: each kind found when its format checks out, and not when it only looks alike."""

from __future__ import annotations

import pytest

from dsguard.promptguard.pii import CATEGORIES, PIIScanner

SCANNER = PIIScanner()


def kinds(text: str) -> list[str]:
    return [m.category for m in SCANNER.find(text)]


FOUND = {
    "email": ("email", "Send it to maria.garcia+billing@gmail.com today."),
    "phone_international": ("phone", "Call me on +44 20 7946 0958."),
    "phone_north_american": ("phone", "My number is (415) 555-0132."),
    "phone_compact_e164": ("phone", "WhatsApp +4915112345678"),
    "card_visa_spaced": ("card", "Visa 4111 1111 1111 1111 exp 12/27"),
    "card_mastercard_dashed": ("card", "5555-5555-5555-4444"),
    "card_amex_4_6_5": ("card", "amex 3782 822463 10005"),
    "iban_grouped": ("iban", "IBAN DE89 3704 0044 0532 0130 00 please"),
    "iban_compact": ("iban", "GB82WEST12345698765432"),
    "us_ssn": ("us_ssn", "SSN 536-22-8714"),
    "uk_national_insurance": ("uk_nino", "NI number AB 12 34 56 C"),
    "chinese_resident_id": ("cn_resident_id", "身份证 11010519491231002X"),
    "aws_access_key_id": ("aws_access_key", "AKIAZ5WB3X7Q2M4N6P8R"),
    "github_classic_token": ("github_token", "ghp_9fT2kLmQ8xZr4VbN7cYw1pD3sH6jK0aE5uRt"),
    "github_fine_grained_token": ("github_token", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"),
    "slack_bot_token": ("slack_token", "xoxb-2048193372-7734198822-Zk9QmT4rWx2LpV8nBc6Yd1Hs"),
    "slack_webhook": ("slack_token", "https://hooks.slack.com/services/T024BE7LD/B01ABCD2EFG/q1w2e3r4t5y6u7i8"),
    "openai_style_key": ("api_key", "key sk-proj-4fKx9Qm2LzR7tW1vB8nC3yD6hJ0pS5aE"),
    "deepseek_key": ("api_key", "sk-8c1f4e2a9b7d4c3e8f1a2b3c4d5e6f70"),
    "stripe_live_key": ("api_key", "sk_live_51H8xQ2eZvKYlo2C0aB1cD2eF"),
    "rsa_private_key": ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"),
    "truncated_private_key": ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA"),
    "jwt": ("jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.4Adcj3UFYzPUVaVF43FmMab6RlaQD8A9V8wFzzht"),
    "password_assignment": ("secret", "DB_PASSWORD=Hx7#kq9!Lm2pV4z"),
    "client_secret_in_json": ("secret", '{"client_secret": "a91f3c7e5d2b8046fe1c"}'),
}


@pytest.mark.parametrize(("kind", "text"), FOUND.values(), ids=FOUND.keys())
def test_kind_is_found(kind: str, text: str) -> None:
    assert kind in kinds(text)


NOT_FOUND = {
    "card_failing_luhn": "Order 4111 1111 1111 1112 has not arrived.",
    "sixteen_digit_id_failing_luhn": "transaction 1234567890123456",
    "imei_passing_luhn_with_a_card_prefix": "IMEI 356938035643809",
    "millisecond_timestamp": "ts=1700000000123",
    "iban_with_a_bad_checksum": "DE89 3704 0044 0532 0130 01",
    "ssn_area_000": "000-12-3456",
    "ssn_area_666": "666-12-3456",
    "ssn_area_9xx": "912-34-5678",
    "ssn_group_00": "123-00-4567",
    "ssn_serial_0000": "123-45-0000",
    "nino_with_a_forbidden_prefix": "GB123456A",
    "cn_id_with_a_wrong_check_digit": "110105194912310021",
    "cn_id_with_an_impossible_date": "110105194902300029",
    "reserved_example_domain": "user@example.com and admin@test.example",
    "git_ssh_remote": "git@github.com:org/repo.git",
    "python_decorator": "@app.route('/x')",
    "ip_version_and_date": "192.168.1.10, v1.2.3, 2024-01-15",
    "aws_documentation_example_key": "AKIAIOSFODNN7EXAMPLE",
    "token_read_from_code": "token = tokenizer.encode(text)",
    "max_tokens_setting": "max_tokens = 4096",
    "password_read_from_environment": "password = os.environ['DB_PASSWORD']",
    "placeholder_secret": "api_key = 'your-api-key-here'",
    "low_entropy_value": "password: aaaaaaaa1",
}


@pytest.mark.parametrize("text", NOT_FOUND.values(), ids=NOT_FOUND.keys())
def test_lookalike_is_not_found(text: str) -> None:
    assert kinds(text) == []


def test_redaction_replaces_each_finding_with_its_kind() -> None:
    text = "Mail bob@corp.io, card 4111 1111 1111 1111."
    assert SCANNER.redact(text) == "Mail [REDACTED:email], card [REDACTED:card]."


def test_secret_redaction_keeps_the_name_and_hides_the_value() -> None:
    assert SCANNER.redact("DB_PASSWORD=Hx7#kq9!Lm2pV4z") == "DB_PASSWORD=[REDACTED:secret]"


def test_iban_redaction_stops_at_the_country_length() -> None:
    assert SCANNER.redact("DE89 3704 0044 0532 0130 00 AND more") == "[REDACTED:iban] AND more"


def test_only_the_enabled_kinds_are_found() -> None:
    scanner = PIIScanner(["email"])
    assert [m.category for m in scanner.find("bob@corp.io 4111 1111 1111 1111")] == ["email"]


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown PII kind 'passport'"):
        PIIScanner(["passport"])


def test_every_kind_has_a_detector() -> None:
    assert PIIScanner().categories == CATEGORIES
