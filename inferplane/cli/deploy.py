"""`inferplane deploy CONFIG --address ADDR` puts the plane on an existing Ray cluster;
`inferplane build CONFIG -o serve.yaml` writes a Serve config file that `serve deploy` accepts.

For both, the `inferplane` package must be importable on the cluster's nodes (install it in the
cluster's image or runtime environment), and CONFIG must be readable there at the same path for
`build`'s file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from inferplane.config import load_config
from inferplane.config.sizing import external_scaling, replica_counts


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("deploy", help="deploy to an existing Ray cluster", description=__doc__)
    d.add_argument("config")
    d.add_argument("--address", required=True, help="Ray address, e.g. ray://head:10001 or auto")
    d.add_argument("--app-name", default="inferplane")
    d.add_argument("--gpu", action="store_true", default=None,
                   help="ask Ray for GPUs for vLLM substrates (default: when the cluster has GPUs)")
    d.set_defaults(func=cmd_deploy)
    b = sub.add_parser("build", help="write a Serve config file for `serve deploy`", description=__doc__)
    b.add_argument("config")
    b.add_argument("-o", "--output", required=True)
    b.add_argument("--app-name", default="inferplane")
    b.add_argument("--gpu", action="store_true", help="ask Ray for GPUs for vLLM substrates")
    b.set_defaults(func=cmd_build)


def serve_config(config_path: str, app_name: str, gpu: bool) -> dict:
    cfg = load_config(config_path)
    deployments = [{"name": s.name, **replica_counts(s.settings.replicas).serve_options()} for s in cfg.substrates]
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.ingress.host, "port": cfg.ingress.port},
        "applications": [{
            "name": app_name,
            "route_prefix": "/",
            "import_path": "deployments.app:app_builder",
            "external_scaler_enabled": external_scaling(cfg)[0],
            "args": {"config": str(Path(config_path).resolve()), "app_name": app_name, "gpu": gpu},
            "deployments": deployments,
        }],
    }


def cmd_build(args: argparse.Namespace) -> int:
    doc = serve_config(args.config, args.app_name, args.gpu)
    Path(args.output).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    print(f"wrote {args.output}: `serve deploy {args.output}` deploys it")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from deployments import runtime

    cfg = load_config(args.config)
    text = Path(args.config).read_text(encoding="utf-8")
    runtime.connect(args.address)
    runtime.deploy(text, args.app_name, cfg.ingress.host, cfg.ingress.port, gpu=args.gpu)
    print(f"deployed `{args.app_name}` to {args.address}; ingress on port {cfg.ingress.port}")
    return 0
