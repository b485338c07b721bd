"""The runner's OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``.

Chat answers carry DeepSeek's ``reasoning_content`` (the text before ``</think>``) beside
``content``. Streams are Server-Sent Events sent as each delta is ready, never buffered.
A generation is cancelled as soon as its client goes away, streaming or not, so its slot is freed.
Each call's token usage is handed to the guard's quota check (``llm_usage`` on the request's
:class:`~dsguard.context.RequestContext`) as soon as it is final, before the response ends.

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, plus dsguard's
``request_id`` behind the guard: 400 for a bad request (see :mod:`dsguard.runner.schema`) or a
prompt beyond the context, 404 ``model_not_found``, 503 ``overloaded`` with ``Retry-After`` when
the engine's queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from opentelemetry.metrics import MeterProvider
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..limits.tokens import USAGE_ATTRIBUTE
from ..types import Receive, Scope, Send
from .engine import (
    Engine,
    EngineClosed,
    EngineOverloaded,
    Generation,
    GenerationRequest,
    InvalidGenerationRequest,
    PromptTooLong,
)
from .http_errors import InternalErrors, context_of, error_response, http_error
from .metrics import RunnerMetrics
from .schema import InvalidRequest, Options, check_model, parse_chat, parse_completion
from .text import Delta
from .tokenizer import ChatTemplateError

logger = logging.getLogger("dsguard.runner")

OFFLOAD_CHARS = 16384
"""Prompts longer than this are tokenized on a worker thread rather than on the event loop."""

CLIENT_CLOSED = 499
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
_DONE = b"data: [DONE]\n\n"
LINE_SAFE = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}
"""Characters escaped in JSON text sent as lines (JSON allows them raw in strings)."""
_INTERRUPTED_MESSAGE = "The generation was interrupted: the model is shutting down."
_INTERRUPTED = {"message": _INTERRUPTED_MESSAGE, "type": "overloaded_error", "param": None, "code": "unavailable"}


def _dumps(value: object) -> bytes:
    """Compact JSON as UTF-8, with U+0085, U+2028 and U+2029 escaped: SSE splits lines on CR and LF only, but
    clients that read lines with ``str.splitlines`` (httpx's ``iter_lines`` among them) split on those too."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).translate(LINE_SAFE).encode()


def _event(value: object) -> bytes:
    return b"data: " + _dumps(value) + b"\n\n"


class Call:
    """One generation as the API serves it: its OpenAI id, usage, timings, and the client's presence."""

    def __init__(self, operation: str, generation: Generation, scope: Scope, metrics: RunnerMetrics,
                 started: float) -> None:
        self.operation = operation
        self.generation = generation
        self.scope = scope
        self.metrics = metrics
        self.id = ("chatcmpl-" if operation == "chat" else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.started = started
        self.first_output: float | None = None
        self.finish_reason: str | None = None
        self.disconnected = False
        self.settled = False

    @property
    def interrupted(self) -> bool:
        """The engine ended the generation while its client was still there (it is shutting down)."""
        return self.finish_reason == "cancelled" and not self.disconnected

    @property
    def usage(self) -> dict[str, int]:
        prompt, completion = self.generation.prompt_tokens, self.generation.completion_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def observe(self, delta: Delta) -> None:
        if self.first_output is None:
            self.first_output = time.perf_counter() - self.started
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            self.settle()

    def settle(self) -> None:
        """The usage is final: hand it to the quota check and record the call's metrics (once)."""
        if self.settled:
            return
        self.settled = True
        usage = self.usage
        ctx = context_of(self.scope)
        if ctx is not None:
            ctx.attributes[USAGE_ATTRIBUTE] = usage
        self.metrics.record(self.operation, duration=time.perf_counter() - self.started,
                            first_output=self.first_output, prompt_tokens=usage["prompt_tokens"],
                            completion_tokens=usage["completion_tokens"],
                            cancelled=self.disconnected or self.finish_reason in (None, "cancelled"))

    def close(self) -> None:
        """The response is over, however it ended: an unfinished generation is cancelled."""
        if self.finish_reason is None:
            self.generation.cancel()
        self.settle()

    async def cancel_on_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self.generation.cancel()

    def chunk(self, delta: Delta | None = None, *, finish_reason: str | None = None,
              first: bool = False) -> dict[str, Any]:
        """One ``chat.completion.chunk`` or streamed ``text_completion``."""
        choice: dict[str, Any] = {"index": 0}
        if self.operation == "chat":
            message: dict[str, str] = {"role": "assistant", "content": ""} if first else {}
            if delta is not None and delta.reasoning:
                message["reasoning_content"] = delta.reasoning
            if delta is not None and delta.content:
                message["content"] = delta.content
            choice["delta"] = message
            kind = "chat.completion.chunk"
        else:
            choice["text"] = delta.content if delta is not None else ""
            kind = "text_completion"
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        return {"id": self.id, "object": kind, "created": self.created, "model": self.metrics.model,
                "choices": [choice]}

    def answer(self, content: str, reasoning: str) -> dict[str, Any]:
        """The whole ``chat.completion`` or ``text_completion``."""
        choice: dict[str, Any] = {"index": 0}
        if self.operation == "chat":
            choice["message"] = {"role": "assistant", "content": content, "reasoning_content": reasoning}
            kind = "chat.completion"
        else:
            choice["text"] = content
            kind = "text_completion"
        choice["logprobs"] = None
        choice["finish_reason"] = self.finish_reason
        return {"id": self.id, "object": kind, "created": self.created, "model": self.metrics.model,
                "choices": [choice], "usage": self.usage}


class EventStream(Response):
    """Server-Sent Events of one call, each delta sent as it arrives; the usage chunk and ``[DONE]`` last."""

    def __init__(self, call: Call, *, include_usage: bool) -> None:
        self.call = call
        self.include_usage = include_usage
        self.status_code = 200
        self.background = None

    def _event(self, chunk: dict[str, Any]) -> bytes:
        if self.include_usage:
            chunk["usage"] = None
        return _event(chunk)

    def _ending(self, delta: Delta) -> bytes:
        call = self.call
        parts = [self._event(call.chunk(delta))] if delta.content or delta.reasoning else []
        if call.interrupted:
            parts.append(_event({"error": _INTERRUPTED}))
            return b"".join([*parts, _DONE])
        parts.append(self._event(call.chunk(finish_reason=delta.finish_reason)))
        if self.include_usage:
            usage = call.chunk()
            usage["choices"], usage["usage"] = [], call.usage
            parts.append(_event(usage))
        parts.append(_DONE)
        return b"".join(parts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = self.call
        watcher = asyncio.create_task(call.cancel_on_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            await send({"type": "http.response.body", "body": self._event(call.chunk(first=True)),
                        "more_body": True})
            async for delta in call.generation:
                call.observe(delta)
                if call.disconnected:
                    continue
                if delta.finish_reason is not None:
                    await send({"type": "http.response.body", "body": self._ending(delta), "more_body": False})
                else:
                    await send({"type": "http.response.body", "body": self._event(call.chunk(delta)),
                                "more_body": True})
        except OSError:
            call.disconnected = True
        finally:
            watcher.cancel()
            call.close()


class RunnerAPI:
    """The endpoints over one engine."""

    def __init__(self, engine: Engine, metrics: RunnerMetrics) -> None:
        self.engine = engine
        self.metrics = metrics
        self.model_id = engine.model_id
        self.created = int(time.time())

    async def chat(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await _json_body(request)
            parsed = parse_chat(body, model_id=self.model_id, defaults=self.engine.sampling_defaults)
            prompt_ids = await self._encode(self.engine.tokenizer.encode_chat, parsed.messages,
                                            sum(len(m["content"]) for m in parsed.messages))
            return await self._generate(request, "chat", prompt_ids, parsed.options, param="messages",
                                        started=started)
        except InvalidRequest as exc:
            return error_response(request.scope, exc.status, exc.message, param=exc.param, code=exc.code)

    async def complete(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            body = await _json_body(request)
            parsed = parse_completion(body, model_id=self.model_id, vocab_size=self.engine.tokenizer.vocab_size,
                                      defaults=self.engine.sampling_defaults)
            prompt = parsed.prompt
            if isinstance(prompt, str):
                prompt_ids = await self._encode(self._encode_text, prompt, len(prompt))
            else:
                prompt_ids = list(prompt)
            return await self._generate(request, "text_completion", prompt_ids, parsed.options, param="prompt",
                                        started=started)
        except InvalidRequest as exc:
            return error_response(request.scope, exc.status, exc.message, param=exc.param, code=exc.code)

    def _encode_text(self, text: str) -> list[int]:
        return self.engine.tokenizer.encode(text, add_special=True)

    async def _encode(self, encode: Callable[[Any], list[int]], value: Any, chars: int) -> list[int]:
        try:
            if chars > OFFLOAD_CHARS:
                return await asyncio.to_thread(encode, value)
            return encode(value)
        except ChatTemplateError as exc:
            raise InvalidRequest(f"Invalid 'messages': {exc}", param="messages") from None

    def _request(self, prompt_ids: Sequence[int], options: Options, *, param: str,
                 operation: str) -> GenerationRequest:
        context = self.engine.context_length
        if not prompt_ids:
            raise InvalidRequest(f"Invalid '{param}': it is empty.", param=param)
        max_tokens = options.max_tokens
        if max_tokens is None:
            max_tokens = max(context - len(prompt_ids), 1)
        if len(prompt_ids) + max_tokens > context:
            raise InvalidRequest(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the {param}, {max_tokens} in the "
                f"completion). Please reduce the length of the {param} or completion.", param=param,
                code="context_length_exceeded")
        return GenerationRequest(prompt_ids=tuple(prompt_ids), max_tokens=max_tokens, sampling=options.sampling,
                                 stop=options.stop, reasoning=operation == "chat")

    async def _generate(self, request: Request, operation: str, prompt_ids: Sequence[int], options: Options, *,
                        param: str, started: float) -> Response:
        try:
            generation = self.engine.submit(self._request(prompt_ids, options, param=param, operation=operation))
        except EngineOverloaded as exc:
            return error_response(request.scope, 503, f"The model is overloaded: {exc}. Try again later.",
                                  type="overloaded_error", code="overloaded",
                                  headers={"Retry-After": str(max(1, exc.retry_after))})
        except EngineClosed:
            return error_response(request.scope, 503, "The model is shutting down.", type="overloaded_error",
                                  code="unavailable", headers={"Retry-After": "1"})
        except PromptTooLong as exc:
            raise InvalidRequest(str(exc), param=param, code="context_length_exceeded") from None
        except InvalidGenerationRequest as exc:
            raise InvalidRequest(str(exc), param=param) from None
        call = Call(operation, generation, request.scope, self.metrics, started)
        if options.stream:
            return EventStream(call, include_usage=options.include_usage)
        return await self._answer(request, call)

    async def _answer(self, request: Request, call: Call) -> Response:
        watcher = asyncio.create_task(call.cancel_on_disconnect(request.receive))
        content: list[str] = []
        reasoning: list[str] = []
        try:
            async for delta in call.generation:
                call.observe(delta)
                content.append(delta.content)
                reasoning.append(delta.reasoning)
        finally:
            watcher.cancel()
            call.close()
        if call.disconnected:
            return Response(status_code=CLIENT_CLOSED)
        if call.interrupted:
            return error_response(request.scope, 503, _INTERRUPTED_MESSAGE, type="overloaded_error",
                                  code="unavailable", headers={"Retry-After": "1"})
        return Response(_dumps(call.answer("".join(content), "".join(reasoning))), media_type="application/json")

    def _model(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "dsguard"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model()]})

    async def model(self, request: Request) -> Response:
        try:
            check_model({"model": request.path_params["model"]}, self.model_id)
        except InvalidRequest as exc:
            return error_response(request.scope, exc.status, exc.message, param=exc.param, code=exc.code)
        return JSONResponse(self._model())


async def _json_body(request: Request) -> object:
    ctx = context_of(request.scope)
    if ctx is not None and isinstance(ctx.json, dict):
        return ctx.json  # the guard's JSON check parsed it and refused unpaired surrogates
    raw = await request.body()
    try:
        body: object = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
    if not _encodable(body):
        raise InvalidRequest("The request body is not valid JSON: a string holds a lone UTF-16 surrogate.",
                             code="invalid_json")
    return body


def _encodable(value: object) -> bool:
    """Every string (keys included) of a parsed JSON value can be encoded as UTF-8 (``json`` lets lone
    surrogates such as ``"\\ud800"`` through)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def create_app(engine: Engine, *, meter_provider: MeterProvider | None = None, owns_engine: bool = False) -> Starlette:
    """The OpenAI-compatible app over ``engine``; metrics go to ``meter_provider`` (else the global one).

    With ``owns_engine``, the app closes the engine when the server shuts down (ASGI lifespan).
    """
    api = RunnerAPI(engine, RunnerMetrics(engine, meter_provider))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.close()
            logger.info("runner: %s closed", engine.model_id)

    return Starlette(lifespan=lifespan if owns_engine else None, routes=[
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/completions", api.complete, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.model, methods=["GET"]),
    ], exception_handlers={HTTPException: http_error}, middleware=[Middleware(InternalErrors)])
