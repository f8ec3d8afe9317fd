"""`inferplane replay CONFIG --trace FILE`: what-if replay of a real trace in simulated time.

Drives the plane's own placement (``place()`` on snapshots from the actor's own ``FleetState``)
and five baseline gateways over the same workload and substrate physics, then bounds them all
with an offline LP. CONFIG is a scenario file (configs/scenarios/) or a plain config.

    inferplane replay configs/scenarios/enterprise-burst.yaml \\
        --trace ../shared/data/traces/AzureLLMInferenceTrace_conv.csv --router all \\
        --out report.json --plots plots/

With ``--suite FILE`` every cell of a scenario suite (fleets x traces x loads, the default policy;
``inferplane.replay.suite``) is replayed and one table printed, ``--mismatch both`` with and without
physics the plane has to learn:

    inferplane replay --suite configs/scenarios/suite/suite.yaml --limit 400 --mismatch both \\
        --out suite.json --plots suite-plots/

With ``--target URL`` the same workload is sent through a running plane instead (streamed, at the
trace's arrival times, bounded in count, duration and concurrency, loopback only unless
``--allow-remote``), and then simulated again with the shapes the requests really had; the report
gives both runs and the simulated / measured ratios of median and p90 latency. Tenant keys come
from ``--api-key TENANT=KEY`` or ``INFERPLANE_REPLAY_API_KEYS=tenant=key,...``:

    inferplane run configs/scenarios/fidelity-cpu.fleet.yaml &
    INFERPLANE_REPLAY_API_KEYS=global-app=sk-inferplane-demo-global \\
        inferplane replay configs/scenarios/fidelity-cpu.yaml \\
        --trace ../shared/data/traces/AzureLLMInferenceTrace_conv.csv --target http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from inferplane.cli.table import render_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay a real trace against a policy and baseline routers",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="a scenario file (configs/scenarios/*.yaml) or an inferplane config")
    p.add_argument("--trace", help="trace file (Azure CSV, Mooncake JSONL or parquet); required without --suite")
    p.add_argument("--suite", metavar="FILE",
                   help="run every cell of a scenario suite (configs/scenarios/suite/suite.yaml: fleets x traces x "
                   "loads, the default policy) and print one table; takes --router (default: inferplane and the "
                   "compliant baselines), --limit (trace rows per cell), --no-bound, --mismatch, --out, --plots")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="with --suite: replay N cells at a time in worker processes (default 1; the table and "
                   "JSON keep the suite's order)")
    p.add_argument("--mismatch", choices=("on", "off", "both"),
                   help="true substrate physics drawn around the declared profiles, with drift and brown-outs "
                   "(simulation.mismatch; on without one: its defaults); both: every suite cell with and without "
                   "(default: as the scenario says; a suite: off)")
    p.add_argument("--format", choices=("azure", "mooncake", "parquet"), help="default: from the suffix")
    p.add_argument("--router",
                   help="inferplane, round_robin, least_outstanding, ordered_fallback, cheapest_first, "
                   "fifo_queue, round_robin-compliant, least_outstanding-compliant, "
                   "cheapest_first-compliant (the three configured with per-tenant endpoint lists inside "
                   "each tenant's jurisdictions), a comma-separated list, or all (default); "
                   "inferplane-no-prefix (by name only) is the plane with the same policy and no "
                   "prefix-cache belief; inferplane-prefix-oracle (by name only) is not a router anyone can "
                   "run: the plane whose prefix belief is the simulator's caches, the ceiling of prefix affinity; "
                   "with --suite the default is inferplane and the compliant baselines")
    p.add_argument("--rate-scale", type=float, help="requests per trace row on average (default: scenario's)")
    p.add_argument("--time-scale", type=float, help="arrival times x this (default: scenario's)")
    p.add_argument("--limit", type=int, help="only the first N trace rows")
    p.add_argument("--seed", type=int, help="seed of tenants, classes, copies and physics draws")
    p.add_argument("--tenants", help="tenant mix, e.g. eu-bank:0.3,global-app:0.7 (default: scenario's)")
    p.add_argument("--without-tenant", action="append", default=[], metavar="NAME",
                   help="drop this tenant's requests and keep every other request as it is, e.g. to "
                   "compare the others with and without a noisy neighbour (repeatable)")
    p.add_argument("--outage", action="append", default=[], metavar="NAME:AT_S:FOR_S",
                   help="make a substrate unreachable (repeatable)")
    p.add_argument("--failure-rate", action="append", default=[], metavar="NAME:AT_S:FOR_S:RATE",
                   help="fail requests before the first token with probability RATE (repeatable)")
    p.add_argument("--slowdown", action="append", default=[], metavar="NAME:AT_S:FOR_S:FACTOR",
                   help="multiply a substrate's durations by FACTOR (repeatable)")
    p.add_argument("--no-bound", action="store_true", help="skip the LP bound")
    p.add_argument("--drift", action="store_true",
                   help="report the plane's drift flags (on by itself when a fault is injected)")
    p.add_argument("--window-s", type=float, default=60.0, help="the bound's window, seconds (default 60)")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR")
    live = p.add_argument_group("live replay against a running plane")
    live.add_argument("--target", metavar="URL", help="send the workload to the plane at URL instead of simulating")
    live.add_argument("--api-key", action="append", default=[], metavar="TENANT=KEY",
                      help="a tenant's key (repeatable; or INFERPLANE_REPLAY_API_KEYS=tenant=key,...)")
    live.add_argument("--max-in-flight", type=int, default=256, help="concurrent requests at most (default 256)")
    live.add_argument("--max-duration-s", type=float, default=900.0,
                      help="send nothing due later than this after the start (default 900)")
    live.add_argument("--request-timeout-s", type=float, default=300.0, help="abandon a request after this")
    live.add_argument("--allow-remote", action="store_true", help="allow a target that is not loopback")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=cmd)


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render(report: dict) -> str:
    trace = report["trace"]
    lines = [
        f"replay of {trace['path']}: {trace['requests']} requests over {trace['span_s']:.0f} s "
        f"(time scale {trace['time_scale']:g}, rate scale {trace['rate_scale']:g}, "
        f"offered load x{trace['load_factor']:g} of the trace, {trace['offered_rps']:.2f} req/s)",
        f"scenario {report['scenario']} · policy {report['policy_hash']}",
    ]
    without = report["workload"].get("without_tenants")
    if without:
        lines.append(f"without {', '.join(without)}: their requests dropped, every other request as in the "
                     "full workload")
    lines.append("")
    classes = sorted({c for r in report["runs"] for c in r["sla_attainment_by_class"]})
    prefix = any(r.get("prefix_hit_fraction") is not None for r in report["runs"])
    headers = ["router", "jurisdiction routes", "SLA %", *[f"{c} %" for c in classes], "ttft p50", "ttft p99", "e2e p50", "e2e p99",
               "cost USD", "spill", "unlogged", "violations", "x-region", "rejected", "of bound SLA", "of bound cost"]
    if prefix:
        headers += ["prefix hit %", "predicted %"]
    rows = []
    for r in report["runs"]:
        frac = r.get("bound_fraction") or {}
        rows.append([
            r["router"], r.get("jurisdiction_routes", "-"), f"{100 * r['sla_attainment']:.2f}",
            *[f"{100 * r['sla_attainment_by_class'].get(c, 0.0):.2f}" for c in classes],
            _f(r["ttft_p50_s"], ".2f"), _f(r["ttft_p99_s"], ".2f"), _f(r["e2e_p50_s"], ".1f"),
            _f(r["e2e_p99_s"], ".1f"), f"{r['cost_usd']:.2f}", str(r["spillovers"]), str(r["unlogged_spillovers"]),
            str(r["sovereignty_violations"]), str(r["cross_region_requests"]), str(r["rejected"] + r["failed"]),
            _f(frac.get("sla"), ".3f"), _f(frac.get("cost"), ".3f"),
        ])
        if prefix:
            hit = r.get("prefix_hit_fraction")
            predicted = r.get("prefix_hit_predicted_fraction")
            rows[-1] += [_f(None if hit is None else 100 * hit, ".1f"), _f(None if predicted is None else 100 * predicted, ".1f")]
    lines.append(render_table(headers, rows, "ll" + "r" * (len(headers) - 2)))
    lines.append("jurisdiction routes: policy = the plane's hard filter; per tenant = a gateway configured for "
                 "compliance (per-tenant endpoint lists); none = a gateway as deployed, whose SLA and cost are "
                 "won partly by sending prompts where they may not go: compare among the compliant rows. "
                 "unlogged is 0 for the plane by construction (every decision is logged).")
    bound = report.get("bound")
    if bound:
        lines += ["", f"bound (fluid LP, {bound['window_s']:.0f} s windows and first-token deadlines inside "
                      f"bursts, {bound['pairs']} request-substrate pairs): SLA {100 * bound['sla_attainment']:.2f} % "
                      f"at least ${bound['cost_usd']:.2f} (of which ${bound['fixed_cost_usd']:.2f} reserved "
                      "hardware); of bound is against this one"]
        loose = bound.get("loose")
        if loose:
            lines.append(f"loose bound (the same LP without the first-token rows): SLA "
                         f"{100 * loose['sla_attainment']:.2f} % at least ${loose['cost_usd']:.2f}")
    fidelity = report.get("fidelity")
    if fidelity:
        live = report["live"]
        lines += ["", f"live: {live['sent']} sent to {live['target']} ({live['not_sent']} not sent, "
                      f"send lag p99 {live['send_lag_p99_s']:.3f} s)",
                  f"fidelity over the {fidelity['requests_compared']} requests completed in both runs "
                  "(simulated with the shapes they really had):"]
        lines.append(render_table(
            ["latency", "simulated s", "measured s", "simulated / measured"],
            [[name, _f(m["simulated_s"], ".3f"), _f(m["measured_s"], ".3f"), _f(m["simulated_over_measured"], ".2f")]
             for name, m in fidelity["metrics"].items()], "lrrr"))
    lines += _tenant_lines(report["runs"])
    for r in report["runs"]:
        if r.get("drift"):
            lines += _drift_lines(r["router"], r["drift"])
    for r in report["runs"]:
        if "replica_seconds" in r:  # some substrate is autoscaled (``replay.substrate_sim``)
            billed = ", ".join(f"{name} {rs:,.0f}" for name, rs in r["replica_seconds"].items())
            changes = r["scaling"]
            lines.append(f"{r['router']}: replica-seconds billed (first to last arrival): {billed}; "
                         f"{len(changes)} autoscaling change(s)"
                         + "".join(f"; {c['at_s']:.0f} s {c['substrate']} -> {c['target']}" for c in changes[:6])
                         + ("; ..." if len(changes) > 6 else ""))
    speeds = ", ".join(f"{r['router']} {r['replay_speed']:.0f}" for r in report["runs"] if r["replay_speed"])
    lines.append(f"replay speed (simulated s per wall s): {speeds}")
    lines.append("times in seconds; cost = reserved hardware over the span + usage billed; "
                 "of bound: SLA / bound SLA, least cost at the same attainment / cost")
    return "\n".join(lines)


def _pct_of(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _tenant_lines(runs: list[dict]) -> list[str]:
    """Per tenant and router: deadlines met, tokens served against the share, goodput, time held;
    then Jain's index per router, with what it does and does not say."""
    rows = []
    for r in runs:
        for name, t in (r.get("tenants") or {}).items():
            rows.append([
                r["router"], name, _pct_of(t["share_fraction"]), _pct_of(t["offered_fraction"]),
                _pct_of(t["served_fraction"]), f"{100 * t['sla_attainment']:.2f}", _f(t["ttft_p99_s"], ".2f"),
                _f(t["goodput_rps"], ".3f"), _f(t["goodput_tokens_per_s"], ".0f"), str(t["held_requests"]),
                _f(t["held_mean_s"], ".2f"), _f(t["held_p99_s"], ".2f"),
            ])
    if not rows:
        return []
    headers = ["router", "tenant", "share %", "offered %", "served %", "met %", "ttft p99", "goodput req/s",
               "goodput tok/s", "held", "held mean", "held p99"]
    jain = ", ".join(f"{r['router']} {_f(r.get('jain_fairness_over_shares'), '.3f')}" for r in runs)
    return ["", "per tenant (share %: the tenant's share / the shares of the tenants that sent traffic; offered % "
                "and served %: its tokens, input + output, of all offered / of all served; goodput: requests that "
                "met both deadlines and their tokens per second of the replay's span):",
            render_table(headers, rows, "ll" + "r" * (len(headers) - 2)),
            f"Jain's index over tokens served / share (1 = in proportion to shares, 1/n = one tenant got all): "
            f"{jain}",
            "  it measures fairness only where tenants contend for the same slots and each asked for more than "
            "its share: a tenant whose offered % is below its share % and that got what it asked for is not "
            "under-served, and tenants confined to pools no other tenant may use do not contend at all."]


