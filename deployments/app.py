"""Builds the Serve application from a config: one deployment per substrate, and the ingress.

``build_app(config_text)`` is what ``inferplane run`` and ``inferplane deploy`` use;
``app_builder`` is the import path a Serve config file (``inferplane build``) points at.
"""

from __future__ import annotations

from pathlib import Path

from ray.serve import Application

from inferplane.config import parse_config
from inferplane.config.replica_options import substrate_actor_options
from inferplane.config.sizing import plane_autoscaled, replica_counts

from deployments.ingress import Ingress
from deployments.request_routing import request_router_options
from deployments.substrate import SubstrateDeployment

DEFAULT_APP_NAME = "inferplane"
INGRESS_NAME = "inferplane-ingress"


def build_app(config_text: str, app_name: str = DEFAULT_APP_NAME, *, gpu: bool = False) -> Application:
    cfg = parse_config(config_text, source="<config>")
    handles = {}
    by_plane = plane_autoscaled(cfg)  # the placement actor scales these (``plane.autoscale``)
    for s in cfg.substrates:
        replicas = replica_counts(s.settings.replicas)
        per_replica = replicas.share(s.capacity.max_concurrent_requests + s.capacity.max_queued_requests)
        handles[s.name] = SubstrateDeployment.options(
            name=s.name,
            ray_actor_options=substrate_actor_options(cfg, s, gpu=gpu),
            # Serve's default (5) would hold requests at the handle before the substrate sees them.
            max_ongoing_requests=max(16, 2 * per_replica),
            **replicas.serve_options(plane_scaled=s.name in by_plane),
            **request_router_options(s),
        ).bind(config_text, s.name, app_name)
    ingress_options: dict = {"ray_actor_options": {"num_cpus": 0}}
    if cfg.policy.topology.pin_replicas_to_labels and cfg.ingress.topology is not None:
        ingress_options["ray_actor_options"]["label_selector"] = {
            cfg.policy.topology.zone_label: cfg.ingress.topology.zone}
    ingress_replicas = replica_counts(cfg.ingress.replicas)
    return Ingress.options(name=INGRESS_NAME, **ingress_options, **ingress_replicas.serve_options()).bind(
        config_text, app_name, handles)


def app_builder(args: dict) -> Application:
    """Entry point for a Serve config file: ``import_path: deployments.app:app_builder`` with
    ``args: {config: PATH, app_name: NAME}``."""
    path = Path(args["config"])
    return build_app(path.read_text(encoding="utf-8"), args.get("app_name", DEFAULT_APP_NAME),
                     gpu=bool(args.get("gpu", False)))
