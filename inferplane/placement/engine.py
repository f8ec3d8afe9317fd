"""``place(request, snapshot, policy) -> PlacementDecision``: filter, score, pick.

Pure: no Ray, no I/O, no clock, no global state. The same function runs in every ingress replica,
in the placement actor and in the replay simulator.

1. Request-level checks: the model exists, the tenant exists and may use the model and SLA class.
2. Filters (``filters.DEFAULT_FILTERS``) over the substrates serving the model, failing closed.
3. Scorers (``scorers.SCORERS``) over the eligible ones, weighted by the policy (weights sum to 1,
   so totals are in [0, 1]).
4. Pick. ``on_need``: the primary if it is eligible and predicted to meet both deadlines, otherwise
   the best total. ``scored``: always the best total. Ties are broken by a key derived from the
   request id, so a replay of the same request on the same snapshot decides the same way.

The filters and scorers (``filters.py``, ``scorers.py``) are the specification. The hot path does
not call them for a substrate it can decide by arithmetic: the static filters' verdicts come from
the policy's plan (``plan.py``), and what depends only on the snapshot from its prepared entries
(``prepared.py``), which hold while the substrate's readings are all fresh. Such a substrate that
passes everything costs a handful of float operations; any other (a reading stale, a filter
rejecting, an over-budget restriction, external-signal rules) is evaluated by the specification
itself (``evaluate``). The two agree exactly (``tests/test_engine_equivalence.py``): the arithmetic
performs the specification's float operations in the same order. The decision's ``candidates``
are worked out on first read, from the numbers the ranking used.
"""

from __future__ import annotations

import hashlib
import zlib
from functools import partial
from operator import mul

from inferplane.placement.context import PlacementContext
from inferplane.placement.decision import (
    SPILLOVER_REASON_BY_REJECTION,
    CandidateVerdict,
    PlacementDecision,
    SpilloverReason,
    roll_up,
)
from inferplane.placement.estimate import estimate
from inferplane.placement.filters import DEADLINE_FILTER, DYNAMIC_FILTERS, Rejection, RejectionCode
from inferplane.placement.fleet import FleetSpec, ModelRoute, SubstrateSpec
from inferplane.placement.plan import RoutePlan, fast_positions, route_plan, scoring
from inferplane.placement.policy import PlacementPolicy, SlaPolicy, TenantPolicy
from inferplane.placement.prepared import PreparedSubstrate
from inferplane.placement.request import PlacementRequest
from inferplane.placement.scorers import Scorer
from inferplane.placement.signals import SubstrateSignals
from inferplane.placement.snapshot import FleetSnapshot

_DYNAMIC_CHECKS = tuple(f.check for f in DYNAMIC_FILTERS)
_INF = float("inf")


def placement_id(request_id: str, attempt: int) -> str:
    """A stable id for one placement attempt of one request."""
    return "pl-" + hashlib.blake2b(f"{request_id}/{attempt}".encode(), digest_size=8).hexdigest()


def _tie_key(seed: int, index: int) -> int:
    return ((seed ^ (index * 0x9E3779B1)) * 0x85EBCA6B) & 0xFFFFFFFF


def evaluate(ctx: PlacementContext, spec: SubstrateSpec, signals: SubstrateSignals,
             scorers: tuple[Scorer, ...], weights: tuple[float, ...]) -> CandidateVerdict:
    """One statically admitted substrate's verdict by the specification: the dynamic filters in
    order, the estimate, the deadline filter, then every scorer; total = sum of weight x score in
    the policy's order."""
    for check in _DYNAMIC_CHECKS:
        rejection = check(ctx, spec, signals)
        if rejection is not None:
            return CandidateVerdict(spec.name, False, rejection.code, rejection.summary, rejection.detail,
                                    None, 0.0, None, None, None, False)
    request = ctx.request
    est = estimate(spec, signals, request.input_tokens, request.max_output_tokens, request.ingress_region,
                   ctx.now_s, ctx.staleness_bound_s)
    rejection = DEADLINE_FILTER.check_estimate(ctx, spec, est, signals, request.max_output_tokens)
    if rejection is not None:
        return CandidateVerdict(spec.name, False, rejection.code, rejection.summary, rejection.detail,
                                None, 0.0, est.ttft_s, est.e2e_s, est.cost_usd, False)
    scores = tuple([s.score(ctx, spec, signals, est) for s in scorers])
    meets = est.ttft_s <= ctx.sla.ttft_deadline_s and est.e2e_s <= ctx.sla.e2e_deadline_s
    return CandidateVerdict(spec.name, True, None, None, None, scores, sum(map(mul, weights, scores)),
                            est.ttft_s, est.e2e_s, est.cost_usd, meets)


