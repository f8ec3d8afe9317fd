"""The contract between the plane and a substrate: one request in, a stream of events out.

An adapter turns a ``GenerationRequest`` into an async stream of ``TextDelta`` events ending with
exactly one ``Finished``. It raises only ``substrate_adapters.errors`` exceptions. Before the first
``TextDelta`` an error lets the plane re-place the request on a fallback; after it, the stream is
ended with an error event. Cancelling the iteration (the client went away) must abort the work on
the substrate and free its slot.

``load()`` reports what the adapter itself knows about its substrate (in flight, queued, rate-limit
headroom): the signal collector reads it. Adapters import nothing from Ray.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from inferplane.fleet_state import SubstrateReport


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model made (or an earlier assistant turn's, in the messages)."""

    id: str
    name: str
    arguments: str
    """A JSON text, as the model wrote it."""

    def to_openai(self, index: int | None = None) -> dict:
        out = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: str
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    """An assistant turn's calls."""
    tool_call_id: str | None = None
    """A tool turn: the call it answers."""

    def to_openai(self) -> dict:
        out: dict = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """A structured answer: any JSON object, or JSON matching ``schema_json``."""

    type: Literal["json_object", "json_schema"]
    name: str | None = None
    schema_json: str | None = None
    """The JSON Schema as JSON text (``json_schema`` only); None: any JSON object."""
    strict: bool | None = None

    def to_openai(self) -> dict:
        if self.type == "json_object":
            return {"type": "json_object"}
        spec: dict = {"name": self.name or "answer"}
        if self.schema_json is not None:
            spec["schema"] = json.loads(self.schema_json)
        if self.strict is not None:
            spec["strict"] = self.strict
        return {"type": "json_schema", "json_schema": spec}


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """A function the model may call."""

    name: str
    description: str | None = None
    parameters_json: str | None = None
    """Its arguments' JSON Schema as JSON text."""
    strict: bool | None = None

    def to_openai(self) -> dict:
        fn: dict = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        if self.parameters_json is not None:
            fn["parameters"] = json.loads(self.parameters_json)
        if self.strict is not None:
            fn["strict"] = self.strict
        return {"type": "function", "function": fn}


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    model: str
    """The substrate's own name for the model (``upstream_name``)."""
    api: Literal["chat", "completion"]
    messages: tuple[ChatTurn, ...] = ()
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    """A completion's prompt given as token ids (then ``prompt`` is None)."""
    max_tokens: int = 16
    counted_prompt_tokens: int | None = None
    """The plane's count of the prompt with the model's tokenizer (``inferplane.api.tokens``);
    what a substrate that cannot count reports as the prompt's tokens. None: not counted."""
    min_tokens: int = 0
    """Generate at least this many tokens, ignoring end-of-sequence until then (calibration uses it
    to fix output lengths; the OpenAI API does not expose it, so client requests leave it at 0)."""
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias in [-100, 100])."""
    logprobs: int | None = None
    """Return each output token's log probability with this many alternatives (0: none); None: no
    log probabilities. Chat's ``top_logprobs``, completions' ``logprobs``."""
    echo: bool = False
    """Completions: the prompt comes first in the text (and, with ``logprobs``, its tokens')."""
    suffix: str | None = None
    response_format: ResponseFormat | None = None
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: str | None = None
    """``none``, ``auto``, ``required``, or the name of the one function to call."""
    parallel_tool_calls: bool | None = None

    @property
    def forced_function(self) -> str | None:
        """The function ``tool_choice`` names, if it names one."""
        return None if self.tool_choice in (None, "none", "auto", "required") else self.tool_choice


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] | None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token's log probability and its ``top_logprobs`` alternatives. ``logprob`` is None for a
    prompt's first token (echoed), which nothing precedes."""

    token: str
    logprob: float | None
    bytes: tuple[int, ...] | None
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    tokens: int = 1
    """Tokens this delta carries (the engine's count where it has one): the ingress records the
    tokens actually streamed when a client leaves before ``Finished``."""
    prompt_tokens: int | None = None
    """On the first delta, the engine's count of the prompt's tokens, where it has one."""
    logprobs: tuple[TokenLogprob, ...] | None = None
    """One per token of ``text`` (the echoed prompt's first), when the request asked for them."""
    tool_calls: tuple[ToolCall, ...] = ()
    """Complete calls the model made in this delta."""


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: str
    """``stop``, ``length`` or ``tool_calls``."""
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int | None = None
    """Prompt tokens the engine took from its prefix cache instead of prefilling (vLLM's
    ``num_cached_tokens``; a provider's ``usage.prompt_tokens_details.cached_tokens``). None: not
    reported."""


GenerationEvent = TextDelta | Finished


# What an adapter knows of its substrate right now is exactly what a substrate replica reports to
# the placement authority: one type, defined with the authority's state.
AdapterLoad = SubstrateReport


class SubstrateAdapter(Protocol):
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]: ...

    def load(self) -> AdapterLoad: ...

    async def aclose(self) -> None: ...
