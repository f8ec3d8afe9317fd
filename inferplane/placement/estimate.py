"""Latency and cost prediction for one request on one substrate. Pure arithmetic.

``output_tokens`` is the output length the request is expected to produce: what its tenant's
requests for the model have produced on average (learned by the authority from outcomes,
``fleet_state``), never more than the request's ``max_tokens``, and ``max_tokens`` itself until
there are outcomes. Hard limits (the context window, rate-limit token headroom) use ``max_tokens``
and are not estimates: they are filters.

Latency (seconds), from the substrate's latency profile and its live load (``occupancy`` is the
``in_flight`` reading: every request it holds, running or waiting; see ``signals``):

    batch_frac  = min(1, (occupancy + 1) / max_concurrent)
    decode_rate = decode_tokens_per_s / (1 + (slowdown_at_full_batch - 1) * batch_frac)
    prefill     = input_tokens * (1 - prefix_hit) / prefill_tokens_per_s
    service     = prefill + output_tokens / decode_rate
    queue_wait  = 0                                             if occupancy < max_concurrent
                = (occupancy - max_concurrent + 1) / max_concurrent * service   otherwise
    ttft        = network_rtt + base_ttft + queue_wait + prefill
    e2e         = ttft + output_tokens / decode_rate

``prefix_hit`` is the fraction of the prompt the substrate is predicted to hold in its prefix cache
(``PlacementRequest.prefix_hits``, from the plane's ``PrefixIndex``): only the rest is prefilled.
Cost is not reduced by it (cached input is still billed at the substrate's input price here).

When fresh outcome signals exist, the prediction is never more optimistic than what was observed:
ttft = max(ttft, recent_ttft) and the per-token time is max(1 / decode_rate, recent_tpot). (The
authority builds those readings only from outcomes that met no more load than the substrate has
now, or no queue at all: see ``fleet_state``.) An in-flight reading that is missing or stale is
taken as a full substrate, or as its last known load if that was worse
(occupancy = max(max_concurrent, last in flight)), so uncertainty never makes a substrate look
faster.

Cost (USD): input and output tokens at the substrate's prices, plus owned hardware amortised over
its concurrent slots (``usd_per_slot_second * e2e``), plus egress for the request's bytes
(4 bytes per token) when the substrate is outside the ingress's region (or the region is unknown).
"""

from __future__ import annotations

from typing import NamedTuple

from inferplane.placement.fleet import SubstrateSpec
from inferplane.placement.signals import SubstrateSignals, fresh_value, limits

BYTES_PER_TOKEN = 4


class Estimate(NamedTuple):
    ttft_s: float
    e2e_s: float
    cost_usd: float
    occupancy: float
    """in_flight as used for the prediction (max_concurrent, or more, when unknown)."""
    output_tokens: float | None = None
    """The output length the estimate assumed (None: the request's ``max_output_tokens``)."""


def idle_ttft_s(spec: SubstrateSpec, input_tokens: int) -> float:
    """The first-token time the declared profile gives ``spec`` when idle: network, base and prefill
    (what a request waiting for a slot there can hope for once it frees)."""
    lat = spec.latency
    return lat.network_rtt_s + lat.base_ttft_s + input_tokens / lat.prefill_tokens_per_s


def estimate(
    spec: SubstrateSpec,
    signals: SubstrateSignals,
    input_tokens: int,
    output_tokens: float,
    ingress_region: str | None,
    now_s: float,
    bound_s: float,
    prefix_hit: float = 0.0,
) -> Estimate:
    lat = spec.latency
    cap = limits(spec, signals)[0]
    if cap < 1:  # no live replica: never admitted (no in_flight reading); keep the numbers finite
        cap = 1
    occupancy = fresh_value(signals.in_flight, now_s, bound_s)
    if occupancy is None:
        # Unknown load: full, or the last known load if that was worse.
        last = signals.in_flight.value if signals.in_flight is not None else 0.0
        occupancy = max(float(cap), last)

    batch_frac = min(1.0, (occupancy + 1.0) / cap)
    decode_rate = lat.decode_tokens_per_s / (1.0 + (lat.decode_slowdown_at_full_batch - 1.0) * batch_frac)
    if prefix_hit:
        prefill_s = input_tokens * (1.0 - prefix_hit) / lat.prefill_tokens_per_s
    else:
        prefill_s = input_tokens / lat.prefill_tokens_per_s
    per_token_s = 1.0 / decode_rate
    recent_tpot = fresh_value(signals.recent_tpot_s, now_s, bound_s)
    if recent_tpot is not None and recent_tpot > per_token_s:
        per_token_s = recent_tpot
    decode_s = output_tokens * per_token_s
    if occupancy < cap:
        queue_wait = 0.0
    else:
        queue_wait = (occupancy - cap + 1.0) / cap * (prefill_s + decode_s)
    ttft = lat.network_rtt_s + lat.base_ttft_s + queue_wait + prefill_s
    recent_ttft = fresh_value(signals.recent_ttft_s, now_s, bound_s)
    if recent_ttft is not None and recent_ttft > ttft:
        ttft = recent_ttft
    e2e = ttft + decode_s

    c = spec.cost
    cost = input_tokens * c.usd_per_input_token + output_tokens * c.usd_per_output_token
    cost += c.usd_per_slot_second * e2e
    if c.egress_usd_per_byte and spec.region != ingress_region:
        cost += (input_tokens + output_tokens) * BYTES_PER_TOKEN * c.egress_usd_per_byte
    return Estimate(ttft, e2e, cost, occupancy, output_tokens)
