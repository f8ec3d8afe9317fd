"""The PlacementActor: the single placement authority, a named Ray actor.

A thin wrapper around ``inferplane.fleet_state.FleetState``. Ingress replicas call ``sync`` every
``ingress.snapshot_refresh_ms`` to report their in-flight counts and outcomes and receive the current
snapshot; substrate replicas call ``report_substrate`` with their adapter's load (their heartbeat).
Ray restarts the actor after a crash (``max_restarts=-1``); it rebuilds its state from the config
and the reports that resume within one interval, while ingress replicas keep placing on their last
snapshot up to the policy's snapshot staleness bound.

One actor per application, named after it (``actor_name``), for the application's life: a changed
config (a redeploy, ``inferplane models apply``) is applied to it (``apply``), which rebuilds the
fleet and policy and keeps the placement state of every substrate that remains
(``FleetState.reconfigured``). The config applied last is kept in Ray's internal key-value store,
so a restart after a crash comes back with it, not with the config the actor was first created
with. While Serve rolls ingress replicas over to a new config, a replica still running an earlier
one gets the current signals in its own fleet's order (a substrate its config has and the current
one lacks: no signals, so not eligible).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time

import ray

from inferplane.config import build, parse_config
from inferplane.config.sizing import plane_autoscaled, replica_counts
from inferplane.health import settings_from_policy
from inferplane.placement.signals import SubstrateSignals
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


def actor_name(app_name: str) -> str:
    """One actor per application: a changed config is applied to it (``apply``), never a new actor."""
    return f"inferplane-placement-{app_name}"


FLEETS_KEPT = 4
"""Earlier configs whose ingress replicas still get snapshots in their own fleet's order (a rollout
replaces them within seconds; more than this many applies during one is not expected)."""


def _kv_key(app_name: str) -> str:
    return f"inferplane/{app_name}/applied-config"


def _stored_config(app_name: str) -> dict | None:
    """The config applied last to ``app_name``'s actor (``apply``), if any: {"text", "files", "applied_at_s"}."""
    from ray.experimental import internal_kv

    try:
        raw = internal_kv._internal_kv_get(_kv_key(app_name), namespace=NAMESPACE)
    except Exception as exc:  # no GCS connection (a unit test): nothing stored
        log.debug("no stored config: %s", type(exc).__name__)
        return None
    return None if raw is None else json.loads(raw)


