"""The openai SDK through the E2E transport against the runner's API behind the guard, under uvicorn."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from openai.types.chat.chat_completion_chunk import ChoiceDelta

from dsguard.adapters.asgi import GuardMiddleware
from dsguard.config import RunnerConfig, parse_config
from dsguard.crypto.e2e_client import AsyncE2EClient, E2EClient
from dsguard.crypto.e2e_records import MAGIC
from dsguard.runner.api import create_app
from dsguard.runner.engine import Engine

from .conftest import run_uvicorn
from .helpers import OPEN_HTTP
from .test_e2e import WireTap

MODEL = "tiny-deepseek"
SECRET = "tangerine-7741"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": f"Remember {SECRET}. Who are you?"}]


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    key_file = tmp_path_factory.mktemp("e2e-runner") / "server.pem"
    key_file.write_bytes(X25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    engine = Engine.open(RunnerConfig(model=f"bundled:{MODEL}", dtype="fp32", providers=("CPUExecutionProvider",),
                                      max_concurrency=2, max_queue=8))
    # Optional, so the same server also answers plaintext: the reference the encrypted answers must equal.
    toml = OPEN_HTTP + f'[e2e]\nprivate_key = "file:{Path(key_file)}"\nrequired = false\n'
    try:
        with run_uvicorn(GuardMiddleware(create_app(engine), config=parse_config(toml))) as url:
            yield url
    finally:
        engine.close()


def sdk(url: str, transport: httpx.BaseTransport | None = None) -> openai.OpenAI:
    http_client = httpx.Client(transport=transport) if transport is not None else None
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60, http_client=http_client)


def test_openai_sdk_chat_through_the_e2e_transport_answers_as_in_plaintext(url: str) -> None:
    tap = WireTap()
    plain = sdk(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    sealed = sdk(url, E2EClient(tap)).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12,
                                                              temperature=0)
    assert any(answer_of(plain)) and answer_of(sealed) == answer_of(plain)
    assert sealed.usage == plain.usage
    assert not any(SECRET.encode() in sent for sent in tap.sent)
    assert tap.received[-1].startswith(MAGIC)


def answer_of(completion: ChatCompletion) -> tuple[str, str]:
    message = completion.choices[0].message
    return message.content or "", getattr(message, "reasoning_content", None) or ""


def answer(client: openai.OpenAI) -> tuple[str, str]:
    return answer_of(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0))


def joined(deltas: list[ChoiceDelta]) -> tuple[str, str]:
    return ("".join(d.content or "" for d in deltas),
            "".join(getattr(d, "reasoning_content", None) or "" for d in deltas))


def test_openai_sdk_stream_through_the_e2e_transport_assembles_the_plaintext_answer(url: str) -> None:
    chunks = sdk(url, E2EClient()).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12,
                                                           temperature=0, stream=True)
    streamed = joined([c.choices[0].delta for c in chunks if c.choices])
    assert any(streamed) and streamed == answer(sdk(url))


def test_async_openai_sdk_stream_through_the_async_e2e_transport(url: str) -> None:
    async def streamed() -> tuple[str, str]:
        http_client = httpx.AsyncClient(transport=AsyncE2EClient())
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60,
                                      http_client=http_client) as client:
            chunks = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12,
                                                          temperature=0, stream=True)
            return joined([c.choices[0].delta async for c in chunks if c.choices])

    assert asyncio.run(streamed()) == answer(sdk(url))
