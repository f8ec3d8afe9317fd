"""Hard filters: each admits a substrate or rejects it with a constant code and a reason.

Contract of a ``Filter``: ``check(ctx, spec, signals)`` returns None to admit, or a ``Rejection``.
It must fail closed: a missing label, a missing signal or a stale one never admits. Filters run in
the order of ``DEFAULT_FILTERS``; a substrate's verdict is the first rejection. The order is also a
ladder of "how close it came": the request-level error (403, 400, 503, 429) follows the rejection
that got furthest down the ladder across all candidates (see ``decision.rejection_status``).
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

from inferplane.placement.context import PlacementContext
from inferplane.placement.estimate import learnt_ttft_s
from inferplane.placement.fleet import SubstrateSpec
from inferplane.placement.signals import (
    CircuitState,
    SubstrateSignals,
    fresh_value,
    limits,
    stale_value,
)
from inferplane.jurisdiction import is_within


class RejectionCode(str, enum.Enum):
    # Per substrate, in ladder order.
    SPILLOVER_FORBIDDEN = "spillover_forbidden"
    JURISDICTION = "jurisdiction"
    UNSUPPORTED_PARAMETER = "unsupported_parameter"
    EXCLUDED = "excluded"
    CONTEXT_WINDOW = "context_window"
    NODE_JURISDICTION = "node_jurisdiction"
    UNHEALTHY = "unhealthy"
    STALE_SIGNALS = "stale_signals"
    CAPACITY = "capacity"
    HELD_BACK = "held_back"
    RATE_LIMITED = "rate_limited"
    EXTERNAL_SIGNAL = "external_signal"
    OVER_BUDGET = "over_budget"
    PREDICTED_TOO_SLOW = "predicted_too_slow"
    # Per request, before any substrate is considered.
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_TENANT = "unknown_tenant"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    UNKNOWN_SLA_CLASS = "unknown_sla_class"
    SLA_CLASS_NOT_ALLOWED = "sla_class_not_allowed"


class Rejection(NamedTuple):
    code: RejectionCode
    summary: str
    """Groupable across substrates, e.g. ``jurisdiction not in {EU}``."""
    detail: str
    """Specific to this substrate, e.g. ``US not in {EU}``."""


class Filter(Protocol):
    code: RejectionCode

    def check(
        self, ctx: PlacementContext, spec: SubstrateSpec, signals: SubstrateSignals
    ) -> Rejection | None: ...


def _set(tokens) -> str:
    return "{" + ", ".join(sorted(tokens)) + "}"


class Excluded:
    """Rejects substrates a retry excludes (they already failed this request)."""

    code = RejectionCode.EXCLUDED

    def check(self, ctx, spec, signals):
        if spec.name in ctx.request.exclude:
            return Rejection(self.code, "already tried for this request", "failed on an earlier attempt")
        return None


class SpilloverAllowed:
    """Rejects a non-primary substrate the model's spillover rules do not allow.

    Allowed when the model lists it (or lists nothing, meaning any) and its class is one of the
    classes the policy lets this model spill to.
    """

    code = RejectionCode.SPILLOVER_FORBIDDEN

    def check(self, ctx, spec, signals):
        route = ctx.route
        if spec.name == route.primary:
            return None
        if route.spillover_substrates is not None and spec.name not in route.spillover_substrates:
            return Rejection(self.code, "not a spillover target of the model", f"`{route.name}` may not spill to it")
        if spec.substrate_class not in ctx.spill_classes:
            return Rejection(
                self.code,
                f"class not in spillover classes {_set(ctx.spill_classes)}",
                f"class {spec.substrate_class} not allowed for spillover",
            )
        return None


class JurisdictionAllowed:
    """Admits a substrate only when every country it may execute in is allowed for the tenant."""

    code = RejectionCode.JURISDICTION

    def check(self, ctx, spec, signals):
        if is_within(spec.countries, ctx.tenant.allowed_countries):
            return None
        allowed = _set(ctx.tenant.allowed_jurisdictions)
        return Rejection(self.code, f"jurisdiction not in {allowed}", f"{spec.jurisdiction or 'unknown'} not in {allowed}")


class ContextWindowFits:
    """Admits when the model's context window here holds input + max output tokens (the most the
    request may use, not its expected length)."""

    code = RejectionCode.CONTEXT_WINDOW

    def check(self, ctx, spec, signals):
        window = spec.context_windows.get(ctx.route.key, 0)
        needed = ctx.request.input_tokens + ctx.request.max_output_tokens
        if needed <= window:
            return None
        return Rejection(self.code, f"context window < {needed}", f"window {window} < {needed} tokens needed")


class ParametersHonoured:
    """Admits a substrate only when it honours every parameter the request sets that not every
    substrate honours (``request.required_features`` within ``spec.features``): ``logprobs`` on an
    emulation, ``tools`` on a vLLM engine without a tool-call parser. The summary names the
    parameters, so the roll-up tells the client which one to drop. First of the per-request
    filters: a substrate that honours the request but failed it (``Excluded``), is full or down
    came closer, so the request is told to retry (503, 429) rather than to drop the parameter."""

    code = RejectionCode.UNSUPPORTED_PARAMETER

    def check(self, ctx, spec, signals):
        required = ctx.request.required_features
        if not required or required <= spec.features:
            return None
        missing = ", ".join(f"`{name}`" for name in sorted(required - spec.features))
        return Rejection(self.code, f"cannot honour {missing}", f"{spec.kind} substrate does not honour {missing}")


def unhonoured_parameter(required: frozenset[str], fleet, candidates) -> str | None:
    """The parameter to name in a 400 refusing a request: the first (by name) of ``required``
    that a candidate rejected as ``UNSUPPORTED_PARAMETER`` does not honour. ``candidates``: the
    refusing decision's verdicts; ``fleet``: the ``FleetSpec`` they were placed on."""
    missing: set[str] = set()
    for c in candidates:
        if c.code is RejectionCode.UNSUPPORTED_PARAMETER:
            missing |= required - fleet.substrate(c.name).features
    return min(missing) if missing else None


