"""An emulated substrate: no model, only timing, failures and load that follow ``physics``.

It stands in for substrates a laptop or a CI runner does not have (a Groq-class API, a sovereign
pool in another country), so that placement, spillover and fault handling can be watched working.
Everything it produces says it is emulated: the generated text is filler that begins
``[emulated:<substrate>]`` and repeats, one word per token.

One request, with the formulas of ``substrate_adapters.physics``:

    1. fail now if an outage is injected, or with probability ``failure_rate``
       (``SubstrateUnavailable``, before any token and before taking a slot);
    2. sleep ``outbound_delay * jitter`` (the request's trip to the substrate);
    3. wait for a slot in a FIFO of ``max_concurrency`` slots (``load().queued`` counts the wait);
    4. wait for one of ``prefill_slots`` prefill lanes (FIFO), sleep
       ``first_token_delay(prompt_tokens) * jitter`` holding it, emit the first token;
    5. emit the other ``max_tokens - 1`` tokens one ``decode_interval(running) * jitter`` apart,
       ``running`` read again at every step; when the interval is below ``MIN_STEP_S`` several
       tokens share one sleep and one ``TextDelta``, whose duration is the sum of theirs. Each step
       is pushed back by the decode time other requests' prefills took from it meanwhile:
       ``(1 - decode_share_during_prefill)`` of the time any lane was held (``_PrefillLanes``);
    6. ``Finished("length", prompt_tokens, tokens emitted)``.

Each ``jitter`` is a fresh draw from the substrate's seeded ``PhysicsDraws``, taken in the order
above (failure, outbound, first token, each decode step), so a run in virtual time is
reproducible. Sleeps aim at absolute deadlines on ``clock``: oversleeping and a slow consumer
do not add up, and a stream ends when the physics says it does.

``prompt_tokens`` is the plane's count with the model's tokenizer when the request carries one
(``GenerationRequest.counted_prompt_tokens``), else an estimate (``len(text) // 4 + 1`` per message
or prompt): emulations have no tokenizer of their own. Closing the stream or cancelling its task frees the slot at once.

Parameters (``EmulatedSettings.HONOURED``): ``stop`` is applied (the filler is cut before the
first stop string, ``Finished("stop", ...)``), ``echo`` puts the prompt text first, and ``seed``
changes nothing (the filler is the same for every seed). Sampling knobs (temperature, top_p,
penalties) have nothing to sample. What the emulation would have to invent (``logprobs``,
``logit_bias``, ``response_format``, ``tools``, ``suffix``, ``echo`` of token ids it cannot decode)
is refused (``SubstrateRejectedRequest``): placement sends such requests elsewhere, and this is the
backstop. Each delta carries its token count; the first also the prompt-token estimate.

Before step 1, a request an engine would refuse is refused as vLLM refuses it
(``SubstrateRejectedRequest``, not retryable): an unknown model, ``max_tokens`` below 1, no
messages or no prompt, and sampling values outside the API's bounds (``temperature`` in [0, 2],
``top_p`` in (0, 1], at most 4 non-empty stop sequences, a signed 64-bit ``seed``). An emulation
that served what the real engine refuses would hide the difference between substrates.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from inferplane.api.openai_schema import MAX_STOP_SEQUENCES, SEED_MAX, SEED_MIN, TEMPERATURE_MAX
from inferplane.config.schema import EmulatedSettings, ServedModel
from substrate_adapters.base import (
    AdapterLoad,
    Finished,
    GenerationEvent,
    GenerationRequest,
    TextDelta,
)
from substrate_adapters.errors import SubstrateRejectedRequest, SubstrateUnavailable
from substrate_adapters.physics import (
    PhysicsDraws,
    PhysicsModel,
    decode_interval_s,
    first_token_delay_s,
    outbound_delay_s,
    prefill_slots,
)

MIN_STEP_S = 0.005
"""Shortest sleep between deltas; faster decode is batched so a stream costs <= ~200 wake-ups/s."""

FILLER_WORDS = ("filler", "text", "from", "an", "emulated", "substrate.")
"""The words after the ``[emulated:<substrate>]`` marker, cycled; each is one token."""


def estimate_prompt_tokens(request: GenerationRequest) -> int:
    """The plane's count when it sent one, else ``len(text) // 4 + 1`` for each chat message, or
    for the completion prompt."""
    if request.counted_prompt_tokens is not None:
        return request.counted_prompt_tokens
    if request.api == "chat":
        return sum(len(turn.content) // 4 + 1 for turn in request.messages)
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    return len(request.prompt or "") // 4 + 1


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-") or "substrate"


class _FifoSlots:
    """``limit`` slots handed out strictly first come, first served.

    A released slot passes straight to the oldest waiter, so a newcomer can never overtake the
    queue. A waiter cancelled after it was handed a slot passes the slot on.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.running < self._limit and not self._waiters:
            self.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was ours already: hand it to the next in line
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; ``running`` is unchanged
                return
        self.running -= 1


