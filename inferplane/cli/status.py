"""`inferplane status [--address ADDR]`: the live fleet as the placement actor sees it.

Substrates, their capacity now (a vLLM or emulated substrate's follows its live replicas) with
replicas live, starting and target, their replicas with node, zone and jurisdiction labels, every
signal with its age,
circuit states, the snapshot version, and the ingress replicas with their snapshot age. `--json`
prints the same as data. Reads the actor of a running plane (`inferplane run` or `deploy`).
"""

from __future__ import annotations

import argparse
import json

from inferplane.cli.table import render_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="the live fleet: signals, ages, circuits, replicas", description=__doc__)
    p.add_argument("--address", default="auto", help="Ray address (default: the local cluster)")
    p.add_argument("--app-name", default="inferplane")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd)


def fetch_status(address: str, app_name: str) -> dict:
    from deployments import runtime

    runtime.loopback_environment()
    import ray

    from deployments.placement_actor import current_actor

    runtime.connect(address)
    return ray.get(current_actor(app_name).status.remote(), timeout=10)


def _reading(r: dict | None, fmt: str = "{:.0f}") -> str:
    if r is None:
        return "-"
    return f"{fmt.format(r['value'])} ({r['age_s']:.1f}s)"


def _capacity(s: dict) -> str:
    """"32+8 (2/1/3)": concurrent + queued it admits now, and its replicas live, starting and
    target ("-" where Serve was not asked); a provider API's fleet-level limit says "fleet"."""
    cap = s.get("capacity")
    if cap is None:
        return "-"
    limit = f"{cap['max_concurrent']}+{cap['max_queued']}"
    if not cap["follows_replicas"]:
        return limit + " fleet"
    n = s.get("replicas_now") or {}
    show = ["-" if n.get(k) is None else str(n[k]) for k in ("live", "starting", "target")]
    stopping = f" {n['stopping']} stopping" if n.get("stopping") else ""
    return f"{limit} ({'/'.join(show)}){stopping}"


def render(status: dict) -> str:
    rows = []
    for s in status["substrates"]:
        sig = s["signals"]
        circuit = s["circuit"]["state"] + (f": {s['circuit']['reason']}" if s["circuit"]["reason"] else "")
        replicas = ", ".join(f"{r['node'][:8] if r['node'] else '?'}@{r['zone'] or '-'}/{r['jurisdiction'] or '-'}"
                             for r in s["replicas"]) or "none reporting"
        warn = f" MISMATCH {s['node_jurisdiction_mismatch']}" if s["node_jurisdiction_mismatch"] else ""
        name = s["name"] + (" (emulated)" if s["emulated"] and "emulated" not in s["name"] else "")
        serve_state = s.get("serve")
        if serve_state:
            counts = ",".join(f"{k.lower()}={v}" for k, v in sorted(serve_state["replica_states"].items()))
            replicas = f"[{serve_state['status'].lower()} {counts}] " + replicas
            if serve_state.get("message"):
                warn += f" ({serve_state['message']})"
        rows.append([name, s["declared"]["jurisdiction"], s["declared"]["zone"], circuit,
                     _reading(sig["in_flight"]), _reading(sig["queued"]), _reading(sig["kv_cache_usage"], "{:.2f}"),
                     _reading(sig["rate_limit_requests_remaining"]), _reading(sig["recent_ttft_s"], "{:.3f}"),
                     _reading(sig.get("ttft_ratio"), "{:.2f}"), _reading(sig["error_rate"], "{:.2f}"), ",".join(s.get("drift") or ()) or "-",
                     _capacity(s), replicas + warn])
    out = [f"snapshot v{status['snapshot_version']} · policy {status['policy_hash']} · "
           f"staleness bound {status['staleness_bound_s']:.1f}s · readings show value (age)", "",
           render_table(["substrate", "jur", "zone", "circuit", "in flight", "queued", "kv cache",
                         "rl requests", "ttft s", "ttft/declared", "errors", "drift", "capacity (live/starting/target)",
                         "replicas node@zone/jur"], rows), ""]
    ingress_rows = [[i["ingress"], i["zone"] or "-", str(i["snapshot_version"]),
                     "-" if i["snapshot_age_s"] is None else f"{i['snapshot_age_s']:.2f}s",
                     f"{i['report_age_s']:.2f}s"] for i in status["ingress"]]
    out.append(render_table(["ingress replica", "zone", "snapshot", "snapshot age", "last sync"], ingress_rows))
    external = [(s["name"], n, v) for s in status["substrates"] for n, v in s["external"].items()]
    if external:
        out += ["", render_table(["substrate", "external signal", "value (age)"],
                                 [[a, n, f"{v['value']:g} ({v['age_s']:.1f}s)"] for a, n, v in external])]
    scaled = [s for s in status["substrates"] if s.get("autoscaler")]
    if scaled:  # the plane's autoscaler (``plane.autoscale``): its target, and why
        out += ["", render_table(
            ["autoscaled substrate", "target", "wanted", "demand", "min-max", "replica start s", "why"],
            [[s["name"], "-" if a["target"] is None else str(a["target"]), str(a["wanted"]), f"{a['demand']:g}",
              f"{a['min']}-{a['max']}", "-" if not s.get("replica_start_s") else f"{s['replica_start_s']['last']:.1f}",
              a["reason"]] for s in scaled for a in [s["autoscaler"]]])]
    return "\n".join(out)


def cmd(args: argparse.Namespace) -> int:
    status = fetch_status(args.address, args.app_name)
    print(json.dumps(status, indent=2) if args.json else render(status))
    return 0
