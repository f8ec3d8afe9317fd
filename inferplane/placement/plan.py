"""The placement plan: what ``place()`` needs from (fleet, policy) that no request changes.

Compiled once, when the config is built (``PlacementPolicy(..., fleet=fleet)``), never per request:

- per (tenant, model), and per (tenant, version) of a model with versions (``fleet.Rollout``: each
  version is a route of its own), the verdicts of the static filters (``filters.STATIC_FILTERS``: spillover
  rules and the tenant's jurisdictions) on every substrate serving the model;
- the scorers and weights of the policy, in the policy's order, and the constants a snapshot folds
  into its scoring rows (``prepared.scoring_row``);
- per (tenant, model, SLA class, ingress region and zone) a request names, filled in on first use
  (``Target``): the request-level checks done, the route, and each admitted substrate's window,
  egress price outside the ingress's region and weighted locality, which depend on nothing else.

A plan belongs to one (fleet, policy) pair. A policy derived with ``dataclasses.replace`` carries
no plan, and a snapshot of another fleet does not match it: ``place()`` then compiles the one
route it needs on the fly (``route_plan``), pure and uncached, and decides the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

from inferplane.placement.context import PlacementContext
from inferplane.placement.filters import STATIC_FILTERS, Rejection, RejectionCode
from inferplane.placement.fleet import FleetSpec, ModelRoute
from inferplane.placement.request import PlacementRequest
from inferplane.placement.scorers import SCORERS, Scorer
from inferplane.placement.signals import SubstrateSignals

if TYPE_CHECKING:
    from inferplane.placement.policy import PlacementPolicy, SlaPolicy, TenantPolicy

_NO_SIGNALS = SubstrateSignals()  # static filters read no signals
# The order in which the engine's arithmetic adds weighted scores; a policy built from the config
# lists its scorers in this order (the schema's), so its totals are the specification's floats.
FAST_SCORER_ORDER = ("predicted_latency", "queue_pressure", "memory_pressure", "cost", "locality", "reserved_tier",
                     "prefix_locality")


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The substrates serving one model, as one tenant may use them (in the route's order)."""

    verdicts: tuple[tuple[int, Rejection | None], ...]
    """(substrate index, static filters' first rejection or None) for every serving substrate."""
    admitted: tuple[tuple[int, int, str], ...]
    """(index, the model's context window there, name) of each substrate the static filters admit:
    the only ones the per-request work looks at."""
    names: tuple[str, ...]
    """Each admitted substrate's name (aligned with ``admitted``)."""
    primary: int
    """Position of the model's primary in ``admitted``, or -1 when the static filters reject it."""
    primary_serves: bool
    """Whether the model's primary serves it at all (is in ``verdicts``)."""
    primary_rejection: Rejection | None
    """The static filters' rejection of the primary, if any."""


class Scoring(NamedTuple):
    """How a policy scores: its scorers and weights in its order, and what the arithmetic needs."""

    scorer_names: tuple[str, ...]
    scorers: tuple[Scorer, ...]
    weights: tuple[float, ...]
    fast_weights: tuple[float, ...] | None
    """The weights in ``FAST_SCORER_ORDER`` (0 for a scorer the policy does not use), or None when
    the policy lists its scorers in another order (then every candidate is scored the slow way,
    since the total is summed in the policy's order)."""
    row_constants: tuple[float, bool, float, float, float] | None
    """What a snapshot folds into its scoring rows (``prepared.scoring_row``): the signal
    staleness bound, ``require_node_labels`` and the weights of queue pressure, memory pressure
    and reserved tier. None when the arithmetic does not apply (``fast_weights`` is None, or
    external-signal rules, which only the specification evaluates)."""
    fast_positions: tuple[int, ...]
    """Where each of ``scorer_names`` sits in ``FAST_SCORER_ORDER`` (empty when ``fast_weights`` is None)."""


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    fleet: FleetSpec
    routes: Mapping[tuple[str, str], RoutePlan]
    """(tenant name, route key: the canonical model name, or ``model@version`` for a version of a
    model with versions) -> its route plan."""
    scoring: Scoring
    targets: Mapping[tuple, Target] = field(compare=False, repr=False)
    """(tenant, model name or alias, SLA class, ingress region, ingress zone, version or None) -> its
    ``Target``, for every tenant, every name of a model it may use (each version of a model with
    versions), every SLA class it may use, and every ingress location the config knows (see
    ``compile_plan``). Compiled here, read-only afterwards: a
    request with a key not in it (a refusal, or an ingress somewhere the config never names) gets
    its ``target`` worked out per request, uncached, and is decided the same way."""


