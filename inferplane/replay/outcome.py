"""What happened to one request in a replay, and what an execution costs.

Cost of a request served on substrate s (USD), with the trace's generated tokens: the plane's own
attribution (``inferplane.telemetry.cost.request_cost``) without its GPU share,

    usage = tokens_usd + egress_usd
          = input_tokens * usd_per_input_token + output_tokens * usd_per_output_token
          + (input_tokens + output_tokens) * 4 bytes * egress_usd_per_byte
            (only when s is outside the ingress's region, as the placement estimate charges it)

because owned and reserved hardware (``usd_per_gpu_hour``) is paid whether used or not: it is a
fixed cost of the replay, ``sum over substrates of GPU USD/s * span of the replay``, the same for
every router, added to every router's total (``fixed_cost_usd``). Attempts that failed or timed
out before their first token cost nothing (no provider bills a refused request).

A substrate the plane autoscales is paid per replica-second instead: its billed replica-seconds
over the span (live, starting and draining replicas, ``SimulationResult.replica_s``) x
``telemetry.cost.usd_per_replica_second``, the live plane's owned-cost rule; that part differs by
router (a baseline runs it at its starting count throughout).
"""

from __future__ import annotations

from typing import NamedTuple

from inferplane.placement.fleet import FleetSpec, SubstrateSpec
from inferplane.telemetry.cost import request_cost, usd_per_replica_second


class RequestOutcome(NamedTuple):
    """One request's end in a replay. (A named tuple: one is built per request, and a frozen
    dataclass's ``__init__`` of twenty fields costs more than the simulator's own settling of it.)"""

    index: int
    tenant: str
    sla_class: str
    arrival_s: float
    status: str
    """``completed``, ``rejected`` (the router refused it) or ``failed`` (every attempt failed)."""
    substrate: str | None
    """Where it was served (completed), or last tried."""
    tried: tuple[str, ...]
    """Every substrate an attempt was dispatched to, in order."""
    ttft_s: float | None
    """First token minus arrival at the ingress, retries included."""
    e2e_s: float | None
    met_sla: bool
    cost_usd: float
    spillover: bool
    """Served somewhere other than the model's primary substrate."""
    spillover_logged: bool
    """The placement that served it recorded a spillover in its decision."""
    sovereignty_violation: bool
    """Some attempt was dispatched (the prompt sent) outside the tenant's allowed jurisdictions."""
    cross_region: bool
    """Served outside the ingress's region."""
    rejection: str | None = None
    held_s: float = 0.0
    """Time the router held it before dispatching or refusing it (in ``ttft_s`` when served)."""
    cached_tokens: int = 0
    """Prompt tokens the serving substrate's prefix cache served (its prefill skipped them)."""
    predicted_prefix_hit: float | None = None
    """The hit fraction the placement that served it predicted (None: no decision, a baseline)."""


def usage_cost_usd(spec: SubstrateSpec, input_tokens: int, output_tokens: int, ingress_region: str | None) -> float:
    """Tokens and egress of one request served on ``spec`` (the GPU share is in the fixed cost)."""
    cost = request_cost(spec, input_tokens, output_tokens, 0.0, ingress_region)
    return cost.tokens_usd + cost.egress_usd


def fixed_cost_usd(fleet: FleetSpec, span_s: float, elastic_replica_s: dict[str, float] | None = None) -> float:
    """Owned/reserved hardware over ``span_s``: usd_per_slot_second * slots * span, per substrate;
    for a substrate in ``elastic_replica_s``, its replica-seconds x ``usd_per_replica_second``."""
    if not elastic_replica_s:
        return sum(s.cost.usd_per_slot_second * s.max_concurrent for s in fleet.substrates) * span_s
    return sum(elastic_replica_s[s.name] * usd_per_replica_second(s) if s.name in elastic_replica_s
               else s.cost.usd_per_slot_second * s.max_concurrent * span_s for s in fleet.substrates)
