"""The replay report: one JSON object per router, computed from its requests' outcomes.

Definitions (every field is per router, over all requests of the workload):

    sla_attainment          requests that completed within both deadlines of their SLA class
                            / all requests (rejected and failed ones count as missed)
    sla_attainment_by_class the same, per SLA class
    ttft_p50_s .. e2e_p99_s percentiles over completed requests (ttft: arrival at the ingress to
                            the first token, retries included; e2e: arrival to the last token)
    cost_usd                fixed_cost_usd (reserved hardware over the replay's span, the same for
                            every router) + usage_cost_usd (what the completed requests were billed)
    spillovers              completed requests served off the model's primary substrate
    unlogged_spillovers     spillovers whose placement recorded no spillover in a decision
    sovereignty_violations  requests with an attempt dispatched (the prompt sent) to a substrate
                            outside the tenant's allowed jurisdictions, checked per attempt with
                            ``inferplane.jurisdiction.is_within``
    cross_region_requests   completed requests served outside the ingress's region
    replay_speed            simulated seconds (first arrival to the last request settled) per wall
                            second of the simulation
    bound_fraction          sla: sla_attainment / bound.sla_attainment (1 = as good as the bound);
                            cost: least cost at which this router's attainment is reachable /
                            cost_usd (1 = as cheap as anything meeting as many deadlines)

Percentiles are the nearest-rank definition (``numpy.percentile(..., method="inverted_cdf")``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from inferplane.replay.outcome import RequestOutcome
from inferplane.replay.simulator import SimulationResult


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q, method="inverted_cdf"))


def run_report(result: SimulationResult, fixed_cost_usd: float) -> dict:
    outcomes: tuple[RequestOutcome, ...] = result.outcomes
    n = len(outcomes)
    completed = [o for o in outcomes if o.status == "completed"]
    ttfts = [o.ttft_s for o in completed]
    e2es = [o.e2e_s for o in completed]
    by_class: dict[str, list[RequestOutcome]] = {}
    for o in outcomes:
        by_class.setdefault(o.sla_class, []).append(o)
    by_tenant: dict[str, list[RequestOutcome]] = {}
    for o in outcomes:
        by_tenant.setdefault(o.tenant, []).append(o)
    usage = sum(o.cost_usd for o in completed)
    met = sum(1 for o in outcomes if o.met_sla)
    spill = [o for o in completed if o.spillover]
    served = Counter(o.substrate for o in completed)
    return {
        "router": result.router,
        "requests": n,
        "completed": len(completed),
        "rejected": sum(1 for o in outcomes if o.status == "rejected"),
        "failed": sum(1 for o in outcomes if o.status == "failed"),
        "met_sla": met,
        "sla_attainment": met / n if n else 0.0,
        "sla_attainment_by_class": {c: sum(o.met_sla for o in v) / len(v) for c, v in sorted(by_class.items())},
        "sla_attainment_by_tenant": {t: sum(o.met_sla for o in v) / len(v) for t, v in sorted(by_tenant.items())},
        "ttft_p50_s": _pct(ttfts, 50),
        "ttft_p99_s": _pct(ttfts, 99),
        "e2e_p50_s": _pct(e2es, 50),
        "e2e_p99_s": _pct(e2es, 99),
        "cost_usd": fixed_cost_usd + usage,
        "fixed_cost_usd": fixed_cost_usd,
        "usage_cost_usd": usage,
        "spillovers": len(spill),
        "unlogged_spillovers": sum(1 for o in spill if not o.spillover_logged),
        "sovereignty_violations": sum(1 for o in outcomes if o.sovereignty_violation),
        "cross_region_requests": sum(1 for o in completed if o.cross_region),
        "retried_requests": sum(1 for o in outcomes if len(o.tried) > 1),
        "rejections": dict(sorted(Counter(o.rejection for o in outcomes if o.status != "completed").items(),
                                  key=lambda kv: -kv[1])),
        "served_by_substrate": {name: served.get(name, 0) for name in result.substrates},
        "slot_utilisation": {
            name: (busy / (result.end_s * slots) if result.end_s > 0 else 0.0)
            for name, busy, slots in zip(result.substrates, result.busy_slot_s, result.slots)
        },
        "simulated_s": result.end_s,
        "wall_time_s": result.wall_s,
        "replay_speed": result.end_s / result.wall_s if result.wall_s > 0 else None,
        "events": result.events_run,
    }