def _rejected(name: str, rejection: Rejection) -> CandidateVerdict:
    return CandidateVerdict(name, False, rejection.code, rejection.summary, rejection.detail,
                            None, 0.0, None, None, None, False)


def _context(request: PlacementRequest, tenant: TenantPolicy, sla: SlaPolicy, route: ModelRoute,
             policy: PlacementPolicy, over_budget_classes: frozenset[str] | None) -> PlacementContext:
    return PlacementContext(request, tenant, sla, route, policy, policy.spill_classes(route.name),
                            request.arrived_at_s, policy.signal_staleness_bound_s, over_budget_classes)


def _arithmetic(e: PreparedSubstrate, request: PlacementRequest, sla: SlaPolicy,
                cost_reference_usd_per_token: float) -> tuple[float, float, float, tuple[float, ...]]:
    """(ttft_s, e2e_s, cost_usd, scores in ``FAST_SCORER_ORDER``) of a substrate whose readings
    are all fresh: ``estimate.estimate`` and the scorers, with the same float operations. The loop
    in ``place`` performs these same lines inline (a call per candidate would cost more than them)."""
    n_in, n_out = request.input_tokens, request.max_output_tokens
    region, zone = request.ingress_region, request.ingress_zone
    prefill_s = n_in / e.prefill_tokens_per_s
    decode_s = n_out * e.per_token_s
    if e.queue_factor:
        ttft = e.fixed_s + e.queue_factor * (prefill_s + decode_s) + prefill_s
    else:
        ttft = e.fixed_s + prefill_s
    if e.ttft_floor_s > ttft:
        ttft = e.ttft_floor_s
    e2e = ttft + decode_s
    cost = n_in * e.usd_per_input_token + n_out * e.usd_per_output_token
    cost += e.usd_per_slot_second * e2e
    if e.egress_usd_per_byte and e.region != region:
        cost += (n_in + n_out) * 4 * e.egress_usd_per_byte
    a = 1.0 - ttft / sla.ttft_deadline_s
    b = 1.0 - e2e / sla.e2e_deadline_s
    latency = a if a < b else b
    tokens = n_in + n_out
    r = cost_reference_usd_per_token
    local = 1.0 if zone is not None and e.zone == zone else 0.5 if region is not None and e.region == region else 0.0
    scores = (latency if latency > 0.0 else 0.0, e.queue_score, e.memory_score,
              r / (r + cost / (tokens if tokens > 0 else 1)), local, e.reserved_score)
    return ttft, e2e, cost, scores


def _verdicts(request: PlacementRequest, sla: SlaPolicy, policy: PlacementPolicy, fleet: FleetSpec,
              snapshot: FleetSnapshot, rp: RoutePlan, fast_positions: tuple[int, ...],
              negated: list[float], by_specification: dict[int, CandidateVerdict]) -> tuple[CandidateVerdict, ...]:
    """Every serving substrate's verdict, in the route's order. For the admitted one at position
    ``pos``: ``by_specification[pos]`` when the filters and scorers themselves evaluated it,
    otherwise it was eligible by arithmetic with total ``-negated[pos]``."""
    out = []
    pos = 0
    for idx, rejection in rp.verdicts:
        if rejection is not None:
            out.append(_rejected(fleet.substrates[idx].name, rejection))
            continue
        verdict = by_specification.get(pos)
        if verdict is None:
            ttft, e2e, cost, scores = _arithmetic(snapshot.prepared[idx], request, sla,
                                                  policy.cost_reference_usd_per_token)
            verdict = CandidateVerdict(
                fleet.substrates[idx].name, True, None, None, None, tuple([scores[i] for i in fast_positions]),
                -negated[pos], ttft, e2e, cost, ttft <= sla.ttft_deadline_s and e2e <= sla.e2e_deadline_s)
        out.append(verdict)
        pos += 1
    return tuple(out)


