"""What a snapshot works out per substrate once, so that ``place()`` does per-request arithmetic only.

A ``PreparedSubstrate`` is a function of one substrate's static spec and its live signals, and of
nothing the policy or the request says; ``with_dispatches`` recomputes the entry of a substrate only
when its in-flight count changed, and a snapshot built with ``previous`` only when its signals object
is a new one.

Each entry assumes that every reading the substrate reported is fresh. That holds while the
request's ``now - oldest_observed_at_s <= signal_staleness_bound_s`` (readings are fresh while
``now - observed_at <= bound``, and float subtraction is monotone, so the oldest reading is the
first to expire). Outside that window (but for the case below), or when ``clear`` is False, the engine evaluates the
substrate with the ``Filter`` and ``Scorer`` objects themselves (the specification), so an entry
only ever has to be right for an admitted substrate whose readings are fresh. Its fields for
stale outcome readings (``per_token_base_s``, ``last_tpot_s``, ``in_flight``) serve
the second case the arithmetic decides: every load reading fresh and every outcome reading stale
(``ScoringRow``'s ``stale_outcomes``; the estimate then reads no floor and the decode rate's
per-token time, and ``DeadlineReachable`` may hold the substrate to probes).

With every reading fresh, ``estimate.estimate`` reduces to (``in``/``out``: input tokens and the
request's expected output tokens, see ``estimate``)

    prefill   = in / prefill_tokens_per_s
    decode    = out * per_token_s
    ttft      = max((fixed_s + queue_factor * (prefill + decode) + lane_wait + prefill) * ttft_scale, ttft_floor_s)
    lane_wait = estimate.lane_wait_s(*prefill_lanes, prefill, decode, now), 0 when prefill_lanes is None
    e2e       = ttft + decode
    cost      = in * usd_per_input_token + out * usd_per_output_token + usd_per_slot_second * e2e
                (``usd_per_slot_second``: the placement's slot price, the batch fraction's share of
                the amortised price on the reserved tier: see ``estimate``)
                (+ (in + out) * 4 * egress_usd_per_byte outside the ingress's region)

with the coefficients below, computed by the same float operations as ``estimate`` (so the engine's
numbers are equal to the specification's, not merely close).

A snapshot built for a policy (``FleetSnapshot(..., policy=p)``) also folds the policy into each
entry once (``scoring_row``): the freshness test becomes one comparison with a precomputed instant,
the label rule is applied, and the load-only scores are weighted (the same products the total adds).
"""

from __future__ import annotations

from math import nextafter
from typing import NamedTuple

from inferplane.placement.estimate import lane_wait_s, prefill_lanes, ttft_floored, ttft_scale
from inferplane.placement.fleet import SubstrateSpec
from inferplane.placement.signals import CircuitState, SubstrateSignals

_INF = float("inf")
_NO_COUNTRIES: frozenset[str] = frozenset()


class PreparedSubstrate(NamedTuple):
    """One substrate's request-independent numbers in one snapshot (fields as in the module doc).
    The engine reads the first five to decide whether arithmetic may decide the substrate."""

    oldest_observed_at_s: float
    """The oldest reading the filters, the estimate or the scorers read (+inf when none)."""
    clear: bool
    """While fresh, passes every filter that reads only signals: circuit closed, in_flight and the
    kind's required signals reported, in flight below max_concurrent + max_queued (as they are
    now: ``signals.capacity`` where given),
    rate-limit requests remaining unreported or at least 1, and no empty set of node countries."""
    tokens_remaining: float
    """Rate-limit tokens remaining (+inf when unreported): a request needing more is rejected."""
    node_countries: frozenset[str] | None
    """The countries of the nodes its replicas run on (None when unreported)."""
    fully_labelled: bool
    """Node countries are reported and no replica runs on an unlabelled node."""
    fixed_s: float
    """network_rtt_s + base_ttft_s."""
    prefill_tokens_per_s: float
    per_token_s: float
    """max(1 / decode_rate at this batch size, recent_tpot)."""
    queue_factor: float
    """(occupancy - max_concurrent + 1) / max_concurrent when occupancy >= max_concurrent, else 0."""
    ttft_floor_s: float
    """recent_ttft where it floors the first-token time (``estimate.ttft_floored``), else -inf."""
    usd_per_input_token: float
    usd_per_output_token: float
    usd_per_slot_second: float
    """The slot price placement pays (``estimate``): reserved tier, the amortised price x the batch
    fraction; burst tier, the amortised price."""
    egress_usd_per_byte: float
    region: str
    zone: str
    queue_score: float
    """``QueuePressure``: 1 - min(1, occupancy / max_concurrent)."""
    memory_score: float
    """``MemoryPressure`` with its readings fresh: 1 - min(1, max(gpu memory, KV cache)), 1 when neither."""
    reserved_score: float
    """``ReservedTier``: 1 reserved, 0 burst."""
    occupancy: float
    """in_flight (every request held, running or waiting; ``queued`` is part of it)."""
    load_oldest_s: float
    """The oldest of the readings other than recent_ttft and recent_tpot (+inf when none)."""
    outcomes_newest_s: float
    """The newer of the recent_ttft and recent_tpot readings (-inf when neither)."""
    per_token_base_s: float
    """1 / decode_rate: ``per_token_s`` while the recent_tpot reading is stale."""
    last_tpot_s: float
    """The recent_tpot value (0 when unreported): once stale, what ``DeadlineReachable`` judges a
    probe's decode by (its first-token time: ``ttft_floor_s`` and ``ttft_scale``)."""
    in_flight: float
    prefill_lanes: tuple[float, float, float, float] | None
    """(base_ttft_s, running / lanes, (lanes - 1) / lanes, prefill_clear_at_s or -inf) for
    ``estimate.lane_wait_s``, with running = min(occupancy, max_concurrent) and the live lanes
    (``estimate.prefill_lanes``); None when the substrate declares no prefill lanes."""
    ttft_scale: float
    """``estimate.ttft_scale``: the learned observed / declared first-token ratio (at least
    ``TTFT_RATIO_MIN``), 1.0 without one."""


