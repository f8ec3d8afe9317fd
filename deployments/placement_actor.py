"""The PlacementActor: the single placement authority, a named Ray actor.

A thin wrapper around ``inferplane.fleet_state.FleetState``. Ingress replicas call ``sync`` every
``ingress.snapshot_refresh_ms`` to report their in-flight counts and outcomes and receive the current
snapshot; substrate replicas call ``report_substrate`` with their adapter's load (their heartbeat).
Ray restarts the actor after a crash (``max_restarts=-1``); it rebuilds its state from the config
and the reports that resume within one interval, while ingress replicas keep placing on their last
snapshot up to the policy's snapshot staleness bound.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time

import ray

from inferplane.config import build, parse_config
from inferplane.config.sizing import plane_autoscaled, replica_counts
from inferplane.health import settings_from_policy
from inferplane.placement.snapshot import FleetSnapshot
from inferplane.plane.autoscale import (
    OVERFLOW_REFUSALS,
    OVERFLOW_SPILLOVER,
    AutoscaleSettings,
    DemandCounter,
    DemandSample,
    ScalerState,
    settings_for,
    step,
)
from inferplane.telemetry.drift import settings_from_policy as drift_settings
from inferplane.telemetry.metrics import LabelVocabulary, PlaneMetrics, serve_metrics
from inferplane.fleet_state import ACTOR_WARMUP_S, FleetState, Outcome, PublishedSnapshot, SubstrateReport

NAMESPACE = "inferplane"
log = logging.getLogger("inferplane.placement_actor")


def actor_name(app_name: str, config_text: str) -> str:
    """One actor per (application, config): a re-deploy with a new config gets a fresh authority."""
    digest = hashlib.sha256(config_text.encode()).hexdigest()[:12]
    return f"inferplane-placement-{app_name}-{digest}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=64)
class PlacementActor:
    def __init__(self, config_text: str, app_name: str = "inferplane") -> None:
        built = build(parse_config(config_text, source="<deployed config>"))
        self._app_name = app_name
        self._serve_status: dict = {}
        self._updating_since: dict[str, float] = {}
        self._state = FleetState(built.fleet, built.policy.policy_hash, built.policy.signal_staleness_bound_s,
                                 settings_from_policy(built.config.policy.health),
                                 built.config.policy.health.latency_window_ms / 1000.0,
                                 {t.name: t.budget.period for t in built.config.tenants if t.budget})
        self._seed_spend_from_audit(built.config)
        self._started_at_s = time.time()
        # Ray runs this actor's methods on a thread pool (max_concurrency): one lock keeps the
        # state's bookkeeping and snapshot versions consistent.
        self._lock = threading.Lock()
        self._fleet = built.fleet
        drift = drift_settings(built.config.policy.health)
        self._metrics = PlaneMetrics(LabelVocabulary.of(built.fleet, built.policy), drift)
        # ``residual_drift: penalize``: the detector's floors reach placement through each snapshot
        # (``FleetState.set_drift_floors``), and every decision predicted with one says so.
        self._penalize_drift = drift.penalize
        self._bound = built.policy.signal_staleness_bound_s
        self._name = actor_name(app_name, config_text)
        self._telemetry = built.config.telemetry
        self._metrics_server = None
        self._serve_metrics(log.error)
        self._init_autoscaling(built.config)
        threading.Thread(target=self._poll_serve, name="inferplane-serve-status", daemon=True).start()

    def _seed_spend_from_audit(self, cfg) -> None:
        """After a (re)start, this period's spend of every budgeted tenant comes back from the audit
        log, so a restart never resets a budget."""
        budgeted = [t for t in cfg.tenants if t.budget]
        if not budgeted:
            return
        import datetime as dt

        from inferplane.fleet_state import period_key
        from inferplane.telemetry.audit import read_audit

        now = time.time()
        try:
            for t in budgeted:
                start = dt.datetime.strptime(period_key(t.budget.period, now) + ("" if t.budget.period == "day" else "-01"),
                                             "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
                rows = read_audit(os.path.expanduser(cfg.telemetry.audit_dir), since=start).to_pylist()
                spent = sum(r["cost_usd"] or 0.0 for r in rows if r["tenant"] == t.name)
                self._state.add_spend({t.name: spent}, now)
        except Exception as exc:  # no audit yet: every budget starts at zero
            log.info("no spend recovered from the audit log: %s", type(exc).__name__)

    def sync(self, ingress_id: str, in_flight: dict[str, int], outcomes: list[Outcome],
             snapshot_version: int | None = None, snapshot_age_s: float | None = None,
             zone: str | None = None, metrics: list | None = None,
             spend_usd: dict[str, float] | None = None, tenant_in_flight: dict | None = None,
             reclaiming: dict | None = None, demand: dict | None = None) -> PublishedSnapshot | None:
        """Record an ingress replica's report and metrics; return the current snapshot (None while
        warming up)."""
        now = time.time()
        with self._lock:
            self._state.report_ingress(ingress_id, in_flight, outcomes, now, snapshot_version=snapshot_version,
                                       snapshot_age_s=snapshot_age_s, zone=zone, tenant_in_flight=tenant_in_flight,
                                       reclaiming=reclaiming, demand=demand)
            if spend_usd:
                self._state.add_spend(spend_usd, now)
            up = now - self._started_at_s
            warming = up < ACTOR_WARMUP_S or (up < self._bound and not self._state.all_reporting())
            if self._penalize_drift and not warming:
                self._state.set_drift_floors(self._metrics.drift_floors(now))
            published = None if warming else self._state.snapshot(now)
            replicas = {name: counts for name, (counts, _) in self._state.capacities().items()}
            replica_seconds = self._state.replica_seconds(now)
        self._metrics.set_replicas(replicas, replica_seconds)
        if metrics:
            self._metrics.apply_batch(ingress_id, metrics)
        if snapshot_version is not None and snapshot_age_s is not None:
            self._metrics.set_ingress(ingress_id, snapshot_version, snapshot_age_s, now_s=now)
        self._metrics.expire_ingress(now, self._bound)
        if published is not None:
            self._metrics.set_signals(FleetSnapshot(published.version, published.taken_at_s, self._fleet,
                                                    published.signals, tenant_spend_usd=published.tenant_spend_usd),
                                      now)
        return published

    def report_substrate(self, substrate: str, replica_id: str, report: SubstrateReport) -> None:
        with self._lock:
            self._state.report_substrate(substrate, replica_id, report, time.time())

    def snapshot(self) -> PublishedSnapshot:
        with self._lock:
            return self._state.snapshot(time.time())

    def push_signal(self, name: str, value: float, scope: str, target: str = "*") -> None:
        """The push API for platform signals: ``scope`` is ``substrate``, ``zone``, ``region`` or
        ``fleet``; ``target`` names the substrate, zone or region. Rules in the policy's
        ``external_signals`` decide what a value does."""
        with self._lock:
            self._state.push_external(name, value, scope, target, time.time())

    def status(self) -> dict:
        with self._lock:
            out = self._state.status(time.time())
        out["actor_started_at_s"] = self._started_at_s
        # Prediction residuals (``telemetry.drift``): which substrates stopped behaving as predicted.
        drift = out["drift"] = self._metrics.drift_status(time.time())
        for sub in out["substrates"]:
            sub["serve"] = self._serve_status.get(sub["name"])
            sub["drift"] = drift.get(sub["name"], {}).get("flags", [])
            sub["autoscaler"] = self._autoscale_status.get(sub["name"])
            starts = self._start_times.get(sub["name"])
            sub["replica_start_s"] = {"last": starts[-1], "max": max(starts), "count": len(starts)} if starts else None
        return out

    def _serve_metrics(self, complain) -> None:
        tel = self._telemetry
        try:
            self._metrics_server = serve_metrics(self._metrics.registry, tel.metrics_host, tel.metrics_port)
        except OSError as exc:  # the port is taken (the actor of a config being replaced): keep placing
            complain("cannot serve metrics on %s:%s yet: %s", tel.metrics_host, tel.metrics_port, exc)

    def live_ingress(self) -> int:
        """How many ingress replicas synced with this actor within the staleness bound."""
        now = time.time()
        with self._lock:
            return self._state.live_ingress(now)

    def _retire_predecessors(self) -> None:
        """Retire the application's other placement actors that no ingress replica uses any more,
        while some use this one: after a redeploy with a changed config, once Serve has replaced
        every ingress replica of the old config, the old config's actor is orphaned (it would keep
        the metrics port, and ``status`` could read it). An actor with no ingress replica of its own
        retires nobody, so an old actor never retires the new one during a rollout. Then take over
        the metrics port if this actor could not bind it."""
        if self.live_ingress() == 0:
            return
        for name in _actor_names(self._app_name):
            if name == self._name:
                continue
            try:
                other = ray.get_actor(name, namespace=NAMESPACE)
                if ray.get(other.live_ingress.remote(), timeout=5) > 0:
                    continue  # still in use: the rollout is not over
                ray.kill(other)
            except Exception as exc:  # gone meanwhile, or not answering: look again next round
                log.debug("could not retire %s: %s", name, type(exc).__name__)
                continue
            log.warning("retired placement actor %s of an earlier config", name)
        if self._metrics_server is None:
            self._serve_metrics(log.info)

    def _poll_serve(self) -> None:
        """Replica counts and states of each substrate deployment, from Serve, every
        ``SERVE_POLL_S``; each substrate's target, starting and stopping replicas go to the fleet
        state (``FleetState.set_serve_replicas``: a replica Serve is stopping adds no capacity from
        then on). A deployment UPDATING for over a minute is flagged: an unsatisfiable label
        selector leaves it there with no message of its own. While the application is RUNNING,
        actors of earlier configs are retired (``_retire_predecessors``)."""
        names = {s.name for s in self._fleet.substrates}
        while True:
            try:
                app = _serve_details().applications.get(self._app_name)
                if app is not None and _value(app.status) == "RUNNING":
                    self._retire_predecessors()
                now = time.time()
                found = {}
                for name, dep in (app.deployments.items() if app else ()):
                    state = _value(dep.status)
                    if state == "UPDATING":
                        self._updating_since.setdefault(name, now)
                    else:
                        self._updating_since.pop(name, None)
                    stuck = now - self._updating_since.get(name, now) > 60.0
                    states: dict[str, int] = {}
                    for r in dep.replicas:
                        states[_value(r.state)] = states.get(_value(r.state), 0) + 1
                    found[name] = {
                        "status": state,
                        "replica_states": states,
                        "target_replicas": dep.target_num_replicas,
                        "message": "stuck UPDATING for over 60 s: no node satisfies its label selector?"
                        if stuck else (dep.message or None),
                    }
                    if name in names:
                        stopping = frozenset(r.replica_id for r in dep.replicas if _value(r.state) == "STOPPING")
                        self._measure_starts(name, dep.replicas, now)
                        with self._lock:
                            self._state.set_serve_replicas(name, dep.target_num_replicas,
                                                           states.get("STARTING", 0), stopping,
                                                           self._ready_at(name, dep.replicas))
                        # an actor no ingress replica syncs with (a config being replaced) has no
                        # demand to scale on, and leaves the substrate to the actor that has
                        if name in self._scalers and self.live_ingress() > 0:
                            try:
                                self._autoscale(name, dep.target_num_replicas, now)
                            except Exception:  # never let one substrate's scaler stop the poll
                                log.exception("autoscaler step for %s failed", name)
                self._serve_status = found
            except Exception as exc:  # Serve not up yet, or shutting down
                log.debug("Serve's details unavailable: %s", type(exc).__name__)
            time.sleep(SERVE_POLL_S)

    # -- autoscaling on placement demand (``inferplane.plane.autoscale``) ---------------------------
    def _init_autoscaling(self, cfg) -> None:
        """A scaler per substrate the plane autoscales (``config.sizing.plane_autoscaled``), the
        counters its demand is read from, and its gauges on the metrics registry."""
        self._scalers: dict[str, tuple[AutoscaleSettings, ScalerState]] = {}
        for s in cfg.substrates:
            if s.name in plane_autoscaled(cfg):
                self._scalers[s.name] = (settings_for(replica_counts(s.settings.replicas)), ScalerState())
        self._primary_of = {m.name: m.primary for m in self._fleet.models.values()}
        self._counter = DemandCounter()
        self._set_at: dict[str, float] = {}
        self._autoscale_status: dict[str, dict] = {}
        self._starting_since: dict[str, float] = {}
        self._start_times: dict[str, list[float]] = {}
        if self._scalers:
            self._metrics.registry.register(_AutoscaleCollector(self))

    def _measure_starts(self, name: str, replicas, now: float) -> None:
        """A replica's start time: from the poll that first saw it STARTING to the one that sees it
        RUNNING (to within ``SERVE_POLL_S``); the last ``START_TIMES_KEPT`` per substrate."""
        for r in replicas:
            state, rid = _value(r.state), r.replica_id
            if state == "STARTING":
                self._starting_since.setdefault(rid, now)
            elif rid in self._starting_since:
                since = self._starting_since.pop(rid)
                if state == "RUNNING":
                    kept = self._start_times.setdefault(name, [])
                    kept.append(now - since)
                    del kept[:-START_TIMES_KEPT]

    def _ready_at(self, name: str, replicas) -> float | None:
        """When ``name``'s first starting replica should admit: the poll that first saw it STARTING
        plus the longest start measured for the substrate (None: none starting, or none measured
        yet, so a class that holds while scaling up spills until a start has been measured)."""
        measured = self._start_times.get(name)
        if not measured:
            return None
        since = [self._starting_since[r.replica_id] for r in replicas if r.replica_id in self._starting_since]
        return min(since) + max(measured) if since else None

    def _demand(self, name: str, now: float) -> DemandSample:
        """What placement asked of ``name``: running and held now, and since the last sample the
        requests placed on it and those spilled off it or refused because it was full."""
        with self._lock:
            published = self._state.snapshot(now)
        placed = sum(v for k, v in self._metrics.counter_totals("placements").items() if k[3] == name)
        overflowed = sum(v for k, v in self._metrics.counter_totals("spillovers").items()
                         if k[0] == name and k[2] == OVERFLOW_SPILLOVER)
        overflowed += sum(v for k, v in self._metrics.counter_totals("rejections").items()
                          if k[0] in OVERFLOW_REFUSALS and self._primary_of.get(k[2]) == name)
        return self._counter.sample(now, published, self._fleet.index[name], name, placed, overflowed)

    def _autoscale(self, name: str, serve_target: int, now: float) -> None:
        """One step of ``name``'s scaler; a changed target goes to the Serve controller's
        ``update_deployment_replicas``, the call the dashboard's scale API makes."""
        settings, state = self._scalers[name]
        sample = self._demand(name, now)
        if serve_target != state.target and now - self._set_at.get(name, -SET_SETTLE_S) < SET_SETTLE_S:
            serve_target = None  # Serve's details may not show the plane's own change yet: not a manual scale
        state, decision = step(state, sample, serve_target, settings)
        if decision.changed:
            try:
                _scale_deployment(self._app_name, name, decision.target)
                self._set_at[name] = now
                log.warning("autoscaled %s to %d replicas: %s", name, decision.target, decision.reason)
            except Exception as exc:  # keep the old target; the next step asks again
                log.warning("could not scale %s to %d: %s", name, decision.target, exc)
                state = ScalerState(target=serve_target, reason=f"scale to {decision.target} failed: "
                                                                f"{type(exc).__name__}")
        self._scalers[name] = (settings, state)
        status = {"target": decision.target, "wanted": decision.wanted, "demand": round(decision.demand, 2),
                  "mode": decision.mode, "reason": decision.reason, "min": settings.min_replicas,
                  "max": settings.max_replicas, "target_per_replica": settings.target_per_replica,
                  "sample": {"running": sample.running, "held": sample.held, "admitted": sample.admitted,
                             "overflowed": sample.overflowed}}
        if decision.changed:
            status["last_change_at_s"] = now
        elif name in self._autoscale_status:
            status["last_change_at_s"] = self._autoscale_status[name].get("last_change_at_s")
        self._autoscale_status[name] = status

    def started_at_s(self) -> float:
        return self._started_at_s

    def pid(self) -> int:
        """This actor's process id (tests watch the plane's own processes)."""
        return os.getpid()


