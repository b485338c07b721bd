"""Byte-level BPE tokenizer, DeepSeek-R1 chat template and streaming detokenization of a model bundle."""
# ruff: noqa: RUF001  (DeepSeek's control tokens are spelled with full-width bars)

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from dsguard.errors import DSGuardError
from dsguard.runner.corpus import CORPUS
from dsguard.runner.errors import BundleError, read_json_object

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK = "<think>"
END_THINK = "</think>"
SPECIAL_TOKENS = (EOS, USER, ASSISTANT, BOS)
"""Control tokens, skipped when decoding; added after the learned vocabulary in this order."""
TEXT_TOKENS = (THINK, END_THINK)
"""Added tokens that decode to their text."""

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
"""Qwen2's pre-tokenization pattern: words, single digits, punctuation runs, newlines and spaces."""

CHAT_TEMPLATE = r"""
{%- macro text(message, index) -%}
  {%- if message['content'] is not defined -%}
    {{- raise_exception('messages[' ~ index ~ ']: missing content') -}}
  {%- elif message['content'] is string -%}
    {{- message['content'] -}}
  {%- elif message['content'] is iterable and message['content'] is not mapping -%}
    {%- for part in message['content'] -%}
      {%- if part is mapping and part['type'] == 'text' and part['text'] is string -%}
        {{- part['text'] -}}
      {%- else -%}
        {{- raise_exception('messages[' ~ index ~ '].content[' ~ loop.index0 ~ ']: only text parts are supported') -}}
      {%- endif -%}
    {%- endfor -%}
  {%- else -%}
    {{- raise_exception('messages[' ~ index ~ '].content: expected a string or a list of text parts') -}}
  {%- endif -%}
{%- endmacro -%}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
  {%- if message['role'] in ['system', 'developer'] -%}
    {%- set ns.system = ns.system ~ ('\n\n' if ns.system else '') ~ text(message, loop.index0) -%}
  {%- endif -%}
{%- endfor -%}
{{- bos_token ~ ns.system -}}
{%- for message in messages -%}
  {%- if message['role'] == 'user' -%}
    {{- '<｜User｜>' ~ text(message, loop.index0) -}}
  {%- elif message['role'] == 'assistant' -%}
    {%- set content = text(message, loop.index0) -%}
    {%- if '</think>' in content -%}
      {%- set content = content.split('</think>')[-1] -%}
    {%- endif -%}
    {{- '<｜Assistant｜>' ~ content ~ eos_token -}}
  {%- elif message['role'] not in ['system', 'developer'] -%}
    {{- raise_exception('messages[' ~ loop.index0 ~ ']: unknown role \'' ~ message['role'] ~ '\'') -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<｜Assistant｜><think>\n' -}}
{%- endif -%}
""".strip()
"""DeepSeek-R1-Distill's prompt format: bos, the system prompts, ``<｜User｜>`` turns, past ``<｜Assistant｜>``
turns without their reasoning and closed by eos, then ``<｜Assistant｜><think>\\n`` to start the answer.
Unlike the original it joins several system messages instead of keeping the last, and rejects unknown roles."""


class ChatTemplateError(DSGuardError):
    """Messages the chat template cannot render; the message is safe to return as a 400."""


def train_tokenizer(vocab_size: int = 2048) -> Tokenizer:
    """Train Qwen2-style byte-level BPE on the embedded corpus, offline and deterministically.

    The learned vocabulary takes the first ids; DeepSeek-R1's added tokens take the last six, so that
    ``get_vocab_size()`` is exactly ``vocab_size``.
    """
    learned = vocab_size - len(SPECIAL_TOKENS) - len(TEXT_TOKENS)
    if learned <= len(pre_tokenizers.ByteLevel.alphabet()):
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges beyond the 256 byte tokens")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=learned, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer, length=len(CORPUS))
    if tokenizer.get_vocab_size() != learned:
        raise ValueError(f"the embedded corpus yields {tokenizer.get_vocab_size()} tokens, fewer than {learned}")
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in TEXT_TOKENS])
    return tokenizer