def models_for(policy: PlacementPolicy, fleet: FleetSpec, tenant_name: str) -> list[str]:
    """The canonical names of the models ``tenant_name`` may use and that at least one substrate
    its static rules admit serves (what ``/v1/models`` lists), in the fleet's order."""
    tenant = policy.tenants[tenant_name]
    plan = policy.plan
    out = []
    for route in fleet.models.values():
        if tenant.allowed_models is not None and route.name not in tenant.allowed_models:
            continue
        rollout = fleet.rollouts.get(route.name)
        # A model with versions is listed when a version that gets requests has somewhere to run.
        routes = [route] if rollout is None else [v.route for v in rollout.versions if v.weight_pct > 0]
        for r in routes:
            rp = plan.routes.get((tenant_name, r.key)) if plan is not None and plan.fleet is fleet else None
            if rp is None:
                rp = route_plan(fleet, policy, tenant, r)
            if rp.admitted:
                out.append(route.name)
                break
    return out


def compile_plan(fleet: FleetSpec, policy: PlacementPolicy,
                 ingress_locations: Iterable[tuple[str | None, str | None]] = ()) -> PlacementPlan:
    """The plan of (fleet, policy): every (tenant, model) route, the scoring, and the targets of
    every request the config allows, at each known ingress location: the given ones (the config's
    ingress topology), every substrate's (region, zone) (an ingress on a labelled node usually
    shares a zone with substrates) and unknown (None, None)."""
    every_route = [*fleet.models.values(), *(v.route for r in fleet.rollouts.values() for v in r.versions)]
    routes = {
        (tenant.name, route.key): route_plan(fleet, policy, tenant, route)
        for tenant in policy.tenants.values()
        for route in every_route
    }
    sc = scoring(policy)
    locations = {(None, None), *ingress_locations, *((s.region, s.zone) for s in fleet.substrates)}
    targets = {}
    for tenant in policy.tenants.values():
        for name, canonical in fleet.model_names.items():
            if tenant.allowed_models is not None and canonical not in tenant.allowed_models:
                continue
            rollout = fleet.rollouts.get(canonical)
            versions = (None,) if rollout is None else tuple(v.name for v in rollout.versions)
            for sla_class in tenant.allowed_sla_classes:
                if sla_class not in policy.sla_classes:
                    continue
                for region, zone in locations:
                    for version in versions:
                        key = (tenant.name, name, sla_class, region, zone, version)
                        t = target(fleet, policy, routes, sc, *key)
                        if type(t) is Target:
                            targets[key] = t
    return PlacementPlan(fleet, MappingProxyType(routes), sc, MappingProxyType(targets))


def scoring(policy: PlacementPolicy) -> Scoring:
    names = tuple(w.scorer for w in policy.weights)
    weights = tuple(w.weight for w in policy.weights)
    fast = None
    if list(names) == [n for n in FAST_SCORER_ORDER if n in names]:
        by_name = dict(zip(names, weights))
        fast = tuple(by_name.get(n, 0.0) for n in FAST_SCORER_ORDER)
    constants = None
    if fast is not None and not policy.external_rules:
        constants = (policy.signal_staleness_bound_s, policy.require_node_labels, fast[1], fast[2], fast[5])
    positions = () if fast is None else tuple(FAST_SCORER_ORDER.index(n) for n in names)
    return Scoring(names, tuple(SCORERS[n] for n in names), weights, fast, constants, positions)


@dataclass(frozen=True, slots=True)
class Target:
    """What ``place()`` needs for one (tenant, model, SLA class, ingress region and zone): the
    request-level checks passed (the model exists, the tenant exists and may use it and the SLA
    class), and the route as that ingress sees it (``target``). The tuples below are columns,
    aligned with ``plan.admitted``: the engine's loop zips them."""

    route: ModelRoute
    tenant: TenantPolicy
    sla: SlaPolicy
    plan: RoutePlan
    indices: tuple[int, ...]
    """Each admitted substrate's index in the fleet."""
    windows: tuple[int, ...]
    """The model's context window on each."""
    min_window: int
    """The least of ``windows`` (0 when none): a request that fits it fits every one."""
    egress_usd_per_byte: tuple[float, ...]
    """Egress price on each when it is outside the ingress's region, else 0 (as ``estimate``)."""
    locality_terms: tuple[float, ...]
    """The locality weight times ``Locality``'s score of each for this ingress."""
    pick: Callable[[Sequence], tuple]
    """``pick(seq)``: ``tuple(seq[i] for i in indices)``, done in C."""
    ttft_cut_s: float
    e2e_cut_s: float
    """``slow_drop_factor`` x each deadline (+inf when the policy keeps slow substrates)."""