def _store_config(app_name: str, stored: dict) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(_kv_key(app_name), json.dumps(stored), overwrite=True, namespace=NAMESPACE)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=64)
class PlacementActor:
    def __init__(self, config_text: str, app_name: str = "inferplane", files: list | None = None) -> None:
        stored = _stored_config(app_name)
        if stored is not None:  # restarted after a crash: the config applied last, not the first
            config_text, files = stored["text"], stored.get("files")
        built = build(parse_config(config_text, source="<deployed config>"))
        self._app_name = app_name
        self._name = actor_name(app_name)
        self._config_text = config_text
        self._files = list(files or [])
        self._applied_at_s = None if stored is None else stored.get("applied_at_s")
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
        self._policy_hash = built.policy.policy_hash
        self._fleets = {self._policy_hash: built.fleet}
        """Policy hash -> fleet of the configs applied here, the current one last (``FLEETS_KEPT``)."""
        drift = drift_settings(built.config.policy.health)
        self._metrics = PlaneMetrics(LabelVocabulary.of(built.fleet, built.policy), drift)
        # ``residual_drift: penalize``: the detector's floors reach placement through each snapshot
        # (``FleetState.set_drift_floors``), and every decision predicted with one says so.
        self._penalize_drift = drift.penalize
        self._bound = built.policy.signal_staleness_bound_s
        self._telemetry = built.config.telemetry
        self._metrics_server = None
        self._serve_metrics(log.error)
        self._init_autoscaling(built.config)
        threading.Thread(target=self._poll_serve, name="inferplane-serve-status", daemon=True).start()

    def apply(self, config_text: str, files: list | None = None) -> dict:
        """Make ``config_text`` this application's config, keeping the placement state of every
        substrate it still has (``FleetState.reconfigured``): signals, breakers, outcome windows,
        budgets' spend, learnt output lengths, the snapshot version. ``files``: the files it was
        merged from, as ``[{"path", "kind", "team", "text"}]`` (``models list`` and ``models apply``
        read them back). Returns what ``config`` returns; an unchanged text changes nothing.
        Raises ``ConfigError`` for a config that does not validate (nothing changes then)."""
        if config_text == self._config_text:
            if files is not None and list(files) != self._files:  # the same config, now with its files
                self._files = list(files)
                _store_config(self._app_name, {"text": config_text, "files": self._files,
                                               "applied_at_s": self._applied_at_s})
            return self.config()
        built = build(parse_config(config_text, source="<applied config>"))
        now = time.time()
        with self._lock:
            self._state = self._state.reconfigured(
                built.fleet, built.policy.policy_hash, built.policy.signal_staleness_bound_s,
                settings_from_policy(built.config.policy.health), built.config.policy.health.latency_window_ms / 1000.0,
                {t.name: t.budget.period for t in built.config.tenants if t.budget})
            self._fleet = built.fleet
            self._policy_hash = built.policy.policy_hash
            self._fleets.pop(self._policy_hash, None)
            self._fleets[self._policy_hash] = built.fleet
            while len(self._fleets) > FLEETS_KEPT + 1:
                del self._fleets[next(iter(self._fleets))]
            self._bound = built.policy.signal_staleness_bound_s
            self._penalize_drift = drift_settings(built.config.policy.health).penalize
            self._metrics.set_vocabulary(LabelVocabulary.of(built.fleet, built.policy))
            self._config_text, self._files, self._applied_at_s = config_text, list(files or []), now
            self._update_autoscaling(built.config)
        _store_config(self._app_name, {"text": config_text, "files": self._files, "applied_at_s": now})
        log.warning("applied a new config (policy %s, %d substrates, %d models)", self._policy_hash,
                    len(built.fleet.substrates), len(built.fleet.models))
        return self.config()

    def config(self) -> dict:
        """The config in force: its text, the files it was merged from, its policy hash and when it
        was applied (None: the one the actor was created with)."""
        return {"text": self._config_text, "files": self._files, "policy_hash": self._policy_hash,
                "applied_at_s": self._applied_at_s}

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
             reclaiming: dict | None = None, demand: dict | None = None,
             policy_hash: str | None = None, lanes: dict | None = None) -> PublishedSnapshot | None:
        """Record an ingress replica's report and metrics; return the current snapshot (None while
        warming up). ``policy_hash``: the replica's config; one applied here before the current
        gets the snapshot in its fleet's order (``_for_config``), an unknown one None."""
        now = time.time()
        with self._lock:
            self._state.report_ingress(ingress_id, in_flight, outcomes, now, snapshot_version=snapshot_version,
                                       snapshot_age_s=snapshot_age_s, zone=zone, tenant_in_flight=tenant_in_flight,
                                       reclaiming=reclaiming, demand=demand, lanes=lanes)
            if spend_usd:
                self._state.add_spend(spend_usd, now)
            up = now - self._started_at_s
            warming = up < ACTOR_WARMUP_S or (up < self._bound and not self._state.all_reporting())
            if self._penalize_drift and not warming:
                self._state.set_drift_floors(self._metrics.drift_floors(now))
            published = None if warming else self._state.snapshot(now)
            replicas = {name: counts for name, (counts, _) in self._state.capacities().items()}
            replica_seconds = self._state.replica_seconds(now)
            fleet = self._fleet  # the published snapshot's, also while a config is being applied
        self._metrics.set_replicas(replicas, replica_seconds)
        if metrics:
            self._metrics.apply_batch(ingress_id, metrics)
        if snapshot_version is not None and snapshot_age_s is not None:
            self._metrics.set_ingress(ingress_id, snapshot_version, snapshot_age_s, now_s=now)
        self._metrics.expire_ingress(now, self._bound)
        if published is not None:
            self._metrics.set_signals(FleetSnapshot(published.version, published.taken_at_s, fleet,
                                                    published.signals, tenant_spend_usd=published.tenant_spend_usd),
                                      now)
            if policy_hash is not None and policy_hash != published.policy_hash:
                return self._for_config(published, policy_hash, fleet)
        return published

    def _for_config(self, published: PublishedSnapshot, policy_hash: str, current) -> PublishedSnapshot | None:
        """``published`` (of fleet ``current``) for a replica still running an earlier config (during
        a rollout): the same signals, in its fleet's order; a substrate the current config lacks has
        none (not eligible)."""
        fleet = self._fleets.get(policy_hash)
        if fleet is None:
            return None
        by_name = dict(zip((s.name for s in current.substrates), published.signals))
        return dataclasses.replace(published, policy_hash=policy_hash, signals=tuple(
            by_name.get(s.name, SubstrateSignals()) for s in fleet.substrates))

    def leave(self, ingress_id: str) -> bool:
        """An ingress replica stopping gracefully, after its last sync (``FleetState.leave_ingress``)."""
        with self._lock:
            left = self._state.leave_ingress(ingress_id)
        log.info("ingress replica %s %s", ingress_id, "left" if left else "left with requests in flight: kept until "
                 "the staleness bound")
        return left

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

    def _take_metrics_port(self) -> None:
        """Serve metrics if this actor could not bind the port at start (a previous process of it
        still held it)."""
        if self._metrics_server is None:
            self._serve_metrics(log.info)

    def _poll_serve(self) -> None:
        """Replica counts and states of each substrate deployment, from Serve, every
        ``SERVE_POLL_S``; each substrate's target, starting and stopping replicas go to the fleet
        state (``FleetState.set_serve_replicas``: a replica Serve is stopping adds no capacity from
        then on). A deployment UPDATING for over a minute is flagged: an unsatisfiable label
        selector leaves it there with no message of its own. While the application is RUNNING,
        the metrics port is taken if it was not."""
        while True:
            try:
                names = {s.name for s in self._fleet.substrates}
                app = _serve_details().applications.get(self._app_name)
                if app is not None and _value(app.status) == "RUNNING":
                    self._take_metrics_port()
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
        self._collecting = False
        if self._scalers:
            self._metrics.registry.register(_AutoscaleCollector(self))
            self._collecting = True

    def _update_autoscaling(self, cfg) -> None:
        """After ``apply``: a scaler for each substrate the plane now autoscales, each kept one with
        its state; a removed substrate's is dropped."""
        wanted = plane_autoscaled(cfg)
        by_name = {s.name: s for s in cfg.substrates}
        self._scalers = {name: self._scalers.get(name) or (settings_for(replica_counts(by_name[name].settings.replicas)),
                                                           ScalerState())
                         for name in wanted}
        self._autoscale_status = {k: v for k, v in self._autoscale_status.items() if k in wanted}
        self._primary_of = {m.name: m.primary for m in self._fleet.models.values()}
        if self._scalers and not self._collecting:
            self._metrics.registry.register(_AutoscaleCollector(self))
            self._collecting = True

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


