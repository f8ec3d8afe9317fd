"""Prompt tokens for placement: counted with each model's own tokenizer, else estimated.

Placement needs a request's input size before any substrate sees it; the context-window filter,
budgets, cost estimates and rate-limit headroom all read it. A ``TokenCounter`` is built once per
ingress replica from the config and counts one request per call:

* **A Hugging Face tokenizer** (``tokenizer: {hf: DIR}``, and by default the engine's own model
  directory when the model's primary substrate is ``vllm``): the chat template is rendered with
  jinja2 (compiled once per model, in the sandbox and with the options transformers uses) with
  ``add_generation_prompt=True``, and the text is encoded with the Rust ``tokenizers`` library,
  special tokens on. That is what the vLLM substrate does: its adapter renders the template to text
  and the engine encodes the text (``add_special_tokens=True``). transformers'
  ``apply_chat_template(tokenize=True)`` encodes without special tokens: the two agree for
  tokenizers whose post-processor adds none (SmolLM2, Qwen); for one that adds a BOS (Llama) the
  engine, and so this count, has one token more.
* **A tiktoken encoding** (``tokenizer: {tiktoken: NAME}``): only when the encoding file is already
  in tiktoken's cache (``TIKTOKEN_CACHE_DIR``); nothing is downloaded. Chat framing is OpenAI's
  published rule: 3 tokens per message plus its role, and 3 for the reply.
* **The estimate** (``tokenizer: {chars_per_token: N}``, the default for models whose primary is
  not ``vllm``, and the fallback): ``ceil(chars / N)`` per text plus 4 tokens of framing per chat
  message and 2 for the reply. N = 4 suits English under current BPE tokenizers; emoji and CJK
  take far more tokens per character, so the estimate undercounts them (a chat of 2,000 emoji:
  506 estimated, 6,030 counted with SmolLM2's tokenizer and template).

A tokenizer that cannot be loaded (no network, a model not prepared, a package missing) never
stops the ingress: its model is counted by the estimate and a warning names why, once, when the
counter is built. ``TokenCounter.sources`` says which tokenizer each model uses. A request the
tokenizer cannot take (a lone surrogate, a template that raises) is estimated; the substrate refuses
it with its own reason. The count is for the model's primary tokenizer: a spillover substrate with a
different tokenizer reports its own count in usage afterwards.

Cost per request: ``inferplane bench engine`` prints it beside the parse and ``place()``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha1
from pathlib import Path
from typing import Protocol

from inferplane.api.openai_schema import ChatCompletionRequest, CompletionRequest
from inferplane.config.schema import InferplaneConfig, Model, SubstrateKind, TokenizerSpec
from inferplane.placement.prefix import block_hashes

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_FOR_REPLY = 2
TIKTOKEN_TOKENS_PER_MESSAGE = 3
TIKTOKEN_TOKENS_FOR_REPLY = 3

Turn = tuple[str, str]
"""One chat message as a substrate receives it: (role, text)."""


class TokenizerUnavailable(Exception):
    """A tokenizer could not be loaded from local files. The message says why, in one line."""


class PromptTokenizer(Protocol):
    """One model's way of counting. ``source`` names it for logs and ``inferplane validate``."""

    source: str

    def chat_tokens(self, turns: Sequence[Turn]) -> int:
        """Tokens of the prompt the substrate builds from these messages, reply prompt included."""

    def text_tokens(self, text: str) -> int:
        """Tokens of a completion prompt as the substrate encodes it."""