def _added_token(content: str, *, special: bool) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


def write_tokenizer_files(tokenizer: Tokenizer, directory: Path, *, model_max_length: int) -> None:
    """Write ``tokenizer.json`` and a ``tokenizer_config.json`` shaped as DeepSeek-R1-Distill's."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    added = {str(token_id): _added_token(token.content, special=token.special)
             for token_id, token in sorted(tokenizer.get_added_tokens_decoder().items())}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": {"__type": "AddedToken", **_added_token(BOS, special=True)},
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": {"__type": "AddedToken", **_added_token(EOS, special=True)},
        "legacy": True,
        "model_max_length": model_max_length,
        "pad_token": {"__type": "AddedToken", **_added_token(EOS, special=True)},
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizerFast",
        "unk_token": None,
        "use_default_system_prompt": False,
    }
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    (directory / "tokenizer_config.json").write_text(text, encoding="utf-8")


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's map from the printable characters of byte-level tokens back to bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [byte for byte in range(256) if byte not in printable]
    table = {chr(byte): byte for byte in printable}
    table.update({chr(256 + index): byte for index, byte in enumerate(shifted)})
    return table


class IncrementalDetokenizer:
    """Turns generated token ids into text one at a time, emitting only complete UTF-8 characters.

    Control tokens produce nothing; a character split over several byte tokens comes out whole with its
    last byte; nothing is emitted twice. Concatenating every ``push`` and the final ``flush`` gives the
    tokenizer's decoding of the whole sequence.
    """

    def __init__(self, token_bytes: Sequence[bytes]) -> None:
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text completed by one more token (often empty while a character is incomplete)."""
        data = self._token_bytes[token_id] if 0 <= token_id < len(self._token_bytes) else b""
        return self._utf8.decode(data)

    def flush(self) -> str:
        """The rest, an incomplete trailing character replaced by U+FFFD."""
        return self._utf8.decode(b"", final=True)


def _token_content(value: object, source: Path, key: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise BundleError(f"expected a string or an object with 'content', got {value!r}", file=source, key=key)


def _template_source(config: Mapping[str, Any], directory: Path, source: Path) -> str:
    template = config.get("chat_template")
    if template is None and (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, Mapping)}
        chosen = named.get("default")
        if isinstance(chosen, str):
            return chosen
        raise BundleError("a list of templates needs one named 'default'", file=source, key="chat_template")
    raise BundleError("missing, or not a string or a list of named templates", file=source, key="chat_template")


def _eos_from_generation_config(directory: Path) -> list[int]:
    path = directory / "generation_config.json"
    if not path.is_file():
        return []
    value = read_json_object(path).get("eos_token_id")
    values = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in values):
        raise BundleError(f"expected an integer or a list of integers, got {value!r}", file=path, key="eos_token_id")
    return values


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: object, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in a sandbox that offers what Hugging Face templates call."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                               extensions=[jinja2.ext.loopcontrols])
    environment.globals["raise_exception"] = _raise_exception
    environment.filters["tojson"] = _tojson
    return environment.from_string(source)


