"""Validation of OpenAI request bodies for the runner's ``/v1/chat/completions`` and ``/v1/completions``.

Every refusal is an :class:`InvalidRequest` that renders as OpenAI's error object
(``{"error": {"message", "type", "param", "code"}}``), naming the field at fault in ``param``.
As OpenAI does, ``null`` reads as "not set" and fields this runner does not know are ignored.
Fields it knows but cannot honour are refused rather than silently dropped:

- ``n`` (and ``best_of``) other than 1; a list of several prompts;
- ``logprobs``, ``top_logprobs``, ``logit_bias``, ``tools`` / ``functions``, ``response_format``
  other than text, ``echo`` and ``suffix``; message parts other than text.

Extensions to OpenAI's set, as vLLM accepts them: ``top_k`` (0 or -1: off) and ``repetition_penalty``.
A sampling field left out takes the value of ``defaults`` (the model's ``generation_config.json`` under
``[runner] sampling_defaults = "model"``, else OpenAI's: temperature 1, top_p 1, no penalties).
A negative ``seed`` (OpenAI allows any 64-bit integer) is taken modulo 2**64. A ``temperature``
below 1e-4 is greedy decoding, as 0 is (dividing logits by less overflows them), and
``repetition_penalty`` must lie in (0, 100]. Each stop string holds at most 512 characters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ..errors import DSGuardError
from .sampling import MIN_TEMPERATURE, SamplingParams

OPENAI_DEFAULTS = SamplingParams()
"""OpenAI's defaults: temperature 1, top_p 1, no penalties."""
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 512
MAX_REPETITION_PENALTY = 100.0
COMPLETION_DEFAULT_MAX_TOKENS = 16
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class InvalidRequest(DSGuardError):
    """A request the API refuses, with OpenAI's error fields (``param`` names the field at fault)."""

    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value",
                 status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