def _at(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _flag_spans(flags: list[dict], fault_s: float | None, most: int = 6) -> str:
    """``kind set-cleared`` per flag; past ``most``, the counts per kind and the first flags set at
    or after the fault (the JSON report has them all)."""
    def span(f: dict) -> str:
        return f"{f['kind']} {_at(f['set_s'])}-{'end' if f['cleared_s'] is None else _at(f['cleared_s'])}"
    if len(flags) <= most:
        return ", ".join(span(f) for f in flags) or "none"
    counts = Counter(f["kind"] for f in flags)
    text = f"{len(flags)} flags ({', '.join(f'{k} {n}' for k, n in counts.items())}; all in --json)"
    after = [f for f in flags if fault_s is not None and f["set_s"] >= fault_s][:2]
    return text + (f", first after the fault: {', '.join(span(f) for f in after)}" if after else "")


def _drift_lines(router: str, drift: dict) -> list[str]:
    """The plane's drift flags per substrate (set and cleared, simulated s), each substrate's
    deadlines-met drop after the first fault, and per slowed substrate which came first."""
    band = drift["settings"]["band"]
    lines = ["", f"{router}: drift flags (the plane's detector, median residual over the last "
                 f"{drift['settings']['window']} outside {band[0]:g}-{band[1]:g}, or off its baseline; simulated s"
                 + ("; penalize requested, not applied in a replay" if drift["penalty_requested"] else "") + "):"]
    drops = drift.get("deadlines_met") or {}
    rows = []
    for name, flags in drift["flags"].items():
        spans = _flag_spans(flags, drift["fault_start_s"])
        d = drops.get(name)
        rows.append([name, spans] + ([] if not drops else [
            _pct_of(d["pre_fault"]), _f(d["pre_fault_max_dip_points"], ".1f"), _at(d["fell_at_s"])]))
    for name, d in drops.items():
        if name not in drift["flags"]:  # the fleet as a whole
            rows.append([name, "", _pct_of(d["pre_fault"]), _f(d["pre_fault_max_dip_points"], ".1f"),
                         _at(d["fell_at_s"])])
    headers = ["substrate", "flags (kind set-cleared)"]
    if drops:
        headers += ["met % before fault", "max dip before (pts)", f"fell >{drift['drop_points']:g} pt at"]
    lines.append(render_table(headers, rows, "ll" + "r" * (len(headers) - 2)))
    if drops:
        lines.append(f"  deadlines-met per substrate: rolling over its last {drift['rolling_requests']} completed "
                     f"requests, against its level before the first fault ({_at(drift['fault_start_s'])} s)")
    for s in drift["slowed"]:
        head = f"  {s['substrate']} slowed x{s['factor']:g} from {_at(s['at_s'])} s for {_at(s['for_s'])} s: "
        flagged, fell = s["flagged_at_s"], s["deadlines_met_fell_at_s"]
        if flagged is None:
            tail = "never flagged" + ("" if fell is None else f"; its deadlines-met fell by more than "
                                                               f"{drift['drop_points']:g} point at {_at(fell)} s")
        elif fell is None:
            tail = (f"flagged {s['flag_kind']} at {_at(flagged)} s ({flagged - s['at_s']:.0f} s after it began); "
                    f"its deadlines-met never fell by more than {drift['drop_points']:g} point")
        else:
            lead = fell - flagged
            tail = (f"flagged {s['flag_kind']} at {_at(flagged)} s ({flagged - s['at_s']:.0f} s after it began), "
                    f"{abs(lead):.0f} s {'before' if lead >= 0 else 'after'} its deadlines-met fell by more than "
                    f"{drift['drop_points']:g} point ({_at(fell)} s)")
        lines.append(head + tail)
    return lines


def cmd(args: argparse.Namespace) -> int:
    from inferplane.replay.runner import ReplayOptions, parse_routers, replay
    from inferplane.replay.scenario import EventKind, parse_event

    if args.suite:
        return _suite(args)
    if not args.config or not args.trace:
        raise ValueError("replay needs CONFIG and --trace FILE, or --suite FILE")
    if args.mismatch == "both":
        raise ValueError("--mismatch both runs a suite's cells twice; a single replay takes on or off")

    events = tuple(
        [parse_event(EventKind.OUTAGE, t) for t in args.outage]
        + [parse_event(EventKind.FAILURE_RATE, t) for t in args.failure_rate]
        + [parse_event(EventKind.SLOWDOWN, t) for t in args.slowdown])
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    options = ReplayOptions(
        scenario=args.config, trace=args.trace, routers=parse_routers(args.router or "all"), format=args.format,
        time_scale=args.time_scale, rate_scale=args.rate_scale, limit=args.limit, seed=args.seed,
        tenants=args.tenants, without_tenants=tuple(args.without_tenant), events=events, bound=not args.no_bound,
        window_s=args.window_s, progress=progress, drift=args.drift,
        mismatch=None if args.mismatch is None else args.mismatch == "on")
    if args.target:
        import os

        from inferplane.replay.live import LiveOptions, parse_api_keys
        from inferplane.replay.runner import replay_live

        live = LiveOptions(
            target=args.target, api_keys=parse_api_keys(args.api_key, os.environ.get("INFERPLANE_REPLAY_API_KEYS")),
            max_in_flight=args.max_in_flight, max_duration_s=args.max_duration_s,
            request_timeout_s=args.request_timeout_s, allow_remote=args.allow_remote)
        report, results = replay_live(options, live)
    else:
        report, results = replay(options)
    if args.plots:
        from inferplane.replay.plots import write_plots

        report["plots"] = write_plots(report, results, args.plots)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _suite(args: argparse.Namespace) -> int:
    """``--suite FILE``: every cell, one table (``inferplane.replay.suite``)."""
    from inferplane.replay.runner import parse_routers
    from inferplane.replay.suite import DEFAULT_ROUTERS, load_suite, render_suite, run_suite, write_heatmap

    if args.config or args.trace:
        raise ValueError("--suite FILE takes its scenarios and traces from the suite file: drop CONFIG and --trace")
    if args.target:
        raise ValueError("--suite replays in simulation only: drop --target")
    if args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: at least 1")
    suite = load_suite(args.suite, mismatch=args.mismatch or "off")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    routers = DEFAULT_ROUTERS if args.router is None else parse_routers(args.router)
    report = run_suite(suite, routers=routers, limit=args.limit, bound=not args.no_bound, progress=progress,
                       jobs=args.jobs)
    if args.plots:
        report["plots"] = write_heatmap(report, args.plots)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    print(json.dumps(report, indent=2) if args.json else render_suite(report))
    return 0
