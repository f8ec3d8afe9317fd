"""``place(request, snapshot, policy) -> PlacementDecision``: filter, score, pick.

Pure: no Ray, no I/O, no clock, no global state. The same function runs in every ingress replica,
in the placement actor and in the replay simulator.

0. A model with versions (``FleetSpec.rollouts``): the request's version, from its request id
   (``Rollout.pick``: a stable hash, so every attempt of the request gets the same one); the rest
   places it on that version's route (its primary, spillover and serving substrates) under every
   rule below, and the decision records the version and the split.
1. Request-level checks: the model exists, the tenant exists and may use the model and SLA class.
2. Filters (``filters.DEFAULT_FILTERS``) over the substrates serving the model, failing closed.
3. Scorers (``scorers.SCORERS``) over the eligible ones, weighted by the policy (weights sum to 1,
   so totals are in [0, 1]).
4. Pick. ``on_need``: the primary if it is eligible, has a running slot free (it would not wait in
   its own queue) and is predicted to meet both deadlines, otherwise the best total. ``scored``:
   always the best total. Ties are broken by a key derived from the
   request id, so a replay of the same request on the same snapshot decides the same way.

The filters and scorers (``filters.py``, ``scorers.py``) are the specification. The hot path does
not call them for a substrate it can decide by arithmetic: the request-level checks and the static
filters' verdicts come from the policy's plan (``plan.py``: a ``Target`` per tenant, model, SLA
class and ingress, with each admitted substrate's egress price and weighted locality), and what
depends on the snapshot from its scoring rows (``prepared.py``: built once per snapshot for the
policy, or folded in here for a snapshot built without it), which hold while the substrate's
readings are all fresh, or while its load readings are fresh and its outcome readings all stale
(an idle substrate's; the row's ``stale_outcomes``). Such a substrate that passes everything costs
a few float operations on locals; any other (a load reading stale, a filter rejecting, a probe
limit reached, an over-budget restriction, external-signal rules) is evaluated by the
specification itself (``evaluate``). The two agree exactly
(``tests/test_engine_equivalence.py``): the arithmetic performs the specification's float
operations in the same order, or ones proved equal (noted where used). The decision's
``candidates`` are worked out on first read, from the numbers the ranking used.

Both paths predict with the request's expected output length (``expected_output_tokens``: what the
snapshot learned for its tenant and model, at most its max output tokens); the hard limits (the
context window, rate-limit token headroom) use its max output tokens.
"""

from __future__ import annotations

import zlib
from itertools import repeat
from collections.abc import Sequence
from operator import mul

from inferplane.placement.context import PlacementContext
from inferplane.placement.decision import (
    SPILLOVER_REASON_BY_REJECTION,
    CandidateVerdict,
    PlacementDecision,
    SpilloverReason,
    placement_id,
    roll_up,
)
from inferplane.placement.estimate import BYTES_PER_TOKEN, estimate, lane_wait_s
from inferplane.placement.filters import DEADLINE_FILTER, DYNAMIC_FILTERS, Rejection, RejectionCode
from inferplane.placement.fleet import FleetSpec, ModelRoute, Rollout, RolloutVersion, SubstrateSpec
from inferplane.placement.plan import RoutePlan, Target, scoring, target
from inferplane.placement.policy import PlacementPolicy, SlaPolicy, TenantPolicy
from inferplane.placement.prepared import (
    NEVER,
    PreparedSubstrate,
    ScoringRow,
    declared_latency,
    first_token_s,
    scoring_row,
)
from inferplane.placement.request import PlacementRequest
from inferplane.placement.scorers import Scorer
from inferplane.placement.signals import DriftPenalty, SubstrateSignals, fresh_value, limits
from inferplane.placement.snapshot import FleetSnapshot

_DYNAMIC_CHECKS = tuple(f.check for f in DYNAMIC_FILTERS)
_INF = float("inf")
_INELIGIBLE = -_INF  # the total recorded for a substrate that is not eligible
_NO_HITS = repeat(0.0)  # each admitted substrate's predicted prefix hit, when the request predicts none


def _tie_key(seed: int, index: int) -> int:
    return ((seed ^ (index * 0x9E3779B1)) * 0x85EBCA6B) & 0xFFFFFFFF


