"""Tenants' quotas on a substrate class (a tier): what they close to a tenant's next placement.

A tenant may declare, per substrate class, ``guaranteed`` slots it can always get and a ``max``
it never exceeds (``tenants[].quotas``). Its usage of a class is the slots it holds there across
every ingress replica (the snapshot's per-tenant counts, with this replica's own since). For a
placement of tenant T:

- **cap**: T holds ``max`` slots of class c or more: every substrate of c is closed to it;
- **reclaim**: other tenants' requests wait for slots of c they are guaranteed and do not hold
  (``reclaiming``, summed over replicas by the authority; each waiting request counts while its
  tenant holds fewer than its guarantee, see ``plane.queue``). Their guaranteed slots were lent
  while idle; they are reclaimed as requests finish (nothing running is preempted): while the
  free slots of c are no more than the slots reclaimed by tenants other than T, c is closed to T,
  so a freed slot goes to the reclaiming tenant, whichever replica holds it.

Closed substrates are rejected by the engine's ``TenantQuotaOpen`` filter with the reason, so a
decision says why a substrate was not used, and a request that nothing else can take waits in the
hold queue (its tenant's own requests finishing, or the reclaim being served, frees it).

Free slots of a class are ``max_concurrent + max_queued - in_flight`` summed over its substrates
whose in-flight reading is fresh; a substrate with no fresh reading offers none. The reclaim is
per class, not per substrate: a waiting request that can use only some substrates of the class
holds back the others too, until it is served (a conservative reading of the guarantee).
"""

from __future__ import annotations

from collections.abc import Mapping

from inferplane.placement import FleetSnapshot, FleetSpec, PlacementPolicy
from inferplane.placement.policy import TenantPolicy


def quota_classes(policy: PlacementPolicy) -> frozenset[str]:
    """The substrate classes on which some tenant has a quota (empty: quotas cost nothing)."""
    return frozenset(c for t in policy.tenants.values() for c, _, _ in t.quotas)


def free_slots(fleet: FleetSpec, view: FleetSnapshot, substrate_class: str, bound_s: float) -> int:
    """Admission slots of ``substrate_class`` not in flight on ``view`` (fresh readings only)."""
    free = 0
    now = view.taken_at_s
    for spec, signals in zip(fleet.substrates, view.signals):
        if spec.substrate_class != substrate_class:
            continue
        reading = signals.in_flight
        if reading is None or now - reading.observed_at_s > bound_s:
            continue
        free += max(0, spec.max_concurrent + spec.max_queued - int(reading.value))
    return free


def closed_substrates(tenant: TenantPolicy, fleet: FleetSpec, view: FleetSnapshot, usage: Mapping[str, int],
                      reclaiming: Mapping[str, Mapping[str, int]], bound_s: float) -> tuple[tuple[str, str], ...]:
    """(substrate, reason) for every substrate ``tenant``'s cap or others' reclaims close to it."""
    reasons: dict[str, str] = {}
    for cls, _, cap in tenant.quotas:
        if cap is not None and usage.get(cls, 0) >= cap:
            reasons[cls] = f"tenant at its cap of {cap} {cls} slots"
    for cls, by_tenant in reclaiming.items():
        if cls in reasons:
            continue
        held = sum(n for t, n in by_tenant.items() if t != tenant.name)
        if held > 0 and free_slots(fleet, view, cls, bound_s) <= held:
            reasons[cls] = f"{cls} slots held for tenants reclaiming their guaranteed quota"
    if not reasons:
        return ()
    return tuple((s.name, reasons[s.substrate_class]) for s in fleet.substrates if s.substrate_class in reasons)
