"""`inferplane deploy CONFIG [MODEL_FILE...] --address ADDR` puts the plane on an existing Ray cluster;
`inferplane build CONFIG -o serve.yaml` writes a Serve config file that `serve deploy` accepts;
`inferplane build CONFIG --kuberay -o rayservice.yaml` writes a KubeRay RayService (and a ConfigMap
holding CONFIG) for `kubectl apply -f`, with GPUs for vLLM replicas (`--gpu` is implied) and every
substrate's replicas on worker pods labelled with its zone and country.

For all three, the `inferplane` package must be importable on the cluster's nodes (install it in the
cluster's image or runtime environment), and for the Serve config file CONFIG must be readable
there at the same path (the RayService reads it from its ConfigMap).

With model files (`kind: models`, one per team or model), CONFIG is the platform's fleet file: all
three merge them into one config (``inferplane.config.model_files``) and ship that one text, which
records the files and their SHA-256. `build` writes it beside the Serve config (`OUTPUT` with
`.config.yaml`), `--kuberay` puts it in the ConfigMap, `deploy` hands it to the app.

Every `build` and `deploy` appends a record to the config history next to the audit log (who, when,
each file's SHA-256, models added, removed or changed): `inferplane history CONFIG` shows it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from inferplane.config import InferplaneConfig, kuberay, load_config
from inferplane.config.model_files import merge_files
from inferplane.config.replica_options import substrate_actor_options
from inferplane.config.sizing import external_scaling, plane_autoscaled, replica_counts


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("deploy", help="deploy to an existing Ray cluster", description=__doc__)
    d.add_argument("config")
    d.add_argument("model_files", nargs="*", metavar="MODEL_FILE", help="teams' model files (`kind: models`)")
    d.add_argument("--address", required=True, help="Ray address, e.g. ray://head:10001 or auto")
    d.add_argument("--app-name", default="inferplane")
    d.add_argument("--gpu", action="store_true", default=None,
                   help="ask Ray for GPUs for vLLM substrates (default: when the cluster has GPUs)")
    _history_options(d)
    d.set_defaults(func=cmd_deploy)
    b = sub.add_parser("build", help="write a Serve config file for `serve deploy`", description=__doc__)
    b.add_argument("config")
    b.add_argument("model_files", nargs="*", metavar="MODEL_FILE", help="teams' model files (`kind: models`)")
    b.add_argument("-o", "--output", required=True)
    b.add_argument("--app-name", default="inferplane")
    b.add_argument("--gpu", action="store_true", help="ask Ray for GPUs for vLLM substrates")
    b.add_argument("--kuberay", action="store_true",
                   help="write a KubeRay RayService manifest (with the config as a ConfigMap) for "
                   "`kubectl apply -f`, instead of a Serve config; vLLM replicas get GPUs")
    b.add_argument("--image", default=None,
                   help=f"--kuberay: the Ray image, which must contain inferplane (default {kuberay.DEFAULT_IMAGE})")
    b.add_argument("--ray-version", default=kuberay.DEFAULT_RAY_VERSION, help="--kuberay: the image's Ray version")
    b.add_argument("--secret-name", default=kuberay.DEFAULT_SECRET,
                   help="--kuberay: the Kubernetes Secret holding each provider's API key, under the "
                   "key named by its `api_key_env`")
    b.add_argument("--node-jurisdiction-label", default=kuberay.DEFAULT_NODE_JURISDICTION_LABEL,
                   help="--kuberay: the Kubernetes node label holding a node's country code")
    _history_options(b)
    b.set_defaults(func=cmd_build)


def _history_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--by", default=None, help="who, for the config history (default: $USER)")
    p.add_argument("--history-file", default=None,
                   help="the config history to append to (default: config-history.jsonl in the audit directory)")
    p.add_argument("--no-history", action="store_true", help="record nothing in the config history")


def record_history(args: argparse.Namespace, cfg: InferplaneConfig, text: str, action: str) -> None:
    """Append what was shipped to the config history; a history that cannot be written is said, not fatal
    (the artefacts are written already)."""
    from inferplane.config import history
    from inferplane.config.model_files import SourceText
    from inferplane.config.schema import ConfigSource

    if args.no_history:
        return
    if not cfg.sources:  # a single file: it is its own source
        cfg = cfg.model_copy(update={"sources": [ConfigSource(path=args.config, kind="fleet",
                                                              sha256=SourceText(args.config, text).sha256)]})
    path = Path(args.history_file) if args.history_file else history.history_path(cfg.telemetry)
    try:
        rec = history.append(path, cfg, text, action, by=args.by)
    except OSError as exc:
        print(f"warning: the config history was not written ({path}: {exc.strerror or exc})", file=sys.stderr)
        return
    print(f"recorded in {path}: {history.summary(rec)}")


def shipped_config(config_path: str, model_files: Sequence[str] = ()) -> tuple[InferplaneConfig, str]:
    """The config and the one text the cluster gets: the file's own, or the fleet file merged with the
    model files (recording them and their hashes)."""
    if model_files:
        merged = merge_files(config_path, model_files)
        return merged.config, merged.text
    return load_config(config_path), Path(config_path).read_text(encoding="utf-8")


def merged_config_path(output: str) -> Path:
    """Where ``build`` writes the merged config of a Serve config file ``output``: beside it."""
    out = Path(output)
    return out.with_name(f"{out.stem}.config.yaml")


def serve_config(config_path: str, app_name: str, gpu: bool, *, model_files: Sequence[str] = (),
                 cluster_config_path: str | None = None, host: str | None = None,
                 pin_jurisdiction: bool = False) -> dict:
    """The Serve config of CONFIG. ``cluster_config_path``: where the cluster's nodes read CONFIG
    (default: this path, resolved); ``host``: the proxy's address (default the config's ingress
    host); ``pin_jurisdiction``: pin every substrate's replicas to nodes labelled with its zone and
    country, whatever the config's ``pin_replicas_to_labels`` (the KubeRay manifest labels its nodes).
    With ``model_files`` the cluster reads their merged config, so ``cluster_config_path`` must say where."""
    if model_files and cluster_config_path is None:
        raise ValueError("a fleet file with model files is shipped merged: say where the cluster reads the merged config")
    cfg = load_config(config_path, model_files)
    pin = True if pin_jurisdiction else None
    by_plane = plane_autoscaled(cfg)  # the placement actor scales these (``plane.autoscale``)
    deployments = [{"name": s.name, **replica_counts(s.settings.replicas).serve_options(s.name in by_plane),
                    "ray_actor_options": substrate_actor_options(cfg, s, gpu=gpu, pin=pin,
                                                                 pin_jurisdiction=pin_jurisdiction)}
                   for s in cfg.substrates]
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": cfg.ingress.host if host is None else host, "port": cfg.ingress.port},
        "applications": [{
            "name": app_name,
            "route_prefix": "/",
            "import_path": "deployments.app:app_builder",
            "external_scaler_enabled": external_scaling(cfg)[0],
            "args": {"config": cluster_config_path or str(Path(config_path).resolve()), "app_name": app_name,
                     "gpu": gpu},
            "deployments": deployments,
        }],
    }


def cmd_build(args: argparse.Namespace) -> int:
    if args.kuberay:
        return _build_kuberay(args)
    merged_path = None
    if args.model_files:
        _, text = shipped_config(args.config, args.model_files)
        merged_path = merged_config_path(args.output)
        merged_path.write_text(text, encoding="utf-8")
    doc = serve_config(args.config, args.app_name, args.gpu, model_files=args.model_files,
                       cluster_config_path=None if merged_path is None else str(merged_path.resolve()))
    Path(args.output).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    if merged_path is not None:
        print(f"wrote {merged_path}: {args.config} merged with {len(args.model_files)} model file(s); the cluster "
              "reads it at this path")
    print(f"wrote {args.output}: `serve deploy {args.output}` deploys it")
    record_history(args, *shipped_config(args.config, args.model_files), "build")
    return 0


def kuberay_manifest(config_path: str, app_name: str, *, model_files: Sequence[str] = (), image: str | None = None,
                     ray_version: str = kuberay.DEFAULT_RAY_VERSION, secret_name: str = kuberay.DEFAULT_SECRET,
                     node_jurisdiction_label: str = kuberay.DEFAULT_NODE_JURISDICTION_LABEL) -> list[dict]:
    """The ConfigMap and RayService of CONFIG: its Serve config is ``serve_config``'s, with GPUs for
    vLLM, every replica pinned to its zone and country, the config read from the ConfigMap, and the
    proxy on the pod's address (the RayService's serve Service reaches it there)."""
    doc = serve_config(config_path, app_name, gpu=True, model_files=model_files,
                       cluster_config_path=kuberay.CONFIG_MOUNT_PATH, host="0.0.0.0", pin_jurisdiction=True)
    cfg, text = shipped_config(config_path, model_files)
    return kuberay.manifest(cfg, text, doc,
                            kuberay.ClusterOptions(name=app_name, image=image, ray_version=ray_version,
                                                   secret_name=secret_name,
                                                   node_jurisdiction_label=node_jurisdiction_label))


def _build_kuberay(args: argparse.Namespace) -> int:
    docs = kuberay_manifest(args.config, args.app_name, model_files=args.model_files, image=args.image, ray_version=args.ray_version,
                            secret_name=args.secret_name, node_jurisdiction_label=args.node_jurisdiction_label)
    Path(args.output).write_text(kuberay.dump(docs), encoding="utf-8")
    print(f"wrote {args.output}: a ConfigMap and a RayService; `kubectl apply -f {args.output}` deploys it")
    if args.image is None:
        print(f"note: the default image (rayproject/ray:{args.ray_version}-py311) does not contain inferplane: "
              "pass --image with one that does")
    record_history(args, *shipped_config(args.config, args.model_files), "build --kuberay")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from deployments import runtime

    from inferplane.config.model_set import RunningFile, files_of

    if args.model_files:
        merged = merge_files(args.config, args.model_files)
        cfg, text, files = merged.config, merged.text, files_of(merged)
    else:
        cfg, text = shipped_config(args.config)
        files = [RunningFile(args.config, "fleet", text)]
    runtime.connect(args.address)
    runtime.deploy(text, args.app_name, cfg.ingress.host, cfg.ingress.port, gpu=args.gpu,
                   files=[f.as_dict() for f in files])
    print(f"deployed `{args.app_name}` to {args.address}; ingress on port {cfg.ingress.port}")
    record_history(args, cfg, text, f"deploy {args.address} {args.app_name}")
    return 0