def chat_text(message) -> str:
    """A message's text as substrates receive it: its text parts joined, nothing between them."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text or "" for part in content)


@dataclass(frozen=True, slots=True)
class CharsEstimate:
    """No tokenizer: ``ceil(chars / chars_per_token)`` per text, 4 tokens of framing per chat
    message and 2 for the reply; a completion prompt counts one token more than its text."""

    chars_per_token: float = CHARS_PER_TOKEN
    reason: str = ""
    """Why the estimate counts this model (empty when the config chose it)."""

    @property
    def source(self) -> str:
        name = f"estimate, {self.chars_per_token:g} characters per token"
        return f"{name} (fallback: {self.reason})" if self.reason else name

    def _tokens(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)

    def chat_tokens(self, turns: Sequence[Turn]) -> int:
        return sum(TOKENS_PER_MESSAGE + self._tokens(text) for _, text in turns) + TOKENS_FOR_REPLY

    def text_tokens(self, text: str) -> int:
        return self._tokens(text) + 1


ESTIMATE = CharsEstimate()


class HfTokenizer:
    """A Hugging Face tokenizer directory: ``tokenizer.json`` through the Rust ``tokenizers``
    library, and the chat template from ``chat_template.jinja`` or ``tokenizer_config.json``.

    The template is rendered as transformers renders it (sandboxed jinja2, ``trim_blocks``,
    ``lstrip_blocks``, ``loopcontrols``, ``raise_exception``, ``tojson``, ``strftime_now``, the
    special tokens as variables). Without a template a chat counts its texts plus 4 tokens of
    framing per message and 2 for the reply (the vLLM substrate refuses such chats anyway).

    Raises ``TokenizerUnavailable`` when the directory, ``tokenizer.json`` or the ``tokenizers``
    package is missing or the file does not load.
    """

    def __init__(self, directory: Path) -> None:
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise TokenizerUnavailable(f"{directory} has no tokenizer.json")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerUnavailable("the `tokenizers` package is not installed") from None
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:
            raise TokenizerUnavailable(f"{tokenizer_file} does not load: {_first_line(exc)}") from None
        # A tokenizer.json may carry truncation or padding for training; a count must see neither.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        # The batch call releases the GIL while it encodes (``encode`` holds it) and skips offsets:
        # a quarter faster, and a caller may count on a worker thread without stalling its loop.
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        settings = _tokenizer_settings(directory)
        self._template_variables = _special_tokens(settings)
        self._template, template_note = _chat_template(directory, settings)
        self.source = f"hf {directory} ({template_note})"

    @property
    def has_template(self) -> bool:
        return self._template is not None

    def render(self, turns: Sequence[Turn]) -> str:
        """The prompt text the vLLM substrate builds from these messages."""
        messages = [{"role": role, "content": text} for role, text in turns]
        return self._template.render(messages=messages, tools=None, documents=None,
                                     add_generation_prompt=True, **self._template_variables)

    def chat_tokens(self, turns: Sequence[Turn]) -> int:
        if self._template is None:
            return sum(TOKENS_PER_MESSAGE + self.text_tokens(text) for _, text in turns) + TOKENS_FOR_REPLY
        return self.text_tokens(self.render(turns))

    def text_tokens(self, text: str) -> int:
        return len(self._encode_batch([text], add_special_tokens=True)[0])

    def chat_ids(self, turns: Sequence[Turn]) -> list[int] | None:
        """The token ids the vLLM substrate prefills for these messages; None without a template."""
        return None if self._template is None else self.text_ids(self.render(turns))

    def text_ids(self, text: str) -> list[int]:
        return self._encode_batch([text], add_special_tokens=True)[0].ids


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _tokenizer_settings(directory: Path) -> dict:
    try:
        settings = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return settings if isinstance(settings, dict) else {}


def _special_tokens(settings: Mapping) -> dict[str, str]:
    """``bos_token``, ``eos_token``... as templates read them (a string, or an AddedToken's content)."""
    variables = {}
    for key, value in settings.items():
        if not key.endswith("_token"):
            continue
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            variables[key] = value
    return variables


def _chat_template(directory: Path, settings: Mapping):
    """(the compiled template or None, a note naming where it came from or why there is none)."""
    template_file = directory / "chat_template.jinja"
    if template_file.is_file():
        text, origin = template_file.read_text(), template_file.name
    else:
        text, origin = settings.get("chat_template"), "tokenizer_config.json"
        if isinstance(text, list):  # named templates: the default one is what chat uses
            text = next((t.get("template") for t in text if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(text, str) or not text:
        return None, "no chat template: 4 tokens of framing per message"
    try:
        return _compile_template(text), f"chat template {origin}"
    except Exception as exc:
        return None, f"chat template {origin} does not compile ({_first_line(exc)}): 4 tokens of framing per message"


def _compile_template(text: str):
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' marker of assistant tokens
        for training masks) renders its body unchanged."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja2's own tojson escapes HTML characters; templates expect plain JSON.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols, GenerationBlock])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return environment.from_string(text)


class TiktokenEncoding:
    """A tiktoken encoding, loaded only from tiktoken's cache: no download is ever attempted.

    Raises ``TokenizerUnavailable`` when tiktoken is not installed, the name is not one of
    OpenAI's encodings, or its file is not cached.
    """

    # Encoding -> the file tiktoken fetches for it (tiktoken_ext.openai_public).
    _FILES = {"r50k_base": "r50k_base", "p50k_base": "p50k_base", "p50k_edit": "p50k_base",
              "cl100k_base": "cl100k_base", "o200k_base": "o200k_base", "o200k_harmony": "o200k_base"}

    def __init__(self, name: str) -> None:
        if name not in self._FILES:
            raise TokenizerUnavailable(f"tiktoken encoding {name!r} is not one of {', '.join(self._FILES)}")
        try:
            import tiktoken
        except ImportError:
            raise TokenizerUnavailable("the `tiktoken` package is not installed") from None
        cached = _tiktoken_cache_file(self._FILES[name])
        if cached is None or not cached.is_file():
            raise TokenizerUnavailable(
                f"tiktoken encoding {name} is not in tiktoken's cache "
                f"({cached.parent if cached else 'caching disabled'}; set TIKTOKEN_CACHE_DIR to a "
                "directory holding it) and nothing is downloaded")
        try:
            # The cached file is read; tiktoken fetches only when its hash does not match, which
            # fails here without network and is reported as such.
            self._encoding = tiktoken.get_encoding(name)
        except Exception as exc:
            raise TokenizerUnavailable(f"tiktoken encoding {name} does not load: {_first_line(exc)}") from None
        self.source = f"tiktoken {name}"

    def chat_tokens(self, turns: Sequence[Turn]) -> int:
        return sum(TIKTOKEN_TOKENS_PER_MESSAGE + self.text_tokens(role) + self.text_tokens(text)
                   for role, text in turns) + TIKTOKEN_TOKENS_FOR_REPLY

    def text_tokens(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))


def _tiktoken_cache_file(file: str) -> Path | None:
    """Where tiktoken caches an encoding file (tiktoken.load.read_file_cached: the SHA-1 of its
    URL, under TIKTOKEN_CACHE_DIR, else DATA_GYM_CACHE_DIR, else the temp dir's data-gym-cache;
    an empty directory name disables the cache)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return None
    url = f"https://openaipublic.blob.core.windows.net/encodings/{file}.tiktoken"
    return Path(cache_dir) / sha1(url.encode()).hexdigest()


def resolve_tokenizer(model: Model, cfg: InferplaneConfig) -> TokenizerSpec:
    """The tokenizer a model declares; when it declares none, its primary substrate's engine
    tokenizer (the ``vllm.engine.model_path`` directory) if that substrate is ``vllm``, else the
    estimate of 4 characters per token."""
    if model.tokenizer is not None:
        return model.tokenizer
    primary = next((s for s in cfg.substrates if s.name == model.primary_substrate), None)
    if primary is not None and primary.kind is SubstrateKind.VLLM:
        return TokenizerSpec(hf=primary.vllm.engine.model_path)
    return TokenizerSpec(chars_per_token=CHARS_PER_TOKEN)


def load_tokenizer(spec: TokenizerSpec, *, cache_dir: Path | None = None) -> PromptTokenizer:
    """The tokenizer a spec names, from local files only. ``builtin:NAME`` resolves as the vLLM
    substrate resolves its model (``inferplane.models.prepare.resolve_model_path``).

    Raises ``TokenizerUnavailable`` with the reason when it cannot be loaded.
    """
    if spec.chars_per_token is not None:
        return CharsEstimate(spec.chars_per_token)
    if spec.tiktoken is not None:
        return TiktokenEncoding(spec.tiktoken)
    from inferplane.models.prepare import BUILTIN_PREFIX, ModelPrepareError, resolve_model_path

    try:
        directory = resolve_model_path(spec.hf, cache_dir)
    except ModelPrepareError as exc:
        raise TokenizerUnavailable(str(exc)) from None
    if spec.hf.startswith(BUILTIN_PREFIX) and not (directory / "tokenizer.json").is_file():
        raise TokenizerUnavailable(f"{spec.hf} is not prepared in {directory}: run `inferplane models prepare`")
    return HfTokenizer(directory)


def chat_turns(body: ChatCompletionRequest) -> list[Turn]:
    """The messages as the substrate receives them (``inferplane.api.payload``)."""
    return [(m.role, chat_text(m)) for m in body.messages]


def _completion_tokens(tokenizer: PromptTokenizer, prompt) -> int:
    """A prompt string, a list of them, token ids, or a list of token-id lists: the total."""
    if isinstance(prompt, str):
        return tokenizer.text_tokens(prompt)
    if all(isinstance(item, int) for item in prompt):
        return len(prompt)  # token ids reach the engine as they are
    return sum(_completion_tokens(tokenizer, item) for item in prompt)


def estimate_chat_tokens(body: ChatCompletionRequest) -> int:
    """The fallback for a chat: 4 characters per token, 4 tokens per message, 2 for the reply."""
    return ESTIMATE.chat_tokens(chat_turns(body))


def estimate_completion_tokens(body: CompletionRequest) -> int:
    """The fallback for a completion: 4 characters per token plus 1 per prompt; token ids count
    as themselves."""
    return _completion_tokens(ESTIMATE, body.prompt)


class TokenCounter:
    """The prompt tokens of a request for the model it names, with that model's tokenizer.

    Built once per ingress replica (``from_config``); ``prompt_tokens`` is the per-request call and
    never raises for a parsed body: a model the config does not name (placement refuses it) and a
    request the tokenizer cannot take are estimated. A completion with several prompts counts
    their total.
    """

    def __init__(self, by_model: Mapping[str, PromptTokenizer], names: Mapping[str, str]) -> None:
        """``by_model``: model name -> its tokenizer; ``names``: every name clients may send
        (names and aliases) -> the model name."""
        self._by_name = {name: by_model[model] for name, model in names.items()}
        self.sources = {model: tokenizer.source for model, tokenizer in by_model.items()}
        """Model name -> which tokenizer counts it, in words (for ``inferplane validate``)."""

    @classmethod
    def from_config(cls, cfg: InferplaneConfig, *, cache_dir: Path | None = None) -> TokenCounter:
        """Load each model's tokenizer once (models sharing one share it). One that cannot be loaded
        is replaced by the estimate, with a warning naming the model and why."""
        loaded: dict[TokenizerSpec, PromptTokenizer] = {}
        by_model: dict[str, PromptTokenizer] = {}
        names: dict[str, str] = {}
        for model in cfg.models:
            spec = resolve_tokenizer(model, cfg)
            if spec not in loaded:
                try:
                    loaded[spec] = load_tokenizer(spec, cache_dir=cache_dir)
                except TokenizerUnavailable as exc:
                    loaded[spec] = CharsEstimate(reason=str(exc))
            tokenizer = by_model[model.name] = loaded[spec]
            if isinstance(tokenizer, CharsEstimate) and tokenizer.reason:
                log.warning("model %s: prompt tokens are estimated at %g characters per token, its "
                            "tokenizer is unavailable: %s", model.name, tokenizer.chars_per_token, tokenizer.reason)
            elif isinstance(tokenizer, HfTokenizer) and not tokenizer.has_template:
                log.warning("model %s: chat prompts are counted without a chat template: %s",
                            model.name, tokenizer.source)
            for name in (model.name, *model.aliases):
                names[name] = model.name
        return cls(by_model, names)

    def tokenizer_for(self, model: str) -> PromptTokenizer:
        return self._by_name.get(model, ESTIMATE)

    def prompt_tokens(self, body: ChatCompletionRequest | CompletionRequest) -> int:
        tokenizer = self.tokenizer_for(body.model)
        try:
            return self._count(tokenizer, body)
        except Exception as exc:  # e.g. a lone surrogate, or a template's raise_exception()
            log.debug("prompt of a %s request estimated, its tokenizer refused it: %s",
                      body.model, _first_line(exc))
            return self._count(ESTIMATE, body)

    def prompt_and_blocks(self, body: ChatCompletionRequest | CompletionRequest,
                          block_tokens: int) -> tuple[int, tuple[int, ...]]:
        """``(prompt_tokens(body), the chained hashes of its full block_tokens-token blocks)``
        (``placement.prefix.block_hashes``), what the plane's prefix-cache belief is keyed by. The
        blocks are () when they cannot be known exactly: a tokenizer that gives no ids (the
        estimate, tiktoken), a chat without a template, a batch of prompts, or a prompt the
        tokenizer refused. A prompt of token ids is hashed as it is. ``block_tokens`` 0: the count
        alone, with no blocks (and no cost beyond ``prompt_tokens``)."""
        if not block_tokens:
            return self.prompt_tokens(body), ()
        if isinstance(body, CompletionRequest) and body.prompt and all(isinstance(i, int) for i in body.prompt):
            return len(body.prompt), block_hashes(body.prompt, block_tokens)
        tokenizer = self.tokenizer_for(body.model)
        if isinstance(tokenizer, HfTokenizer):
            try:
                if isinstance(body, ChatCompletionRequest):
                    ids = tokenizer.chat_ids(chat_turns(body))
                else:
                    ids = tokenizer.text_ids(body.prompt) if isinstance(body.prompt, str) else None
            except Exception:  # refused: counted (estimated) below, with no blocks
                ids = None
            if ids is not None:
                return len(ids), block_hashes(ids, block_tokens)
        return self.prompt_tokens(body), ()

    @staticmethod
    def _count(tokenizer: PromptTokenizer, body: ChatCompletionRequest | CompletionRequest) -> int:
        if isinstance(body, ChatCompletionRequest):
            return tokenizer.chat_tokens(chat_turns(body))
        return _completion_tokens(tokenizer, body.prompt)
