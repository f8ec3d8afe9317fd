"""The PlacementActor: the single placement authority, a named Ray actor.

A thin wrapper around ``inferplane.fleet_state.FleetState``. Ingress replicas call ``sync`` every
``SYNC_INTERVAL_S`` to report their in-flight counts and outcomes and receive the current
snapshot; substrate replicas call ``report_substrate`` with their adapter's load (their heartbeat).
Ray restarts the actor after a crash (``max_restarts=-1``); it rebuilds its state from the config
and the reports that resume within one interval, while ingress replicas keep placing on their last
snapshot up to the policy's snapshot staleness bound.
"""

from __future__ import annotations

import hashlib
import time

import ray

from inferplane.config import build, parse_config
from inferplane.fleet_state import FleetState, Outcome, PublishedSnapshot, SubstrateReport

NAMESPACE = "inferplane"
# After a (re)start the actor knows nothing until substrate replicas report (every 0.25 s). It
# publishes nothing for this long, so ingress replicas keep their last snapshot instead of
# switching to one in which every substrate is unknown.
WARMUP_S = 0.75


def actor_name(app_name: str, config_text: str) -> str:
    """One actor per (application, config): a re-deploy with a new config gets a fresh authority."""
    digest = hashlib.sha256(config_text.encode()).hexdigest()[:12]
    return f"inferplane-placement-{app_name}-{digest}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=64)
class PlacementActor:
    def __init__(self, config_text: str) -> None:
        built = build(parse_config(config_text, source="<deployed config>"))
        self._state = FleetState(built.fleet, built.policy.policy_hash, built.policy.signal_staleness_bound_s)
        self._started_at_s = time.time()

    def sync(self, ingress_id: str, in_flight: dict[str, int], outcomes: list[Outcome]) -> PublishedSnapshot | None:
        """Record an ingress replica's report; return the current snapshot (None while warming up)."""
        now = time.time()
        self._state.report_ingress(ingress_id, in_flight, outcomes, now)
        if now - self._started_at_s < WARMUP_S:
            return None
        return self._state.snapshot(now)

    def report_substrate(self, substrate: str, replica_id: str, report: SubstrateReport) -> None:
        self._state.report_substrate(substrate, replica_id, report, time.time())

    def snapshot(self) -> PublishedSnapshot:
        return self._state.snapshot(time.time())

    def started_at_s(self) -> float:
        return self._started_at_s


def get_or_create(app_name: str, config_text: str) -> ray.actor.ActorHandle:
    """The application's actor, created by whichever replica asks first (race-free)."""
    return PlacementActor.options(
        name=actor_name(app_name, config_text),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
    ).remote(config_text)
