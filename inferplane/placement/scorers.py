"""Soft scorers: each maps one substrate to a float in [0, 1], 1 best.

Contract of a ``Scorer``: ``score(ctx, spec, signals, est)`` is pure, reads only its stated inputs
and returns a value in [0, 1]. A value outside is a bug that the tests catch; nothing here clamps
a result after the fact. Weights live only in the policy. Every formula is in the docstring.
"""

from __future__ import annotations

from typing import Protocol

from inferplane.placement.context import PlacementContext
from inferplane.placement.estimate import Estimate
from inferplane.placement.fleet import SubstrateSpec
from inferplane.placement.signals import SubstrateSignals, limits


class Scorer(Protocol):
    name: str

    def score(
        self, ctx: PlacementContext, spec: SubstrateSpec, signals: SubstrateSignals, est: Estimate
    ) -> float: ...


class PredictedLatency:
    """Slack against the SLA class's deadlines, from the latency estimate (see ``estimate``).

    score = min(max(0, 1 - ttft / ttft_deadline), max(0, 1 - e2e / e2e_deadline))
    1 is instant, 0 is at or past either deadline.
    """

    name = "predicted_latency"

    def score(self, ctx, spec, signals, est):
        sla = ctx.sla
        a = 1.0 - est.ttft_s / sla.ttft_deadline_s
        b = 1.0 - est.e2e_s / sla.e2e_deadline_s
        s = a if a < b else b
        return s if s > 0.0 else 0.0


class QueuePressure:
    """How much of the substrate's concurrency is free, from the estimate's occupancy (the
    ``in_flight`` reading: every request it holds, running or waiting).

    score = 1 - min(1, occupancy / max_concurrent), where an unknown load counts as full
    (max_concurrent as it is now, ``signals.limits``).
    """

    name = "queue_pressure"

    def score(self, ctx, spec, signals, est):
        cap = limits(spec, signals)[0]
        ratio = est.occupancy / cap if cap > 0 else 1.0
        return 0.0 if ratio >= 1.0 else 1.0 - ratio


class MemoryPressure:
    """Headroom of GPU memory and KV cache, from the engine's signals.

    score = 1 - max(gpu_memory_used_ratio, kv_cache_usage) over the readings that exist;
    a reading that exists but is stale scores 0 (it counts against the substrate);
    a substrate that reports neither (a remote API) scores 1: memory is not its constraint.
    """

    name = "memory_pressure"

    def score(self, ctx, spec, signals, est):
        worst = -1.0
        now, bound = ctx.now_s, ctx.staleness_bound_s
        for reading in (signals.gpu_memory_used_ratio, signals.kv_cache_usage):
            if reading is None:
                continue
            if now - reading.observed_at_s > bound:
                return 0.0
            v = reading.value
            if v > worst:
                worst = v
        if worst < 0.0:
            return 1.0
        return 1.0 - (worst if worst < 1.0 else 1.0)


class CostScorer:
    """Cheapness of this request here, from the cost estimate.

    c = estimated_cost_usd / (input + output tokens), the effective USD per token, with the output
    length the estimate assumed (``est.output_tokens``: the expected one; max output tokens when
    the estimate does not say); r = policy.cost_reference_usd_per_token; score = r / (r + c).
    Free scores 1, the reference 0.5.
    """

    name = "cost"

    def score(self, ctx, spec, signals, est):
        out = est.output_tokens
        tokens = ctx.request.input_tokens + (ctx.request.max_output_tokens if out is None else out)
        c = est.cost_usd / (tokens if tokens > 0 else 1)
        r = ctx.policy.cost_reference_usd_per_token
        return r / (r + c)


class Locality:
    """Closeness to the ingress: 1 same zone, 0.5 same region, 0 elsewhere or unknown."""

    name = "locality"

    def score(self, ctx, spec, signals, est):
        req = ctx.request
        if req.ingress_zone is not None and spec.zone == req.ingress_zone:
            return 1.0
        if req.ingress_region is not None and spec.region == req.ingress_region:
            return 0.5
        return 0.0


class ReservedTier:
    """Use capacity already paid for first: 1 reserved, 0 burst."""

    name = "reserved_tier"

    def score(self, ctx, spec, signals, est):
        return 1.0 if spec.tier == "reserved" else 0.0


class PrefixLocality:
    """Prefill this substrate would not have to do: the predicted prefix-cache hit fraction.

    score = ctx.request.prefix_hit(spec.name): the leading run of the prompt's blocks the plane
    believes the substrate holds / the prompt's blocks (``placement.prefix``), 0 when it holds none
    or has no prefix cache. A score, never a filter: it only ever ranks substrates every hard rule
    admitted. (The time a hit saves is also in the latency estimate; this credits the cache itself:
    the prefill compute a hit saves the fleet, and a conversation kept where its prefix stays warm.)
    """

    name = "prefix_locality"

    def score(self, ctx, spec, signals, est):
        return ctx.request.prefix_hit(spec.name)


SCORERS: dict[str, Scorer] = {
    s.name: s
    for s in (PredictedLatency(), QueuePressure(), MemoryPressure(), CostScorer(), Locality(), ReservedTier(),
              PrefixLocality())
}
