"""The timing model of an emulated substrate, as pure arithmetic: no asyncio, no clock, no I/O.

The emulated adapter sleeps for these durations; the replay simulator advances simulated time by
them. Both read the same functions, so an emulation and a replay of the same physics agree.

All durations are in seconds and every one is multiplied by ``slowdown_factor`` (an injected
slowdown; 1 = none). ``running`` is the number of requests holding a slot on the substrate,
counting the request being timed, so it is at least 1 for an admitted request.

    outbound_delay     = slowdown_factor * network_rtt / 2
                         (the request travels to the substrate, before admission)
    first_token_delay  = slowdown_factor
                         * (network_rtt / 2 + ttft + input_tokens / prefill_tokens_per_s)
                         (after admission: fixed start-up, prefill, first token travels back)
    batch_fraction     = min(1, running / max_concurrency)
    stream_decode_rate = decode_tokens_per_s
                         / (1 + (decode_slowdown_at_full_batch - 1) * batch_fraction)
    decode_interval    = slowdown_factor / stream_decode_rate
    service_time       = first_token_delay + (output_tokens - 1) * decode_interval

Compute shared between prefill and decode (a CPU host; a GPU engine whose long prefills fill its
steps), two optional terms, both measured by ``inferplane calibrate``:

    prefill_concurrency          at most this many admitted requests are in their first-token
                                 phase (``first_token_delay``) at once; the others wait their turn
                                 in arrival order, holding their slots (None: every slot at once)
    decode_share_during_prefill  while at least one prefill runs, every decoding stream advances
                                 at this fraction of ``stream_decode_rate`` (1: prefill does not
                                 disturb decode; near 0: a decode step waits for the prefill)

So with an empty queue, the time to first token seen by the caller is
``slowdown_factor * (network_rtt + ttft + prefill)``, the same shape the placement estimate
predicts (``inferplane.placement.estimate``). The first token arrives at ``first_token_delay``;
each further token one ``decode_interval`` later.

Randomness (jitter on durations, failures) comes from ``PhysicsDraws``, a seeded
``random.Random``: the same seed and the same sequence of calls give the same draws.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from inferplane.config.schema import EmulatedPhysics


@dataclass(frozen=True, slots=True)
class PhysicsModel:
    """``EmulatedPhysics`` in seconds. Build with ``from_config``; change with ``with_*``."""

    ttft_s: float
    """Fixed time after admission before prefill starts."""
    network_rtt_s: float
    """Round trip between the caller and the substrate."""
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    """Per-stream decode rate with the substrate otherwise idle."""
    decode_slowdown_at_full_batch: float
    """Per-stream decode slowdown when every slot is busy (1 = batching costs nothing)."""
    max_concurrency: int
    jitter_ratio: float
    """Relative jitter: each jittered duration is multiplied by a draw in [1 - j, 1 + j]."""
    failure_rate: float
    """Probability that a request fails before its first token."""
    slowdown_factor: float = 1.0
    seed: int = 0
    prefill_concurrency: int | None = None
    """Prefills at once (first-token phases); None: as many as slots."""
    decode_share_during_prefill: float = 1.0
    """Fraction of its decode rate a stream keeps while any prefill runs."""

    def __post_init__(self) -> None:
        if self.prefill_tokens_per_s <= 0 or self.decode_tokens_per_s <= 0:
            raise ValueError("prefill_tokens_per_s and decode_tokens_per_s must be > 0")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if self.decode_slowdown_at_full_batch < 1.0:
            raise ValueError("decode_slowdown_at_full_batch must be >= 1")
        if min(self.ttft_s, self.network_rtt_s) < 0:
            raise ValueError("ttft_s and network_rtt_s must be >= 0")
        if not 0.0 <= self.jitter_ratio <= 1.0:
            raise ValueError("jitter_ratio must be in [0, 1]")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in [0, 1]")
        if self.slowdown_factor < 1.0:
            raise ValueError("slowdown_factor must be >= 1 (1 = no injected slowdown)")
        if self.prefill_concurrency is not None and self.prefill_concurrency < 1:
            raise ValueError("prefill_concurrency must be at least 1 (or None: every slot)")
        if not 0.0 <= self.decode_share_during_prefill <= 1.0:
            raise ValueError("decode_share_during_prefill must be in [0, 1]")

    @classmethod
    def from_config(cls, physics: EmulatedPhysics) -> PhysicsModel:
        """Milliseconds become seconds; every other field is carried over unchanged."""
        return cls(
            ttft_s=physics.ttft_ms / 1000.0,
            network_rtt_s=physics.network_rtt_ms / 1000.0,
            prefill_tokens_per_s=physics.prefill_tokens_per_s,
            decode_tokens_per_s=physics.decode_tokens_per_s,
            decode_slowdown_at_full_batch=physics.decode_slowdown_at_full_batch,
            max_concurrency=physics.max_concurrency,
            jitter_ratio=physics.jitter_ratio,
            failure_rate=physics.failure_rate,
            slowdown_factor=physics.slowdown_factor,
            seed=physics.seed,
            prefill_concurrency=physics.prefill_concurrency,
            decode_share_during_prefill=physics.decode_share_during_prefill,
        )

    def with_slowdown(self, factor: float) -> PhysicsModel:
        """The same physics with ``slowdown_factor = factor`` (>= 1)."""
        return replace(self, slowdown_factor=factor)

    def with_failure_rate(self, rate: float) -> PhysicsModel:
        """The same physics with ``failure_rate = rate`` (in [0, 1])."""
        return replace(self, failure_rate=rate)


def outbound_delay_s(model: PhysicsModel) -> float:
    """``slowdown_factor * network_rtt / 2``: the request's trip to the substrate, before
    admission."""
    return model.slowdown_factor * model.network_rtt_s / 2.0


def first_token_delay_s(model: PhysicsModel, input_tokens: int) -> float:
    """Time from admission to the first token reaching the caller:
    ``slowdown_factor * (network_rtt / 2 + ttft + input_tokens / prefill_tokens_per_s)``.

    Prefill is not slowed by other running requests in this model; only decode is.
    """
    prefill_s = max(0, input_tokens) / model.prefill_tokens_per_s
    return model.slowdown_factor * (model.network_rtt_s / 2.0 + model.ttft_s + prefill_s)


def stream_decode_rate(model: PhysicsModel, running: int) -> float:
    """Tokens per second of one stream while ``running`` requests hold slots:
    ``decode_tokens_per_s
    / (1 + (decode_slowdown_at_full_batch - 1) * min(1, running / max_concurrency))``.

    Not multiplied by ``slowdown_factor`` (``decode_interval_s`` is).
    """
    batch_fraction = min(1.0, max(0, running) / model.max_concurrency)
    return model.decode_tokens_per_s / (
        1.0 + (model.decode_slowdown_at_full_batch - 1.0) * batch_fraction
    )


def decode_interval_s(model: PhysicsModel, running: int) -> float:
    """Time between two tokens of one stream: ``slowdown_factor / stream_decode_rate(running)``."""
    return model.slowdown_factor / stream_decode_rate(model, running)


def decode_share(model: PhysicsModel, prefilling: int) -> float:
    """The fraction of ``stream_decode_rate`` a decoding stream gets while ``prefilling``
    requests are in their first-token phase: ``decode_share_during_prefill`` if any, else 1."""
    return model.decode_share_during_prefill if prefilling > 0 else 1.0


def prefill_slots(model: PhysicsModel) -> int:
    """How many first-token phases may run at once: ``prefill_concurrency`` or every slot."""
    return model.prefill_concurrency or model.max_concurrency


def service_time_s(
    model: PhysicsModel, input_tokens: int, output_tokens: int, running: int
) -> float:
    """Admission to last token with ``running`` constant and no jitter:
    ``first_token_delay + max(0, output_tokens - 1) * decode_interval(running)``."""
    return first_token_delay_s(model, input_tokens) + max(0, output_tokens - 1) * decode_interval_s(
        model, running
    )


class PhysicsDraws:
    """The seeded random draws of one emulated substrate (``random.Random(seed)`` inside).

    Each call consumes exactly one ``random()`` value ``u`` in [0, 1), whatever its argument, so
    the sequence of draws depends only on the seed and the sequence of calls:

        jitter(j) = 1 + j * (2u - 1)        uniform in [1 - j, 1 + j]; exactly 1 when j = 0
        fails(p)  = u < p                   True with probability p; never for 0, always for 1
    """

    __slots__ = ("_rng",)

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def jitter(self, ratio: float) -> float:
        """A duration multiplier uniform in ``[1 - ratio, 1 + ratio]``."""
        return 1.0 + ratio * (2.0 * self._rng.random() - 1.0)

    def fails(self, rate: float) -> bool:
        """Whether this request fails, with probability ``rate``."""
        return self._rng.random() < rate