def substrate_constants(spec: SubstrateSpec) -> tuple:
    """What ``prepare`` reads from ``spec`` alone (the same operations). A snapshot works these out
    once for its fleet and hands them on to the next snapshot of the same fleet
    (``FleetSnapshot.spec_constants``), so no request and no new snapshot repeats them."""
    lat, c = spec.latency, spec.cost
    return (spec.max_concurrent, spec.max_concurrent + spec.max_queued, spec.required_signals,
            lat.decode_tokens_per_s, lat.decode_slowdown_at_full_batch - 1.0,
            lat.network_rtt_s + lat.base_ttft_s, lat.prefill_tokens_per_s,
            c.usd_per_input_token, c.usd_per_output_token, c.usd_per_slot_second, c.egress_usd_per_byte,
            spec.region, spec.zone, 1.0 if spec.tier == "reserved" else 0.0,
            spec, lat.base_ttft_s)


_new_entry = tuple.__new__


def prepare(constants: tuple, signals: SubstrateSignals) -> PreparedSubstrate:
    """The entry of a substrate with ``signals``, from its ``substrate_constants``; the formulas
    mirror ``estimate`` and the scorers."""
    (cap, admits_below, required, decode_tokens_per_s, slowdown_minus_1, fixed_s, prefill_tokens_per_s,
     usd_in, usd_out, usd_slot_s, egress, region, zone, reserved_score, spec, base_ttft_s) = constants
    live = signals.capacity
    if live is not None:  # the authority's live capacity (``signals.limits``) instead of the spec's
        cap, admits_below = live[0], live[0] + live[1]
        if cap < 1:  # no slot live: admits nothing (``Admission``); keep the numbers finite
            cap, admits_below = 1, 0
    in_flight_r, kv_r, gpu_r = signals.in_flight, signals.kv_cache_usage, signals.gpu_memory_used_ratio
    requests_left, tokens = signals.rate_limit_requests_remaining, signals.rate_limit_tokens_remaining
    ttft_r, tpot_r = signals.recent_ttft_s, signals.recent_tpot_s
    # The oldest of the readings the filters, the estimate and the scorers read (not ``queued``,
    # which is part of in_flight); of the load readings alone; and the newest of the outcome ones.
    load_oldest = _INF
    for reading in (in_flight_r, gpu_r, kv_r, requests_left, tokens):
        if reading is not None and reading.observed_at_s < load_oldest:
            load_oldest = reading.observed_at_s
    oldest, outcomes_newest = load_oldest, -_INF
    ratio_r = signals.ttft_ratio
    for reading in (ttft_r, tpot_r, ratio_r):
        if reading is not None:
            if reading.observed_at_s < oldest:
                oldest = reading.observed_at_s
            if reading.observed_at_s > outcomes_newest:
                outcomes_newest = reading.observed_at_s

    in_flight = None if in_flight_r is None else in_flight_r.value
    clear = (
        signals.circuit is CircuitState.CLOSED
        and in_flight is not None
        and in_flight < admits_below
        and (requests_left is None or not requests_left.value < 1)
        and signals.node_countries != _NO_COUNTRIES
    )
    if clear:
        for name in required:
            if getattr(signals, name) is None:
                clear = False
                break

    if in_flight is None:  # never on the fast path (not clear); keep the numbers finite
        in_flight = float(cap)
    occupancy = in_flight
    batch_frac = (in_flight + 1.0) / cap
    if not batch_frac < 1.0:  # min(1.0, batch_frac)
        batch_frac = 1.0
    decode_rate = decode_tokens_per_s / (1.0 + slowdown_minus_1 * batch_frac)
    per_token_s = per_token_base_s = 1.0 / decode_rate
    if tpot_r is not None and tpot_r.value > per_token_s:
        per_token_s = tpot_r.value
    queue_factor = 0.0 if occupancy < cap else (occupancy - cap + 1.0) / cap

    worst = -1.0
    if gpu_r is not None and gpu_r.value > worst:
        worst = gpu_r.value
    if kv_r is not None and kv_r.value > worst:
        worst = kv_r.value
    memory_score = 1.0 if worst < 0.0 else 1.0 - (worst if worst < 1.0 else 1.0)
    ratio = occupancy / cap
    countries = signals.node_countries
    if reserved_score:  # owned hardware paid busy or idle: the opportunity (``estimate``)
        usd_slot_s = usd_slot_s * batch_frac
    lanes_now = prefill_lanes(spec, cap)
    clear_at = signals.prefill_clear_at_s
    lanes = None if lanes_now is None else (
        base_ttft_s, (occupancy if occupancy < cap else float(cap)) / lanes_now, (lanes_now - 1.0) / lanes_now,
        -_INF if clear_at is None else clear_at)

    scale = 1.0 if ratio_r is None else ttft_scale(signals)
    floor = -_INF if ttft_r is None or not ttft_floored(signals) else ttft_r.value

    # Positionally, in the field order of ``PreparedSubstrate`` (a named tuple; ``tuple.__new__``
    # skips its keyword-argument ``__new__``).
    return _new_entry(PreparedSubstrate, (
        oldest, clear, _INF if tokens is None else tokens.value, countries,
        countries is not None and not signals.unlabelled_replicas,
        fixed_s, prefill_tokens_per_s, per_token_s, queue_factor, floor,
        usd_in, usd_out, usd_slot_s, egress, region, zone,
        0.0 if ratio >= 1.0 else 1.0 - ratio, memory_score, reserved_score, occupancy,
        load_oldest, outcomes_newest, per_token_base_s,
        0.0 if tpot_r is None else tpot_r.value, in_flight, lanes, scale))


