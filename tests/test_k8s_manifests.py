"""examples/k8s and examples/Dockerfile: valid against the Kubernetes schemas, and deployed safely.

Built-in kinds are validated offline, strictly (unknown fields refused), against the schemas
bundled with kubernetes-validate. PrometheusRule and PodMonitor are custom resources whose schemas
are not bundled: the rules are checked and unit-tested by Prometheus's own `promtool` (skipped
without it), and their metric names are checked against what a guard really exports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dsguard import GuardMiddleware
from dsguard.config import TelemetryConfig, load_config
from dsguard.guard import Guard

from .helpers import InProcess, starlette_app

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "examples" / "k8s"
CUSTOM_KINDS = {"PrometheusRule", "PodMonitor", "Kustomization"}
VERSIONS = ["1.30", kubernetes_validate.latest_version()]
RUNNER_METRICS = {"dsguard_runner_queue_depth"}  # the runner's own gauge (meter dsguard.runner)
ANOMALY_METRICS = {"dsguard_anomaly_sanctions_total"}
"""Exported with [anomaly] once a call is scored anomalous (tests/test_anomaly_check.py reads it)."""


def manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


MANIFESTS = manifests()
DEPLOYMENT = MANIFESTS["Deployment"]
POD = DEPLOYMENT["spec"]["template"]["spec"]
CONTAINER = POD["containers"][0]
POD_LABELS = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", sorted(set(MANIFESTS) - CUSTOM_KINDS))
def test_each_manifest_is_valid_against_the_kubernetes_schema(kind: str, version: str) -> None:
    kubernetes_validate.validate(MANIFESTS[kind], version, strict=True)


def test_the_schema_validation_refuses_a_misspelled_field() -> None:
    broken = yaml.safe_load(yaml.safe_dump(DEPLOYMENT).replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(MANIFESTS["Kustomization"]["resources"])
    assert listed == {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_probes_use_the_health_endpoints_on_the_served_port() -> None:
    defaults = TelemetryConfig()
    assert CONTAINER["livenessProbe"]["httpGet"]["path"] == defaults.health_path
    assert CONTAINER["startupProbe"]["httpGet"]["path"] == defaults.health_path
    assert CONTAINER["readinessProbe"]["httpGet"]["path"] == defaults.ready_path
    port = next(p for p in CONTAINER["ports"] if p["name"] == "http")
    server = tomllib.loads(MANIFESTS["ConfigMap"]["data"]["dsguard.toml"])["server"]
    assert port["containerPort"] == server["port"] and server["host"] == "0.0.0.0"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert CONTAINER[probe]["httpGet"]["port"] == "http"


def test_cpu_and_memory_have_requests_and_limits() -> None:
    resources = CONTAINER["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind])


def test_the_pod_runs_as_non_root_without_capabilities_on_a_read_only_root() -> None:
    pod, container = POD["securityContext"], CONTAINER["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert POD["automountServiceAccountToken"] is False


def test_replicas_spread_across_zones() -> None:
    zone = next(c for c in POD["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone")
    assert zone["maxSkew"] == 1 and zone["whenUnsatisfiable"] == "DoNotSchedule"
    assert zone["labelSelector"]["matchLabels"].items() <= POD_LABELS.items()


def test_selectors_of_the_service_budget_and_network_policy_match_the_pods() -> None:
    assert MANIFESTS["Service"]["spec"]["selector"].items() <= POD_LABELS.items()
    assert MANIFESTS["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= POD_LABELS.items()
    assert MANIFESTS["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"].items() <= POD_LABELS.items()
    assert MANIFESTS["PodMonitor"]["spec"]["selector"]["matchLabels"].items() <= POD_LABELS.items()


def test_the_autoscaler_scales_the_deployment_on_cpu_and_on_the_runner_queue_depth() -> None:
    spec = MANIFESTS["HorizontalPodAutoscaler"]["spec"]
    assert spec["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    assert spec["minReplicas"] >= 2
    metrics = {m["type"]: m for m in spec["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] in RUNNER_METRICS


def test_secrets_come_from_a_secret_reference_not_the_config_map(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in CONTAINER["env"] if "valueFrom" in e}
    assert env["DSGUARD_METRICS_TOKEN"]["name"] == "dsguard-secrets"
    assert 'metrics_token = "env:DSGUARD_METRICS_TOKEN"' in MANIFESTS["ConfigMap"]["data"]["dsguard.toml"]
    scrape_auth = MANIFESTS["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["authorization"]["credentials"]
    assert scrape_auth == {"name": "dsguard-secrets", "key": env["DSGUARD_METRICS_TOKEN"]["key"]}


def guard_from_config_map(tmp_path: Path) -> Guard:
    for name, text in MANIFESTS["ConfigMap"]["data"].items():
        (tmp_path / name).write_text(text)
    return Guard(load_config(tmp_path / "dsguard.toml"))


def test_the_config_map_configures_a_working_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSGUARD_METRICS_TOKEN", "token-for-the-test")
    guard = guard_from_config_map(tmp_path)
    assert set(guard.endpoints) == {"/healthz", "/readyz", "/metrics"}
    assert guard.config.storage.url.startswith("redis://")


def prometheus_rules() -> list[dict[str, Any]]:
    return [rule for group in MANIFESTS["PrometheusRule"]["spec"]["groups"] for rule in group["rules"]]


def test_the_required_alerts_are_defined() -> None:
    alerts = {rule["alert"] for rule in prometheus_rules()}
    assert {"DSGuardHighErrorRate", "DSGuardHighLatencyP99", "DSGuardQueueBacklog", "DSGuardAuditChainFailure",
            "DSGuardPolicyReloadFailed"} <= alerts


def exported_metric_names(tmp_path: Path) -> set[str]:
    (tmp_path / "model.conf").write_text(MANIFESTS["ConfigMap"]["data"]["model.conf"])
    (tmp_path / "policy.csv").write_text("p, anonymous, /whoami, GET, allow\n")
    (tmp_path / "dsguard.toml").write_text(
        '[transport]\nrequire_https = false\n[identity]\nanonymous = true\n'
        '[policy]\nmodel = "model.conf"\npolicy = "policy.csv"\nreload = false\n[telemetry]\n')
    client = InProcess(GuardMiddleware(starlette_app(), config=load_config(tmp_path / "dsguard.toml")))
    assert client.get("/whoami").status_code == 200
    text = client.get("/metrics").text
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_metric_an_alert_reads_is_exported(tmp_path: Path) -> None:
    exported = exported_metric_names(tmp_path) | RUNNER_METRICS | ANOMALY_METRICS
    for rule in prometheus_rules():
        for name in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["expr"]):
            assert name in exported, f"{rule['alert']} reads {name}, which dsguard does not export"


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def write_rules(tmp_path: Path, *, annotations: bool = True) -> Path:
    groups = yaml.safe_load(yaml.safe_dump(MANIFESTS["PrometheusRule"]["spec"]["groups"]))
    if not annotations:
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


@needs_promtool
def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(write_rules(tmp_path))], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    rendered = ",".join(f'{k}="{v}"' for k, v in {"namespace": "dsguard", **labels}.items())
    return {"series": f"{name}{{{rendered}}}", "values": values}


def histogram(name: str, buckets: dict[str, str]) -> list[dict[str, str]]:
    return [series(f"{name}_bucket", values, le=le) for le, values in buckets.items()]


ALERT_CASES: dict[str, tuple[list[dict[str, str]], dict[str, str]]] = {
    "DSGuardHighErrorRate": (
        [series("http_server_request_duration_seconds_count", "0+10x30", http_response_status_code="503"),
         series("http_server_request_duration_seconds_count", "0+90x30", http_response_status_code="200")],
        {"severity": "page"}),
    "DSGuardHighLatencyP99": (
        histogram("http_server_request_duration_seconds", {"10.0": "0+0x30", "60.0": "0+10x30", "+Inf": "0+10x30"}),
        {"severity": "warn"}),
    "DSGuardSlowChecks": (
        histogram("dsguard_guard_duration_seconds", {"0.01": "0+0x30", "0.1": "0+10x30", "+Inf": "0+10x30"}),
        {"severity": "warn"}),
    "DSGuardQueueBacklog": (
        [series("dsguard_runner_queue_depth", "60x30", pod="dsguard-a")], {"severity": "warn", "pod": "dsguard-a"}),
    "DSGuardAuditChainFailure": (
        [series("dsguard_audit_chain_failures_total", "0x20 1x10", pod="dsguard-a")],
        {"severity": "page", "pod": "dsguard-a", "namespace": "dsguard"}),
    "DSGuardAuditRecordsDropped": (
        [series("dsguard_audit_drops_total", "0x20 3x10", pod="dsguard-a")],
        {"severity": "page", "pod": "dsguard-a", "namespace": "dsguard"}),
    "DSGuardPolicyReloadFailed": (
        [series("dsguard_policy_reload_errors_total", "0x20 1x10", pod="dsguard-a")],
        {"severity": "warn", "pod": "dsguard-a", "namespace": "dsguard"}),
    "DSGuardAnomalousCallers": (
        [series("dsguard_anomaly_sanctions_total", "0+5x30", dsguard_reason="rate")],
        {"severity": "warn", "dsguard_reason": "rate"}),
}
QUIET = [
    series("http_server_request_duration_seconds_count", "0+1x30", http_response_status_code="503"),
    series("http_server_request_duration_seconds_count", "0+99x30", http_response_status_code="200"),
    *histogram("http_server_request_duration_seconds", {"1.0": "0+10x30", "+Inf": "0+10x30"}),
    *histogram("dsguard_guard_duration_seconds", {"0.001": "0+10x30", "+Inf": "0+10x30"}),
    series("dsguard_runner_queue_depth", "4x30", pod="dsguard-a"),
    series("dsguard_audit_chain_failures_total", "0x30", pod="dsguard-a"),
    series("dsguard_audit_drops_total", "0x30", pod="dsguard-a"),
    series("dsguard_policy_reload_errors_total", "2x30", pod="dsguard-a"),
    series("dsguard_anomaly_sanctions_total", "0+1x30", dsguard_reason="rate"),
]


@needs_promtool
def test_each_alert_fires_on_its_symptom_and_none_fires_on_healthy_traffic(tmp_path: Path) -> None:
    rules = write_rules(tmp_path, annotations=False)
    tests = [{"interval": "1m", "input_series": inputs,
              "alert_rule_test": [{"eval_time": "25m", "alertname": alert, "exp_alerts": [{"exp_labels": labels}]}]}
             for alert, (inputs, labels) in ALERT_CASES.items()]
    tests.append({"interval": "1m", "input_series": QUIET,
                  "alert_rule_test": [{"eval_time": "25m", "alertname": alert, "exp_alerts": []}
                                      for alert in ALERT_CASES]})
    unit = tmp_path / "tests.yaml"
    unit.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([str(PROMTOOL), "test", "rules", str(unit)], capture_output=True, text=True, timeout=120,
                            check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


DOCKERFILE = (ROOT / "examples" / "Dockerfile").read_text()


def dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_the_image_is_built_in_one_stage_and_run_from_another_as_the_pods_user() -> None:
    instructions = dockerfile_instructions()
    stages = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    assert len(stages) >= 2
    final = instructions[stages[-1]:]
    assert any(op == "COPY" and arg.startswith("--from=") for op, arg in final)
    assert any(op == "RUN" and 'pip install ".[' in arg for op, arg in instructions[:stages[-1]])
    user = [arg for op, arg in final if op == "USER"][-1]
    uid = int(user.split(":")[0])
    assert uid != 0 and uid == POD["securityContext"]["runAsUser"]


def test_the_image_serves_dsguard_and_checks_its_liveness() -> None:
    instructions = dict(dockerfile_instructions())
    assert instructions["ENTRYPOINT"] == '["dsguard", "serve"]'
    assert "CMD" in instructions["HEALTHCHECK"] and "DSGUARD_HEALTH_URL" in instructions["HEALTHCHECK"]
    assert re.search(r"DSGUARD_HEALTH_URL=http://127\.0\.0\.1:8000/healthz\b", instructions["ENV"])
    assert "ADD" not in instructions