class _PrefillLanes:
    """At most ``limit`` first-token phases at once, handed out FIFO, and the decode time they
    take from streams: ``stalled_s()`` = the integral over time of ``(1 - share)`` while at least
    one lane is held (a stream's lost decode time between two readings is their difference)."""

    def __init__(self, limit: int, share: float, clock: Callable[[], float]) -> None:
        self._lanes = _FifoSlots(limit)
        self._loss = 1.0 - share
        self._clock = clock
        self._held = 0
        self._stalled = 0.0
        self._since = 0.0

    async def acquire(self) -> None:
        await self._lanes.acquire()
        self._count(+1)

    def release(self) -> None:
        self._count(-1)
        self._lanes.release()

    def stalled_s(self) -> float:
        if self._held == 0:
            return self._stalled
        return self._stalled + (self._clock() - self._since) * self._loss

    def _count(self, delta: int) -> None:
        now = self._clock()
        if self._held > 0:
            self._stalled += (now - self._since) * self._loss
        self._held += delta
        self._since = now


class EmulatedAdapter:
    """A ``SubstrateAdapter`` whose timing follows ``settings.physics``.

    ``served_models``: the models it accepts, by their upstream name (``upstream_name`` or
    ``name``). ``substrate_name`` labels the filler text (default: a slug of
    ``settings.emulates``). ``clock`` and ``sleep`` are injectable so tests run in virtual time.
    Fault injection at run time: ``set_slowdown``, ``set_failure_rate``, ``set_outage``.
    """

    def __init__(
        self,
        served_models: Iterable[ServedModel],
        settings: EmulatedSettings,
        *,
        substrate_name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._models = frozenset(m.upstream_name or m.name for m in served_models)
        if not self._models:
            raise ValueError("an emulated substrate must serve at least one model")
        self._physics = PhysicsModel.from_config(settings.physics)
        self._draws = PhysicsDraws(self._physics.seed)
        self._slots = _FifoSlots(self._physics.max_concurrency)
        self._lanes = _PrefillLanes(prefill_slots(self._physics), self._physics.decode_share_during_prefill, clock)
        self._label = _slug(substrate_name) if substrate_name else _slug(settings.emulates)
        self.emulates = settings.emulates
        self._clock = clock
        self._sleep = sleep
        self._outage = False

    @property
    def physics(self) -> PhysicsModel:
        """The physics now in force (fault injection included)."""
        return self._physics

    def set_slowdown(self, factor: float) -> None:
        """Multiply every later duration by ``factor`` (>= 1; 1 removes the slowdown)."""
        if not (math.isfinite(factor) and factor >= 1.0):
            raise ValueError("slowdown factor must be a finite number >= 1")
        self._physics = self._physics.with_slowdown(factor)

    def set_failure_rate(self, rate: float) -> None:
        """Fail each later request before its first token with probability ``rate``."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("failure rate must be in [0, 1]")
        self._physics = self._physics.with_failure_rate(rate)

    def set_outage(self, down: bool) -> None:
        """While down, every new request fails with ``SubstrateUnavailable`` before its first
        token."""
        self._outage = bool(down)

    def load(self) -> AdapterLoad:
        return AdapterLoad(in_flight=self._slots.running, queued=self._slots.queued)

    async def aclose(self) -> None:
        return None

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        self._check(request)
        if self._outage:
            raise SubstrateUnavailable(f"emulated outage injected on {self._label}")
        if self._draws.fails(self._physics.failure_rate):
            raise SubstrateUnavailable(f"emulated failure on {self._label} (failure_rate draw)")
        prompt_tokens = estimate_prompt_tokens(request)
        total = request.max_tokens

        jitter = self._physics.jitter_ratio
        await self._sleep(outbound_delay_s(self._physics) * self._draws.jitter(jitter))
        await self._slots.acquire()
        try:
            # Sleep to absolute deadlines on the clock so that oversleeping and a slow consumer
            # do not add up over a long stream: the schedule, not the sum of sleeps, is the physics.
            await self._lanes.acquire()
            try:
                first_token_s = first_token_delay_s(self._physics, prompt_tokens)
                deadline = self._clock() + first_token_s * self._draws.jitter(jitter)
                await self._sleep_until(deadline)
            finally:
                self._lanes.release()
            cut = _StopCut(request.stop)
            first = (request.prompt or "") + self._word(0) if request.echo else self._word(0)
            text, stopped = cut.feed(first)
            yield TextDelta(text, 1, prompt_tokens=prompt_tokens)
            emitted = 1
            if stopped:
                yield Finished("stop", prompt_tokens, emitted)
                return
            stalled = self._lanes.stalled_s()
            while emitted < total:
                interval = decode_interval_s(self._physics, self._slots.running)
                step = min(total - emitted, max(1, math.ceil(MIN_STEP_S / interval)))
                deadline += step * interval * self._draws.jitter(jitter)
                await self._sleep_until(deadline)
                while (lost := self._lanes.stalled_s() - stalled) > 1e-9:  # prefills ran meanwhile
                    stalled += lost
                    deadline += lost
                    await self._sleep_until(deadline)
                text, stopped = cut.feed("".join(" " + self._word(i) for i in range(emitted, emitted + step)))
                yield TextDelta(text, step)
                emitted += step
                if stopped:
                    yield Finished("stop", prompt_tokens, emitted)
                    return
            yield Finished("length", prompt_tokens, emitted)
        finally:
            self._slots.release()

    async def _sleep_until(self, deadline: float) -> None:
        await self._sleep(max(0.0, deadline - self._clock()))

    def _word(self, index: int) -> str:
        if index % (len(FILLER_WORDS) + 1) == 0:
            return f"[emulated:{self._label}]"
        return FILLER_WORDS[index % (len(FILLER_WORDS) + 1) - 1]

    def _check(self, request: GenerationRequest) -> None:
        if request.model not in self._models:
            raise SubstrateRejectedRequest(
                f"model {request.model!r} is not served by emulated substrate {self._label}; "
                f"it serves {', '.join(sorted(self._models))}",
                status=404,
            )
        if request.max_tokens < 1:
            raise SubstrateRejectedRequest("max_tokens must be at least 1", status=400)
        if request.api == "chat" and not request.messages:
            raise SubstrateRejectedRequest("a chat request needs at least one message", status=400)
        if request.api == "completion" and request.prompt is None and request.prompt_token_ids is None:
            raise SubstrateRejectedRequest("a completion request needs a prompt", status=400)
        unhonoured = _unhonoured(request)
        if unhonoured:
            raise SubstrateRejectedRequest(
                f"emulated substrate {self._label} does not honour {', '.join(unhonoured)}: its text is filler",
                status=400)
        refusal = _sampling_refusal(request)
        if refusal is not None:
            raise SubstrateRejectedRequest(refusal, status=400)


def _sampling_refusal(request: GenerationRequest) -> str | None:
    """Why vLLM would refuse the request's sampling values, in its words; None if it would not."""
    t, p = request.temperature, request.top_p
    if t is not None and not (math.isfinite(t) and 0.0 <= t <= TEMPERATURE_MAX):
        return f"temperature must be in [0, {TEMPERATURE_MAX:g}], got {t}."
    if p is not None and not (math.isfinite(p) and 0.0 < p <= 1.0):
        return f"top_p must be in (0, 1], got {p}."
    if len(request.stop) > MAX_STOP_SEQUENCES:
        return f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(request.stop)}."
    if any(not s for s in request.stop):
        return "stop cannot contain an empty string."
    if request.seed is not None and not SEED_MIN <= request.seed <= SEED_MAX:
        return f"seed must be a signed 64-bit integer (between {SEED_MIN} and {SEED_MAX})."
    return None


def _unhonoured(request: GenerationRequest) -> list[str]:
    """The parameters of ``request`` an emulation would have to invent, by name."""
    found = []
    if request.logprobs is not None:
        found.append("logprobs")
    if request.logit_bias:
        found.append("logit_bias")
    if request.response_format is not None:
        found.append("response_format")
    if request.tools:
        found.append("tools")
    if request.suffix:
        found.append("suffix")
    if request.echo and request.prompt is None:
        found.append("echo (of a token-id prompt)")
    return found


class _StopCut:
    """Cuts streamed text before the first stop string, which may span deltas: ``feed`` returns
    the part of a piece to emit and whether a stop string was reached."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._longest = max((len(s) for s in stops), default=0)
        self._tail = ""  # the last characters emitted, where a stop string may have begun

    def feed(self, piece: str) -> tuple[str, bool]:
        if not self._stops:
            return piece, False
        window = self._tail + piece
        hits = [i for i in (window.find(s) for s in self._stops) if i >= 0]
        if hits:
            return piece[:max(0, min(hits) - len(self._tail))], True
        self._tail = window[-(self._longest - 1):] if self._longest > 1 else ""
        return piece, False
