"""inferplane itself in the simulator: the plane's own code on simulated time.

Nothing of the plane is restated here; this module only wires it to the simulator's clock:

- the placement actor's state is ``inferplane.fleet_state.FleetState`` (the class the Ray actor
  wraps), built as ``deployments/placement_actor.py`` builds it. Each substrate reports its
  adapter's load to it every ``heartbeat_s`` (as ``deployments/substrate.py`` does), except while
  it is unreachable (an outage): then its signals age and go stale, as in the plane;
- each simulated ingress replica is an ``inferplane.plane.state.ReplicaState``, the class the
  Serve ingress runs: it syncs with the authority every ``ingress.snapshot_refresh_ms`` (its
  in-flight counts, outcomes and attributed spend out; the snapshot back; nothing published during
  the actor's ``ACTOR_WARMUP_S``), places on its local view and fails closed past the staleness
  bound;
- every request runs the ingress's ``AttemptLoop``: placed, dispatched under a lease, re-placed at
  the time of a failure before its first byte, answered 400 (not retried, not held against the
  substrate) when the substrate refuses it as invalid;
- a first placement that only a wait could change goes to the replica's ``HoldQueue`` (priority,
  fair shares, deadlines), held in the simulator (``router.HELD``) until the queue dispatches or
  refuses it: pumped when the replica's state says capacity may have freed, expired at its
  give-up time, as the ingress does on its event loop.

Requests go to the ingress replicas in turn (``request.index % replicas``).

Autoscaling (a substrate with ``replicas.autoscaling`` that the plane scales,
``config.sizing.plane_autoscaled``): every ``SERVE_POLL_S`` of simulated time the router does what
the placement actor does at each poll of Serve: it samples the substrate's demand with the actor's
``plane.autoscale.DemandCounter`` (running and held from the authority's snapshot; placements and
overflow counted from the decisions it hands out, as the ingress replicas' metric counters count
them), steps ``plane.autoscale.step`` and hands a changed target to the simulator (``Host.scale``,
where a new replica starts after the scenario's start delay), and tells the authority Serve's
target and starting replicas (``FleetState.set_serve_replicas``). Such a substrate's heartbeat
speaks for its live replicas, so placement capacity follows them as in the plane. Each change is
kept in ``scaling`` (time, substrate, target, why).

Prefix-cache locality: each simulated ingress replica keeps the plane's own belief of where
prompts' blocks are cached, as the Serve ingress's does (``ReplicaState.prefix``: a
``placement.prefix.PrefixIndex``, one bounded LRU per substrate that declares a KV cache, of its
``PrefixCacheSpec.total_tokens // MOONCAKE_BLOCK_TOKENS`` blocks), fed only with the blocks of the
requests it sees answered in full (``AttemptLoop.finished``); the simulator's caches (the truth,
``substrate_sim``) never tell it what they hold. Each request is placed with its predicted hit
fractions (``PlacementRequest.prefix_hits``). With ``prefix_affinity=False`` no replica keeps a
belief: every request predicts no hit (the same policy without prefix affinity).

Each finished request becomes the plane's one ``RequestRecord`` (as the ingress closes it: times
from arrival at the ingress, the final attempt's decision, the attributed cost), fed at its finish
time to the actor's drift detector (``replay.drift_timeline``), which records when each substrate
was flagged and cleared (``drift``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from inferplane.config import BuiltConfig
from inferplane.config.sizing import plane_autoscaled, replica_counts
from inferplane.fleet_state import ACTOR_WARMUP_S, FleetState, SubstrateReport
from inferplane.health import settings_from_policy
from inferplane.placement import PlacementRequest
from inferplane.plane.attempts import AttemptLoop, Dispatch, FirstByteFailure, Refusal
from inferplane.plane.autoscale import (
    OVERFLOW_REFUSALS,
    OVERFLOW_SPILLOVER,
    DemandCounter,
    ScalerState,
    settings_for,
    step as autoscale_step,
)
from inferplane.plane.queue import HoldQueue, Waiter
from inferplane.plane.record import RequestRecord
from inferplane.plane.state import PrefixBelief, ReplicaState
from inferplane.replay.attempt import Failure
from inferplane.replay.drift_timeline import DriftTimeline
from inferplane.replay.router import HELD, Host, Periodic, Placement
from inferplane.replay.trace import MOONCAKE_BLOCK_TOKENS
from inferplane.replay.workload import ReplayRequest
from inferplane.telemetry.cost import request_cost
from inferplane.telemetry.drift import settings_from_policy as drift_settings_from_policy


SERVE_POLL_S = 1.0
"""How often the placement actor polls Serve and steps its autoscaler
(``deployments.placement_actor.SERVE_POLL_S``)."""


class PlaneRouter:
    name = "inferplane"

    def __init__(self, built: BuiltConfig, loads: Mapping[str, Callable[[float], SubstrateReport | None]], *,
                 heartbeat_s: float, start_s: float, drift: bool = False, prefix_affinity: bool = True,
                 prefix_belief: PrefixBelief | None = None) -> None:
        """``drift``: feed the plane's drift detector with every finished request (``self.drift``,
        None without). ``prefix_affinity``: keep the prefix-cache belief and place with it (module
        docstring); False places every request as predicting no hit. ``prefix_belief``: a belief to
        place with instead of the learnt ``PrefixIndex`` (the replay's oracle, ``prefix_oracle``),
        shared by the simulated ingress replicas."""
        cfg = built.config
        self._fleet = built.fleet
        self._policy = built.policy
        self._region = built.ingress_region
        self._zone = built.ingress_zone
        self._loads = loads
        self._heartbeat_s = heartbeat_s
        self._refresh_s = cfg.ingress.snapshot_refresh_ms / 1000.0
        self._start_s = start_s
        health = cfg.policy.health
        self._state = FleetState(built.fleet, built.policy.policy_hash, built.policy.signal_staleness_bound_s,
                                 settings_from_policy(health), health.latency_window_ms / 1000.0,
                                 {t.name: t.budget.period for t in cfg.tenants if t.budget})
        n = replica_counts(cfg.ingress.replicas).serving_at_start
        self._replicas = tuple(ReplicaState(built.fleet, built.policy, replica_id=f"ingress-{i}",
                                            prefix_block_tokens=MOONCAKE_BLOCK_TOKENS if prefix_affinity else None,
                                            prefix_belief=prefix_belief) for i in range(n))
        self._open: dict[int, tuple[AttemptLoop, Dispatch | Refusal]] = {}  # request index -> loop, last step
        self._host: Host | None = None
        self._queues: tuple[HoldQueue, ...] = ()
        self._held: dict[Waiter, ReplayRequest] = {}
        self._pump_due = [False] * n
        self._config_hash = built.policy.policy_hash
        self.drift_penalty_requested = health.residual_drift == "penalize"
        self.drift = DriftTimeline(drift_settings_from_policy(health)) if drift else None
        if not prefix_affinity:
            self.name = "inferplane-no-prefix"
        autoscaled = plane_autoscaled(cfg)
        self._scalers = {s.name: (settings_for(replica_counts(s.settings.replicas)), ScalerState())
                         for s in cfg.substrates if s.name in autoscaled}
        self._serve_target = {s.name: replica_counts(s.settings.replicas).serving_at_start
                              for s in cfg.substrates if s.name in autoscaled}
        self._demand = DemandCounter()
        self._placed: dict[str, int] = dict.fromkeys(self._scalers, 0)
        self._overflowed: dict[str, int] = dict.fromkeys(self._scalers, 0)
        self.scaling: list[tuple[float, str, int, str]] = []
        """Each autoscaling change: (time, substrate, new target, why)."""

    def attach(self, host: Host) -> None:
        self._host = host
        self._queues = tuple(
            HoldQueue(replica, notify=lambda i=i: self._schedule_pump(i), resolved=self._resolved)
            for i, replica in enumerate(self._replicas))

    def _schedule_pump(self, i: int) -> None:
        if not self._pump_due[i]:
            self._pump_due[i] = True
            self._host.at(self._host.now_s, self._pump, i)

    def _pump(self, now: float, i: int) -> None:
        self._pump_due[i] = False
        self._queues[i].pump(now)

    def _expire(self, now: float, waiter: Waiter, i: int) -> None:
        again = self._queues[i].expire(waiter, now)
        if again is not None:
            self._host.at(again, self._expire, waiter, i)

    def _resolved(self, waiter: Waiter) -> None:
        request = self._held.pop(waiter)
        step = waiter.outcome
        if self._scalers:
            self._count(request, step)
        if isinstance(step, Refusal):
            self._open.pop(request.index, None)
            placement = Placement(None, rejection=step.code, decision=step.decision)
        else:
            self._open[request.index] = (waiter.loop, step)
            placement = Placement(step.substrate, spillover_logged=step.decision.spillover, decision=step.decision)
        self._host.resume(request, placement, waiter.resolved_s)

    # -- periodic: heartbeats and syncs -------------------------------------------------------
    def periodic(self) -> tuple[Periodic, ...]:
        out = []
        names = list(self._loads)
        for i, name in enumerate(names):
            phase = self._heartbeat_s * i / max(1, len(names))
            out.append(Periodic(self._heartbeat_s, self._start_s + phase, self._heartbeat(name)))
        for i, replica in enumerate(self._replicas):
            phase = self._refresh_s * (i + 0.5) / len(self._replicas)
            out.append(Periodic(self._refresh_s, self._start_s + phase, self._sync(f"ingress-{i}", replica)))
        if self._scalers:
            out.append(Periodic(SERVE_POLL_S, self._start_s, self._autoscale))
        return tuple(out)

    def _heartbeat(self, name: str) -> Callable[[float], None]:
        load = self._loads[name]
        if name in self._scalers:
            return self._elastic_heartbeat(name, load)
        # One simulated report stands for every replica the config gives the substrate: all live.
        replicas = self._fleet.substrate(name).replicas or 1
        # ``load`` returns the same report while what it says is unchanged; so is its copy for
        # every replica then (made once per change, not per heartbeat).
        last: list[SubstrateReport | None] = [None, None]  # [load's report, the one sent]

        def beat(now: float) -> None:
            report = load(now)
            if report is not None:
                if replicas != 1:
                    if report is last[0]:
                        report = last[1]
                    else:
                        last[0], report = report, replace(report, replicas=replicas)
                        last[1] = report
                self._state.report_substrate(name, "replica-0", report, now)
        return beat

    def _elastic_heartbeat(self, name: str, load) -> Callable[[float], None]:
        """An autoscaled substrate's report speaks for its live replicas (``Host.replicas``)."""
        def beat(now: float) -> None:
            report = load(now)
            if report is not None:
                live = self._host.replicas(name)[0]
                if report.replicas != live:
                    report = replace(report, replicas=live)
                self._state.report_substrate(name, "replica-0", report, now)
        return beat

    # -- autoscaling (module docstring) ---------------------------------------------------------
    def _count(self, request: ReplayRequest, step) -> None:
        """A placement or a final refusal, counted as the metrics count them for the actor."""
        if isinstance(step, Refusal):
            if step.code in OVERFLOW_REFUSALS:
                route = self._fleet.resolve_model(request.model)
                if route is not None and route.primary in self._overflowed:
                    self._overflowed[route.primary] += 1
            return
        d = step.decision
        if d.substrate in self._placed:
            self._placed[d.substrate] += 1
        if d.spillover and d.spillover_reason == OVERFLOW_SPILLOVER and d.primary in self._overflowed:
            self._overflowed[d.primary] += 1

    def _autoscale(self, now: float) -> None:
        published = self._state.snapshot(now)
        for name, (settings, state) in self._scalers.items():
            sample = self._demand.sample(now, published, self._fleet.index[name], name,
                                         self._placed[name], self._overflowed[name])
            state, decision = autoscale_step(state, sample, self._serve_target[name], settings)
            self._scalers[name] = (settings, state)
            if decision.changed:
                self._serve_target[name] = decision.target
                self._host.scale(name, decision.target, now)
                self.scaling.append((now, name, decision.target, decision.reason))
            self._state.set_serve_replicas(name, self._serve_target[name], self._host.replicas(name)[1],
                                           frozenset())

    def _sync(self, replica_id: str, replica: ReplicaState) -> Callable[[float], None]:
        def sync(now: float) -> None:
            report = replica.take_report(now)
            self._state.report_ingress(replica_id, report.in_flight, report.outcomes, now,
                                       snapshot_version=report.snapshot_version,
                                       snapshot_age_s=report.snapshot_age_s, zone=self._zone,
                                       tenant_in_flight=report.tenant_in_flight, reclaiming=report.reclaiming,
                                       demand=report.demand, lanes=report.lanes)
            if report.spend_usd:
                self._state.add_spend(report.spend_usd, now)
            if now - self._start_s >= ACTOR_WARMUP_S:
                replica.publish(self._state.snapshot(now), report)
        return sync

    # -- the request path ---------------------------------------------------------------------
    def place(self, request: ReplayRequest, tried: tuple[str, ...], now_s: float) -> Placement:
        if tried:  # ``failed`` ran the loop's next step when the failure was reported
            loop, step = self._open[request.index]
            if isinstance(step, Waiter):
                return HELD
        else:
            i = request.index % len(self._replicas)
            loop = AttemptLoop(self._replicas[i], PlacementRequest(
                request_id=request.request_id, tenant=request.tenant, model=request.model,
                sla_class=request.sla_class, input_tokens=request.input_tokens,
                max_output_tokens=request.max_tokens, arrived_at_s=now_s,
                ingress_region=self._region, ingress_zone=self._zone), request.prefix_blocks)
            step = loop.start()
            if self._queues:
                step = self._queues[i].submit(loop, step, now_s, request.arrival_s)
                if isinstance(step, Waiter):
                    self._held[step] = request
                    self._host.at(max(step.give_up_s, now_s), self._expire, step, i)
                    return HELD
        if isinstance(step, Refusal):
            self._open.pop(request.index, None)
            if self._scalers:
                self._count(request, step)
            return Placement(None, rejection=step.code, decision=step.decision)
        self._open[request.index] = (loop, step)
        if self._scalers:
            self._count(request, step)
        return Placement(step.substrate, spillover_logged=step.decision.spillover, decision=step.decision)

    def dispatched(self, request: ReplayRequest, substrate: str, now_s: float) -> None:
        pass  # the attempt loop took the lease when it placed the request

    def finished(self, request: ReplayRequest, substrate: str, dispatched_s: float, first_token_s: float,
                 output_tokens: int, now_s: float) -> None:
        loop, _ = self._open.pop(request.index)
        loop.finished(True, first_token_s, output_tokens, now_s)  # and the replica believes its blocks cached there
        e2e = now_s - request.arrival_s
        cost = request_cost(self._fleet.substrate(substrate), request.input_tokens, output_tokens, e2e, self._region)
        i = request.index % len(self._replicas)
        self._replicas[i].add_spend(request.tenant, cost.total_usd)
        if self.drift is not None:
            self.drift.observe(RequestRecord(
                request_id=request.request_id, ingress_id=f"ingress-{i}", ingress_region=self._region,
                received_at_s=request.arrival_s, finished_at_s=now_s, tenant=request.tenant, model=request.model,
                sla_class=request.sla_class, streamed=True, decision=loop.decision,
                snapshot_age_s=loop.snapshot_age_s, status_code=200, error_code=None,
                ttft_s=first_token_s - request.arrival_s, e2e_s=e2e, input_tokens=request.input_tokens,
                output_tokens=output_tokens, cost=cost, config_hash=self._config_hash,
                dispatched_after_s=dispatched_s - request.arrival_s))

    def failed(self, request: ReplayRequest, substrate: str, failure: Failure, retry_after_s: float | None,
               now_s: float) -> None:
        loop, _ = self._open[request.index]
        step = loop.failed(FirstByteFailure(failure.value, failure.value, failure.retryable, retry_after_s), now_s)
        if failure.retryable:
            if isinstance(step, Refusal) and self._queues:  # a retry that finds no slot may wait too
                i = request.index % len(self._replicas)
                step = self._queues[i].submit(loop, step, now_s, request.arrival_s)
                if isinstance(step, Waiter):
                    self._held[step] = request
                    self._host.at(max(step.give_up_s, now_s), self._expire, step, i)
            self._open[request.index] = (loop, step)  # ``place`` is asked next
        else:
            del self._open[request.index]  # the simulator settles it as failed