def expected_output_tokens(snapshot: FleetSnapshot, tenant: str, model: str, max_output_tokens: int) -> float:
    """The output length to predict a request with: what ``snapshot`` learned for (``tenant``,
    canonical ``model``), never more than ``max_output_tokens``; ``max_output_tokens`` when it
    learned nothing."""
    learned = snapshot.expected_output_tokens.get((tenant, model)) if snapshot.expected_output_tokens else None
    return float(max_output_tokens) if learned is None or learned >= max_output_tokens else learned


def evaluate(ctx: PlacementContext, spec: SubstrateSpec, signals: SubstrateSignals,
             scorers: tuple[Scorer, ...], weights: tuple[float, ...], output_tokens: float) -> CandidateVerdict:
    """One statically admitted substrate's verdict by the specification: the dynamic filters in
    order, the estimate (for ``output_tokens``, the request's expected output length), the
    deadline filter, then every scorer; total = sum of weight x score in the policy's order."""
    for check in _DYNAMIC_CHECKS:
        rejection = check(ctx, spec, signals)
        if rejection is not None:
            return CandidateVerdict(spec.name, False, rejection.code, rejection.summary, rejection.detail,
                                    None, 0.0, None, None, None, False)
    request = ctx.request
    est = estimate(spec, signals, request.input_tokens, output_tokens, request.ingress_region,
                   ctx.now_s, ctx.staleness_bound_s, request.prefix_hit(spec.name) if request.prefix_hits else 0.0)
    drift = _drift_used(signals, ctx.now_s, ctx.staleness_bound_s) if signals.drift else ()
    rejection = DEADLINE_FILTER.check_estimate(ctx, spec, est, signals, output_tokens)
    if rejection is not None:
        return CandidateVerdict(spec.name, False, rejection.code, rejection.summary, rejection.detail,
                                None, 0.0, est.ttft_s, est.e2e_s, est.cost_usd, False, drift)
    scores = tuple([s.score(ctx, spec, signals, est) for s in scorers])
    meets = est.ttft_s <= ctx.sla.ttft_deadline_s and est.e2e_s <= ctx.sla.e2e_deadline_s
    return CandidateVerdict(spec.name, True, None, None, None, scores, sum(map(mul, weights, scores)),
                            est.ttft_s, est.e2e_s, est.cost_usd, meets, drift)


_PENALIZED_READING = {"ttft": "recent_ttft_s", "tpot": "recent_tpot_s"}


def _drift_used(signals: SubstrateSignals, now_s: float, bound_s: float) -> tuple[DriftPenalty, ...]:
    """The drift penalties the estimate read at ``now_s``: those whose reading is fresh (a stale one
    the estimate ignores)."""
    return tuple(p for p in signals.drift
                 if fresh_value(getattr(signals, _PENALIZED_READING[p.kind]), now_s, bound_s) is not None)


def _unfit_to_specification(rows: Sequence[ScoringRow], needed: int, windows: tuple[int, ...],
                            names: tuple[str, ...], exclude: frozenset[str]) -> list[ScoringRow]:
    """``rows`` with ``NEVER`` for the substrates whose context window is too small for ``needed``
    tokens or that the request excludes (a retry's failed substrates, or those its tenant's quotas
    close): the specification evaluates (and rejects) them, so that the loop in ``place`` need not
    ask."""
    return [NEVER if needed > window or name in exclude else row for row, window, name in zip(rows, windows, names)]


def _ranking(totals: list[float], eligible_count: int, ineligible: int, request_id: str,
             indices: tuple[int, ...]) -> list[int]:
    """Positions of the eligible candidates, best total first; equal totals by a key derived from the
    request id (then by position), so a replay of the same request on the same snapshot ranks alike."""
    # A sort in reverse keeps equal totals in position order, as a stable one does.
    ranked = sorted(range(len(totals)), key=totals.__getitem__, reverse=True)
    if ineligible:
        del ranked[eligible_count:]
    if len(set(totals)) - (1 if ineligible else 0) < eligible_count:
        seed = zlib.crc32(request_id.encode())
        ranked.sort(key=lambda p: (-totals[p], _tie_key(seed, indices[p])))
    return ranked