SERVE_POLL_S = 1.0
"""How often the actor reads Serve's replica states (the bound on how long a replica Serve has begun
to stop may still count as capacity), and the autoscaler's sample interval."""
START_TIMES_KEPT = 5
SET_SETTLE_S = 5.0
"""For this long after the plane sets a target, a different one in Serve's details is taken for a
lagging read, not a manual scale."""


def _scale_deployment(app_name: str, name: str, target: int) -> None:
    """Set a deployment's target replicas through the Serve controller's
    ``update_deployment_replicas``: the call the dashboard's ``POST .../deployments/{name}/scale``
    makes (Ray 2.60 has no public Python API for it); it needs the application's
    ``external_scaler_enabled``. In-cluster: no dashboard, no token."""
    from ray.serve._private.common import DeploymentID
    from ray.serve.context import _get_global_client

    controller = _get_global_client()._controller
    ray.get(controller.update_deployment_replicas.remote(DeploymentID(name=name, app_name=app_name), target),
            timeout=10)


class _AutoscaleCollector:
    """``inferplane_substrate_autoscale_replicas{substrate,kind=target|wanted}``,
    ``inferplane_substrate_autoscale_demand_requests{substrate}`` and
    ``inferplane_substrate_autoscale_mode{substrate,mode}`` (1 for the current mode; the reason in
    words is in ``inferplane status``)."""

    def __init__(self, actor: PlacementActor) -> None:
        self._actor = actor

    def describe(self) -> list:
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        replicas = GaugeMetricFamily("inferplane_substrate_autoscale_replicas",
                                     "The plane's autoscaler: the replicas it asks Serve for (target) and those "
                                     "the last demand sample wanted.", labels=("substrate", "kind"))
        demand = GaugeMetricFamily("inferplane_substrate_autoscale_demand_requests",
                                   "Placement demand on an autoscaled substrate: running + held + spilled or "
                                   "refused because it was full (as concurrent requests).", labels=("substrate",))
        mode = GaugeMetricFamily("inferplane_substrate_autoscale_mode",
                                 "The autoscaler's current mode (1): steady, up, down, up_pending, down_pending, "
                                 "manual_hold or waiting.", labels=("substrate", "mode"))
        for name, st in sorted(dict(self._actor._autoscale_status).items()):
            if st["target"] is not None:
                replicas.add_metric((name, "target"), st["target"])
            replicas.add_metric((name, "wanted"), st["wanted"])
            demand.add_metric((name,), st["demand"])
            mode.add_metric((name, st["mode"]), 1)
        yield replicas
        yield demand
        yield mode