def first_token_s(fixed_s: float, queue_factor: float, lanes: tuple[float, float, float, float] | None,
                  prefill_s: float, decode_s: float, now_s: float, scale: float = 1.0, floor_s: float = -_INF) -> float:
    """The first-token time of the module's formula from an entry's (or a scoring row's)
    coefficients, by the same float operations as ``estimate``: what ``declared_latency`` and the
    engine's per-entry and per-row paths compute (the loop in ``place`` has these lines inline)."""
    ttft = fixed_s + queue_factor * (prefill_s + decode_s) if queue_factor else fixed_s
    if lanes is not None:
        ttft += lane_wait_s(*lanes, prefill_s, decode_s, now_s)
    ttft += prefill_s
    ttft *= scale
    return floor_s if floor_s > ttft else ttft


def declared_latency(entry: PreparedSubstrate, input_tokens: float, output_tokens: float,
                     prefix_hit: float, now_s: float) -> tuple[float, float]:
    """``(ttft_s, per_token_s)`` the substrate's declared profile predicts for a request at the load
    of ``entry``: ``estimate``'s formulas with no observed reading as a floor (no recent_ttft, the
    decode rate's per-token time rather than recent_tpot). What the drift detector judges outcomes
    against (``PlacementDecision.declared_ttft_s``)."""
    per_token_s = entry.per_token_base_s
    prefill_s = input_tokens * (1.0 - prefix_hit) / entry.prefill_tokens_per_s
    return first_token_s(entry.fixed_s, entry.queue_factor, entry.prefill_lanes, prefill_s,
                         output_tokens * per_token_s, now_s), per_token_s


ScoringRow = tuple[float, float, "frozenset[str] | None", float, float, float, float, float, float, float, float,
                   float, float, float, "tuple[float, ScoringRow] | None", "tuple[float, float, float, float] | None",
                   "tuple[float, float, float, float] | None", float]