def _fallbacks(totals: list[float], eligible_count: int, ineligible: int, request_id: str,
               indices: tuple[int, ...], names: tuple[str, ...], chosen: int) -> tuple[str, ...]:
    """The decision's fallbacks: the ranking without the chosen (who may be the primary, moved to
    the front by ``on_need``)."""
    ranked = _ranking(totals, eligible_count, ineligible, request_id, indices)
    ranked.remove(chosen)
    return tuple(map(names.__getitem__, ranked))


def _probe_admits(probe: tuple[float, float, float, float], ttft: float, e2e: float, f_out: float,
                  ttft_cut: float, e2e_cut: float, probe_limit: int) -> bool:
    """``DeadlineReachable``'s judgement of a substrate whose outcome readings are all stale, given
    its estimate within the cut: the same operations (``estimate.learnt_ttft_s`` on the stale
    readings; ``max`` keeps its first argument on a tie)."""
    floor, last_tpot, in_flight, scale = probe
    ttft *= scale
    if floor > ttft:
        ttft = floor
    stale_e2e = ttft + f_out * last_tpot
    if stale_e2e > e2e:
        e2e = stale_e2e
    return (ttft <= ttft_cut and e2e <= e2e_cut) or in_flight < probe_limit


def _rejected(name: str, rejection: Rejection) -> CandidateVerdict:
    return CandidateVerdict(name, False, rejection.code, rejection.summary, rejection.detail,
                            None, 0.0, None, None, None, False)


def _context(request: PlacementRequest, tenant: TenantPolicy, sla: SlaPolicy, route: ModelRoute,
             policy: PlacementPolicy, over_budget_classes: frozenset[str] | None) -> PlacementContext:
    return PlacementContext(request, tenant, sla, route, policy, policy.spill_classes(route.name),
                            request.arrived_at_s, policy.signal_staleness_bound_s, over_budget_classes)


def _numbers(e: PreparedSubstrate, request: PlacementRequest, n_out: float, hit: float) -> tuple[float, float, float]:
    """(ttft_s, e2e_s, cost_usd) of a substrate whose readings are all fresh, for ``n_out`` output
    tokens and a predicted prefix-cache ``hit`` fraction: ``estimate.estimate`` with the same float
    operations."""
    n_in = request.input_tokens
    prefill_s = (n_in * (1.0 - hit) if hit else n_in) / e.prefill_tokens_per_s
    decode_s = n_out * e.per_token_s
    ttft = first_token_s(e.fixed_s, e.queue_factor, e.prefill_lanes, prefill_s, decode_s, request.arrived_at_s,
                         e.ttft_scale, e.ttft_floor_s)
    e2e = ttft + decode_s
    cost = n_in * e.usd_per_input_token + n_out * e.usd_per_output_token
    cost += e.usd_per_slot_second * e2e
    if e.egress_usd_per_byte and e.region != request.ingress_region:
        cost += (n_in + n_out) * 4 * e.egress_usd_per_byte
    return ttft, e2e, cost


def _row_latency(row: ScoringRow, request: PlacementRequest, n_out: float, hit: float) -> tuple[float, float]:
    """(ttft_s, e2e_s) from a scoring row for ``n_out`` output tokens and a predicted prefix-cache
    ``hit`` fraction: the first lines of the loop in ``place``."""
    (_, _, _, fixed_s, prefill_rate, per_token_s, queue_factor, ttft_floor, _, _, _, _, _, _, _, _, lanes, scale) = row
    f_in = float(request.input_tokens)
    prefill_s = (f_in * (1.0 - hit) if hit else f_in) / prefill_rate
    decode_s = n_out * per_token_s
    ttft = first_token_s(fixed_s, queue_factor, lanes, prefill_s, decode_s, request.arrived_at_s, scale, ttft_floor)
    return ttft, ttft + decode_s


def _row_numbers(row: ScoringRow, egress_usd_per_byte: float, request: PlacementRequest,
                 n_out: float, hit: float) -> tuple[float, float, float]:
    """(ttft_s, e2e_s, cost_usd) from a scoring row and the target's egress price, for ``n_out``
    output tokens and a predicted prefix-cache ``hit`` fraction (the loop in ``place``'s lines)."""
    ttft, e2e = _row_latency(row, request, n_out, hit)
    f_in = float(request.input_tokens)
    cost = f_in * row[8] + n_out * row[9]
    cost += row[10] * e2e
    if egress_usd_per_byte:
        cost += (f_in + n_out) * BYTES_PER_TOKEN * egress_usd_per_byte
    return ttft, e2e, cost


