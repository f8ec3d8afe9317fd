"""How many replicas a deployment runs, and what a substrate's slots cost: derived here only.

A ``replicas:`` block is either a fixed count or Serve autoscaling. ``replica_counts`` turns it
into three numbers; each consumer uses the one that matches what it models:

==============================  ==========  ====================================================
consumer                        count       why
==============================  ==========  ====================================================
``config.build`` (cost)         maximum     owned hardware is provisioned, and paid for, for the
                                            most replicas the deployment may run
``deployments.app``,            all three   Serve gets the fixed count; a deployment the plane
``cli.deploy`` (Serve options)              autoscales starts at ``serving_at_start``; one Serve
                                            autoscales gets min/max/target as its autoscaling
                                            config (``ReplicaCounts.serve_options``)
``deployments.app``             maximum     a replica's share of the admitted requests
(``max_ongoing_requests``)                  (``share``): the smallest share any replica can get
``replay.substrate_physics``    maximum     the replay sizes a substrate's physics for its full
                                            fleet, as the plane admits against the full capacity
``replay.simulator``            initial,    a substrate the plane autoscales runs elastic from
                                maximum     ``serving_at_start`` replicas, each with the full
                                            fleet's slots / ``maximum``
``replay.plane_router``         initial     the replay's ingress starts as Serve starts it:
(ingress replicas)                          ``serving_at_start`` (at least one, since Serve
                                            scales a scale-to-zero ingress up on first request)
==============================  ==========  ====================================================

A vLLM or emulated substrate's ``capacity`` limits are declared across its maximum replicas; placement
admits ``ceil(limit * live / maximum)`` with ``live`` replicas reporting (``SubstrateSpec.capacity_at``):
per-replica slots times live replicas, the declared limit exactly at full scale.

``substrate_sizing`` adds a substrate's concurrent slots and the owned-hardware cost of one slot
for one second:

    usd_per_slot_second = usd_per_gpu_hour * gpus_per_replica * maximum / 3600 / slots

where ``slots = capacity.max_concurrent_requests`` (across all replicas), so a reserved GPU fleet's
cost is spread over the requests that could share it.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferplane.config.schema import Replicas, Substrate


@dataclass(frozen=True, slots=True)
class ReplicaCounts:
    """The replica counts of one deployment. A fixed count has all three equal."""

    initial: int
    """Replicas Serve starts with: the fixed count, or ``min_replicas`` (Serve's default
    ``initial_replicas``) under autoscaling."""
    minimum: int
    """Fewest replicas; 0 under autoscaling means scale to zero."""
    maximum: int
    """Most replicas; at least 1."""
    target_ongoing_requests: float | None
    """Under autoscaling: concurrent requests per replica the autoscaler aims for; else None."""
    upscale_delay_s: float = 0.0
    downscale_delay_s: float = 0.0
    manual_hold_s: float = 0.0
    """Under autoscaling, the ``replicas.autoscaling`` block's delays (``plane.autoscale``)."""

    @property
    def serving_at_start(self) -> int:
        """Replicas that serve the first request: ``initial``, or 1 when it is 0."""
        return max(1, self.initial)

    def pooled(self, per_replica: int) -> int:
        """``per_replica * maximum``: what all replicas hold together at full scale."""
        return per_replica * self.maximum

    def share(self, total: int) -> int:
        """``ceil(total / maximum)``: one replica's part of ``total`` spread over full scale."""
        return -(-total // self.maximum)

    def serve_options(self, plane_scaled: bool = False) -> dict[str, object]:
        """The replica options of a Serve deployment: ``num_replicas``; or, under autoscaling,
        ``num_replicas: serving_at_start`` when the plane scales it (``plane_autoscaled``: Serve
        takes a positive count, and the plane's scaler moves it), else Serve's ``autoscaling_config``."""
        if self.target_ongoing_requests is None:
            return {"num_replicas": self.initial}
        if plane_scaled:
            return {"num_replicas": self.serving_at_start}
        return {"autoscaling_config": {"min_replicas": self.minimum, "max_replicas": self.maximum,
                                       "target_ongoing_requests": self.target_ongoing_requests,
                                       "upscale_delay_s": self.upscale_delay_s,
                                       "downscale_delay_s": self.downscale_delay_s}}


def replica_counts(replicas: Replicas) -> ReplicaCounts:
    """The counts of a ``replicas:`` block (an explicit ``num_replicas: null`` means 1)."""
    scaling = replicas.autoscaling
    if scaling is None:
        n = replicas.num_replicas or 1
        return ReplicaCounts(initial=n, minimum=n, maximum=n, target_ongoing_requests=None)
    return ReplicaCounts(initial=scaling.min_replicas, minimum=scaling.min_replicas,
                         maximum=scaling.max_replicas, target_ongoing_requests=scaling.target_ongoing_requests,
                         upscale_delay_s=scaling.upscale_delay_s, downscale_delay_s=scaling.downscale_delay_s,
                         manual_hold_s=scaling.manual_hold_s)


def plane_autoscaled(cfg) -> frozenset[str]:
    """The substrates the placement actor autoscales on placement demand (``plane.autoscale``):
    those with ``replicas.autoscaling``, while the application is scaled externally
    (``external_scaling``). Serve's autoscaler scales them only when the ingress autoscales."""
    if cfg.ingress.replicas.autoscaling is not None:
        return frozenset()
    return frozenset(s.name for s in cfg.substrates if s.settings.replicas.autoscaling is not None)


def external_scaling(cfg) -> tuple[bool, str]:
    """Whether the application is deployed with Serve's ``external_scaler_enabled`` (the Ray
    dashboard's ``POST /api/v1/applications/{app}/deployments/{name}/scale`` then scales a
    deployment, and the placement actor scales the substrates with ``replicas.autoscaling``
    through the same controller call), and why. Serve allows it only in an application none of
    whose deployments has Serve's own autoscaling, so: enabled unless the ingress autoscales (the
    ingress has no placement demand to scale on; Serve's autoscaler then scales it and every
    autoscaled substrate, and replica counts change by redeploying)."""
    if cfg.ingress.replicas.autoscaling is not None:
        autoscaled = [s.name for s in cfg.substrates if s.settings.replicas.autoscaling is not None]
        return False, (f"Serve autoscales {', '.join(['the ingress', *autoscaled])}: the dashboard's scale API is "
                       "off for this application (Serve allows external scaling only with no Serve autoscaling "
                       "in it); change replica counts by redeploying")
    planned = sorted(plane_autoscaled(cfg))
    why = "scale any substrate from the Ray dashboard (Serve's scale API; external_scaler_enabled)"
    if planned:
        why += (f"; the plane autoscales {', '.join(planned)} on placement demand, and leaves one scaled "
                "from the dashboard alone for its manual_hold_s")
    return True, why


@dataclass(frozen=True, slots=True)
class SubstrateSizing:
    """One substrate's replicas, slots and the owned-hardware cost of a slot."""

    replicas: ReplicaCounts
    slots: int
    """Requests it runs at once across all replicas (``capacity.max_concurrent_requests``)."""
    owned_usd_per_slot_second: float
    """Owned or reserved hardware paid for ``replicas.maximum`` replicas, per slot and second."""


def substrate_sizing(substrate: Substrate) -> SubstrateSizing:
    counts = replica_counts(substrate.settings.replicas)
    slots = substrate.capacity.max_concurrent_requests
    cost = substrate.cost
    gpu_usd_per_s = cost.usd_per_gpu_hour * cost.gpus_per_replica * counts.maximum / 3600.0
    return SubstrateSizing(replicas=counts, slots=slots, owned_usd_per_slot_second=gpu_usd_per_s / slots)