@dataclasses.dataclass(frozen=True)
class Options:
    """What both endpoints share: limits, sampling, stop strings and streaming."""

    max_tokens: int | None
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A validated chat completion: messages reduced to ``{"role", "content"}`` with text content."""

    messages: tuple[dict[str, str], ...]
    options: Options


@dataclasses.dataclass(frozen=True)
class CompletionRequest:
    """A validated text completion: one prompt, as text or as token ids."""

    prompt: str | tuple[int, ...]
    options: Options


def _type_error(param: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)}.",
                          param=param, code="invalid_type")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _integer(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(name, "an integer", value)
    return value


def _number(body: Mapping[str, Any], name: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _type_error(name, "a number", value)
    number = float(value)
    if not math.isfinite(number) or number > high or number < low or (low_open and number == low):
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        limit = f" and at most {high:g}" if math.isfinite(high) else ""
        raise InvalidRequest(f"Invalid '{name}': expected a number {bound}{limit}, got {value}.", param=name)
    return number


def _boolean(body: Mapping[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise _type_error(name, "a boolean", value)


def _unsupported(name: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"'{name}': {what} is not supported by this runner.", param=name,
                          code="unsupported_value")


def check_model(body: Mapping[str, Any], model_id: str) -> None:
    """The body names the served model (404 ``model_not_found`` otherwise, as OpenAI answers)."""
    model = body.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model",
                             code="missing_required_parameter")
    if not isinstance(model, str):
        raise _type_error("model", "a string", model)
    if model != model_id:
        raise InvalidRequest(f"The model `{model}` does not exist or you do not have access to it.",
                             code="model_not_found", status=404)


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    values = {name: _integer(body, name) for name in ("max_completion_tokens", "max_tokens")}
    for name, value in values.items():
        if value is not None and value < 1:
            raise InvalidRequest(f"Invalid '{name}': expected an integer of at least 1, got {value}.", param=name)
    given = {value for value in values.values() if value is not None}
    if len(given) > 1:
        raise InvalidRequest("Set 'max_tokens' or 'max_completion_tokens', not both with different values.",
                             param="max_tokens")
    return given.pop() if given else None


def _sampling(body: Mapping[str, Any], defaults: SamplingParams) -> SamplingParams:
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    top_k = _integer(body, "top_k")
    if top_k is not None and top_k < -1:
        raise InvalidRequest(f"Invalid 'top_k': expected -1 or 0 (off) or a positive integer, got {top_k}.",
                             param="top_k")
    repetition_penalty = _number(body, "repetition_penalty", 0.0, MAX_REPETITION_PENALTY, low_open=True)
    frequency_penalty = _number(body, "frequency_penalty", -2.0, 2.0)
    presence_penalty = _number(body, "presence_penalty", -2.0, 2.0)
    seed = _integer(body, "seed")
    top_k = defaults.top_k if top_k is None else max(top_k, 0)
    if top_p == 0.0:  # the smallest set reaching probability 0 is the most likely token alone
        top_p, top_k = 1.0, 1
    if temperature is not None and temperature < MIN_TEMPERATURE:
        temperature = 0.0
    return SamplingParams(
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        top_k=top_k,
        seed=None if seed is None else seed % 2**64,
        repetition_penalty=defaults.repetition_penalty if repetition_penalty is None else repetition_penalty,
        frequency_penalty=defaults.frequency_penalty if frequency_penalty is None else frequency_penalty,
        presence_penalty=defaults.presence_penalty if presence_penalty is None else presence_penalty,
    )


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _type_error("stop", "a string or an array of strings", stop)
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"Invalid 'stop': at most {MAX_STOP_SEQUENCES} sequences, got {len(stop)}.",
                             param="stop")
    if any(not s for s in stop):
        raise InvalidRequest("Invalid 'stop': a stop sequence may not be empty.", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise InvalidRequest(f"Invalid 'stop': a stop sequence may hold at most {MAX_STOP_CHARS} characters.",
                             param="stop")
    return tuple(stop)


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = bool(_boolean(body, "stream"))
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise _type_error("stream_options", "an object", options)
    if not stream:
        raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                             param="stream_options")
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise _type_error("stream_options.include_usage", "a boolean", include_usage)
    return stream, bool(include_usage)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = _integer(body, "n")
    if n is not None and n < 1:
        raise InvalidRequest(f"Invalid 'n': expected an integer of at least 1, got {n}.", param="n")
    if n is not None and n > 1:
        raise _unsupported("n", "more than one choice")
    best_of = _integer(body, "best_of")
    if best_of is not None and best_of != 1:
        raise _unsupported("best_of", "a value other than 1")
    for name in ("logprobs", "top_logprobs", "echo", "suffix", "logit_bias", "tools", "functions"):
        value = body.get(name)
        if value not in (None, False, "", [], {}):
            raise _unsupported(name, f"'{name}'")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise _unsupported("response_format", "a response format other than text")


def _options(body: Mapping[str, Any], *, default_max_tokens: int | None, defaults: SamplingParams) -> Options:
    _refuse_unsupported(body)
    max_tokens = _max_tokens(body)
    stream, include_usage = _stream(body)
    return Options(max_tokens=default_max_tokens if max_tokens is None else max_tokens,
                   sampling=_sampling(body, defaults),
                   stop=_stop(body), stream=stream, include_usage=include_usage)


def _text_content(content: object, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _type_error(param, "a string or an array of content parts", content)
    texts = []
    for index, part in enumerate(content):
        where = f"{param}[{index}]"
        if not isinstance(part, dict):
            raise _type_error(where, "an object", part)
        if part.get("type") != "text":
            raise InvalidRequest(f"Invalid '{where}.type': only text parts are supported, got {part.get('type')!r}.",
                                 param=f"{where}.type", code="unsupported_value")
        text = part.get("text")
        if not isinstance(text, str):
            raise _type_error(f"{where}.text", "a string", text)
        texts.append(text)
    return "".join(texts)


def _messages(body: Mapping[str, Any]) -> tuple[dict[str, str], ...]:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages",
                             code="missing_required_parameter")
    if not isinstance(messages, list):
        raise _type_error("messages", "an array", messages)
    if not messages:
        raise InvalidRequest("Invalid 'messages': empty array. Expected an array with at least 1 message.",
                             param="messages", code="empty_array")
    checked = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _type_error(where, "an object", message)
        role = message.get("role")
        if not isinstance(role, str):
            raise _type_error(f"{where}.role", "a string", role)
        if role not in ROLES:
            raise InvalidRequest(f"Invalid value for '{where}.role': {role!r}. Supported values are: "
                                 "'system', 'developer', 'user' and 'assistant'.", param=f"{where}.role",
                                 code="unsupported_value")
        content = message.get("content")
        if content is None and role == "assistant":
            content = ""
        if content is None:
            raise InvalidRequest(f"Missing required parameter: '{where}.content'.", param=f"{where}.content",
                                 code="missing_required_parameter")
        checked.append({"role": ROLES[role], "content": _text_content(content, f"{where}.content")})
    return tuple(checked)


def parse_chat(body: object, *, model_id: str, defaults: SamplingParams = OPENAI_DEFAULTS) -> ChatRequest:
    """A chat completion body, validated; raises :class:`InvalidRequest`."""
    body = _object(body)
    check_model(body, model_id)
    messages = _messages(body)
    return ChatRequest(messages, _options(body, default_max_tokens=None, defaults=defaults))


def _prompt(body: Mapping[str, Any], vocab_size: int) -> str | tuple[int, ...]:
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt",
                             code="missing_required_parameter")
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list) or not prompt:
        raise _type_error("prompt", "a string, an array of strings or an array of token ids", prompt)
    if len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt
    elif all(isinstance(item, str) for item in prompt):
        raise _unsupported("prompt", "more than one prompt per request")
    if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        raise _type_error("prompt", "a string, an array of strings or an array of token ids", prompt)
    for token in prompt:
        if not 0 <= token < vocab_size:
            raise InvalidRequest(f"Invalid 'prompt': token id {token} is outside the vocabulary (0 to "
                                 f"{vocab_size - 1}).", param="prompt")
    return tuple(prompt)


def parse_completion(body: object, *, model_id: str, vocab_size: int,
                     defaults: SamplingParams = OPENAI_DEFAULTS) -> CompletionRequest:
    """A text completion body, validated; raises :class:`InvalidRequest`."""
    body = _object(body)
    check_model(body, model_id)
    prompt = _prompt(body, vocab_size)
    return CompletionRequest(prompt, _options(body, default_max_tokens=COMPLETION_DEFAULT_MAX_TOKENS,
                                              defaults=defaults))


def _object(body: object) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_body")
    return body
