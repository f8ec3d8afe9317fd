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
from inferplane.health import BreakerSettings
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
        self._state = FleetState(built.fleet, built.policy.policy_hash, built.policy.signal_staleness_bound_s,
                                 breaker_settings(built.config.policy.health),
                                 built.config.policy.health.latency_window_ms / 1000.0)
        self._started_at_s = time.time()

    def sync(self, ingress_id: str, in_flight: dict[str, int], outcomes: list[Outcome],
             snapshot_version: int | None = None, snapshot_age_s: float | None = None,
             zone: str | None = None) -> PublishedSnapshot | None:
        """Record an ingress replica's report; return the current snapshot (None while warming up)."""
        now = time.time()
        self._state.report_ingress(ingress_id, in_flight, outcomes, now, snapshot_version=snapshot_version,
                                   snapshot_age_s=snapshot_age_s, zone=zone)
        if now - self._started_at_s < WARMUP_S:
            return None
        return self._state.snapshot(now)

    def report_substrate(self, substrate: str, replica_id: str, report: SubstrateReport) -> None:
        self._state.report_substrate(substrate, replica_id, report, time.time())

    def snapshot(self) -> PublishedSnapshot:
        return self._state.snapshot(time.time())

    def push_signal(self, name: str, value: float, scope: str, target: str = "*") -> None:
        """The push API for platform signals: ``scope`` is ``substrate``, ``zone``, ``region`` or
        ``fleet``; ``target`` names the substrate, zone or region. Rules in the policy's
        ``external_signals`` decide what a value does."""
        self._state.push_external(name, value, scope, target, time.time())

    def status(self) -> dict:
        out = self._state.status(time.time())
        out["actor_started_at_s"] = self._started_at_s
        return out

    def started_at_s(self) -> float:
        return self._started_at_s


def breaker_settings(health) -> BreakerSettings:
    return BreakerSettings(
        consecutive_failures=health.consecutive_failures_to_open,
        error_rate_to_open=health.error_rate_to_open,
        min_samples=health.min_samples,
        window_s=health.window_ms / 1000.0,
        open_cooldown_s=health.open_cooldown_ms / 1000.0,
        max_cooldown_s=health.max_cooldown_ms / 1000.0,
        probe_successes=health.probe_successes_to_close,
    )


def get_or_create(app_name: str, config_text: str) -> ray.actor.ActorHandle:
    """The application's actor, created by whichever replica asks first (race-free)."""
    return PlacementActor.options(
        name=actor_name(app_name, config_text),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
    ).remote(config_text)