class NodeJurisdiction:
    """Admits only when the nodes its replicas actually run on are inside the tenant's
    jurisdictions, from the nodes' jurisdiction labels. A replica on an unlabelled node rejects when
    the policy requires labels (fail closed); otherwise the declared jurisdiction stands alone."""

    code = RejectionCode.NODE_JURISDICTION

    def check(self, ctx, spec, signals):
        if ctx.policy.require_node_labels and (signals.node_countries is None or signals.unlabelled_replicas):
            return Rejection(self.code, "replica on an unlabelled node", "a replica's node has no jurisdiction label")
        observed = signals.node_countries
        if observed is not None and not is_within(observed, ctx.tenant.allowed_countries):
            allowed = _set(ctx.tenant.allowed_jurisdictions)
            return Rejection(self.code, f"replica node jurisdiction not in {allowed}",
                             f"replicas on nodes labelled {_set(observed)}, not in {allowed}")
        return None


class Healthy:
    """Rejects a substrate whose circuit is open; while half-open, admits only while fewer than
    ``policy.half_open_probe_limit`` requests are in flight there (probes, not a stampede)."""

    code = RejectionCode.UNHEALTHY

    def check(self, ctx, spec, signals):
        circuit = signals.circuit
        if circuit is CircuitState.CLOSED:
            return None
        if circuit is CircuitState.OPEN:
            return Rejection(self.code, "circuit open", "circuit open")
        in_flight = signals.in_flight.value if signals.in_flight is not None else 0.0
        if in_flight >= ctx.policy.half_open_probe_limit:
            return Rejection(self.code, "circuit half-open", "half-open: probe already in flight")
        return None


class SignalsFresh:
    """Rejects a substrate whose required signals are missing or older than the staleness bound."""

    code = RejectionCode.STALE_SIGNALS

    def check(self, ctx, spec, signals):
        bound = ctx.staleness_bound_s
        for name in spec.required_signals:
            reading = getattr(signals, name)
            if reading is None:
                return Rejection(self.code, "signals unknown or stale", f"no {name} signal")
            age = ctx.now_s - reading.observed_at_s
            if age > bound:
                return Rejection(
                    self.code, "signals unknown or stale", f"{name} {age:.1f}s old > bound {bound:.1f}s"
                )
        return None


