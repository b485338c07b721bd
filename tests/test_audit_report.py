"""`dsguard audit report`: each standard's controls pass or fail on the evidence of the config and the log."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from dsguard.audit.report import build_report, render_html
from dsguard.audit.signing import CheckpointSigner
from dsguard.audit.writer import AuditWriter
from dsguard.cli import main
from dsguard.config import load_config

from .audit_logs import audit_settings, decision, read_records, rehash, signer_at, write_records

HSM_KEY = "pkcs11:token=dsguard;object=audit-signing?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:PIN"
HSM_KEK = "pkcs11:token=dsguard;object=weights-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:PIN"

COMPLIANT = f"""
[server]
tls_cert = "certs/server.pem"
tls_key = "certs/server-key.pem"
tls_min_version = "1.3"
client_ca = "certs/clients-ca.pem"
[identity.jwt]
issuer = "https://idp.example.com"
audience = "deepseek-api"
jwks_file = "jwks.json"
max_ttl = "15m"
[policy]
model = "model.conf"
policy = "policy.csv"
[[rate_limits]]
key = "ip"
limit = "10/second"
[[rate_limits]]
key = "subject"
tokens = "200000/day"
[runner]
decryption_key = "{HSM_KEK}"
[audit]
path = "audit/audit.jsonl"
signing_key = "{HSM_KEY}"
"""

LAX = """
[server]
tls_min_version = "1.2"
[identity.jwt]
jwks_file = "jwks.json"
max_ttl = "1h"
[runner]
[audit]
path = "audit/audit.jsonl"
signing_key = "file:audit-key.pem"
log_prompts = true
"""

DENIALS = ["policy_denied", "policy_denied", "rate_limited", "invalid_token", "policy_denied"]


def write_audit_log(folder: Path, signer: CheckpointSigner, *, with_prompt_text: bool = False) -> Path:
    path = folder / "audit" / "audit.jsonl"
    writer = AuditWriter(audit_settings(path, checkpoint_every=4), signer=signer)
    writer.start()
    prompt: dict[str, Any] = {"sha256": "ab" * 32, "length": 12}
    if with_prompt_text:
        prompt["content"] = {"messages": [{"role": "user", "content": "hello there!"}]}
    for n in range(10):
        writer.submit(decision(n, prompt=prompt))
    for n, reason in enumerate(DENIALS, 10):
        writer.submit(decision(n, decision="deny", reason=reason))
    writer.stop()
    return path


@pytest.fixture
def signer(tmp_path: Path) -> CheckpointSigner:
    return signer_at(tmp_path / "audit-key.pem")


def pinned(signer: CheckpointSigner) -> dict[str, Any]:
    return {signer.key_id: signer.public_key()}


def setup(folder: Path, text: str, signer: CheckpointSigner, **log: bool) -> Path:
    config = folder / "dsguard.toml"
    config.write_text(text)
    write_audit_log(folder, signer, **log)
    return config


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {row["id"]: row["status"] for row in report["controls"]}


@pytest.mark.parametrize("standard", ["pci-dss", "gdpr", "hipaa"])
def test_a_compliant_deployment_passes_every_control(tmp_path: Path, signer: CheckpointSigner,
                                                     standard: str) -> None:
    config = load_config(setup(tmp_path, COMPLIANT, signer))
    report = build_report(config, standard, audit_paths=[tmp_path / "audit" / "audit.jsonl"],
                          public_keys=pinned(signer))
    assert set(statuses(report).values()) == {"pass"}
    assert report["summary"] == {"passed": len(report["controls"]), "failed": 0, "not_applicable": 0,
                                 "result": "pass"}
    assert report["denials"] == {"policy_denied": 3, "invalid_token": 1, "rate_limited": 1}


LAX_FAILURES = {"token_ttl", "tls", "hsm_keys", "encryption_at_rest", "rate_limits", "data_minimisation",
                "access_policy", "mfa"}


@pytest.mark.parametrize("standard", ["pci-dss", "gdpr", "hipaa"])
def test_a_lax_deployment_fails_the_controls_it_misses(tmp_path: Path, signer: CheckpointSigner,
                                                       standard: str) -> None:
    config = load_config(setup(tmp_path, LAX, signer, with_prompt_text=True))
    report = build_report(config, standard, audit_paths=[tmp_path / "audit" / "audit.jsonl"],
                          public_keys=pinned(signer))
    found = statuses(report)
    assert {control for control, status in found.items() if status == "fail"} == LAX_FAILURES & set(found)
    assert found["audit_chain"] == "pass"
    assert report["summary"]["result"] == "fail"


def test_each_standard_names_its_own_requirement_ids(tmp_path: Path, signer: CheckpointSigner) -> None:
    config = load_config(setup(tmp_path, COMPLIANT, signer))
    requirements = {standard: {row["id"]: row["requirements"] for row in build_report(
        config, standard, audit_paths=[tmp_path / "audit" / "audit.jsonl"], public_keys=pinned(signer))["controls"]}
        for standard in ("pci-dss", "gdpr", "hipaa")}
    assert requirements["pci-dss"]["token_ttl"] == ["8.2.8"]
    assert requirements["pci-dss"]["tls"] == ["4.2.1"]
    assert requirements["pci-dss"]["audit_chain"] == ["10.3.2", "10.3.4"]
    assert requirements["gdpr"]["data_minimisation"] == ["Art. 5(1)(c)", "Art. 25(2)"]
    assert requirements["gdpr"]["audit_records"] == ["Art. 30", "Art. 5(2)"]
    assert requirements["hipaa"]["audit_records"] == ["§164.312(b)"]
    assert requirements["hipaa"]["tls"] == ["§164.312(e)(1)", "§164.312(e)(2)(ii)"]
    assert requirements["hipaa"]["token_ttl"] == ["§164.312(a)(2)(iii)"]


def test_evidence_names_the_setting_and_where_it_is_written(tmp_path: Path, signer: CheckpointSigner) -> None:
    config_path = setup(tmp_path, LAX, signer)
    report = build_report(load_config(config_path), "pci-dss", audit_paths=[tmp_path / "audit" / "audit.jsonl"],
                          public_keys=pinned(signer))
    evidence = {row["id"]: row["evidence"] for row in report["controls"]}
    assert evidence["token_ttl"][0].startswith(f"[identity.jwt] max_ttl = 60 min ({config_path}:6)")
    assert evidence["hsm_keys"] == ["[audit] signing_key = file:audit-key.pem: a file: key held in process memory, "
                                    "not in an HSM"]


def test_a_tampered_log_fails_the_integrity_control_and_says_where(tmp_path: Path, signer: CheckpointSigner) -> None:
    config = load_config(setup(tmp_path, COMPLIANT, signer))
    log = tmp_path / "audit" / "audit.jsonl"
    records = read_records(log)
    denied = next(i for i, r in enumerate(records) if r.get("decision") == "deny")
    records[denied]["decision"] = "allow"
    rehash(records, denied)
    write_records(log, records)
    report = build_report(config, "pci-dss", audit_paths=[log], public_keys=pinned(signer))
    chain = next(row for row in report["controls"] if row["id"] == "audit_chain")
    assert chain["status"] == "fail"
    assert any("signature does not verify" in line for line in chain["evidence"])


def test_the_period_limits_the_decisions_counted(tmp_path: Path, signer: CheckpointSigner) -> None:
    config = load_config(setup(tmp_path, COMPLIANT, signer))
    report = build_report(config, "gdpr", audit_paths=[tmp_path / "audit" / "audit.jsonl"],
                          public_keys=pinned(signer), since=1_700_000_010, until=1_700_000_013)
    assert report["decisions"] == {"deny": 3}
    assert report["period"] == {"since": "2023-11-14T22:13:30Z", "until": "2023-11-14T22:13:33Z"}


def test_report_command_writes_json_and_exits_1_when_a_control_fails(tmp_path: Path,
                                                                     signer: CheckpointSigner) -> None:
    config = setup(tmp_path, LAX, signer)
    public = tmp_path / "audit-public.pem"
    public.write_bytes(signer.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    result = CliRunner().invoke(main, ["audit", "report", "--standard", "hipaa", "--config", str(config),
                                       "--since", "2023-11-14", "--until", "2023-11-15T00:00:00Z"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["standard"] == "hipaa" and report["summary"]["result"] == "fail"
    assert report["audit"] == [str(tmp_path / "audit" / "audit.jsonl")]


def test_report_command_refuses_an_unparseable_period(tmp_path: Path, signer: CheckpointSigner) -> None:
    config = setup(tmp_path, LAX, signer)
    result = CliRunner().invoke(main, ["audit", "report", "--standard", "gdpr", "--config", str(config),
                                       "--since", "last tuesday"])
    assert result.exit_code == 2
    assert "--since 'last tuesday': expected a date" in result.stderr


def test_html_escapes_what_it_shows(tmp_path: Path, signer: CheckpointSigner) -> None:
    config = load_config(setup(tmp_path, COMPLIANT, signer))
    report = build_report(config, "pci-dss", audit_paths=[tmp_path / "audit" / "audit.jsonl"],
                          public_keys=pinned(signer))
    report["denials"] = {"<script>alert(1)</script>": 1}
    html = render_html(report)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<link" not in html and "src=" not in html, "self-contained: nothing is fetched"


# --- the HTML report in a real browser ------------------------------------------------------------------------

PASS_GREEN = (0x1A, 0x7F, 0x37)
FAIL_RED = (0xCF, 0x22, 0x2E)


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Width, height and RGB pixels of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, b"", b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks += body
        position += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0
    channels = 4 if color == 6 else 3
    raw = zlib.decompress(chunks)
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[tuple[int, ...]] = []
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        pixels += [tuple(line[i:i + 3]) for i in range(0, stride, channels)]
        previous = line
    return width, height, pixels


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (Debian package chromium)")
    return found


def browse(html: Path, profile: Path, *arguments: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={profile}", *arguments, html.as_uri()],
                          capture_output=True, timeout=120, check=True)


@pytest.fixture
def html_report(tmp_path: Path, signer: CheckpointSigner) -> Iterator[Path]:
    config = setup(tmp_path, LAX, signer)
    output = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["audit", "report", "--standard", "pci-dss", "--config", str(config),
                                       "--format", "html", "--output", str(output)])
    assert result.exit_code == 1 and "FAIL:" in result.stderr
    yield output


def test_html_report_renders_in_headless_chromium_with_pass_and_fail_badges(html_report: Path,
                                                                            tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    browse(html_report, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1200,1600")
    width, height, pixels = png_pixels(screenshot.read_bytes())
    assert (width, height) == (1200, 1600)
    assert len(set(pixels)) > 50, "the screenshot is not blank"
    green = sum(1 for p in pixels if p == PASS_GREEN)
    red = sum(1 for p in pixels if p == FAIL_RED)
    assert green > 1000 and red > 1000, (green, red)


def test_html_report_dom_holds_every_control_and_its_status(html_report: Path, tmp_path: Path) -> None:
    dom = browse(html_report, tmp_path / "profile", "--dump-dom").stdout.decode()
    assert "PCI DSS v4.0: compliance report" in dom
    assert dom.count('class="badge fail"') == 8 and dom.count('class="badge pass"') == 4
    assert 'id="control-token_ttl"' in dom and "[identity.jwt] max_ttl = 60 min" in dom


def test_checkpoints_signed_inside_an_hsm_pass_the_key_and_integrity_controls(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from dsguard.audit.signing import open_checkpoint_signer
    from dsguard.crypto import pkcs11 as provider
    from dsguard.crypto.softhsm import create_token, softhsm_module

    if softhsm_module() is None or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (Debian package softhsm2)")
    token = create_token(tmp_path / "softhsm", "dsguard", "4321-test-pin")
    monkeypatch.setenv("SOFTHSM2_CONF", str(token.config))
    monkeypatch.setenv("DSGUARD_TEST_HSM_PIN", "4321-test-pin")
    provider.close_all()
    try:
        signing = token.url("audit-signing", pin_source="env:DSGUARD_TEST_HSM_PIN")
        kek = token.url("weights-kek", pin_source="env:DSGUARD_TEST_HSM_PIN")
        provider.generate_key(signing, "ed25519")
        provider.generate_key(kek, "aes-256")
        config = tmp_path / "dsguard.toml"
        config.write_text(COMPLIANT.replace(HSM_KEY, signing).replace(HSM_KEK, kek))
        write_audit_log(tmp_path, open_checkpoint_signer(signing))
        result = CliRunner().invoke(main, ["audit", "report", "--standard", "pci-dss", "--config", str(config)])
    finally:
        provider.close_all()
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(statuses(report).values()) == {"pass"}
    chain = next(row for row in report["controls"] if row["id"] == "audit_chain")
    assert chain["evidence"][0].startswith("OK: 20 records (15 decisions) in 1 file(s), 4/4 checkpoints verified")
