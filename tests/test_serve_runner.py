"""`dsguard serve` with the runner: a real server process, called with the openai SDK through the guard."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from .conftest import free_port

DSGUARD = [sys.executable, "-m", "dsguard.cli"]
MODEL = "tiny-deepseek"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello."}]


class Served:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        self.url = url
        self.process = process
        self.log = log

    @property
    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="x", max_retries=0, timeout=60)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextmanager
def dsguard_serve(*args: str) -> Iterator[Served]:
    """`dsguard serve` on a free loopback port; stopped with SIGTERM by its pid."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([*DSGUARD, "serve", "--port", str(port), "--log-level", "warning", *args],
                                   stdout=log, stderr=subprocess.STDOUT)
        served = Served(f"http://127.0.0.1:{port}", process, log)
        try:
            deadline = time.monotonic() + 60
            while not _listening(port):
                if process.poll() is not None:
                    raise AssertionError(f"dsguard serve exited with {process.returncode}:\n{served.output}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"dsguard serve did not listen within 60 s:\n{served.output}")
                time.sleep(0.05)
            yield served
        finally:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture(scope="module")
def embedded() -> Iterator[Served]:
    with dsguard_serve() as served:
        yield served


def test_the_embedded_default_answers_a_chat_through_the_openai_sdk(embedded: Served) -> None:
    answer = embedded.client().chat.completions.create(model=MODEL, messages=MESSAGES,
                                                       max_tokens=8, temperature=0)
    assert answer.model == MODEL
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and 1 <= answer.usage.completion_tokens <= 8
    text = (answer.choices[0].message.content or "") + (getattr(answer.choices[0].message, "reasoning_content", "")
                                                        or "")
    assert text


def test_the_embedded_default_streams_a_chat_through_the_openai_sdk(embedded: Served) -> None:
    stream = embedded.client().chat.completions.create(model=MODEL, messages=MESSAGES,
                                                       max_tokens=8, temperature=0, stream=True,
                                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 8
    whole = embedded.client().chat.completions.create(model=MODEL, messages=MESSAGES,
                                                      max_tokens=8, temperature=0)
    streamed = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert streamed == getattr(whole.choices[0].message, "reasoning_content", None)


def test_the_embedded_default_answers_completions_and_lists_its_model(embedded: Served) -> None:
    client = embedded.client()
    answer = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
    assert answer.usage is not None and answer.usage.completion_tokens >= 1
    assert [model.id for model in client.models.list()] == [MODEL]


def test_the_embedded_default_policy_refuses_other_models(embedded: Served) -> None:
    response = httpx.post(embedded.url + "/v1/chat/completions", json={"model": "deepseek-r1-70b",
                                                                       "messages": MESSAGES})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "policy_denied"


def test_the_embedded_default_names_its_model_on_startup(embedded: Served) -> None:
    assert f"model {MODEL} on CPUExecutionProvider, loaded in" in embedded.output


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dsguard.toml"
    path.write_text("[transport]\nrequire_https = false\n" + text)
    return path


RUNNER_SECTION = ('[runner]\nmodel = "bundled:tiny-deepseek"\ndtype = "fp32"\nproviders = ["CPUExecutionProvider"]\n'
                  'max_concurrency = 1\nmax_queue = 4\n')


def test_a_config_with_a_runner_section_serves_its_model(tmp_path: Path) -> None:
    with dsguard_serve("--config", str(write_config(tmp_path, RUNNER_SECTION))) as served:
        client = served.client()
        chunks = list(client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0,
                                                stream=True))
        raw = httpx.post(served.url + "/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 6,
                                                                "temperature": 0})
    assert raw.status_code == 200 and raw.headers["x-request-id"]
    assert "".join(c.choices[0].text for c in chunks) == raw.json()["choices"][0]["text"]


def test_the_model_is_loaded_before_serving_and_closed_on_shutdown(tmp_path: Path) -> None:
    with dsguard_serve("--config", str(write_config(tmp_path, RUNNER_SECTION)), "--log-level", "info") as served:
        os.kill(served.process.pid, signal.SIGTERM)
        served.process.wait(timeout=30)
        output = served.output
    loaded = output.index(f"runner: {MODEL} (fp32) on CPUExecutionProvider loaded in")
    assert loaded < output.index("Application startup complete")
    assert output.index("Shutting down") < output.index(f"runner: {MODEL} closed")


def test_a_config_without_a_runner_section_serves_the_demo_app(tmp_path: Path) -> None:
    with dsguard_serve("--config", str(write_config(tmp_path, ""))) as served:
        index = httpx.get(served.url + "/")
    assert index.json()["guarded"] is True


def test_serve_names_a_model_bundle_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    config = write_config(tmp_path, f'[runner]\nmodel = "{missing}"\n')
    result = subprocess.run([*DSGUARD, "serve", "--config", str(config), "--port", str(free_port())],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr
