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

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from inferplane.fleet_state import SubstrateReport


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    request_id: str
    model: str
    """The substrate's own name for the model (``upstream_name``)."""
    api: Literal["chat", "completion"]
    messages: tuple[ChatTurn, ...] = ()
    prompt: str | None = None
    max_tokens: int = 16
    min_tokens: int = 0
    """Generate at least this many tokens, ignoring end-of-sequence until then (calibration uses it
    to fix output lengths; the OpenAI API does not expose it, so client requests leave it at 0)."""
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: str
    """``stop`` or ``length``."""
    prompt_tokens: int
    completion_tokens: int


GenerationEvent = TextDelta | Finished


# What an adapter knows of its substrate right now is exactly what a substrate replica reports to
# the placement authority: one type, defined with the authority's state.
AdapterLoad = SubstrateReport


class SubstrateAdapter(Protocol):
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]: ...

    def load(self) -> AdapterLoad: ...

    async def aclose(self) -> None: ...
