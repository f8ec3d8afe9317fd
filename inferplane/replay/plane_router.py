"""inferplane itself in the simulator: the plane's placement path, on simulated time.

What runs is the plane's own code, not a model of it:

- the placement actor's state is ``inferplane.fleet_state.FleetState`` (the same class the Ray
  actor wraps), built as ``deployments/placement_actor.py`` builds it: circuit breakers from
  ``policy.health``, its latency window, the tenants' budget periods. Each substrate reports its
  adapter's load to it every ``heartbeat_s`` (``SubstrateReport``, as ``deployments/substrate.py``
  does every 0.25 s), except while it is unreachable (an outage): then its signals age and go
  stale, as in the plane;
- each simulated ingress replica syncs with it every ``ingress.snapshot_refresh_ms`` (reporting
  its in-flight counts, its outcomes, the attributed cost of its finished requests by tenant
  (``telemetry.cost.request_cost``, which budgets read), and receiving the snapshot; the actor
  publishes nothing in its first ``ACTOR_WARMUP_S``), and places every request with
  ``place(request, snapshot, policy)`` on its local view: the published snapshot plus its own
  dispatches since (the rule of ``deployments/ingress.py``'s ``_local_view``, restated here
  because that module imports Ray);
- a snapshot older than ``policy.snapshot_staleness_bound_s`` fails closed (503);
- a failure before the first token re-places with ``PlacementRequest.retry_excluding(failed)``,
  the request keeping its arrival time, exactly as ``_place_and_dispatch`` does; a retryable one
  is reported as a failed outcome (with its Retry-After), a bad request (4xx) is not: it is the
  request's fault, not the substrate's health.

Requests go to the ingress replicas in turn (``request.index % replicas``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

from inferplane.config import BuiltConfig
from inferplane.fleet_state import ACTOR_WARMUP_S, FleetState, Outcome, SubstrateReport
from inferplane.health import settings_from_policy
from inferplane.placement import FleetSnapshot, PlacementRequest, place
from inferplane.replay.attempt import Failure
from inferplane.replay.router import Periodic, Placement
from inferplane.replay.workload import ReplayRequest
from inferplane.telemetry.cost import request_cost

"""The actor's warm-up after a start (``deployments/placement_actor.py``)."""


class _IngressReplica:
    """One ingress replica's placement state (``deployments/ingress.py``, without Ray)."""

    __slots__ = ("id", "in_flight", "outcomes", "spend", "snapshot", "reported", "view", "dirty", "index")

    def __init__(self, replica_id: str, index: Mapping[str, int]) -> None:
        self.id = replica_id
        self.in_flight: Counter[str] = Counter()
        self.outcomes: list[Outcome] = []
        self.spend: Counter[str] = Counter()
        self.snapshot: FleetSnapshot | None = None
        self.reported: dict[str, int] = {}
        self.view: FleetSnapshot | None = None
        self.dirty = True
        self.index = index

    def local_view(self) -> FleetSnapshot:
        """The published snapshot with this replica's dispatches since then applied to in_flight."""
        if self.dirty or self.view is None:
            self.view = self.snapshot.with_dispatches(self.reported, self.in_flight)
            self.dirty = False
        return self.view