def _arithmetic(e: PreparedSubstrate, request: PlacementRequest, n_out: float, sla: SlaPolicy,
                cost_reference_usd_per_token: float, hit: float) -> tuple[float, float, float, tuple[float, ...]]:
    """(ttft_s, e2e_s, cost_usd, scores in ``FAST_SCORER_ORDER``) of a substrate whose readings
    are all fresh, for ``n_out`` output tokens and a predicted prefix-cache ``hit`` fraction:
    ``estimate.estimate`` and the scorers, with the same float operations. The loop in ``place``
    performs these same lines inline, on the snapshot's scoring rows (a call per candidate would
    cost more than them)."""
    ttft, e2e, cost = _numbers(e, request, n_out, hit)
    region, zone = request.ingress_region, request.ingress_zone
    a = 1.0 - ttft / sla.ttft_deadline_s
    b = 1.0 - e2e / sla.e2e_deadline_s
    latency = a if a < b else b
    tokens = request.input_tokens + n_out
    r = cost_reference_usd_per_token
    local = 1.0 if zone is not None and e.zone == zone else 0.5 if region is not None and e.region == region else 0.0
    scores = (latency if latency > 0.0 else 0.0, e.queue_score, e.memory_score,
              r / (r + cost / (tokens if tokens > 0 else 1)), local, e.reserved_score, hit)
    return ttft, e2e, cost, scores


def _verdicts(request: PlacementRequest, n_out: float, sla: SlaPolicy, policy: PlacementPolicy, fleet: FleetSpec,
              snapshot: FleetSnapshot, rp: RoutePlan, fast_positions: tuple[int, ...],
              totals: list[float], by_specification: dict[int, CandidateVerdict],
              stale_outcomes: dict[int, ScoringRow]) -> tuple[CandidateVerdict, ...]:
    """Every serving substrate's verdict, in the route's order. For the admitted one at position
    ``pos``: ``by_specification[pos]`` when the filters and scorers themselves evaluated it,
    otherwise it was eligible by arithmetic with total ``totals[pos]`` (with its outcome readings
    stale, as the estimate then reads it, when ``pos`` is in ``stale_outcomes``)."""
    out = []
    pos = 0
    for idx, rejection in rp.verdicts:
        if rejection is not None:
            out.append(_rejected(fleet.substrates[idx].name, rejection))
            continue
        verdict = by_specification.get(pos)
        if verdict is None:
            entry = snapshot.prepared[idx]
            if pos in stale_outcomes:
                entry = entry._replace(per_token_s=entry.per_token_base_s, ttft_floor_s=-_INF, ttft_scale=1.0)
            hit = request.prefix_hit(fleet.substrates[idx].name) if request.prefix_hits else 0.0
            ttft, e2e, cost, scores = _arithmetic(entry, request, n_out, sla, policy.cost_reference_usd_per_token, hit)
            # Decided by arithmetic: every reading was fresh (the penalties' too), or every outcome
            # reading stale (none read).
            drift = () if pos in stale_outcomes else snapshot.signals[idx].drift
            verdict = CandidateVerdict(
                fleet.substrates[idx].name, True, None, None, None, tuple([scores[i] for i in fast_positions]),
                totals[pos], ttft, e2e, cost, ttft <= sla.ttft_deadline_s and e2e <= sla.e2e_deadline_s, drift)
        out.append(verdict)
        pos += 1
    return tuple(out)


def _refusal(request: PlacementRequest, snapshot: FleetSnapshot, policy: PlacementPolicy,
             scorer_names: tuple[str, ...], code: RejectionCode, message: str, model: str,
             primary: str | None = None, candidates: tuple[CandidateVerdict, ...] = (),
             version: RolloutVersion | None = None, rollout: Rollout | None = None) -> PlacementDecision:
    return PlacementDecision(
        placement_id=placement_id(request.request_id, request.attempt),
        request_id=request.request_id, attempt=request.attempt, tenant=request.tenant,
        model=model, sla_class=request.sla_class, substrate=None, fallbacks=(), primary=primary,
        spillover=False, spillover_reason=None, candidates=candidates, scorer_names=scorer_names,
        predicted_ttft_s=None, predicted_e2e_s=None, estimated_cost_usd=None,
        rejection_code=code, rejection_message=message, policy_hash=policy.policy_hash,
        snapshot_version=snapshot.version, model_version=None if version is None else version.name,
        rollout=None if rollout is None else rollout.split,
    )


