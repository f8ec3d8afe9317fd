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
from inferplane.placement.estimate import Estimate, estimate
from inferplane.placement.filters import DEADLINE_FILTER, DYNAMIC_FILTERS, Rejection, RejectionCode
from inferplane.placement.fleet import FleetSpec, SubstrateSpec
from inferplane.placement.plan import RoutePlan, route_plan, scoring
from inferplane.placement.policy import PlacementPolicy
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


def _verdicts(ctx: PlacementContext, fleet: FleetSpec, snapshot: FleetSnapshot, rp: RoutePlan,
              scorers: tuple[Scorer, ...], results: list) -> tuple[CandidateVerdict, ...]:
    """Every serving substrate's verdict, in the route's order. ``results[pos]`` belongs to
    ``rp.admitted[pos]``: a ``CandidateVerdict`` the specification worked out, or the numbers
    ``(total, ttft_s, e2e_s, cost_usd)`` the arithmetic found for an eligible substrate; its
    per-scorer breakdown is the specification's scorers on that estimate."""
    out = []
    pos = 0
    sla = ctx.sla
    for idx, rejection in rp.verdicts:
        spec = fleet.substrates[idx]
        if rejection is not None:
            out.append(_rejected(spec.name, rejection))
            continue
        r = results[pos]
        pos += 1
        if type(r) is CandidateVerdict:
            out.append(r)
            continue
        total, ttft, e2e, cost = r
        est = Estimate(ttft, e2e, cost, snapshot.prepared[idx].occupancy)
        sig = snapshot.signals[idx]
        scores = tuple([s.score(ctx, spec, sig, est) for s in scorers])
        out.append(CandidateVerdict(spec.name, True, None, None, None, scores, total, ttft, e2e, cost,
                                    ttft <= sla.ttft_deadline_s and e2e <= sla.e2e_deadline_s))
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
    bound = policy.signal_staleness_bound_s
    now = request.arrived_at_s
    ctx = PlacementContext(request, tenant, sla, route, policy, policy.spill_classes(route.name), now, bound,
                           over_budget_classes)
    ttft_deadline, e2e_deadline = sla.ttft_deadline_s, sla.e2e_deadline_s
    n_in, n_out = request.input_tokens, request.max_output_tokens
    needed = n_in + n_out
    per_token_of = needed if needed > 0 else 1
    region, zone = request.ingress_region, request.ingress_zone
    exclude = request.exclude
    require_labels, allowed = policy.require_node_labels, tenant.allowed_countries
    factor = policy.slow_drop_factor
    ttft_cut, e2e_cut = (_INF, _INF) if factor is None else (factor * ttft_deadline, factor * e2e_deadline)
    cost_ref = policy.cost_reference_usd_per_token
    arithmetic = fast_weights is not None and over_budget_classes is None and not policy.external_rules
    if arithmetic:
        w_lat, w_queue, w_memory, w_cost, w_local, w_reserved = fast_weights
    prepared, signals, substrates = snapshot.prepared, snapshot.signals, fleet.substrates
    names = rp.names

    results: list = []  # per admitted substrate, see ``_verdicts``
    eligible: list[int] = []  # positions in ``results``
    negated: list[float] = []  # -total of each eligible one
    for pos, idx in enumerate(rp.admitted):
        if arithmetic:
            (oldest, clear, tokens_left, nodes, unlabelled, _, fixed_s, prefill_rate, per_token_s, queue_factor,
             ttft_floor, usd_in, usd_out, usd_slot_s, egress, s_region, s_zone, queue_score, memory_score,
             reserved_score) = prepared[idx]
            if (clear and now - oldest <= bound and needed <= rp.windows[pos] and needed <= tokens_left
                    and not (exclude and names[pos] in exclude)
                    and not ((require_labels and (nodes is None or unlabelled))
                             or (nodes is not None and not (nodes and nodes <= allowed)))):
                # estimate.estimate, with every reading fresh (prepared.py)
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
                    # The scorers, summed in the policy's order (plan.FAST_SCORER_ORDER).
                    a = 1.0 - ttft / ttft_deadline
                    b = 1.0 - e2e / e2e_deadline
                    latency_score = a if a < b else b
                    latency_score = latency_score if latency_score > 0.0 else 0.0
                    c = cost / per_token_of
                    local = (1.0 if zone is not None and s_zone == zone
                             else 0.5 if region is not None and s_region == region else 0.0)
                    total = (w_lat * latency_score + w_queue * queue_score + w_memory * memory_score
                             + w_cost * (cost_ref / (cost_ref + c)) + w_local * local + w_reserved * reserved_score)
                    results.append((total, ttft, e2e, cost))
                    eligible.append(pos)
                    negated.append(-total)
                    continue
        verdict = evaluate(ctx, substrates[idx], signals[idx], scorers, weights)
        results.append(verdict)
        if verdict.eligible:
            eligible.append(pos)
            negated.append(-verdict.total)

    verdicts = partial(_verdicts, ctx, fleet, snapshot, rp, scorers, results)
    if not eligible:
        candidates = verdicts()
        code, message = roll_up(candidates, route.name)
        return refuse(code, message, route.name, route.primary, candidates)

    if len(set(negated)) == len(negated):
        order = sorted(range(len(eligible)), key=negated.__getitem__)
    else:  # equal totals: broken by a key derived from the request id
        seed = zlib.crc32(request.request_id.encode())
        admitted = rp.admitted
        order = sorted(range(len(eligible)),
                       key=lambda k: (negated[k], _tie_key(seed, admitted[eligible[k]])))
    ranked = [eligible[k] for k in order]

    primary = rp.primary
    primary_meets = False
    primary_rejection = rp.primary_rejection
    if primary >= 0:
        r = results[primary]
        if type(r) is CandidateVerdict:
            primary_meets = r.meets_sla
            if r.code is not None:
                primary_rejection = r
        else:
            primary_meets = r[1] <= ttft_deadline and r[2] <= e2e_deadline
    if policy.spillover_mode == "on_need" and primary_meets:  # meets_sla implies eligible
        ranked.remove(primary)
        ranked.insert(0, primary)
    chosen = ranked[0]
    r = results[chosen]
    if type(r) is CandidateVerdict:
        ttft, e2e, cost = r.ttft_s, r.e2e_s, r.cost_usd
    else:
        _, ttft, e2e, cost = r

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

    return PlacementDecision.deferred(
        (placement_id(request.request_id, request.attempt), request.request_id, request.attempt, tenant.name,
         route.name, sla.name, names[chosen], tuple([names[p] for p in ranked[1:]]), route.primary, spillover,
         reason, scorer_names, ttft, e2e, cost, None, None, policy.policy_hash, snapshot.version),
        verdicts, len(eligible))