class Admission:
    """Rejects when the requests the substrate holds (``in_flight``: running and waiting, see
    ``signals``) have reached max_concurrent + max_queued, as they are now (``signals.limits``: the
    live capacity of a substrate that scales with its replicas). The substrate's own ``queued``
    count is part of ``in_flight`` and is not added again. No slot at all (no replica live) admits
    nothing, whatever its queue."""

    code = RejectionCode.CAPACITY

    def check(self, ctx, spec, signals):
        in_flight = fresh_value(signals.in_flight, ctx.now_s, ctx.staleness_bound_s)
        if in_flight is None:  # SignalsFresh normally rejects first; never admit on unknown load
            return Rejection(self.code, "load unknown", "no fresh in_flight signal")
        max_concurrent, max_queued = limits(spec, signals)
        if max_concurrent < 1:  # whatever its queue: with no slot nothing it queues would ever run
            return Rejection(self.code, "no live replica", "capacity 0: no replica live and reporting")
        limit = max_concurrent + max_queued
        if in_flight < limit:
            return None
        return Rejection(self.code, "at capacity", f"{in_flight:.0f} in flight >= {limit}")


class HeldBack:
    """Rejects a substrate the plane's arbitration holds back from this request
    (``request.closed``, worked out by the ingress replica from every replica's reports, see
    ``plane.state.ReplicaState.closed_for``): the tenant's cap reached, slots reclaimed by a tenant
    under its guarantee, a slot held for a higher-priority request waiting elsewhere, or the
    substrate's own queue kept while requests wait in the plane. A request held back everywhere
    waits in the hold queue (``plane.queue``)."""

    code = RejectionCode.HELD_BACK

    def check(self, ctx, spec, signals):
        for name, reason in ctx.request.closed:
            if name == spec.name:
                return Rejection(self.code, reason, reason)
        return None


class RateLimitHeadroom:
    """Rejects when the API's reported remaining requests or tokens cannot take this request
    (input + max output tokens: a limit, so the most the request may use, not its expected length).

    Uses the last rate-limit headers only while fresh; an API that reports nothing is not limited
    here (its circuit breaker handles 429s).
    """

    code = RejectionCode.RATE_LIMITED

    def check(self, ctx, spec, signals):
        now, bound = ctx.now_s, ctx.staleness_bound_s
        requests_left = fresh_value(signals.rate_limit_requests_remaining, now, bound)
        if requests_left is not None and requests_left < 1:
            return Rejection(self.code, "rate limit reached", "0 requests remaining")
        tokens_left = fresh_value(signals.rate_limit_tokens_remaining, now, bound)
        needed = ctx.request.input_tokens + ctx.request.max_output_tokens
        if tokens_left is not None and tokens_left < needed:
            return Rejection(self.code, "rate limit reached", f"{tokens_left:.0f} tokens remaining < {needed}")
        return None


class ExternalSignals:
    """Applies the policy's rules for signals the platform team pushes (power headroom, zone
    congestion, regional failover...): a fresh value outside a rule's bounds rejects; a missing or
    expired one rejects only when the rule says ``missing: reject``."""

    code = RejectionCode.EXTERNAL_SIGNAL

    def check(self, ctx, spec, signals):
        rules = ctx.policy.external_rules
        if not rules:
            return None
        pushed = dict(signals.external)
        for rule in rules:
            reading = pushed.get(rule.name)
            if reading is None or ctx.now_s - reading.observed_at_s > rule.ttl_s:
                if rule.missing_rejects:
                    return Rejection(self.code, f"{rule.name} unknown", f"no fresh {rule.name} signal")
                continue
            v = reading.value
            if rule.reject_below is not None and v < rule.reject_below:
                return Rejection(self.code, f"{rule.name} < {rule.reject_below:g}", f"{rule.name} {v:g} < {rule.reject_below:g}")
            if rule.reject_above is not None and v > rule.reject_above:
                return Rejection(self.code, f"{rule.name} > {rule.reject_above:g}", f"{rule.name} {v:g} > {rule.reject_above:g}")
        return None


class WithinBudget:
    """A tenant over its budget (its attributed spend this period, from the snapshot) may use only
    the substrate classes its budget rule keeps open; with no such classes, the engine refuses the
    request before filtering (402)."""

    code = RejectionCode.OVER_BUDGET

    def check(self, ctx, spec, signals):
        classes = ctx.over_budget_classes
        if classes is None or spec.substrate_class in classes:
            return None
        return Rejection(self.code, f"over budget: only {_set(classes)}",
                         f"class {spec.substrate_class} closed to the tenant over budget")


