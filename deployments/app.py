"""Builds the Serve application from a config: one deployment per substrate, and the ingress.

``build_app(config_text)`` is what ``inferplane run``, ``deploy`` and ``models apply`` use;
``app_builder`` is the import path a Serve config file (``inferplane build``) points at. Whoever
deploys a config applies it to the application's placement actor first (``placement_actor.apply_config``).

Each deployment carries a version of its own (``deployment_version``): a digest of what its replicas
are built from, so redeploying a changed config restarts only the deployments it changed. Serve's
``serve.run`` gives every deployment a random version unless one is set (Ray 2.60,
``serve/_private/client.py``), which would restart every substrate, vLLM engines included, on
any change; the public way to set one was removed, so ``_internal=True`` is passed to
``Deployment.options`` for it alone. A substrate's replicas are built from its own section of the
config and the node-label names (``policy.topology``), so a model added to another substrate, a
tenant or a policy weight leaves it running; the ingress is built from the whole config and is
rolled (Serve starts the new replicas, then drains the old ones: no request in flight is dropped).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ray.serve import Application

from inferplane import __version__
from inferplane.config import parse_config
from inferplane.config.replica_options import substrate_actor_options
from inferplane.config.sizing import plane_autoscaled, replica_counts

from deployments.ingress import Ingress
from deployments.request_routing import request_router_options
from deployments.substrate import SubstrateDeployment

DEFAULT_APP_NAME = "inferplane"
INGRESS_NAME = "inferplane-ingress"


def _code_digest() -> str:
    """The serving code's identity: the package version and the text of every module the replicas
    run (``deployments``, ``inferplane``, ``substrate_adapters``): an edited checkout is new code."""
    h = hashlib.sha256(__version__.encode())
    root = Path(__file__).parent.parent
    for package in ("deployments", "inferplane", "substrate_adapters"):
        for path in sorted((root / package).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


_CODE = _code_digest()


def deployment_version(*built_from: object) -> str:
    """The version of a deployment whose replicas are built from ``built_from`` (JSON-able) by this code."""
    return hashlib.sha256(json.dumps([_CODE, *built_from], sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_app(config_text: str, app_name: str = DEFAULT_APP_NAME, *, gpu: bool = False) -> Application:
    cfg = parse_config(config_text, source="<config>")
    handles = {}
    by_plane = plane_autoscaled(cfg)  # the placement actor scales these (``plane.autoscale``)
    topology = cfg.policy.topology.model_dump(mode="json")
    for s in cfg.substrates:
        replicas = replica_counts(s.settings.replicas)
        per_replica = replicas.share(s.capacity.max_concurrent_requests + s.capacity.max_queued_requests)
        spec = s.model_dump(mode="json", by_alias=True, exclude_unset=True)  # what the config says, to rebuild it
        handles[s.name] = SubstrateDeployment.options(
            name=s.name,
            ray_actor_options=substrate_actor_options(cfg, s, gpu=gpu),
            # Serve's default (5) would hold requests at the handle before the substrate sees them.
            max_ongoing_requests=max(16, 2 * per_replica),
            **replicas.serve_options(plane_scaled=s.name in by_plane),
            **request_router_options(s),
        ).options(version=deployment_version(spec, topology, app_name), _internal=True).bind(spec, topology, app_name)
    ingress_options: dict = {"ray_actor_options": {"num_cpus": 0}}
    if cfg.policy.topology.pin_replicas_to_labels and cfg.ingress.topology is not None:
        ingress_options["ray_actor_options"]["label_selector"] = {
            cfg.policy.topology.zone_label: cfg.ingress.topology.zone}
    ingress_replicas = replica_counts(cfg.ingress.replicas)
    return Ingress.options(name=INGRESS_NAME, **ingress_options, **ingress_replicas.serve_options()).options(
        version=deployment_version(config_text, app_name, sorted(handles)), _internal=True).bind(
        config_text, app_name, handles)


def app_builder(args: dict) -> Application:
    """Entry point for a Serve config file: ``import_path: deployments.app:app_builder`` with
    ``args: {config: PATH, app_name: NAME}``. The config is applied to the application's placement
    actor here, before Serve rolls the application out."""
    from deployments.placement_actor import apply_config

    path = Path(args["config"])
    text = path.read_text(encoding="utf-8")
    app_name = args.get("app_name", DEFAULT_APP_NAME)
    apply_config(app_name, text)
    return build_app(text, app_name, gpu=bool(args.get("gpu", False)))
