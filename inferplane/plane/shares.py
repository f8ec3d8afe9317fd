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

Closed substrates are rejected by the engine's ``HeldBack`` filter with the reason, so a
decision says why a substrate was not used, and a request that nothing else can take waits in the
hold queue (its tenant's own requests finishing, or the reclaim being served, frees it).

Free slots of a class are running slots, ``max_concurrent - in_flight`` summed over its substrates
whose in-flight reading is fresh (a substrate with no fresh reading offers none): a place in a
substrate's own queue, behind other tenants' requests, is no guaranteed slot. The reclaim is
per class, not per substrate: a waiting request that can use only some substrates of the class
holds back the others too, until it is served (a conservative reading of the guarantee).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from inferplane.placement import FleetSnapshot, FleetSpec, PlacementPolicy
from inferplane.placement.policy import TenantPolicy
from inferplane.placement.signals import limits


def quota_classes(policy: PlacementPolicy) -> frozenset[str]:
    """The substrate classes on which some tenant has a quota (empty: quotas cost nothing)."""
    return frozenset(q.substrate_class for t in policy.tenants.values() for q in t.quotas)


def free_slots(fleet: FleetSpec, view: FleetSnapshot, substrate_class: str, bound_s: float) -> int:
    """Running slots of ``substrate_class`` not in flight on ``view`` (fresh readings only): a
    guarantee is of running slots, not of places in a substrate's own queue behind others."""
    free = 0
    now = view.taken_at_s
    for spec, signals in zip(fleet.substrates, view.signals):
        if spec.substrate_class != substrate_class:
            continue
        reading = signals.in_flight
        if reading is None or now - reading.observed_at_s > bound_s:
            continue
        free += max(0, limits(spec, signals)[0] - int(reading.value))
    return free


def unlent_guarantees(policy: PlacementPolicy) -> tuple[tuple[str, str, int], ...]:
    """(tenant, substrate class, slots) for each guarantee its tenant may not lend
    (``guaranteed - lendable`` > 0), in the policy's order: what ``kept_slots`` keeps free."""
    return tuple((name, q.substrate_class, q.guaranteed - q.lendable)
                 for name, t in policy.tenants.items() for q in t.quotas if q.guaranteed - q.lendable > 0)


def kept_slots(unlent: tuple[tuple[str, str, int], ...], tenant: str,
               usage_of: Callable[[str], Mapping[str, int]]) -> dict[str, int]:
    """Substrate class -> slots kept free for other tenants' guarantees: each other tenant's
    guaranteed slots it does not use and may not lend (``guaranteed - lendable - used``; ``unlent``
    is ``unlent_guarantees(policy)``, worked out once per policy)."""
    kept: dict[str, int] = {}
    for name, substrate_class, slots in unlent:
        if name == tenant:
            continue
        spare = slots - usage_of(name).get(substrate_class, 0)
        if spare > 0:
            kept[substrate_class] = kept.get(substrate_class, 0) + spare
    return kept


def closed_substrates(tenant: TenantPolicy, fleet: FleetSpec, view: FleetSnapshot, usage: Mapping[str, int],
                      reclaiming: Mapping[str, Mapping[str, int]], kept: Mapping[str, int], bound_s: float
                      ) -> tuple[tuple[str, str], ...]:
    """(substrate, reason) for every substrate ``tenant``'s cap, others' reclaims or the slots kept
    for others' guarantees (``kept_slots``) close to it."""
    reasons: dict[str, str] = {}
    for q in tenant.quotas:
        if q.cap is not None and usage.get(q.substrate_class, 0) >= q.cap:
            reasons[q.substrate_class] = f"tenant at its cap of {q.cap} {q.substrate_class} slots"
    for cls in reclaiming.keys() | kept.keys():
        if cls in reasons:
            continue
        held = sum(n for t, n in reclaiming.get(cls, {}).items() if t != tenant.name) + kept.get(cls, 0)
        if held > 0 and free_slots(fleet, view, cls, bound_s) <= held:
            reasons[cls] = f"{cls} slots kept for other tenants' guaranteed quotas"
    if not reasons:
        return ()
    return tuple((s.name, reasons[s.substrate_class]) for s in fleet.substrates if s.substrate_class in reasons)