class DeadlineReachable:
    """After the latency estimate: rejects a substrate predicted to take more than
    ``policy.slow_drop_factor`` times either deadline of the SLA class, so a degraded substrate
    (slow, queue deep) leaves the candidate set before clients see timeouts. Unlike the filters
    above it reads the estimate: ``check_estimate(ctx, spec, est, signals, output_tokens)``, with
    the output length the estimate assumed (the request's expected one, see ``estimate``).

    Once cut, a substrate produces no outcomes, so its observed latencies age past the staleness
    bound and the estimate falls back to the static profile. Re-admitting it then would send it a
    wave of requests that are late again. So while its last observed latencies (stale) would still
    put it over the cut, it is admitted only as a probe, while fewer than
    ``policy.half_open_probe_limit`` requests are in flight there; a probe's outcome refreshes the
    observation, and either keeps the cut or ends it:

        stale_ttft = est.ttft with the last learnt ttft_ratio or recent_ttft (estimate.learnt_ttft_s)
        stale_e2e  = max(est.e2e, stale_ttft + output_tokens * last recent_tpot)

(the last ``ttft_ratio`` scales this request's prediction, so a short prompt is not held to the
first-token time long prompts last had there, as the estimate does with fresh readings).

    The last observed latencies are those of outcomes that met no more load than the substrate
    has now, or no queue (``fleet_state``): a substrate that has finished a burst is not held to
    probes by the waits of that burst.
    """

    code = RejectionCode.PREDICTED_TOO_SLOW

    def check_estimate(self, ctx, spec, est, signals, output_tokens: float):
        factor = ctx.policy.slow_drop_factor
        if factor is None:
            return None
        sla = ctx.sla
        ttft_cut, e2e_cut = factor * sla.ttft_deadline_s, factor * sla.e2e_deadline_s
        if est.ttft_s > ttft_cut or est.e2e_s > e2e_cut:
            return Rejection(self.code, f"predicted over {factor:g}x the deadlines",
                             f"predicted ttft {est.ttft_s:.2f}s, e2e {est.e2e_s:.1f}s")
        last_ttft = stale_value(signals.recent_ttft_s, ctx.now_s, ctx.staleness_bound_s)
        last_tpot = stale_value(signals.recent_tpot_s, ctx.now_s, ctx.staleness_bound_s)
        if last_ttft is None and last_tpot is None:
            return None
        ttft = learnt_ttft_s(signals, est.ttft_s, ctx.now_s, ctx.staleness_bound_s, stale=True)
        e2e = max(est.e2e_s, ttft + output_tokens * (last_tpot or 0.0))
        if ttft <= ttft_cut and e2e <= e2e_cut:
            return None
        in_flight = signals.in_flight.value if signals.in_flight is not None else 0.0
        if in_flight < ctx.policy.half_open_probe_limit:
            return None
        return Rejection(self.code, f"last seen over {factor:g}x the deadlines; probing",
                         f"last observed ttft {ttft:.2f}s, e2e {e2e:.1f}s; {in_flight:.0f} probe(s) in flight")


# Filters that depend only on the tenant, the model and the substrate's static spec: the policy's
# plan (plan.py) runs them once per (tenant, model) when the config is built.
STATIC_FILTERS: tuple[Filter, ...] = (
    SpilloverAllowed(),
    JurisdictionAllowed(),
)
# Filters that read the request's tokens and exclusions or the live signals: run per request.
DYNAMIC_FILTERS: tuple[Filter, ...] = (
    ParametersHonoured(),
    Excluded(),
    ContextWindowFits(),
    NodeJurisdiction(),
    Healthy(),
    SignalsFresh(),
    Admission(),
    HeldBack(),
    RateLimitHeadroom(),
    ExternalSignals(),
    WithinBudget(),
)
DEFAULT_FILTERS: tuple[Filter, ...] = STATIC_FILTERS + DYNAMIC_FILTERS
DEADLINE_FILTER = DeadlineReachable()

LADDER: dict[RejectionCode, int] = {
    code: i for i, code in enumerate([f.code for f in DEFAULT_FILTERS] + [DEADLINE_FILTER.code])
}