class ChatTokenizer:
    """The tokenizer of one model bundle: encoding, chat prompts and (streaming) decoding."""

    def __init__(self, tokenizer: Tokenizer, template: jinja2.Template, *, bos_token: str | None,
                 eos_token: str | None, eos_token_ids: frozenset[int], add_bos: bool) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_token_id = tokenizer.token_to_id(bos_token) if bos_token else None
        self.eos_token_ids = eos_token_ids
        self.add_bos = add_bos and self.bos_token_id is not None
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        added = tokenizer.get_added_tokens_decoder().values()
        self.reserved_texts = tuple(token.content for token in added if token.special)

    @classmethod
    def from_bundle(cls, directory: Path) -> ChatTokenizer:
        """Read ``tokenizer.json``, ``tokenizer_config.json`` and, when present, ``generation_config.json``."""
        tokenizer_path = directory / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise BundleError("missing", file=tokenizer_path)
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # the Rust library raises plain Exception
            raise BundleError(f"not a tokenizers JSON file ({exc})", file=tokenizer_path) from None
        if not isinstance(tokenizer.decoder, decoders.ByteLevel):
            raise BundleError(f"decoder {type(tokenizer.decoder).__name__} is not supported: byte-level BPE expected",
                              file=tokenizer_path, key="decoder")
        config_path = directory / "tokenizer_config.json"
        config = read_json_object(config_path)
        bos_token = _token_content(config.get("bos_token"), config_path, "bos_token")
        eos_token = _token_content(config.get("eos_token"), config_path, "eos_token")
        eos_ids = set(_eos_from_generation_config(directory))
        for key, token in (("bos_token", bos_token), ("eos_token", eos_token)):
            token_id = tokenizer.token_to_id(token) if token else None
            if token and token_id is None:
                raise BundleError(f"{token!r} is not a token of tokenizer.json", file=config_path, key=key)
            if key == "eos_token" and token_id is not None:
                eos_ids.add(token_id)
        if not eos_ids:
            raise BundleError("no end-of-sequence token: set eos_token", file=config_path, key="eos_token")
        try:
            template = compile_chat_template(_template_source(config, directory, config_path))
        except jinja2.TemplateSyntaxError as exc:
            raise BundleError(f"line {exc.lineno}: {exc.message}", file=config_path, key="chat_template") from None
        return cls(tokenizer, template, bos_token=bos_token, eos_token=eos_token, eos_token_ids=frozenset(eos_ids),
                   add_bos=config.get("add_bos_token") is True)

    def encode(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of ``text``; with ``add_special``, preceded by bos when the bundle asks for it."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_special and self.add_bos and self.bos_token_id is not None:
            return [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, control tokens left out."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation of OpenAI-style messages."""
        normalized = self._normalize(messages)
        try:
            return self.template.render(messages=normalized, add_generation_prompt=add_generation_prompt,
                                        bos_token=self.bos_token or "", eos_token=self.eos_token or "")
        except ChatTemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
            raise ChatTemplateError(f"the chat template cannot render these messages: {exc}") from None

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered conversation (the template supplies bos)."""
        return self.encode(self.render_chat(messages, add_generation_prompt=add_generation_prompt))

    def detokenizer(self) -> IncrementalDetokenizer:
        """A fresh streaming decoder for one generated sequence."""
        return IncrementalDetokenizer(self._token_bytes)

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        alphabet = _byte_level_alphabet()
        table = [b""] * self.vocab_size
        special = {token_id for token_id, token in self.tokenizer.get_added_tokens_decoder().items() if token.special}
        for token, token_id in self.tokenizer.get_vocab(with_added_tokens=True).items():
            if token_id in special or not 0 <= token_id < self.vocab_size:
                continue
            if all(char in alphabet for char in token):
                table[token_id] = bytes(alphabet[char] for char in token)
            else:
                table[token_id] = token.encode("utf-8")
        return table

    def _normalize(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Check the messages' structure and flatten content-part lists, so any template gets strings."""
        if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) or not messages:
            raise ChatTemplateError("messages: expected a non-empty list of messages")
        normalized = []
        for index, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise ChatTemplateError(f"messages[{index}]: expected an object")
            if not isinstance(message.get("role"), str):
                raise ChatTemplateError(f"messages[{index}].role: expected a string")
            if "content" not in message:
                raise ChatTemplateError(f"messages[{index}]: missing content")
            content = _content_text(message["content"], f"messages[{index}].content")
            reserved = next((token for token in self.reserved_texts if token in content), None)
            if reserved is not None:
                raise ChatTemplateError(f"messages[{index}].content: contains the reserved token {reserved!r}")
            normalized.append({**message, "content": content})
        return normalized


def _content_text(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ChatTemplateError(f"{where}[{index}]: only text parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    kind = "null" if content is None else type(content).__name__
    raise ChatTemplateError(f"{where}: expected a string or a list of text parts, got {kind}")
