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
"""

from __future__ import annotations

import hashlib
import zlib
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
from inferplane.placement.filters import (
    DEADLINE_FILTER,
    DYNAMIC_FILTERS,
    STATIC_FILTERS,
    Rejection,
    RejectionCode,
)
from inferplane.placement.policy import PlacementPolicy
from inferplane.placement.request import PlacementRequest
from inferplane.placement.scorers import SCORERS
from inferplane.placement.signals import SubstrateSignals
from inferplane.placement.snapshot import FleetSnapshot
from inferplane.placement.fleet import FleetSpec, SubstrateSpec

_DYNAMIC_CHECKS = tuple(f.check for f in DYNAMIC_FILTERS)
_NO_SIGNALS = SubstrateSignals()  # static filters read no signals


def placement_id(request_id: str, attempt: int) -> str:
    """A stable id for one placement attempt of one request."""
    return "pl-" + hashlib.blake2b(f"{request_id}/{attempt}".encode(), digest_size=8).hexdigest()


def _tie_key(seed: int, index: int) -> int:
    return ((seed ^ (index * 0x9E3779B1)) * 0x85EBCA6B) & 0xFFFFFFFF


def _static_plan(
    fleet: FleetSpec, policy: PlacementPolicy, ctx: PlacementContext
) -> tuple[tuple[int, SubstrateSpec, Rejection | None], ...]:
    """The static filters' verdicts for (fleet, tenant, model), computed once and memoised."""
    key = (fleet, ctx.tenant.name, ctx.route.name)
    plan = policy.memo.get(key)
    if plan is None:
        rows = []
        for idx in ctx.route.substrate_indices:
            spec = fleet.substrates[idx]
            rejection = None
            for f in STATIC_FILTERS:
                rejection = f.check(ctx, spec, _NO_SIGNALS)
                if rejection is not None:
                    break
            rows.append((idx, spec, rejection))
        plan = tuple(rows)
        policy.memo[key] = plan
    return plan


def _scoring(policy: PlacementPolicy):
    scoring = policy.memo.get("scoring")
    if scoring is None:
        scoring = (
            tuple(SCORERS[w.scorer].score for w in policy.weights),
            tuple(w.weight for w in policy.weights),
            tuple(w.scorer for w in policy.weights),
        )
        policy.memo["scoring"] = scoring
    return scoring


def place(request: PlacementRequest, snapshot: FleetSnapshot, policy: PlacementPolicy) -> PlacementDecision:
    fleet = snapshot.fleet
    score_fns, weights, scorer_names = _scoring(policy)

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

    bound = policy.signal_staleness_bound_s
    now = request.arrived_at_s
    ctx = PlacementContext(request, tenant, sla, route, policy, policy.spill_classes(route.name), now, bound,
                           over_budget_classes)
    ttft_deadline, e2e_deadline = sla.ttft_deadline_s, sla.e2e_deadline_s
    signals = snapshot.signals
    seed = zlib.crc32(request.request_id.encode())
    input_tokens, output_tokens, region = request.input_tokens, request.max_output_tokens, request.ingress_region

    verdicts: list[CandidateVerdict] = []
    ranked: list[tuple[float, int, int]] = []  # (-total, tie key, position in verdicts)
    primary_pos = -1
    primary_name = route.primary
    for idx, spec, rejection in _static_plan(fleet, policy, ctx):
        sig = signals[idx]
        if spec.name == primary_name:
            primary_pos = len(verdicts)
        if rejection is None:
            for check in _DYNAMIC_CHECKS:
                rejection = check(ctx, spec, sig)
                if rejection is not None:
                    break
        if rejection is not None:
            verdicts.append(CandidateVerdict(
                spec.name, False, rejection.code, rejection.summary, rejection.detail,
                None, 0.0, None, None, None, False))
            continue
        est = estimate(spec, sig, input_tokens, output_tokens, region, now, bound)
        rejection = DEADLINE_FILTER.check_estimate(ctx, spec, est, sig, output_tokens)
        if rejection is not None:
            verdicts.append(CandidateVerdict(
                spec.name, False, rejection.code, rejection.summary, rejection.detail,
                None, 0.0, est.ttft_s, est.e2e_s, est.cost_usd, False))
            continue
        scores = tuple([fn(ctx, spec, sig, est) for fn in score_fns])
        total = sum(map(mul, weights, scores))
        meets = est.ttft_s <= ttft_deadline and est.e2e_s <= e2e_deadline
        ranked.append((-total, _tie_key(seed, idx), len(verdicts)))
        verdicts.append(CandidateVerdict(
            spec.name, True, None, None, None, scores, total, est.ttft_s, est.e2e_s, est.cost_usd, meets))

    candidates = tuple(verdicts)
    if not ranked:
        code, message = roll_up(candidates, route.name)
        return refuse(code, message, route.name, route.primary, candidates)

    ranked.sort()
    order = [pos for _, _, pos in ranked]
    primary = candidates[primary_pos] if primary_pos >= 0 else None
    if policy.spillover_mode == "on_need" and primary is not None and primary.eligible and primary.meets_sla:
        order.remove(primary_pos)
        order.insert(0, primary_pos)
    chosen = candidates[order[0]]

    spillover = chosen.name != route.primary
    reason = None
    if spillover:
        if primary is None:
            reason = SpilloverReason.PRIMARY_NOT_ALLOWED
        elif primary.code is not None:  # the primary was rejected
            reason = SPILLOVER_REASON_BY_REJECTION[primary.code]
        elif not primary.meets_sla:
            reason = SpilloverReason.PRIMARY_CANNOT_MEET_SLA
        else:
            reason = SpilloverReason.PRIMARY_OUTSCORED

    return PlacementDecision(
        placement_id=placement_id(request.request_id, request.attempt),
        request_id=request.request_id, attempt=request.attempt, tenant=tenant.name, model=route.name,
        sla_class=sla.name, substrate=chosen.name,
        fallbacks=tuple(candidates[p].name for p in order[1:]),
        primary=route.primary, spillover=spillover, spillover_reason=reason, candidates=candidates,
        scorer_names=scorer_names, predicted_ttft_s=chosen.ttft_s, predicted_e2e_s=chosen.e2e_s,
        estimated_cost_usd=chosen.cost_usd, rejection_code=None, rejection_message=None,
        policy_hash=policy.policy_hash, snapshot_version=snapshot.version,
    )