def _value(state) -> str:
    return str(getattr(state, "value", state))


def _serve_details():
    """Serve's instance details (what ``serve.status()`` and the dashboard read), with each
    deployment's target replica count and every replica's id and state."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeInstanceDetails

    return ServeInstanceDetails(**_get_global_client().get_serve_details())


def _actor_names(app_name: str) -> list[str]:
    """The named placement actors of ``app_name`` on this cluster, one per config deployed. Matched
    exactly (``actor_name``'s shape), never by prefix: app `a`'s prefix is also app `a-b`'s."""
    pattern = re.compile(rf"inferplane-placement-{re.escape(app_name)}-[0-9a-f]{{12}}")
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and pattern.fullmatch(a["name"])]


def current_actor(app_name: str) -> ray.actor.ActorHandle:
    """The placement actor of the config deployed last: the only one once a rollout has finished
    (the new actor retires its predecessors), the most recently started one during it."""
    names = _actor_names(app_name)
    if not names:
        raise ValueError(f"no placement actor for app `{app_name}` on this cluster; is the plane running?")
    actors = [ray.get_actor(n, namespace=NAMESPACE) for n in names]
    if len(actors) == 1:
        return actors[0]
    started = ray.get([a.started_at_s.remote() for a in actors], timeout=10)
    return max(zip(started, actors), key=lambda pair: pair[0])[1]


def remove_actors(app_name: str) -> None:
    """Kill every placement actor of ``app_name`` (detached: nothing else removes them)."""
    for name in _actor_names(app_name):
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))
        except ValueError:  # gone meanwhile
            pass


def get_or_create(app_name: str, config_text: str) -> ray.actor.ActorHandle:
    """The application's actor, created by whichever replica asks first (race-free)."""
    return PlacementActor.options(
        name=actor_name(app_name, config_text),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
    ).remote(config_text, app_name)
