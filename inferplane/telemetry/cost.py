"""What a finished request cost, from its substrate's cost model (``SubstrateSpec.cost``).

All amounts in USD. For a request with ``input_tokens`` in, ``output_tokens`` out and an
end-to-end time of ``e2e_s`` seconds on substrate ``s`` (``c = s.cost``):

    tokens_usd = input_tokens * c.usd_per_input_token + output_tokens * c.usd_per_output_token
    gpu_usd    = c.usd_per_slot_second * e2e_s
    egress_usd = (input_tokens + output_tokens) * 4 * c.egress_usd_per_byte
                     if s.region != ingress_region (or ingress_region is unknown), else 0
    total_usd  = tokens_usd + gpu_usd + egress_usd

``gpu_usd`` amortises owned hardware: ``usd_per_slot_second`` is the substrate's GPU-hour price x
its GPUs / 3600 / its concurrent slots (``config.build``), so a request is charged for the one
slot it held for as long as it held it. Idle slots are charged to nobody: the sum over requests is
the hardware's cost only when every slot is busy, and the gap is the cost of idle capacity. A slot
is a share of one replica (``max_concurrent / replicas`` slots each), so the charge does not depend
on how many replicas run; the hardware's own cost does, and follows them: live replica-seconds x
``usd_per_replica_second`` (the actor's ``inferplane_substrate_owned_cost_usd_total``).

This is *attribution* (chargeback, the audit's attributed cost, tenants' budgets): the hardware's
cost shared out by use. *Placement* prices a reserved pool's slot-time differently
(``placement.estimate``): the hardware is paid busy or idle, so a slot costs only its opportunity,
the amortised price times the pool's batch fraction (about 0 while it has idle slots, the whole
price when it is full). The two agree on tokens and egress, and on the slot-time of a burst-tier
pool.

Egress is charged at 4 bytes per token (``estimate.BYTES_PER_TOKEN``), the same rule the placement
engine uses for its estimate, so a request's estimated and attributed costs differ only in tokens,
time and the reserved slot's opportunity.
"""

from __future__ import annotations

from typing import NamedTuple

from inferplane.placement.estimate import BYTES_PER_TOKEN
from inferplane.placement.fleet import SubstrateSpec


def usd_per_replica_second(spec: SubstrateSpec) -> float:
    """What one replica of owned hardware costs per second while it runs: one slot's price times a
    replica's slots (``usd_per_gpu_hour x gpus_per_replica / 3600``); 0 for a provider API, whose
    price is per token. Times the live replica-seconds (``FleetState.replica_seconds``), the cost
    of the hardware as it was scaled, busy or idle."""
    if spec.replicas is None:
        return 0.0
    return spec.cost.usd_per_slot_second * spec.max_concurrent / spec.replicas


class CostBreakdown(NamedTuple):
    tokens_usd: float
    gpu_usd: float
    egress_usd: float
    total_usd: float


ZERO = CostBreakdown(0.0, 0.0, 0.0, 0.0)


def request_cost(
    spec: SubstrateSpec,
    input_tokens: int,
    output_tokens: int,
    e2e_s: float,
    ingress_region: str | None,
) -> CostBreakdown:
    """The cost of one finished request on ``spec`` (see the module docstring for the formula)."""
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got {input_tokens} in, {output_tokens} out")
    if not e2e_s >= 0.0:  # also rejects NaN
        raise ValueError(f"e2e_s must be >= 0, got {e2e_s}")
    c = spec.cost
    tokens_usd = input_tokens * c.usd_per_input_token + output_tokens * c.usd_per_output_token
    gpu_usd = c.usd_per_slot_second * e2e_s
    egress_usd = 0.0
    if ingress_region is None or spec.region != ingress_region:
        egress_usd = (input_tokens + output_tokens) * BYTES_PER_TOKEN * c.egress_usd_per_byte
    return CostBreakdown(tokens_usd, gpu_usd, egress_usd, tokens_usd + gpu_usd + egress_usd)
