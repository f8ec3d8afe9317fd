"""`inferplane explain CONFIG --tenant T --model M --input-tokens N --max-tokens K`: how one
request would be placed, every candidate with its verdict or scores, the pick, spillover and cost.
`inferplane explain --audit AUDIT_DIR ID` shows a recorded decision the same way, by placement id or
request id (every answer carries both headers, refusals included; the row of every request that
reached the engine has a decision, recovered rows included). ``--json`` prints the decision
as the audit log records it (``telemetry.audit.recorded_decision``: the same JSON as a row's
``decision_json``).

Without ``--signals`` every substrate is assumed idle with fresh signals; ``--signals FILE``
describes load, health and staleness (see ``inferplane.signal_scenario``).
"""

from __future__ import annotations

import argparse
import json

from inferplane.cli.table import render_table
from inferplane.config import build, load_config
from inferplane.placement import PlacementDecision, PlacementRequest, place
from inferplane.placement.fleet import FleetSpec
from inferplane.signal_scenario import load_scenario, snapshot_from_scenario

# The decision time of a what-if; only ages relative to it matter.
WHATIF_NOW_S = 1_000_000.0

SCORE_HEADERS = {
    "predicted_latency": "latency",
    "queue_pressure": "queue",
    "memory_pressure": "memory",
    "cost": "cost",
    "locality": "locality",
    "reserved_tier": "reserved",
    "prefix_locality": "prefix hit",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="show how a request would be placed", description=__doc__)
    p.add_argument("config", nargs="?", help="path to a YAML config")
    p.add_argument("--audit", nargs=2, metavar=("AUDIT_DIR", "ID"),
                   help="show a recorded decision from the audit log instead (ID: placement or request id)")
    p.add_argument("--tenant")
    p.add_argument("--model", help="model name or alias")
    p.add_argument("--input-tokens", type=int)
    p.add_argument("--max-tokens", type=int, help="max output tokens")
    p.add_argument("--sla-class", help="default: the tenant's default class")
    p.add_argument("--signals", help="YAML/JSON file of live signals (default: all idle, fresh)")
    p.add_argument("--ingress-zone", help="default: the config's ingress topology")
    p.add_argument("--ingress-region", help="default: the config's ingress topology")
    p.add_argument("--request-id", default="explain-1", help="seeds the tie-break (default explain-1)")
    p.add_argument("--prefix-hit", action="append", default=[], metavar="SUBSTRATE=FRACTION",
                   help="the fraction of the prompt SUBSTRATE is believed to hold in its prefix cache "
                   "(repeatable; default: none anywhere)")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(func=cmd)


def decide(args: argparse.Namespace) -> tuple[PlacementDecision, FleetSpec, str]:
    built = build(load_config(args.config))
    if args.input_tokens < 0 or args.max_tokens < 1:
        raise ValueError("--input-tokens must be >= 0 and --max-tokens >= 1")
    tenant = built.policy.tenants.get(args.tenant)
    if tenant is None:
        raise ValueError(f"unknown tenant `{args.tenant}`; tenants: {', '.join(sorted(built.policy.tenants))}")
    hits = []
    for item in args.prefix_hit:
        name, sep, fraction = item.partition("=")
        try:
            value = float(fraction)
        except ValueError:
            value = -1.0
        if not sep or name not in built.fleet.index or not 0.0 < value <= 1.0:
            raise ValueError(f"--prefix-hit `{item}` is not SUBSTRATE=FRACTION with a substrate of the config "
                             "and 0 < FRACTION <= 1")
        hits.append((name, value))
    scenario = load_scenario(args.signals) if args.signals else None
    snapshot = snapshot_from_scenario(built.fleet, scenario, WHATIF_NOW_S)
    request = PlacementRequest(
        request_id=args.request_id,
        tenant=args.tenant,
        model=args.model,
        sla_class=args.sla_class or tenant.default_sla_class,
        input_tokens=args.input_tokens,
        max_output_tokens=args.max_tokens,
        arrived_at_s=WHATIF_NOW_S,
        ingress_region=args.ingress_region or built.ingress_region,
        ingress_zone=args.ingress_zone or built.ingress_zone,
        prefix_hits=tuple(hits),
    )
    signals_note = (
        f"signals from {args.signals} ({len(scenario.substrates)} substrates; the rest idle and fresh)"
        if scenario else "signals: every substrate assumed idle and fresh (no --signals file)"
    )
    return place(request, snapshot, built.policy), built.fleet, signals_note


