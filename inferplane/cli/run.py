"""`inferplane run [CONFIG]`: run the plane on a config (default: the embedded `configs/local.yaml`).

The Ray Serve layer (ingress, placement actor, substrate deployments) is not built yet. Until it
is, `run` does what can be done without it: validates the config, and shows how a typical request
of every tenant for every model it may use would be placed on an idle fleet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from inferplane.cli.table import render_table
from inferplane.config import build, load_config
from inferplane.placement import PlacementRequest, place
from inferplane.signal_scenario import snapshot_from_scenario

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the plane (for now: validate and explain the config)", description=__doc__)
    p.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="default: configs/local.yaml")
    p.set_defaults(func=cmd)


def cmd(args: argparse.Namespace) -> int:
    from inferplane.cli.validate import summary

    print(summary(args.config))
    built = build(load_config(args.config))
    now = 1_000_000.0
    snapshot = snapshot_from_scenario(built.fleet, None, now)
    rows = []
    for tenant in built.policy.tenants.values():
        for route in built.fleet.models.values():
            req = PlacementRequest(f"run-{tenant.name}-{route.name}", tenant.name, route.name,
                                   tenant.default_sla_class, 1000, 200, now,
                                   built.ingress_region, built.ingress_zone)
            d = place(req, snapshot, built.policy)
            where = built.fleet.substrate(d.substrate).display_name if d.placed else "-"
            outcome = (f"spillover ({d.spillover_reason.value})" if d.spillover else "primary") if d.placed \
                else f"{d.http_status} {d.rejection_message}"
            rows.append([tenant.name, route.name, d.sla_class, where, outcome])
    print("\nA 1000-token prompt with max_tokens=200, every substrate idle:")
    print(render_table(["tenant", "model", "sla", "placed on", "outcome"], rows))
    print("\nThe Ray Serve plane is not built yet: nothing is being served. "
          "`inferplane explain` shows any single decision in full.")
    return 0
