"""The runtime placement policy: tenants' rules, SLA classes, weights, spillover and bounds.

Built once from a validated config (``inferplane.config.build``) and passed to ``place()``; a
replay can pass a different policy over the same fleet. ``policy_hash`` identifies it in every
decision and audit row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from inferplane.placement.fleet import FleetSpec
    from inferplane.placement.plan import PlacementPlan


class Quota(NamedTuple):
    """A tenant's slots on one substrate class: ``guaranteed`` it can always get back, of which
    ``lendable`` others may borrow while it does not use them; a ``cap`` it never exceeds."""

    substrate_class: str
    guaranteed: int
    cap: int | None
    lendable: int


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    name: str
    allowed_jurisdictions: tuple[str, ...]
    """As configured (for messages), e.g. ``("EU",)``."""
    allowed_countries: frozenset[str]
    """The same, expanded to country codes."""
    default_sla_class: str
    allowed_sla_classes: frozenset[str]
    allowed_models: frozenset[str] | None
    """Canonical model names, or None for all."""
    budget_usd: float | None = None
    """Spend allowed in the current period, or None for no limit."""
    over_budget_classes: frozenset[str] | None = None
    """Over budget: None rejects (402); a set restricts to those substrate classes."""
    share: float = 1.0
    """Weight among tenants contending for the same slots (``plane.queue``)."""
    quotas: tuple[Quota, ...] = ()
    """One per substrate class with a quota (``plane.shares``)."""


@dataclass(frozen=True, slots=True)
class SlaPolicy:
    name: str
    ttft_deadline_s: float
    e2e_deadline_s: float
    priority: int
    while_scaling_up: str = "spill"
    """``spill`` or ``hold`` (for the primary's new replica; ``plane.state.ReplicaState.closed_for``)."""


@dataclass(frozen=True, slots=True)
class ScorerWeight:
    scorer: str
    weight: float
    """Normalised: the weights of a policy sum to 1."""


@dataclass(frozen=True, slots=True)
class ExternalRule:
    name: str
    reject_below: float | None
    reject_above: float | None
    missing_rejects: bool
    ttl_s: float


@dataclass(frozen=True, slots=True)
class QueueSettings:
    """How an ingress replica holds requests no substrate can take now (``plane.queue``)."""

    hold: bool = True
    max_waiting: int = 1024
    output_token_weight: float = 2.0


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    tenants: Mapping[str, TenantPolicy]
    sla_classes: Mapping[str, SlaPolicy]
    weights: tuple[ScorerWeight, ...]
    spillover_mode: str
    """``on_need`` or ``scored`` (see the config schema)."""
    spillover_classes: frozenset[str]
    spillover_classes_per_model: Mapping[str, frozenset[str]]
    signal_staleness_bound_s: float
    snapshot_staleness_bound_s: float
    cost_reference_usd_per_token: float
    policy_hash: str
    half_open_probe_limit: int = 1
    slow_drop_factor: float | None = 3.0
    """A substrate predicted beyond this multiple of a deadline is not eligible (None: keep it)."""
    require_node_labels: bool = False
    external_rules: tuple[ExternalRule, ...] = ()
    queue: QueueSettings = QueueSettings()
    fleet: InitVar[FleetSpec | None] = None
    """The fleet this policy places on: given, the policy compiles its ``plan`` for it."""
    plan: PlacementPlan | None = field(default=None, init=False, compare=False, repr=False)
    """What ``place()`` needs from (fleet, this policy) that no request changes (``plan.py``),
    compiled once here. Not an init field: a copy made with ``dataclasses.replace`` has none, and
    ``place()`` then works out the route it needs from the copy's own rules."""

    ingress_locations: InitVar[tuple[tuple[str | None, str | None], ...]] = ()
    """(region, zone) of the ingress as the config declares it: the plan compiles its targets there
    too (``plan.compile_plan``)."""

    def __post_init__(self, fleet: FleetSpec | None, ingress_locations: tuple = ()) -> None:
        if fleet is not None:
            from inferplane.placement.plan import compile_plan  # plan.py reads this module

            # A derived field of a frozen dataclass, set once while it is being built.
            object.__setattr__(self, "plan", compile_plan(fleet, self, ingress_locations))

    def spill_classes(self, model: str) -> frozenset[str]:
        return self.spillover_classes_per_model.get(model, self.spillover_classes)
