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
    goodput_rps             requests that met both deadlines / span_s (first to last arrival, the
                            same for every router); goodput_tokens_per_s: their input + output
                            tokens / span_s
    prefix_hit_fraction     prompt tokens the serving substrates' prefix caches served / prompt tokens,
                            over completed requests (measured by the simulator's caches, the truth);
                            None when no request carries prefix blocks (Azure traces)
    prefix_hit_predicted_fraction  the same as the router predicted it at placement (the plane's
                            ``predicted_prefix_hit`` x prompt tokens / prompt tokens, over completed
                            requests); None for a router that records no decision
    held_requests           requests the router held (held_s > 0) before dispatching or refusing
    held_mean_s, held_p99_s over all requests, held or not (0 for a request never held)

Per tenant (``tenants``: tenant -> fields, over the requests that tenant sent):

    requests, met_sla, sla_attainment, ttft_p99_s, goodput_rps, goodput_tokens_per_s,
    held_requests, held_mean_s, held_p99_s      as above, restricted to the tenant
    tokens_offered          input + output tokens of every request the tenant sent
    tokens_served           input + output tokens of its completed requests (met or not)
    offered_fraction        tokens_offered / tokens offered by every tenant
    served_fraction         tokens_served / tokens served to every tenant
    share                   the tenant's fair-share weight (the config's ``tenants[].share``; not
                            the workload's traffic mix)
    share_fraction          share / sum of the shares of the tenants that sent traffic

``jain_fairness_over_shares`` (per router) is Jain's index J = (sum x_i)^2 / (n * sum x_i^2) with
x_i = tokens_served_i / share_i over the n tenants that sent traffic: 1 when every tenant got
tokens in proportion to its share, 1/n when one tenant got everything. Read it with care: it
measures fairness only where the tenants contend for the same slots and each had demand beyond
its share. A tenant that asked for less than its share (``offered_fraction`` < ``share_fraction``)
and got all it asked for is not under-served, yet it lowers J; tenants confined to disjoint pools
(jurisdictions) do not compete, and J across them says nothing about arbitration. Tokens are
counted plainly here (input + output); the plane's own fair-share counter weighs an output token
by ``policy.queue.output_token_weight``. Token fields need the workload (``requests``); without
it they are None.

Percentiles are the nearest-rank definition (``numpy.percentile(..., method="inverted_cdf")``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from inferplane.replay.outcome import RequestOutcome
from inferplane.replay.simulator import SimulationResult
from inferplane.replay.workload import ReplayRequest


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q, method="inverted_cdf"))


def jain_index(values: Sequence[float]) -> float | None:
    """Jain's fairness index (sum x)^2 / (n * sum x^2), in [1/n, 1]; None when every x is 0 or
    there is none."""
    squares = sum(x * x for x in values)
    if not values or squares <= 0:
        return None
    return sum(values) ** 2 / (len(values) * squares)


def _tokens(outcome: RequestOutcome, requests: Sequence[ReplayRequest]) -> int:
    req = requests[outcome.index]
    return req.input_tokens + req.output_tokens


def _held(outcomes: Sequence[RequestOutcome]) -> dict:
    held = [o.held_s for o in outcomes]
    return {
        "held_requests": sum(1 for h in held if h > 0),
        "held_mean_s": sum(held) / len(held) if held else None,
        "held_p99_s": _pct(held, 99),
    }


def _tenant(outcomes: Sequence[RequestOutcome], requests: Sequence[ReplayRequest] | None, span_s: float) -> dict:
    met = [o for o in outcomes if o.met_sla]
    if requests is None:
        offered = served = good = None
    else:
        offered = sum(_tokens(o, requests) for o in outcomes)
        served = sum(_tokens(o, requests) for o in outcomes if o.status == "completed")
        good = sum(_tokens(o, requests) for o in met)
    return {
        "requests": len(outcomes),
        "met_sla": len(met),
        "sla_attainment": len(met) / len(outcomes),
        "ttft_p99_s": _pct([o.ttft_s for o in outcomes if o.status == "completed"], 99),
        "tokens_offered": offered,
        "tokens_served": served,
        "goodput_rps": len(met) / span_s if span_s > 0 else None,
        "goodput_tokens_per_s": good / span_s if span_s > 0 and good is not None else None,
        **_held(outcomes),
    }


def tenant_report(result: SimulationResult, requests: Sequence[ReplayRequest] | None,
                  shares: Mapping[str, float]) -> tuple[dict[str, dict], float | None]:
    """Per tenant that sent traffic, the fields of the module docstring; and Jain's index over
    tokens served / share (None without ``requests``)."""
    by_tenant: dict[str, list[RequestOutcome]] = {}
    for o in result.outcomes:
        by_tenant.setdefault(o.tenant, []).append(o)
    rows = {t: _tenant(outs, requests, result.span_s) for t, outs in sorted(by_tenant.items())}
    share_sum = sum(shares.get(t, 1.0) for t in rows)
    offered_sum = sum(r["tokens_offered"] or 0 for r in rows.values())
    served_sum = sum(r["tokens_served"] or 0 for r in rows.values())
    for t, r in rows.items():
        share = shares.get(t, 1.0)
        r.update(
            offered_fraction=r["tokens_offered"] / offered_sum if offered_sum else None,
            served_fraction=r["tokens_served"] / served_sum if served_sum else None,
            share=share, share_fraction=share / share_sum)
    jain = None if requests is None else jain_index([r["tokens_served"] / r["share"] for r in rows.values()])
    return rows, jain


def run_report(result: SimulationResult, fixed_cost_usd: float, requests: Sequence[ReplayRequest] | None = None,
               shares: Mapping[str, float] | None = None) -> dict:
    """The report of one router's run. ``requests``: the workload the outcomes index (for token
    counts); ``shares``: each tenant's fair-share weight (the config's; 1 for a tenant not in it)."""
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
    tenants, jain = tenant_report(result, requests, shares or {})
    span = result.span_s
    good_tokens = sum(_tokens(o, requests) for o in outcomes if o.met_sla) if requests is not None else None
    prefix_hit = predicted_hit = None
    if requests is not None and any(r.prefix_blocks for r in requests):
        prompt = sum(requests[o.index].input_tokens for o in completed)
        prefix_hit = sum(o.cached_tokens for o in completed) / prompt if prompt else 0.0
        if prompt and any(o.predicted_prefix_hit is not None for o in completed):
            predicted_hit = sum((o.predicted_prefix_hit or 0.0) * requests[o.index].input_tokens
                                for o in completed) / prompt
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
        "goodput_rps": met / span if span > 0 else None,
        "goodput_tokens_per_s": good_tokens / span if span > 0 and good_tokens is not None else None,
        "prefix_hit_fraction": prefix_hit,
        "prefix_hit_predicted_fraction": predicted_hit,
        **_held(outcomes),
        "tenants": tenants,
        "jain_fairness_over_shares": jain,
    }
