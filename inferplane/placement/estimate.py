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
    lane_wait   = 0                                             without declared prefill lanes
                = max(W, prefill_clear_at - now), W solving  W = max(0, running / lanes * (W + lane_s) /
                                          (W + lane_s + decode) - (lanes - 1) / lanes) * lane_s
    ttft        = network_rtt + base_ttft + queue_wait + lane_wait + prefill
    e2e         = ttft + output_tokens / decode_rate

The prefill-lane wait: an engine that prefills ``lanes`` prompts at once (``prefill_concurrency``,
scaled by the live capacity over the declared: ``max(1, prefill_concurrency * max_concurrent now /
max_concurrent declared)``) makes a request with a slot wait for a lane while the others prefill.
Each request holds a lane for its first-token phase, ``lane_s = base_ttft + prefill``, then decodes
for ``decode = output_tokens / decode_rate``. Of the ``running = min(occupancy, max_concurrent)``
requests holding slots, those in their first-token phase (waiting for a lane or holding one) are,
by Little's law, ``running`` times the share of a request's time that phase takes,
``(W + lane_s) / (W + lane_s + decode)`` (mean field: the others are taken to be like this one).
With ``k`` of them ahead and ``lanes`` lanes, the request waits ``k + 1 - lanes`` lanes' turns of
``lane_s / lanes`` each. The wait is in its own share, so ``W`` is the fixed point above: with
``x = W + lane_s``, ``s = running / lanes``, ``x^2 + (decode - lane_s (1 / lanes + s)) x -
lane_s decode / lanes = 0``, its positive root (``lane_wait_s``). A decode-heavy mix (short
prompts, long outputs) has almost no wait; a prefill-heavy one (long prompts, short outputs) on a
one-lane engine queues behind nearly every prompt in flight (with no decode at all, W =
(running + 1 - lanes) / lanes * lane_s), which slots alone do not show.