def rollout_note(decision: PlacementDecision) -> str:
    """`` version=v2 (10 % of v1=90,v2=10)`` for a model with versions, else ''."""
    if decision.model_version is None:
        return ""
    return f" version={decision.model_version} ({decision.version_weight_pct} % of {decision.rollout})"


def render(decision: PlacementDecision, fleet: FleetSpec, signals_note: str) -> str:
    if not decision.candidates:
        return (f"rejected ({decision.http_status} {decision.rejection_code.value}): {decision.rejection_message}"
                + (f"\nrollout:{rollout_note(decision)}" if decision.model_version else ""))
    fallback_rank = {name: i + 1 for i, name in enumerate(decision.fallbacks)}
    headers = ["substrate", "class", "jur", "zone", "verdict", "ttft s", "e2e s", "cost USD"]
    headers += [SCORE_HEADERS.get(n, n) for n in decision.scorer_names] + ["total"]
    rows = []
    order = sorted(decision.candidates, key=lambda c: (not c.eligible, -c.total, c.name))
    for c in order:
        spec = fleet.substrate(c.name)
        base = [spec.display_name, spec.substrate_class, spec.jurisdiction, spec.zone]
        if not c.eligible:
            rows.append(base + [f"rejected: {c.code.value}: {c.reason}" + (" *" if c.drift else "")]
                        + [""] * (4 + len(decision.scorer_names)))
            continue
        verdict = "PICK" if c.name == decision.substrate else f"fallback {fallback_rank[c.name]}"
        verdict += "" if c.meets_sla else " (misses SLA)"
        verdict += " *" if c.drift else ""
        rows.append(base + [verdict, f"{c.ttft_s:.3f}", f"{c.e2e_s:.2f}", f"{c.cost_usd:.6f}"]
                    + [f"{v:.2f}" for v in c.scores] + [f"{c.total:.3f}"])
    align = "lllll" + "r" * (len(headers) - 5)
    lines = [
        f"request  tenant={decision.tenant} model={decision.model}{rollout_note(decision)} sla={decision.sla_class}",
        f"         {signals_note}",
        "",
        render_table(headers, rows, align),
        "",
    ]
    # A drift penalty is never silent: name it under the table for every candidate marked *.
    noted = [(fleet.substrate(c.name).display_name, c.drift_note()) for c in order if c.drift]
    if noted:
        lines += [f"* {name}: {note}" for name, note in noted] + [""]
    if decision.placed:
        spill = (f"yes ({decision.spillover_reason.value}; primary is {decision.primary})"
                 if decision.spillover else "no")
        lines.append(
            f"placed on {fleet.substrate(decision.substrate).display_name} · spillover: {spill} · "
            f"predicted ttft {decision.predicted_ttft_s:.3f} s, e2e {decision.predicted_e2e_s:.2f} s · "
            f"estimated cost ${decision.estimated_cost_usd:.6f}"
        )
        lines.append(f"fallbacks: {', '.join(decision.fallbacks) or '(none)'}")
    else:
        lines.append(f"rejected ({decision.http_status} {decision.rejection_code.value}): {decision.rejection_message}")
    lines.append(f"policy {decision.policy_hash} · snapshot v{decision.snapshot_version} · "
                 f"placement {decision.placement_id}")
    return "\n".join(lines)


def cmd(args: argparse.Namespace) -> int:
    if args.audit:
        from inferplane.cli.report import render_recorded_decision

        print(render_recorded_decision(*args.audit))
        return 0
    missing = [flag for flag, value in (("CONFIG", args.config), ("--tenant", args.tenant), ("--model", args.model),
                                        ("--input-tokens", args.input_tokens), ("--max-tokens", args.max_tokens))
               if value is None]
    if missing:
        raise ValueError(f"explain needs {', '.join(missing)} (or --audit AUDIT_DIR ID)")
    decision, fleet, note = decide(args)
    if args.json:
        from inferplane.telemetry.audit import recorded_decision  # pyarrow: only when needed

        print(json.dumps(recorded_decision(decision, fleet), indent=2))
    else:
        print(render(decision, fleet, note))
    return 0