def current_actor(app_name: str) -> ray.actor.ActorHandle:
    """The application's placement actor."""
    try:
        return ray.get_actor(actor_name(app_name), namespace=NAMESPACE)
    except ValueError:
        raise ValueError(f"no placement actor for app `{app_name}` on this cluster; is the plane running?") from None


def remove_actors(app_name: str) -> None:
    """Kill the placement actor of ``app_name`` (detached: nothing else removes it) and forget its config."""
    from ray.experimental import internal_kv

    try:
        ray.kill(ray.get_actor(actor_name(app_name), namespace=NAMESPACE))
    except ValueError:  # gone meanwhile
        pass
    try:
        internal_kv._internal_kv_del(_kv_key(app_name), namespace=NAMESPACE)
    except Exception as exc:  # no GCS: nothing stored
        log.debug("could not forget the applied config: %s", type(exc).__name__)


def get_or_create(app_name: str, config_text: str) -> ray.actor.ActorHandle:
    """The application's actor, created by whichever replica asks first (race-free); an existing
    actor keeps its config (``apply`` changes it)."""
    return PlacementActor.options(
        name=actor_name(app_name),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
    ).remote(config_text, app_name)


def apply_config(app_name: str, config_text: str, files: list | None = None, timeout_s: float = 30.0) -> dict:
    """Make ``config_text`` the application's config: create its actor with it, or apply it to the
    running one (``PlacementActor.apply``). What deploys a config calls, before Serve rolls out."""
    actor = get_or_create(app_name, config_text)
    return ray.get(actor.apply.remote(config_text, files), timeout=timeout_s)
