"""The placement plan: what ``place()`` needs from (fleet, policy) that no request changes.

Compiled once, when the config is built (``PlacementPolicy(..., fleet=fleet)``), never per request:

- per (tenant, model), the verdicts of the static filters (``filters.STATIC_FILTERS``: spillover
  rules and the tenant's jurisdictions) on every substrate serving the model;
- the scorers and weights of the policy, in the policy's order.

A plan belongs to one (fleet, policy) pair. A policy derived with ``dataclasses.replace`` carries
no plan, and a snapshot of another fleet does not match it: ``place()`` then compiles the one
route it needs on the fly (``route_plan``), pure and uncached, and decides the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import TYPE_CHECKING

from inferplane.placement.context import PlacementContext
from inferplane.placement.filters import STATIC_FILTERS, Rejection
from inferplane.placement.fleet import FleetSpec, ModelRoute
from inferplane.placement.request import PlacementRequest
from inferplane.placement.scorers import SCORERS, Scorer
from inferplane.placement.signals import SubstrateSignals

if TYPE_CHECKING:
    from inferplane.placement.policy import PlacementPolicy, TenantPolicy

_NO_SIGNALS = SubstrateSignals()  # static filters read no signals
# The order in which the engine's arithmetic adds weighted scores; a policy built from the config
# lists its scorers in this order (the schema's), so its totals are the specification's floats.
FAST_SCORER_ORDER = ("predicted_latency", "queue_pressure", "memory_pressure", "cost", "locality", "reserved_tier")


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


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    fleet: FleetSpec
    routes: Mapping[tuple[str, str], RoutePlan]
    """(tenant name, canonical model name) -> its route plan."""
    scorer_names: tuple[str, ...]
    scorers: tuple[Scorer, ...]
    weights: tuple[float, ...]
    fast_weights: tuple[float, ...] | None
    """The weights in ``FAST_SCORER_ORDER`` (0 for a scorer the policy does not use), or None when
    the policy lists its scorers in another order (then every candidate is scored the slow way,
    since the total is summed in the policy's order)."""


def compile_plan(fleet: FleetSpec, policy: PlacementPolicy) -> PlacementPlan:
    """The plan of (fleet, policy): every (tenant, model) route and the scoring."""
    routes = {
        (tenant.name, route.name): route_plan(fleet, policy, tenant, route)
        for tenant in policy.tenants.values()
        for route in fleet.models.values()
    }
    return PlacementPlan(fleet, MappingProxyType(routes), *scoring(policy))


def scoring(policy: PlacementPolicy) -> tuple[tuple[str, ...], tuple[Scorer, ...], tuple[float, ...],
                                              tuple[float, ...] | None]:
    names = tuple(w.scorer for w in policy.weights)
    weights = tuple(w.weight for w in policy.weights)
    fast = None
    if list(names) == [n for n in FAST_SCORER_ORDER if n in names]:
        by_name = dict(zip(names, weights))
        fast = tuple(by_name.get(n, 0.0) for n in FAST_SCORER_ORDER)
    return names, tuple(SCORERS[n] for n in names), weights, fast


@cache
def fast_positions(scorer_names: tuple[str, ...]) -> tuple[int, ...]:
    """Where each of ``scorer_names`` sits in ``FAST_SCORER_ORDER``."""
    return tuple(FAST_SCORER_ORDER.index(n) for n in scorer_names)


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
        admitted=tuple((i, fleet.substrates[i].context_windows.get(route.name, 0), fleet.substrates[i].name)
                       for i in admitted),
        names=names,
        primary=names.index(route.primary) if route.primary in names else -1,
        primary_serves=any(fleet.substrates[i].name == route.primary for i, _ in verdicts),
        primary_rejection=next((r for i, r in verdicts if fleet.substrates[i].name == route.primary), None),
    )