The mean field takes the others to be like this request, so a short prompt behind a long one is
predicted its own short wait. The ingress replica also keeps a lane clock of what it dispatched
(``SubstrateSignals.prefill_clear_at_s``: each dispatch adds its ``lane_s / lanes`` from when the
work before it clears) and the wait is the longer of the two: ``max(W, prefill_clear_at - now)``.
On the suite's ``api-heavy`` x Azure code cell (one 1-lane pool) the clock, replayed from the
plane's own dispatches, was within 0.05 s of the observed first-token times on average, the mean
field 0.84 s, and it predicted all 11 first-token misses the mean field let through (see
``tests/test_lane_clock.py``'s docstring). With several ingress replicas each adds the others'
lane work as each snapshot brings it (``plane.state.ReplicaState.publish``); what they dispatched
since their last sync it cannot see, and the mean field, on the published occupancy, stays the floor.

``prefix_hit`` is the fraction of the prompt the substrate is predicted to hold in its prefix cache
(``PlacementRequest.prefix_hits``, from the plane's ``PrefixIndex``): only the rest is prefilled.
Cost is not reduced by it (cached input is still billed at the substrate's input price here).

When fresh outcome signals exist, the prediction is never more optimistic than what was observed.
The first-token time is scaled by what outcomes taught of this substrate against its profile:

    ttft = ttft * max(TTFT_RATIO_MIN, ttft_ratio)        TTFT_RATIO_MIN = 1
    ttft = max(ttft, recent_ttft)                        only without a ttft_ratio, or under a ttft drift penalty

``ttft_ratio`` is the median, over the recent outcomes, of observed first-token time over the one
the declared profile predicted for that request at placement (``declared_ttft_s``: the formulas
above, queue and lane waits included, at the load and prefix hit it was placed with). A ratio is
dimensionless, so it transfers across prompt sizes and hits: long prompts' outcomes do not hold a
short prompt to their first-token time (the size-blind ``recent_ttft`` median did), short ones'
do not leave a long one unprotected, and a substrate whose physics is 30 % slower than declared is
predicted 30 % slower at every size. It scales the whole prediction, waits included: the ratio
was learnt against predictions that included their waits, and slower service makes the waits
behind it slower alike, so nothing is counted twice (it multiplies, it adds no observed wait). It
is never below 1: a substrate faster than declared is still predicted at its profile (its medians
can be low for reasons that do not carry over: a queue predicted and not met, a prefix hit
predicted too low), so uncertainty never makes a substrate look faster; on the replay with
mismatched physics, learning < 1 too gained nothing (the suite subset at --limit 1500, 24 cells:
-2.2 points in total, within noise). ``recent_ttft`` stays the floor where no ratio exists
(outcomes that carry no declared prediction) and where a drift penalty raised it.
The per-token time is max(1 / decode_rate, recent_tpot). (The
authority builds those readings only from outcomes that met no more load than the substrate has
now, or no queue at all: see ``fleet_state``.) An in-flight reading that is missing or stale is
taken as a full substrate, or as its last known load if that was worse
(occupancy = max(max_concurrent, last in flight)), so uncertainty never makes a substrate look
faster.

Cost (USD): input and output tokens at the substrate's prices, plus owned hardware's slot-time,
plus egress for the request's bytes (4 bytes per token) when the substrate is outside the
ingress's region (or the region is unknown):

    slot_price  = usd_per_slot_second * batch_frac     reserved tier (owned, paid busy or idle)
                = usd_per_slot_second                  burst tier
    cost        = in * usd_per_input_token + out * usd_per_output_token + slot_price * e2e (+ egress)

This is the cost *for placement*: what placing the request here costs the fleet. A reserved pool's
hardware is paid whether or not it serves, so a slot-second on it costs only its opportunity: the
work it displaces. With idle slots nothing is displaced (an idle reserved pool is nearly free to
use); the more of its slots are taken, the likelier the slot is one another request will want and
have to buy elsewhere, and at a full batch it costs the whole amortised price
(``usd_per_slot_second``: GPU-hour price x GPUs / 3600 / slots). Linear in the batch fraction
(this request included) is the simplest rise that meets both ends. A burst-tier pool with a slot
price (owned hardware that is scaled and billed as it runs) pays its slot-time at the full price.
*Attribution* (``telemetry.cost``: chargeback, the audit's attributed cost, tenants' budgets) keeps
amortising every request's slot-time at the full ``usd_per_slot_second``, so the hardware's cost
is shared out by use; only the placement estimate (``Estimate.cost_usd``, the cost scorer, the
decision's ``estimated_cost_usd``) prices the opportunity.
"""

from __future__ import annotations

from math import sqrt
from typing import NamedTuple

from inferplane.placement.fleet import SubstrateSpec
from inferplane.placement.signals import SubstrateSignals, fresh_value, limits, stale_value

BYTES_PER_TOKEN = 4
_INF = float("inf")

TTFT_RATIO_MIN = 1.0
"""The least ``ttft_ratio`` the estimate scales by (module doc): a substrate is never predicted
faster than its declared profile."""


def ttft_scale(signals: SubstrateSignals) -> float | None:
    """The factor the estimate multiplies a fresh prediction's first-token time by: the learned
    ``ttft_ratio`` (at least ``TTFT_RATIO_MIN``), or None without one. Read with the ratio fresh."""
    r = signals.ttft_ratio
    if r is None:
        return None
    return r.value if r.value > TTFT_RATIO_MIN else TTFT_RATIO_MIN


def ttft_floored(signals: SubstrateSignals) -> bool:
    """Whether ``recent_ttft_s`` floors the first-token time: without a learned ratio (outcomes that
    carry no declared prediction), or when a drift penalty raised it."""
    if signals.ttft_ratio is None:
        return True
    for p in signals.drift:
        if p.kind == "ttft":
            return True
    return False


def learnt_ttft_s(signals: SubstrateSignals, ttft_s: float, now_s: float, bound_s: float, *,
                  stale: bool = False) -> float:
    """``ttft_s``, a first-token time the declared profile predicts, with what outcomes taught of
    the substrate (module doc): times its ``ttft_ratio`` (at least ``TTFT_RATIO_MIN``), then floored
    by ``recent_ttft`` where that floors (``ttft_floored``). The readings are read fresh, or with
    ``stale`` only when stale (what was last observed, for ``DeadlineReachable``'s probes). Every
    reader of the learnt first-token time (the estimate, the probe judgement, the hold queue's
    hope once a slot frees) goes through here, so none is held to a size-blind median where a
    ratio was learnt."""
    read = stale_value if stale else fresh_value
    if read(signals.ttft_ratio, now_s, bound_s) is not None:
        ttft_s *= ttft_scale(signals)
    if ttft_floored(signals):
        recent_ttft = read(signals.recent_ttft_s, now_s, bound_s)
        if recent_ttft is not None and recent_ttft > ttft_s:
            ttft_s = recent_ttft
    return ttft_s


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


def prefill_lanes(spec: SubstrateSpec, cap: int) -> float | None:
    """The prefill lanes of ``spec`` with ``cap`` slots live: its declared lanes scaled by the live
    slots over the declared ones, at least 1; None when it declares none (every slot prefills)."""
    lanes = spec.latency.prefill_lanes
    if lanes is None:
        return None
    scaled = lanes * cap / spec.max_concurrent
    return scaled if scaled > 1.0 else 1.0


def lane_wait_s(base_s: float, share: float, free: float, clear_at_s: float, prefill_s: float, decode_s: float,
                now_s: float) -> float:
    """The wait for a prefill lane (module doc): the mean field's, the fixed point's positive root
    (``share`` is running / lanes, ``free`` is (lanes - 1) / lanes), or the lane clock's
    ``clear_at_s - now_s`` (``SubstrateSignals.prefill_clear_at_s``; -inf without one) when that is
    longer. The estimate, the prepared entries and the engine all call this one function, so their
    numbers are equal."""
    backlog = clear_at_s - now_s
    lane_s = base_s + prefill_s
    if not lane_s > 0.0 or not share * (lane_s / (lane_s + decode_s)) > free:
        return backlog if backlog > 0.0 else 0.0  # the lanes are not all taken even with no wait
    b = decode_s - lane_s * (1.0 - free + share)
    c = lane_s * decode_s * (1.0 - free)
    root = sqrt(b * b + 4.0 * c)
    x = (root - b) / 2.0 if b <= 0.0 else 2.0 * c / (root + b)  # the positive root, without cancellation
    wait = x - lane_s if x > lane_s else 0.0
    return backlog if backlog > wait else wait


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
    ttft = lat.network_rtt_s + lat.base_ttft_s + queue_wait
    lanes = prefill_lanes(spec, cap)
    if lanes is not None:
        running = occupancy if occupancy < cap else float(cap)
        clear_at = signals.prefill_clear_at_s
        ttft += lane_wait_s(lat.base_ttft_s, running / lanes, (lanes - 1.0) / lanes,
                            -_INF if clear_at is None else clear_at, prefill_s, decode_s, now_s)
    ttft = learnt_ttft_s(signals, ttft + prefill_s, now_s, bound_s)
    e2e = ttft + decode_s

    c = spec.cost
    cost = input_tokens * c.usd_per_input_token + output_tokens * c.usd_per_output_token
    cost += (c.usd_per_slot_second * batch_frac if spec.tier == "reserved" else c.usd_per_slot_second) * e2e
    if c.egress_usd_per_byte and spec.region != ingress_region:
        cost += (input_tokens + output_tokens) * BYTES_PER_TOKEN * c.egress_usd_per_byte
    return Estimate(ttft, e2e, cost, occupancy, output_tokens)