def place(request: PlacementRequest, snapshot: FleetSnapshot, policy: PlacementPolicy) -> PlacementDecision:
    fleet = snapshot.fleet
    plan = policy.plan
    # A model with versions: the request's version, from its id (``Rollout.pick``), before anything
    # else; it is then placed on that version's route under every rule.
    rollout = fleet.rollouts.get(fleet.model_names.get(request.model, "")) if fleet.rollouts else None
    version = None if rollout is None else rollout.pick(request.request_id)
    key = (request.tenant, request.model, request.sla_class, request.ingress_region, request.ingress_zone,
           None if version is None else version.name)
    if plan is not None and plan.fleet is fleet:
        sc = plan.scoring
        t = plan.targets.get(key)
        if t is None:  # refused at the request level, or an ingress location the config never names
            t = target(fleet, policy, plan.routes, sc, *key)
    else:  # no plan, or one for another fleet: work out what this request needs, uncached
        sc = scoring(policy)
        t = target(fleet, policy, None, sc, *key)
    if type(t) is not Target:
        return _refusal(request, snapshot, policy, sc.scorer_names, *t, version=version, rollout=rollout)
    tenant, sla, route, rp = t.tenant, t.sla, t.route, t.plan

    over_budget_classes = None
    if tenant.budget_usd is not None:
        spent = snapshot.tenant_spend_usd.get(tenant.name, 0.0)
        if spent >= tenant.budget_usd:
            if tenant.over_budget_classes is None:
                return _refusal(request, snapshot, policy, sc.scorer_names, RejectionCode.OVER_BUDGET,
                                f"tenant `{tenant.name}` has spent ${spent:.2f} of its ${tenant.budget_usd:.2f} "
                                "budget for this period", route.name, version=version, rollout=rollout)
            over_budget_classes = tenant.over_budget_classes

    ttft_deadline, e2e_deadline = sla.ttft_deadline_s, sla.e2e_deadline_s
    f_out = expected_output_tokens(snapshot, tenant.name, route.name, request.max_output_tokens)
    signals, substrates = snapshot.signals, fleet.substrates
    scorers, weights = sc.scorers, sc.weights
    ctx = None  # only the specification's path needs one
    rows: Sequence[ScoringRow] = ()  # per admitted substrate, when the arithmetic applies
    totals: list[float] = []  # per admitted substrate: its total when eligible, -inf when not
    append = totals.append
    by_specification: dict[int, CandidateVerdict] = {}
    stale_outcomes: dict[int, ScoringRow] = {}  # position -> the row for stale outcome readings, where used
    constants = sc.row_constants
    # The predicted prefix-cache hit fraction of each admitted substrate, aligned with the totals
    # (None: the request predicts none anywhere).
    hit_at = [request.prefix_hit(n) for n in rp.names] if request.prefix_hits else None

    if constants is not None and over_budget_classes is None:
        if snapshot.scored_for is policy:
            rows = t.pick(snapshot.scoring)
        else:  # a snapshot built without this policy: fold it in for the substrates this route admits
            rows = list(map(scoring_row, t.pick(snapshot.prepared), repeat(constants)))
        now = request.arrived_at_s
        n_in = request.input_tokens
        needed = n_in + request.max_output_tokens  # the hard limits' tokens: window, rate limit
        exclude = request.exclude
        if request.closed:  # the tenant's quotas close these: the specification rejects them
            exclude = exclude | {name for name, _ in request.closed}
        if request.required_features:  # substrates not honouring a parameter: the specification rejects them
            exclude = exclude | fleet.lacking(request.required_features)
        if needed > t.min_window or exclude:
            rows = _unfit_to_specification(rows, needed, t.windows, rp.names, exclude)
        # The token counts as floats: an int times a float converts the int exactly as float()
        # does, so the products are the same, and float-by-float operations are the fast ones.
        # ``f_out`` is the expected output length the estimate, the cost and the scores use.
        f_in, f_needed = float(n_in), float(needed)
        f_tokens = f_in + f_out
        per_token_of = f_tokens if f_tokens > 0.0 else 1.0
        needed_bytes = f_tokens * BYTES_PER_TOKEN
        allowed = tenant.allowed_countries
        ttft_cut, e2e_cut = t.ttft_cut_s, t.e2e_cut_s
        cost_ref = policy.cost_reference_usd_per_token
        w_lat, _, _, w_cost, _, _, w_prefix = sc.fast_weights
        probe_limit = policy.half_open_probe_limit
        for row, egress, local_term, hit in zip(rows, t.egress_usd_per_byte, t.locality_terms,
                                                hit_at if hit_at is not None else _NO_HITS):
            (fresh_until, tokens_left, countries, fixed_s, prefill_rate, per_token_s, queue_factor, ttft_floor,
             usd_in, usd_out, usd_slot_s, queue_term, memory_term, reserved_term, stale, probe, lanes, scale) = row
            arithmetic = True
            if now > fresh_until:  # a reading is stale: if only the outcome readings are, their row holds
                arithmetic = False
                if stale is not None and now > stale[0]:
                    row = stale_outcomes[len(totals)] = stale[1]
                    (fresh_until, tokens_left, countries, fixed_s, prefill_rate, per_token_s, queue_factor,
                     ttft_floor, usd_in, usd_out, usd_slot_s, queue_term, memory_term, reserved_term, _,
                     probe, lanes, scale) = row
                    arithmetic = now <= fresh_until
            if arithmetic and f_needed <= tokens_left and (countries is None or countries <= allowed):
                # The lines of ``_numbers`` and ``_arithmetic``, inline, with the policy's products
                # precomputed.
                prefill_s = (f_in * (1.0 - hit) if hit else f_in) / prefill_rate
                decode_s = f_out * per_token_s
                ttft = fixed_s + queue_factor * (prefill_s + decode_s) if queue_factor else fixed_s
                if lanes is not None:
                    ttft += lane_wait_s(*lanes, prefill_s, decode_s, now)
                ttft += prefill_s
                ttft *= scale
                if ttft_floor > ttft:
                    ttft = ttft_floor
                e2e = ttft + decode_s
                # Else DeadlineReachable rejects (below); with the outcome readings stale, also when
                # the last observed latencies are over the cut and a probe is already in flight.
                if ttft <= ttft_cut and e2e <= e2e_cut and (probe is None or _probe_admits(
                        probe, ttft, e2e, f_out, ttft_cut, e2e_cut, probe_limit)):
                    cost = f_in * usd_in + f_out * usd_out
                    cost += usd_slot_s * e2e
                    if egress:
                        cost += needed_bytes * egress
                    # PredictedLatency: min(1 - p, 1 - q) is 1 - max(p, q) (rounding 1 - x is
                    # monotone in x), and it is > 0 exactly when max(p, q) < 1.
                    p = ttft / ttft_deadline
                    q = e2e / e2e_deadline
                    if q > p:
                        p = q
                    # The weighted scores, summed in the policy's order (plan.FAST_SCORER_ORDER).
                    append(w_lat * (1.0 - p if p < 1.0 else 0.0) + queue_term + memory_term
                           + w_cost * (cost_ref / (cost_ref + cost / per_token_of)) + local_term + reserved_term
                           + w_prefix * hit)
                    continue
            if ctx is None:
                ctx = _context(request, tenant, sla, route, policy, over_budget_classes)
            pos = len(totals)
            stale_outcomes.pop(pos, None)
            idx = t.indices[pos]
            verdict = by_specification[pos] = evaluate(ctx, substrates[idx], signals[idx], scorers, weights, f_out)
            append(verdict.total if verdict.eligible else _INELIGIBLE)
    else:
        ctx = _context(request, tenant, sla, route, policy, over_budget_classes)
        for idx in t.indices:
            verdict = by_specification[len(totals)] = evaluate(ctx, substrates[idx], signals[idx], scorers, weights,
                                                               f_out)
            append(verdict.total if verdict.eligible else _INELIGIBLE)

    verdicts_args = (request, f_out, sla, policy, fleet, snapshot, rp, sc.fast_positions, totals, by_specification,
                     stale_outcomes)
    ineligible = totals.count(_INELIGIBLE) if by_specification else 0
    eligible_count = len(totals) - ineligible
    if not eligible_count:
        candidates = _verdicts(*verdicts_args)
        code, message = roll_up(candidates, route.name)
        return _refusal(request, snapshot, policy, sc.scorer_names, code, message, route.name, route.primary,
                        candidates, version, rollout)

    # The best total; on a tie for it, the ranking's first (``_ranking``). The rest of the ranking,
    # the fallbacks, is worked out when first read.
    best = max(totals)
    chosen = totals.index(best)
    if totals.count(best) > 1:
        chosen = _ranking(totals, eligible_count, ineligible, request.request_id, t.indices)[0]

    primary = rp.primary
    reason = None
    if chosen != primary:
        primary_rejection = rp.primary_rejection
        # on_need keeps the primary when it would start the request at once (no wait in its own
        # queue) and meet both deadlines even if the request produced all its max tokens: a mean
        # output length judges half the requests by less than they produce.
        primary_meets = primary_queues = False
        primary_meets_in_full = False
        f_max = float(request.max_output_tokens)
        if primary >= 0:
            verdict = by_specification.get(primary)
            if verdict is None:  # eligible by arithmetic; row[6], the queue factor, is 0 below max_concurrent
                row = stale_outcomes.get(primary) or rows[primary]
                hit = hit_at[primary] if hit_at is not None else 0.0
                ttft, e2e = _row_latency(row, request, f_out, hit)
                primary_meets = ttft <= ttft_deadline and e2e <= e2e_deadline
                primary_queues = bool(row[6])
                if primary_meets and not primary_queues:
                    ttft, e2e = _row_latency(row, request, f_max, hit)
                    primary_meets_in_full = ttft <= ttft_deadline and e2e <= e2e_deadline
            else:
                primary_meets = verdict.meets_sla
                if verdict.code is not None:
                    primary_rejection = verdict
                elif primary_meets:  # would it start at once, and meet the deadlines in full?
                    idx = t.indices[primary]
                    spec = substrates[idx]
                    est = estimate(spec, signals[idx], request.input_tokens, f_max, request.ingress_region,
                                   request.arrived_at_s, policy.signal_staleness_bound_s,
                                   hit_at[primary] if hit_at is not None else 0.0)
                    primary_queues = est.occupancy >= limits(spec, signals[idx])[0]
                    primary_meets_in_full = est.ttft_s <= ttft_deadline and est.e2e_s <= e2e_deadline
        if primary_meets_in_full and not primary_queues and policy.spillover_mode == "on_need":
            chosen = primary
        elif not rp.primary_serves:
            reason = SpilloverReason.PRIMARY_NOT_ALLOWED
        elif primary_rejection is not None:  # the primary was rejected
            reason = SPILLOVER_REASON_BY_REJECTION[primary_rejection.code]
        elif not primary_meets:
            reason = SpilloverReason.PRIMARY_CANNOT_MEET_SLA
        elif primary_queues:  # predicted in time, but only after a wait in its queue
            reason = SpilloverReason.PRIMARY_SATURATED
        elif not primary_meets_in_full and policy.spillover_mode == "on_need":
            reason = SpilloverReason.PRIMARY_CANNOT_MEET_SLA  # not if the request used all its max tokens
        else:
            reason = SpilloverReason.PRIMARY_OUTSCORED
    verdict = by_specification.get(chosen)
    chosen_hit = hit_at[chosen] if hit_at is not None else 0.0
    if verdict is None:
        ttft, e2e, cost = _row_numbers(stale_outcomes.get(chosen) or rows[chosen], t.egress_usd_per_byte[chosen],
                                       request, f_out, chosen_hit)
    else:
        ttft, e2e, cost = verdict.ttft_s, verdict.e2e_s, verdict.cost_usd

    names = rp.names
    declared_ttft, declared_tpot = declared_latency(snapshot.prepared[t.indices[chosen]], float(request.input_tokens),
                                                    f_out, chosen_hit, request.arrived_at_s)
    return PlacementDecision.deferred(
        (None, request.request_id, request.attempt, tenant.name,
         route.name, sla.name, names[chosen], None, route.primary,
         chosen != primary, reason, sc.scorer_names, ttft, e2e, cost, None, None, policy.policy_hash,
         snapshot.version, f_out, declared_ttft, declared_tpot, chosen_hit,
         None if version is None else version.name, None if rollout is None else rollout.split),
        _verdicts, verdicts_args, eligible_count,
        (_fallbacks, (totals, eligible_count, ineligible, request.request_id, t.indices, names, chosen)))