class PlaneRouter:
    name = "inferplane"

    def __init__(self, built: BuiltConfig, loads: Mapping[str, Callable[[float], SubstrateReport | None]], *,
                 heartbeat_s: float, start_s: float) -> None:
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
        scaling = cfg.ingress.replicas.autoscaling
        n = scaling.min_replicas if scaling is not None else (cfg.ingress.replicas.num_replicas or 1)
        index = {s.name: s.index for s in built.fleet.substrates}
        self._replicas = tuple(_IngressReplica(f"ingress-{i}", index) for i in range(max(1, n)))

    # -- periodic: heartbeats and syncs -------------------------------------------------------
    def periodic(self) -> tuple[Periodic, ...]:
        out = []
        names = list(self._loads)
        for i, name in enumerate(names):
            phase = self._heartbeat_s * i / max(1, len(names))
            out.append(Periodic(self._heartbeat_s, self._start_s + phase, self._heartbeat(name)))
        for i, replica in enumerate(self._replicas):
            phase = self._refresh_s * (i + 0.5) / len(self._replicas)
            out.append(Periodic(self._refresh_s, self._start_s + phase, self._sync(replica)))
        return tuple(out)

    def _heartbeat(self, name: str) -> Callable[[float], None]:
        load = self._loads[name]

        def beat(now: float) -> None:
            report = load(now)
            if report is not None:
                self._state.report_substrate(name, "replica-0", report, now)
        return beat

    def _sync(self, replica: _IngressReplica) -> Callable[[float], None]:
        def sync(now: float) -> None:
            reported = dict(replica.in_flight)
            outcomes, replica.outcomes = replica.outcomes, []
            spend, replica.spend = replica.spend, Counter()
            current = replica.snapshot
            self._state.report_ingress(replica.id, reported, outcomes, now,
                                       snapshot_version=None if current is None else current.version,
                                       snapshot_age_s=None if current is None else now - current.taken_at_s,
                                       zone=self._zone)
            if spend:
                self._state.add_spend(dict(spend), now)
            if now - self._start_s < ACTOR_WARMUP_S:
                return
            published = self._state.snapshot(now)
            replica.snapshot = FleetSnapshot(published.version, published.taken_at_s, self._fleet, published.signals,
                                             published.tenant_spend_usd)
            replica.reported = reported
            replica.dirty = True
        return sync

    # -- the request path ---------------------------------------------------------------------
    def _replica(self, request: ReplayRequest) -> _IngressReplica:
        return self._replicas[request.index % len(self._replicas)]

    def placement_request(self, request: ReplayRequest, tried: tuple[str, ...]) -> PlacementRequest:
        preq = PlacementRequest(
            request_id=request.request_id, tenant=request.tenant, model=request.model,
            sla_class=request.sla_class, input_tokens=request.input_tokens,
            max_output_tokens=request.max_tokens, arrived_at_s=request.arrival_s,
            ingress_region=self._region, ingress_zone=self._zone,
        )
        for failed in tried:
            preq = preq.retry_excluding(failed)
        return preq

    def place(self, request: ReplayRequest, tried: tuple[str, ...], now_s: float) -> Placement:
        replica = self._replica(request)
        snap = replica.snapshot
        if snap is None:
            return Placement(None, rejection="placement_unavailable")
        if now_s - snap.taken_at_s > self._policy.snapshot_staleness_bound_s:
            return Placement(None, rejection="placement_unavailable")
        decision = place(self.placement_request(request, tried), replica.local_view(), self._policy)
        if not decision.placed:
            return Placement(None, rejection=decision.rejection_code.value, decision=decision)
        return Placement(decision.substrate, spillover_logged=decision.spillover, decision=decision)

    def dispatched(self, request: ReplayRequest, substrate: str, now_s: float) -> None:
        replica = self._replica(request)
        replica.in_flight[substrate] += 1
        replica.dirty = True

    def finished(self, request: ReplayRequest, substrate: str, dispatched_s: float, first_token_s: float,
                 output_tokens: int, now_s: float) -> None:
        replica = self._replica(request)
        replica.in_flight[substrate] -= 1
        replica.dirty = True
        tpot = None if output_tokens < 2 else (now_s - first_token_s) / (output_tokens - 1)
        replica.outcomes.append(Outcome(substrate, True, first_token_s - dispatched_s, tpot, now_s))
        cost = request_cost(self._fleet.substrate(substrate), request.input_tokens, output_tokens,
                            now_s - request.arrival_s, self._region)
        replica.spend[request.tenant] += cost.total_usd

    def failed(self, request: ReplayRequest, substrate: str, failure: Failure, retry_after_s: float | None,
               now_s: float) -> None:
        replica = self._replica(request)
        replica.in_flight[substrate] -= 1
        replica.dirty = True
        if failure.retryable:
            replica.outcomes.append(Outcome(substrate, False, None, None, now_s, retry_after_s))