def place(request: PlacementRequest, snapshot: FleetSnapshot, policy: PlacementPolicy) -> PlacementDecision:
    fleet = snapshot.fleet
    plan = policy.plan
    if plan is not None and plan.fleet is not fleet:
        plan = None  # another fleet than the one the plan was compiled for: work it out below
    if plan is not None:
        scorer_names, scorers, weights, fast_weights = plan.scorer_names, plan.scorers, plan.weights, plan.fast_weights
    else:
        scorer_names, scorers, weights, fast_weights = scoring(policy)

    def refuse(code: RejectionCode, message: str, model: str, primary: str | None = None,
               candidates: tuple[CandidateVerdict, ...] = ()) -> PlacementDecision:
        return PlacementDecision(
            placement_id=placement_id(request.request_id, request.attempt),
            request_id=request.request_id, attempt=request.attempt, tenant=request.tenant,
            model=model, sla_class=request.sla_class, substrate=None, fallbacks=(), primary=primary,
            spillover=False, spillover_reason=None, candidates=candidates, scorer_names=scorer_names,
            predicted_ttft_s=None, predicted_e2e_s=None, estimated_cost_usd=None,
            rejection_code=code, rejection_message=message, policy_hash=policy.policy_hash,
            snapshot_version=snapshot.version,
        )

    route = fleet.resolve_model(request.model)
    if route is None:
        return refuse(RejectionCode.UNKNOWN_MODEL, f"model `{request.model}` does not exist", request.model)
    tenant = policy.tenants.get(request.tenant)
    if tenant is None:
        return refuse(RejectionCode.UNKNOWN_TENANT, f"unknown tenant `{request.tenant}`", route.name)
    if tenant.allowed_models is not None and route.name not in tenant.allowed_models:
        return refuse(RejectionCode.MODEL_NOT_ALLOWED,
                      f"tenant `{tenant.name}` may not use model `{route.name}`", route.name)
    sla = policy.sla_classes.get(request.sla_class)
    if sla is None:
        return refuse(RejectionCode.UNKNOWN_SLA_CLASS, f"unknown SLA class `{request.sla_class}`", route.name)
    if request.sla_class not in tenant.allowed_sla_classes:
        return refuse(RejectionCode.SLA_CLASS_NOT_ALLOWED,
                      f"tenant `{tenant.name}` may not use SLA class `{request.sla_class}`", route.name)

    over_budget_classes = None
    if tenant.budget_usd is not None:
        spent = snapshot.tenant_spend_usd.get(tenant.name, 0.0)
        if spent >= tenant.budget_usd:
            if tenant.over_budget_classes is None:
                return refuse(RejectionCode.OVER_BUDGET,
                              f"tenant `{tenant.name}` has spent ${spent:.2f} of its ${tenant.budget_usd:.2f} "
                              "budget for this period", route.name)
            over_budget_classes = tenant.over_budget_classes

    rp = None if plan is None else plan.routes.get((tenant.name, route.name))
    if rp is None:
        rp = route_plan(fleet, policy, tenant, route)
    ttft_deadline, e2e_deadline = sla.ttft_deadline_s, sla.e2e_deadline_s
    prepared, signals, substrates = snapshot.prepared, snapshot.signals, fleet.substrates
    ctx = None  # only the specification's path needs one
    negated: list[float] = []  # per admitted substrate: -total when eligible, +inf when not
    numbers: list[tuple] = []  # per admitted substrate: (ttft_s, e2e_s, cost_usd), None when not estimated
    by_specification: dict[int, CandidateVerdict] = {}

    if fast_weights is not None and over_budget_classes is None and not policy.external_rules:
        now, bound = request.arrived_at_s, policy.signal_staleness_bound_s
        n_in, n_out = request.input_tokens, request.max_output_tokens
        needed = n_in + n_out
        per_token_of = needed if needed > 0 else 1
        region, zone = request.ingress_region, request.ingress_zone
        exclude = request.exclude
        require_labels, allowed = policy.require_node_labels, tenant.allowed_countries
        factor = policy.slow_drop_factor
        ttft_cut, e2e_cut = (_INF, _INF) if factor is None else (factor * ttft_deadline, factor * e2e_deadline)
        cost_ref = policy.cost_reference_usd_per_token
        w_lat, w_queue, w_memory, w_cost, w_local, w_reserved = fast_weights
        for idx, window, name in rp.admitted:
            e = prepared[idx]
            if (e[1] and now - e[0] <= bound and needed <= window and needed <= e[2]
                    and (e[3] is None or e[3] <= allowed) and (e[4] or not require_labels)
                    and not (exclude and name in exclude)):
                (_, _, _, _, _, fixed_s, prefill_rate, per_token_s, queue_factor, ttft_floor, usd_in, usd_out,
                 usd_slot_s, egress, s_region, s_zone, queue_score, memory_score, reserved_score, _) = e
                # The lines of ``_arithmetic``, inline.
                prefill_s = n_in / prefill_rate
                decode_s = n_out * per_token_s
                if queue_factor:
                    ttft = fixed_s + queue_factor * (prefill_s + decode_s) + prefill_s
                else:
                    ttft = fixed_s + prefill_s
                if ttft_floor > ttft:
                    ttft = ttft_floor
                e2e = ttft + decode_s
                if ttft <= ttft_cut and e2e <= e2e_cut:  # else DeadlineReachable rejects: below
                    cost = n_in * usd_in + n_out * usd_out
                    cost += usd_slot_s * e2e
                    if egress and s_region != region:
                        cost += needed * 4 * egress
                    a = 1.0 - ttft / ttft_deadline
                    b = 1.0 - e2e / e2e_deadline
                    latency = a if a < b else b
                    numbers.append((ttft, e2e, cost))
                    # The weighted scores, summed in the policy's order (plan.FAST_SCORER_ORDER).
                    negated.append(-(
                        w_lat * (latency if latency > 0.0 else 0.0) + w_queue * queue_score
                        + w_memory * memory_score + w_cost * (cost_ref / (cost_ref + cost / per_token_of))
                        + w_local * (1.0 if zone is not None and s_zone == zone
                                     else 0.5 if region is not None and s_region == region else 0.0)
                        + w_reserved * reserved_score))
                    continue
            if ctx is None:
                ctx = _context(request, tenant, sla, route, policy, over_budget_classes)
            verdict = by_specification[len(negated)] = evaluate(ctx, substrates[idx], signals[idx], scorers,
                                                                 weights)
            negated.append(-verdict.total if verdict.eligible else _INF)
            numbers.append(verdict[7:10])
    else:
        ctx = _context(request, tenant, sla, route, policy, over_budget_classes)
        for idx, _, _ in rp.admitted:
            verdict = by_specification[len(negated)] = evaluate(ctx, substrates[idx], signals[idx], scorers,
                                                                 weights)
            negated.append(-verdict.total if verdict.eligible else _INF)
            numbers.append(verdict[7:10])

    positions = fast_positions(scorer_names) if fast_weights is not None else ()
    verdicts = partial(_verdicts, request, sla, policy, fleet, snapshot, rp, positions, negated, by_specification)
    ineligible = negated.count(_INF)
    eligible_count = len(negated) - ineligible
    if not eligible_count:
        candidates = verdicts()
        code, message = roll_up(candidates, route.name)
        return refuse(code, message, route.name, route.primary, candidates)

    ranked = sorted(range(len(negated)), key=negated.__getitem__)
    del ranked[eligible_count:]
    if len(set(negated)) - (1 if ineligible else 0) < eligible_count:
        # Equal totals: broken by a key derived from the request id (stable: then by position).
        seed = zlib.crc32(request.request_id.encode())
        admitted = rp.admitted
        ranked.sort(key=lambda p: (negated[p], _tie_key(seed, admitted[p][0])))

    primary = rp.primary
    primary_rejection = rp.primary_rejection
    primary_meets = False
    if primary >= 0:
        verdict = by_specification.get(primary)
        if verdict is None:  # eligible by arithmetic
            ttft, e2e, _ = numbers[primary]
            primary_meets = ttft <= ttft_deadline and e2e <= e2e_deadline
        else:
            primary_meets = verdict.meets_sla
            if verdict.code is not None:
                primary_rejection = verdict
    if policy.spillover_mode == "on_need" and primary_meets and ranked[0] != primary:  # meets: eligible
        ranked.remove(primary)
        ranked.insert(0, primary)
    chosen = ranked[0]
    ttft, e2e, cost = numbers[chosen]

    spillover = chosen != primary
    reason = None
    if spillover:
        if not rp.primary_serves:
            reason = SpilloverReason.PRIMARY_NOT_ALLOWED
        elif primary_rejection is not None:  # the primary was rejected
            reason = SPILLOVER_REASON_BY_REJECTION[primary_rejection.code]
        elif not primary_meets:
            reason = SpilloverReason.PRIMARY_CANNOT_MEET_SLA
        else:
            reason = SpilloverReason.PRIMARY_OUTSCORED

    names = rp.names
    return PlacementDecision.deferred(
        (placement_id(request.request_id, request.attempt), request.request_id, request.attempt, tenant.name,
         route.name, sla.name, names[chosen], tuple([names[p] for p in ranked[1:]]), route.primary, spillover,
         reason, scorer_names, ttft, e2e, cost, None, None, policy.policy_hash, snapshot.version),
        verdicts, eligible_count)