def target(fleet: FleetSpec, policy: PlacementPolicy, routes: Mapping[tuple[str, str], RoutePlan] | None,
           scoring_: Scoring, tenant_name: str, model: str, sla_class: str, region: str | None,
           zone: str | None, version: str | None = None) -> Target | tuple[RejectionCode, str, str]:
    """The request-level checks and the route for a request with these names (for ``version`` of a
    model with versions: that version's route), or why such a request is refused: (code, message,
    model name for the decision). ``routes`` is the plan's (None: compiled here)."""
    route = fleet.resolve_model(model)
    if route is None:
        return RejectionCode.UNKNOWN_MODEL, f"model `{model}` does not exist", model
    if version is not None:
        chosen = fleet.rollouts[route.name].version(version)
        if chosen is None:  # a key no request makes: the version comes from the model's own rollout
            return RejectionCode.UNKNOWN_MODEL, f"model `{route.name}` has no version `{version}`", route.name
        route = chosen.route
    tenant = policy.tenants.get(tenant_name)
    if tenant is None:
        return RejectionCode.UNKNOWN_TENANT, f"unknown tenant `{tenant_name}`", route.name
    if tenant.allowed_models is not None and route.name not in tenant.allowed_models:
        return (RejectionCode.MODEL_NOT_ALLOWED, f"tenant `{tenant.name}` may not use model `{route.name}`",
                route.name)
    sla = policy.sla_classes.get(sla_class)
    if sla is None:
        return RejectionCode.UNKNOWN_SLA_CLASS, f"unknown SLA class `{sla_class}`", route.name
    if sla_class not in tenant.allowed_sla_classes:
        return (RejectionCode.SLA_CLASS_NOT_ALLOWED, f"tenant `{tenant.name}` may not use SLA class `{sla_class}`",
                route.name)
    rp = None if routes is None else routes.get((tenant.name, route.key))
    if rp is None:
        rp = route_plan(fleet, policy, tenant, route)
    w_local = 0.0 if scoring_.fast_weights is None else scoring_.fast_weights[4]
    egress_prices, terms = [], []
    for idx, _, _ in rp.admitted:
        spec = fleet.substrates[idx]
        egress = spec.cost.egress_usd_per_byte
        # As ``estimate``: egress is paid outside the ingress's region; as ``Locality``: 1 same
        # zone, 0.5 same region, 0 elsewhere or unknown (weighted here: the product the total adds).
        local = 1.0 if zone is not None and spec.zone == zone else 0.5 if region is not None and spec.region == region \
            else 0.0
        egress_prices.append(egress if egress and spec.region != region else 0.0)
        terms.append(w_local * local)
    indices = tuple(idx for idx, _, _ in rp.admitted)
    pick = itemgetter(*indices) if len(indices) > 1 else lambda seq: tuple([seq[i] for i in indices])
    factor = policy.slow_drop_factor
    inf = float("inf")
    windows = tuple(w for _, w, _ in rp.admitted)
    return Target(route, tenant, sla, rp, indices, windows, min(windows, default=0), tuple(egress_prices),
                  tuple(terms), pick, inf if factor is None else factor * sla.ttft_deadline_s,
                  inf if factor is None else factor * sla.e2e_deadline_s)


def route_plan(fleet: FleetSpec, policy: PlacementPolicy, tenant: TenantPolicy, route: ModelRoute) -> RoutePlan:
    """The static filters' verdicts for ``tenant`` on the substrates serving ``route``. They read
    only the tenant, the route and the substrates' specs, so any request will do for the context."""
    probe = PlacementRequest("plan", tenant.name, route.name, tenant.default_sla_class, 0, 0, 0.0)
    sla = policy.sla_classes.get(tenant.default_sla_class)
    ctx = PlacementContext(probe, tenant, sla, route, policy, policy.spill_classes(route.name), 0.0,
                           policy.signal_staleness_bound_s)
    verdicts = []
    for idx in route.substrate_indices:
        spec = fleet.substrates[idx]
        rejection = None
        for f in STATIC_FILTERS:
            rejection = f.check(ctx, spec, _NO_SIGNALS)
            if rejection is not None:
                break
        verdicts.append((idx, rejection))
    admitted = tuple(idx for idx, rejection in verdicts if rejection is None)
    names = tuple(fleet.substrates[i].name for i in admitted)
    return RoutePlan(
        verdicts=tuple(verdicts),
        admitted=tuple((i, fleet.substrates[i].context_windows.get(route.key, 0), fleet.substrates[i].name)
                       for i in admitted),
        names=names,
        primary=names.index(route.primary) if route.primary in names else -1,
        primary_serves=any(fleet.substrates[i].name == route.primary for i, _ in verdicts),
        primary_rejection=next((r for i, r in verdicts if fleet.substrates[i].name == route.primary), None),
    )
