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
from inferplane.placement.fleet import SubstrateSpec
from inferplane.placement.signals import CircuitState, SubstrateSignals, fresh_value, queued_value
from inferplane.jurisdiction import is_within


class RejectionCode(str, enum.Enum):
    # Per substrate, in ladder order.
    SPILLOVER_FORBIDDEN = "spillover_forbidden"
    JURISDICTION = "jurisdiction"
    EXCLUDED = "excluded"
    CONTEXT_WINDOW = "context_window"
    UNHEALTHY = "unhealthy"
    STALE_SIGNALS = "stale_signals"
    CAPACITY = "capacity"
    RATE_LIMITED = "rate_limited"
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
    """Admits when the model's context window here holds input + max output tokens."""

    code = RejectionCode.CONTEXT_WINDOW

    def check(self, ctx, spec, signals):
        window = spec.context_windows.get(ctx.route.name, 0)
        needed = ctx.request.input_tokens + ctx.request.max_output_tokens
        if needed <= window:
            return None
        return Rejection(self.code, f"context window < {needed}", f"window {window} < {needed} tokens needed")


class Healthy:
    """Rejects a substrate whose circuit is open."""

    code = RejectionCode.UNHEALTHY

    def check(self, ctx, spec, signals):
        if signals.circuit is CircuitState.OPEN:
            return Rejection(self.code, "circuit open", "circuit open")
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
    """Rejects when in-flight + queued has reached max_concurrent + max_queued."""

    code = RejectionCode.CAPACITY

    def check(self, ctx, spec, signals):
        in_flight = fresh_value(signals.in_flight, ctx.now_s, ctx.staleness_bound_s)
        if in_flight is None:  # SignalsFresh normally rejects first; never admit on unknown load
            return Rejection(self.code, "load unknown", "no fresh in_flight signal")
        queued = queued_value(signals, ctx.now_s, ctx.staleness_bound_s)
        if queued is None:
            return Rejection(self.code, "load unknown", "queued signal is stale")
        limit = spec.max_concurrent + spec.max_queued
        if in_flight + queued < limit:
            return None
        return Rejection(self.code, "at capacity", f"{in_flight + queued:.0f} in flight+queued >= {limit}")


class RateLimitHeadroom:
    """Rejects when the API's reported remaining requests or tokens cannot take this request.

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


# Filters that depend only on the tenant, the model and the substrate's static spec: the engine
# runs them once per (fleet, tenant, model) and reuses the verdicts.
STATIC_FILTERS: tuple[Filter, ...] = (
    SpilloverAllowed(),
    JurisdictionAllowed(),
)
# Filters that read the request's tokens and exclusions or the live signals: run per request.
DYNAMIC_FILTERS: tuple[Filter, ...] = (
    Excluded(),
    ContextWindowFits(),
    Healthy(),
    SignalsFresh(),
    Admission(),
    RateLimitHeadroom(),
)
DEFAULT_FILTERS: tuple[Filter, ...] = STATIC_FILTERS + DYNAMIC_FILTERS

LADDER: dict[RejectionCode, int] = {f.code: i for i, f in enumerate(DEFAULT_FILTERS)}