"""(fresh_until_s, tokens_remaining, node_countries, fixed_s, prefill_tokens_per_s, per_token_s,
queue_factor, ttft_floor_s, usd_per_input_token, usd_per_output_token, usd_per_slot_second,
w_queue x queue_score, w_memory x memory_score, w_reserved x reserved_score, stale_outcomes, probe,
prefill_lanes, ttft_scale):
a plain tuple, so that the engine unpacks it in one instruction.

``stale_outcomes`` is None or ``(stale_after_s, row)``: once ``now > stale_after_s`` every outcome
reading (recent_ttft, recent_tpot) is stale, and while the load readings are fresh (``now <=
row[0]``) ``row`` holds instead. A substrate's outcome readings go stale while it is idle, so this
is common, and its specification is plain: the estimate ignores stale readings (no ttft floor or scale, the
decode rate's per-token time), and ``DeadlineReachable`` judges the request by the last observed
latencies too, but only rejects when the substrate already has ``half_open_probe_limit`` requests
in flight. ``probe``, in such a row only, is (ttft floor, last tpot, in flight, ttft scale) for that
judgement: the last learnt first-token ratio scales the estimate, and the last recent_ttft floors it
only where it floors a fresh one (``estimate.learnt_ttft_s``)."""


def fresh_until(oldest_s: float, bound_s: float) -> float:
    """The latest ``now`` with ``now - oldest_s <= bound_s``. Float subtraction is monotone in
    ``now``, so ``now <= fresh_until(oldest, bound)`` decides exactly as the subtraction does; the
    sum ``oldest + bound`` is within an ulp or two of it, and the steps below find it exactly."""
    t = oldest_s + bound_s
    while t - oldest_s > bound_s:
        t = nextafter(t, -_INF)
    while (up := nextafter(t, _INF)) != t and up - oldest_s <= bound_s:
        t = up
    return t


NEVER: ScoringRow = (-_INF, 0.0, None, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, None, 1.0)
"""The row of a substrate the arithmetic may not decide at any time: no ``now`` is <= -inf."""


def scoring_row(entry: PreparedSubstrate, constants: tuple[float, bool, float, float, float]) -> ScoringRow:
    """``entry`` with a policy's ``plan.Scoring.row_constants`` folded in; ``NEVER`` when the
    arithmetic may not decide the substrate at any time (not ``clear``, or unlabelled nodes under
    ``require_node_labels``)."""
    bound_s, require_labels, w_queue, w_memory, w_reserved = constants
    if not entry.clear or (require_labels and not entry.fully_labelled):
        return NEVER
    (oldest, _, tokens, countries, _, fixed_s, prefill_rate, per_token_s, queue_factor, ttft_floor, usd_in, usd_out,
     usd_slot_s, _, _, _, queue_score, memory_score, reserved_score, _, load_oldest, outcomes_newest, per_token_base_s,
     last_tpot, in_flight, lanes, scale) = entry
    queue_term, memory_term, reserved_term = w_queue * queue_score, w_memory * memory_score, w_reserved * reserved_score
    stale_outcomes = None
    until = fresh_until(oldest, bound_s)
    if outcomes_newest > -_INF:
        stale_after = until if outcomes_newest == oldest else fresh_until(outcomes_newest, bound_s)
        load_fresh_until = until if load_oldest == oldest else fresh_until(load_oldest, bound_s)
        if load_fresh_until > stale_after:  # else no instant has the outcomes stale and the load fresh
            stale_outcomes = (stale_after, (
                load_fresh_until, tokens, countries, fixed_s, prefill_rate, per_token_base_s, queue_factor, -_INF,
                usd_in, usd_out, usd_slot_s, queue_term, memory_term, reserved_term, None,
                (ttft_floor, last_tpot, in_flight, scale), lanes, 1.0))
    return (until, tokens, countries, fixed_s, prefill_rate, per_token_s, queue_factor,
            ttft_floor, usd_in, usd_out, usd_slot_s, queue_term, memory_term, reserved_term, stale_outcomes, None, lanes,
            scale)


if PreparedSubstrate._fields != (
        "oldest_observed_at_s", "clear", "tokens_remaining", "node_countries", "fully_labelled", "fixed_s",
        "prefill_tokens_per_s", "per_token_s", "queue_factor", "ttft_floor_s", "usd_per_input_token",
        "usd_per_output_token", "usd_per_slot_second", "egress_usd_per_byte", "region", "zone", "queue_score",
        "memory_score", "reserved_score", "occupancy", "load_oldest_s", "outcomes_newest_s", "per_token_base_s",
        "last_tpot_s", "in_flight", "prefill_lanes", "ttft_scale"):
    raise ImportError("prepare() builds PreparedSubstrate positionally: keep its field order in step")
