"""The per-request context every filter and scorer reads. Built once per ``place()`` call."""

from __future__ import annotations

from dataclasses import dataclass

from inferplane.placement.fleet import ModelRoute
from inferplane.placement.policy import PlacementPolicy, SlaPolicy, TenantPolicy
from inferplane.placement.request import PlacementRequest


@dataclass(frozen=True, slots=True)
class PlacementContext:
    request: PlacementRequest
    tenant: TenantPolicy
    sla: SlaPolicy
    route: ModelRoute
    policy: PlacementPolicy
    spill_classes: frozenset[str]
    now_s: float
    staleness_bound_s: float
    over_budget_classes: frozenset[str] | None = None
    """Set when the tenant is over budget with a `restrict` rule: the classes it may still use."""
