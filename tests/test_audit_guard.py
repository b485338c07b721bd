"""`[audit]` in a guard served by uvicorn: each decision recorded as the client saw it, prompts kept out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dsguard import GuardMiddleware
from dsguard.audit.chain import canonical
from dsguard.audit.verify import verify_log
from dsguard.config import parse_config
from dsguard.guard import Guard

from .audit_logs import new_signing_key, read_records
from .conftest import run_uvicorn, run_werkzeug
from .helpers import HeaderIdentity

MODEL = Path(__file__).parent.parent / "dsguard" / "defaults" / "policy" / "model.conf"
PROMPT = "Summarise the card 4111 1111 1111 1111 of Jane Roe"
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}


async def chat(request: Request) -> JSONResponse:
    request.state.dsguard.attributes["llm_usage"] = USAGE
    return JSONResponse({"choices": [{"message": {"role": "assistant", "content": "ok"}}], "usage": USAGE})


def app() -> Starlette:
    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def guard_config(folder: Path, audit: str = "", extra: str = "") -> str:
    (folder / "policy.csv").write_text("p, alice, model:tiny, chat, allow\n")
    key = new_signing_key(folder / "audit-key.pem")
    path = folder / "dsguard.toml"
    path.write_text(f"""
[transport]
require_https = false
[identity]
anonymous = true
[policy]
model = "{MODEL}"
policy = "policy.csv"
reload = false
[audit]
path = "audit/audit.jsonl"
signing_key = "{key.replace(str(folder) + "/", "")}"
checkpoint_every = 5
{audit}
{extra}
""")
    return str(path)


def make_guard(config_path: str) -> Guard:
    return Guard(parse_config(Path(config_path).read_text(), file=config_path, base=Path(config_path).parent),
                 checks=[HeaderIdentity()])


def calls(url: str) -> dict[str, httpx.Response]:
    with httpx.Client(base_url=url) as client:
        return {
            "allowed": client.post("/v1/chat/completions", json=CHAT, headers={"x-test-subject": "alice"}),
            "policy_denied": client.post("/v1/chat/completions", json=CHAT),
            "method_denied": client.request("TRACE", "/v1/chat/completions", headers={"x-test-subject": "alice"}),
        }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, httpx.Response], Guard]:
    folder = tmp_path_factory.mktemp("audited")
    guard = make_guard(guard_config(folder))
    with run_uvicorn(GuardMiddleware(app(), config=guard)) as url:
        responses = calls(url)
    return folder / "audit" / "audit.jsonl", responses, guard


def by_request_id(path: Path) -> dict[str, dict[str, Any]]:
    return {r["request_id"]: r for r in read_records(path) if r["type"] == "decision"}


def test_each_call_is_recorded_under_the_request_id_the_client_saw(served: tuple[Path, Any, Guard]) -> None:
    path, responses, _ = served
    records = by_request_id(path)
    assert responses["policy_denied"].json()["request_id"] == responses["policy_denied"].headers["x-request-id"]
    assert {r.headers["x-request-id"] for r in responses.values()} == set(records)


def test_an_allowed_call_records_subject_route_model_usage_status_latency_and_rule(
        served: tuple[Path, dict[str, httpx.Response], Guard]) -> None:
    path, responses, _ = served
    record = by_request_id(path)[responses["allowed"].headers["x-request-id"]]
    assert responses["allowed"].status_code == 200
    assert {k: record[k] for k in ("decision", "reason", "subject", "method", "route", "model", "status", "usage")} == {
        "decision": "allow", "reason": None, "subject": "alice", "method": "POST", "route": "/v1/chat/completions",
        "model": "tiny", "status": 200, "usage": USAGE}
    assert record["client_ip"] == "127.0.0.1"
    assert record["latency_ms"] > 0
    assert record["policy_rule"] == {"rule": "p, alice, model:tiny, chat, allow", "at": f"{path.parent.parent}"
                                                                                         "/policy.csv:1"}


def test_a_denied_call_records_its_reason_and_the_check_that_denied(
        served: tuple[Path, dict[str, httpx.Response], Guard]) -> None:
    path, responses, _ = served
    records = by_request_id(path)
    policy = records[responses["policy_denied"].headers["x-request-id"]]
    method = records[responses["method_denied"].headers["x-request-id"]]
    assert (policy["decision"], policy["reason"], policy["check"], policy["status"], policy["subject"]) == (
        "deny", "policy_denied", "policy", 403, None)
    assert (method["decision"], method["reason"], method["check"], method["status"]) == (
        "deny", "method_not_allowed", "hygiene", 405)


def test_prompt_text_is_not_logged_only_its_sha256_and_length(
        served: tuple[Path, dict[str, httpx.Response], Guard]) -> None:
    path, responses, _ = served
    data = b"".join(p.read_bytes() for p in path.parent.glob("*.jsonl"))
    assert PROMPT.encode() not in data and b"4111 1111" not in data and b"Jane Roe" not in data
    record = by_request_id(path)[responses["allowed"].headers["x-request-id"]]
    assert record["prompt"] == {"sha256": hashlib.sha256(canonical({"messages": CHAT["messages"]})).hexdigest(),
                                "length": len(PROMPT) + len("user")}


def test_the_log_is_closed_by_a_signed_checkpoint_when_the_guard_shuts_down(
        served: tuple[Path, dict[str, httpx.Response], Guard]) -> None:
    path, _, guard = served
    assert read_records(path)[-1]["type"] == "checkpoint" and read_records(path)[-1]["final"] is True
    signer = guard.audit.writer.signer if guard.audit is not None else None
    assert signer is not None
    result = verify_log([path], public_keys={signer.key_id: signer.public_key()})
    assert result.findings == [] and result.decisions == 3


def test_a_lone_surrogate_in_the_request_is_recorded_escaped_not_dropped(tmp_path: Path) -> None:
    body = (b'{"model": "tiny\\ud800", "max_tokens": 8, '
            b'"messages": [{"role": "user", "content": "card \\udfff"}]}')
    guard = make_guard(guard_config(tmp_path, "log_prompts = true"))
    with run_uvicorn(GuardMiddleware(app(), config=guard)) as url:
        response = httpx.post(f"{url}/v1/chat/completions", content=body,
                              headers={"content-type": "application/json", "x-test-subject": "alice"})
    record = by_request_id(tmp_path / "audit" / "audit.jsonl")[response.headers["x-request-id"]]
    assert record["model"] == "tiny\\ud800"
    assert record["prompt"]["content"] == {"messages": [{"role": "user", "content": "card \\udfff"}]}
    assert guard.audit is not None and guard.audit.writer.drops == 0


def test_prompt_text_is_logged_when_log_prompts_is_on(tmp_path: Path) -> None:
    guard = make_guard(guard_config(tmp_path, "log_prompts = true"))
    with run_uvicorn(GuardMiddleware(app(), config=guard)) as url:
        allowed = calls(url)["allowed"]
    record = by_request_id(tmp_path / "audit" / "audit.jsonl")[allowed.headers["x-request-id"]]
    assert record["prompt"]["content"] == {"messages": CHAT["messages"]}


@pytest.fixture
def stalled(tmp_path: Path) -> Iterator[tuple[str, Guard]]:
    """A guard whose audit writer is held, as a stalled disk would hold it; queue of 2."""
    guard = make_guard(guard_config(tmp_path, 'queue_size = 2\non_full = "block"\nfull_wait = "60s"'))
    with run_uvicorn(GuardMiddleware(app(), config=guard)) as url:
        yield url, guard


def test_a_stalled_writer_holds_up_no_response_and_loses_no_record(stalled: tuple[str, Guard]) -> None:
    url, guard = stalled
    assert guard.audit is not None
    writer = guard.audit.writer
    with writer.hold(), httpx.Client(base_url=url, timeout=20) as client:
        statuses = [client.post("/v1/chat/completions", json=CHAT, headers={"x-test-subject": "alice"}).status_code
                    for _ in range(8)]
        assert statuses == [200] * 8
        assert writer.written == 0
    assert writer.wait_written(20)
    assert (writer.drops, writer.written) == (0, 8)


def test_records_a_full_queue_drops_are_counted_in_the_drops_metric(tmp_path: Path) -> None:
    guard = make_guard(guard_config(tmp_path, 'queue_size = 1\non_full = "drop"', "[telemetry]\n"))
    assert guard.audit is not None
    writer = guard.audit.writer
    with run_uvicorn(GuardMiddleware(app(), config=guard)) as url, httpx.Client(base_url=url) as client:
        with writer.hold():
            for _ in range(6):
                assert client.post("/v1/chat/completions", json=CHAT,
                                   headers={"x-test-subject": "alice"}).status_code == 200
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    drops = next(s.value for s in families["dsguard_audit_drops"].samples if s.name == "dsguard_audit_drops_total")
    assert writer.drops >= 4
    assert drops == writer.drops


def test_each_line_is_the_canonical_json_of_its_record_followed_by_its_hash(
        served: tuple[Path, Any, Guard]) -> None:
    path, _, _ = served
    for line in path.read_bytes().splitlines():
        record = json.loads(line)
        digest = record.pop("hash")
        assert line == canonical(record)[:-1] + f',"hash":"{digest}"}}'.encode()


def test_a_wsgi_app_is_audited_the_same_way(tmp_path: Path) -> None:
    from dsguard import GuardWSGIMiddleware

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["dsguard.context"].attributes["llm_usage"] = USAGE
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"ok": true}']

    middleware = GuardWSGIMiddleware(wsgi_app, config=make_guard(guard_config(tmp_path)))
    with run_werkzeug(middleware) as url:
        allowed = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"x-test-subject": "alice"})
        denied = httpx.post(f"{url}/v1/chat/completions", json=CHAT)
    middleware.close()
    records = by_request_id(tmp_path / "audit" / "audit.jsonl")
    assert (records[allowed.headers["x-request-id"]]["decision"], records[allowed.headers["x-request-id"]]["usage"]) \
        == ("allow", USAGE)
    assert records[denied.headers["x-request-id"]]["reason"] == "policy_denied"
    assert read_records(tmp_path / "audit" / "audit.jsonl")[-1]["final"] is True
