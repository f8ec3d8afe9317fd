"""The discrete-event replay: requests arrive, a router places them, substrates serve them.

One ``Simulator`` holds the fleet in simulated time (one ``SimSubstrate`` per substrate, see
``substrate_sim`` for the physics) and runs one router over one workload:

    arrival        router.place(request, tried=(), now) -> dispatch, or the request is rejected, or
                   held: the router answers later (``resume``), a dispatch or a refusal
    dispatch       router.dispatched(); the attempt is sent; a timeout is armed at
                   dispatched + min(router's per-try timeout, the substrate client's
                   ``openai_compatible.request_timeout_s``) when either exists
    first token    the timeout is disarmed (a stream that has begun is never retried)
    finish         router.finished(); the request is completed
    failure        (before the first token) router.failed(); a retryable failure asks
                   router.place(request, tried + (failed,), now) again: the plane re-places with
                   ``retry_excluding`` like its ingress, a gateway tries its next endpoint; a final
                   one (4xx) fails the request
    timeout        the attempt is abandoned on the substrate (slot or queue place freed) and
                   handled as a retryable ``timeout`` failure

Injected events switch a substrate's state at ``at_s`` and back at ``at_s + for_s``. Periodic
callbacks (the plane's heartbeats and snapshot syncs, the load sampler) run from ``start_s``, two
seconds before the first arrival so the plane has a snapshot when traffic starts, until the last
request is settled. Every request ends as exactly one ``RequestOutcome``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from inferplane.config import BuiltConfig
from inferplane.config.schema import OpenAICompatibleSubstrate
from inferplane.config.sizing import plane_autoscaled, replica_counts
from inferplane.fleet_state import SubstrateReport
from inferplane.jurisdiction import is_within
from inferplane.replay.attempt import Attempt, Failure, Phase
from inferplane.replay.clock import EventQueue
from inferplane.replay.outcome import RequestOutcome, usage_cost_usd
from inferplane.replay.router import Periodic, Placement, Router
from inferplane.replay.scenario import Event, EventKind
from inferplane.replay.substrate_sim import SimSubstrate, SubstrateCallbacks
from inferplane.replay.workload import ReplayRequest
from substrate_adapters.physics import PhysicsModel

WARMUP_S = 2.0


@dataclass(frozen=True, slots=True)
class LoadSample:
    """Per substrate (fleet order) at ``t_s``: slots held and requests waiting."""

    t_s: float
    running: tuple[int, ...]
    waiting: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SimulationResult:
    router: str
    outcomes: tuple[RequestOutcome, ...]
    """In workload order."""
    substrates: tuple[str, ...]
    slots: tuple[int, ...]
    span_s: float
    """From the first to the last arrival."""
    end_s: float
    """When the last request settled, from the first arrival."""
    load: tuple[LoadSample, ...]
    busy_slot_s: tuple[float, ...]
    events_run: int
    wall_s: float
    drift: dict | None = None
    """The plane's drift flags and deadlines-met drops (``drift_timeline.drift_section``); None for
    a baseline."""
    replica_s: tuple[float | None, ...] = ()
    """Per substrate, replica-seconds billed from the first to the last arrival: an autoscaled
    substrate's live + starting + draining replicas (``SimSubstrate.replica_seconds``), a fixed
    pool's replicas x span; None for a provider API. Empty: not known (a live run)."""
    scaling: tuple[dict, ...] = ()
    """The plane's autoscaling changes (``PlaneRouter.scaling``): at_s from the first arrival,
    substrate, target, reason."""


class _RequestState:
    __slots__ = ("request", "tried", "violation", "attempt", "held_since", "held_s", "predicted_hit")

    def __init__(self, request: ReplayRequest) -> None:
        self.request = request
        self.tried: list[str] = []
        self.violation = False
        self.attempt: Attempt | None = None
        self.held_since: float | None = None
        self.held_s = 0.0
        self.predicted_hit: float | None = None


class Simulator:
    def __init__(self, built: BuiltConfig, physics: tuple[PhysicsModel, ...], requests: tuple[ReplayRequest, ...],
                 events: tuple[Event, ...] = (), *, sample_interval_s: float = 10.0,
                 prefix_caches: tuple | None = None, replica_start_s: tuple[float, ...] | None = None) -> None:
        """``prefix_caches``: each substrate's real prefix caches, in fleet order
        (``substrate_physics.prefix_cache_for``); None: as the config declares them.
        ``replica_start_s``: per substrate, how long a new replica takes to start; a substrate the
        plane autoscales (``config.sizing.plane_autoscaled``) then runs elastic from the replicas
        Serve starts it with (``SimSubstrate.make_elastic``), and only the plane's router scales
        it (``scale``): a baseline runs it at that count throughout. None: 0 s."""
        if len(physics) != len(built.fleet.substrates):
            raise ValueError("one PhysicsModel per substrate, in fleet order")
        self._built = built
        self._fleet = built.fleet
        self._policy = built.policy
        self._requests = requests
        self._events = events
        self._sample_s = sample_interval_s
        self.start_s = (requests[0].arrival_s if requests else 0.0) - WARMUP_S
        self.queue = EventQueue(self.start_s)
        callbacks = SubstrateCallbacks(self._on_completed, self._on_failed)
        self.substrates = tuple(
            SimSubstrate(spec, physics[i], self.queue, callbacks,
                         spec.prefix_cache if prefix_caches is None else prefix_caches[i])
            for i, spec in enumerate(self._fleet.substrates))
        self._by_name = {s.spec.name: s for s in self.substrates}
        autoscaled = plane_autoscaled(built.config)
        for i, (sub, cfg_sub) in enumerate(zip(self.substrates, built.config.substrates)):
            if cfg_sub.name in autoscaled:
                counts = replica_counts(cfg_sub.settings.replicas)
                sub.make_elastic(self.start_s, counts.maximum, counts.serving_at_start,
                                 0.0 if replica_start_s is None else replica_start_s[i])
        self._elastic = tuple(s for s in self.substrates if s.elastic)
        cfg = built.config
        self._client_timeout = {
            s.name: (s.openai_compatible.request_timeout_s if isinstance(s, OpenAICompatibleSubstrate) else None)
            for s in cfg.substrates
        }
        # Per-request look-ups that depend only on the config, worked out once each.
        self._within: dict[tuple[int, str], bool] = {}  # (substrate index, tenant) -> inside its jurisdictions
        self._routes = {}  # model -> its route (or None)
        self._states: list[_RequestState] = [_RequestState(r) for r in requests]
        self._outcomes: list[RequestOutcome | None] = [None] * len(requests)
        self._open = len(requests)
        self._router: Router | None = None
        self._samples: list[LoadSample] = []

    def loads(self) -> Mapping[str, Callable[[float], SubstrateReport | None]]:
        """Each substrate's adapter-level load report, None while it is unreachable (an outage)."""
        def reporter(sub: SimSubstrate) -> Callable[[float], SubstrateReport | None]:
            return lambda now: sub.load(now) if sub.reachable else None
        return {s.spec.name: reporter(s) for s in self.substrates}

    # -- running ------------------------------------------------------------------------------
    def run(self, router: Router, on_progress: Callable[[float], None] | None = None) -> SimulationResult:
        if self._router is not None:
            raise RuntimeError("a Simulator runs once")
        self._router = router
        attach = getattr(router, "attach", None)
        if attach is not None:
            attach(self)
        wall0 = time.perf_counter()
        q = self.queue
        # Faults first: at equal times, a fault that starts with a request hits it.
        for event in self._events:
            q.at(event.at_s, self._apply_event, event, True)
            q.at(event.at_s + event.for_s, self._apply_event, event, False)
        q.at_each(self._arrive, ((state.request.arrival_s, (state,)) for state in self._states))
        drains = (Periodic(1.0, self.start_s, self._settle_drains),) if self._elastic else ()
        for periodic in (*router.periodic(), Periodic(self._sample_s, self.start_s + WARMUP_S, self._sample),
                         *drains):
            q.at(periodic.first_s, self._periodic, periodic)
        # A run makes and drops millions of small objects, all freed by reference counting: the
        # cyclic collector, started by the allocation count, found nothing to collect during the
        # runs measured and took 4-6% of them. It is paused for the run and restored after.
        collecting = gc.isenabled()
        gc.disable()
        try:
            q.run(on_progress)
        finally:
            if collecting:
                gc.enable()
        outcomes = tuple(o for o in self._outcomes if o is not None)
        if len(outcomes) != len(self._requests):
            raise RuntimeError(f"{len(self._requests) - len(outcomes)} requests never settled")
        t0 = self._requests[0].arrival_s if self._requests else 0.0
        return SimulationResult(
            router=router.name, outcomes=outcomes, substrates=tuple(s.spec.name for s in self.substrates),
            slots=tuple(s.per_replica_slots * s.max_replicas if s.elastic else s.slots for s in self.substrates),
            span_s=(self._requests[-1].arrival_s - t0) if self._requests else 0.0,
            end_s=q.now - t0, load=tuple(self._samples),
            busy_slot_s=tuple(s.busy_until(q.now) for s in self.substrates),
            events_run=q.events_run, wall_s=time.perf_counter() - wall0,
            replica_s=self._replica_seconds(t0),
        )

    def _replica_seconds(self, t0: float) -> tuple[float | None, ...]:
        span = (self._requests[-1].arrival_s - t0) if self._requests else 0.0
        return tuple(s.replica_seconds(t0, t0 + span) if s.elastic
                     else (None if s.spec.replicas is None else s.spec.replicas * span) for s in self.substrates)

    # -- replicas of an autoscaled substrate (the router's scaler drives them) -----------------
    def replicas(self, name: str) -> tuple[int, int]:
        """(live, starting) replicas of an autoscaled substrate."""
        sub = self._by_name[name]
        return sub.replicas_live, sub.replicas_starting

    def scale(self, name: str, target: int, now_s: float) -> None:
        self._by_name[name].scale_to(now_s, target)

    def _settle_drains(self, now: float) -> None:
        for sub in self._elastic:
            sub.settle_drains(now)

    def _periodic(self, now: float, periodic: Periodic) -> None:
        periodic.run(now)
        if self._open > 0:
            self.queue.at(now + periodic.period_s, self._periodic, periodic)

    def _sample(self, now: float) -> None:
        self._samples.append(LoadSample(now, tuple(s.running for s in self.substrates),
                                        tuple(len(s.waiting) for s in self.substrates)))

    def _apply_event(self, now: float, event: Event, starting: bool) -> None:
        sub = self._by_name[event.substrate]
        if event.kind is EventKind.OUTAGE:
            sub.set_reachable(not starting)
        elif event.kind is EventKind.FAILURE_RATE:
            sub.set_failure_rate(event.value if starting else sub.base_physics.failure_rate)
        else:
            sub.set_slowdown(now, event.value if starting else sub.base_physics.slowdown_factor)

    # -- a request's life ---------------------------------------------------------------------
    def _arrive(self, now: float, state: _RequestState) -> None:
        self._place(now, state)

    # -- the host of a router that holds requests (``router.Host``) ------------------------------
    @property
    def now_s(self) -> float:
        return self.queue.now

    def at(self, t: float, fn: Callable[..., None], *args) -> None:
        self.queue.at(t, fn, *args)

    def resume(self, request: ReplayRequest, placement: Placement, now_s: float) -> None:
        state = self._states[request.index]
        if state.held_since is None:
            raise RuntimeError(f"request {request.index} is not held")
        state.held_s += now_s - state.held_since
        state.held_since = None
        self._apply(now_s, state, placement)

    def _place(self, now: float, state: _RequestState) -> None:
        placement = self._router.place(state.request, tuple(state.tried), now)
        if placement.held:
            state.held_since = now
            return
        self._apply(now, state, placement)

    def _apply(self, now: float, state: _RequestState, placement: Placement) -> None:
        req = state.request
        if placement.substrate is None:
            self._settle(state, "rejected" if not state.tried else "failed", None, rejection=placement.rejection)
            return
        name = placement.substrate
        sub = self._by_name[name]
        spec = sub.spec
        within = self._within.get((spec.index, req.tenant))
        if within is None:
            within = self._within[(spec.index, req.tenant)] = is_within(
                spec.countries, self._policy.tenants[req.tenant].allowed_countries)
        if not within:
            state.violation = True
        timeout = placement.first_byte_timeout_s
        client_timeout = self._client_timeout[name]
        if timeout is None or (client_timeout is not None and client_timeout < timeout):
            timeout = client_timeout  # the smaller of the two that exist
        attempt = Attempt(req, len(state.tried) + 1, spec.index, now, placement.spillover_logged, timeout)
        state.predicted_hit = None if placement.decision is None else placement.decision.predicted_prefix_hit
        state.attempt = attempt
        self._router.dispatched(req, name, now)
        sub.send(now, attempt)
        if attempt.timeout_s is not None:
            self.queue.at(now + attempt.timeout_s, self._timeout, state, attempt)

    def _timeout(self, now: float, state: _RequestState, attempt: Attempt) -> None:
        if attempt.phase not in (Phase.OUTBOUND, Phase.QUEUED, Phase.PREFILL):
            return
        self.substrates[attempt.substrate].abandon(now, attempt)
        attempt.failure = Failure.TIMEOUT
        self._failure(now, state, attempt, Failure.TIMEOUT, None)

    def _on_completed(self, now: float, attempt: Attempt) -> None:
        state = self._states[attempt.request.index]
        sub = self.substrates[attempt.substrate]
        req = attempt.request
        self._router.finished(req, sub.spec.name, attempt.dispatched_s, attempt.first_token_s, req.output_tokens, now)
        self._settle(state, "completed", attempt)

    def _on_failed(self, now: float, attempt: Attempt) -> None:
        self._failure(now, self._states[attempt.request.index], attempt, attempt.failure, attempt.retry_after_s)

    def _failure(self, now: float, state: _RequestState, attempt: Attempt, failure: Failure,
                 retry_after_s: float | None) -> None:
        name = self.substrates[attempt.substrate].spec.name
        self._router.failed(state.request, name, failure, retry_after_s, now)
        state.tried.append(name)
        if failure.retryable:
            self._place(now, state)
        else:
            self._settle(state, "failed", None, rejection=failure.value)

    def _settle(self, state: _RequestState, status: str, attempt: Attempt | None, rejection: str | None = None) -> None:
        req = state.request
        route = self._routes.get(req.model, self._routes)
        if route is self._routes:
            route = self._routes[req.model] = self._fleet.resolve_model(req.model)
        tried = tuple(state.tried) + ((self.substrates[attempt.substrate].spec.name,) if attempt else ())
        if attempt is None:
            outcome = RequestOutcome(
                index=req.index, tenant=req.tenant, sla_class=req.sla_class, arrival_s=req.arrival_s,
                status=status, substrate=tried[-1] if tried else None, tried=tried, ttft_s=None, e2e_s=None,
                met_sla=False, cost_usd=0.0, spillover=False, spillover_logged=False,
                sovereignty_violation=state.violation, cross_region=False, rejection=rejection,
                held_s=state.held_s)
        else:
            spec = self.substrates[attempt.substrate].spec
            sla = self._policy.sla_classes[req.sla_class]
            ttft = attempt.first_token_s - req.arrival_s
            e2e = attempt.done_s - req.arrival_s
            outcome = RequestOutcome(
                index=req.index, tenant=req.tenant, sla_class=req.sla_class, arrival_s=req.arrival_s,
                status=status, substrate=spec.name, tried=tried, ttft_s=ttft, e2e_s=e2e,
                met_sla=ttft <= sla.ttft_deadline_s and e2e <= sla.e2e_deadline_s,
                cost_usd=usage_cost_usd(spec, req.input_tokens, req.output_tokens, self._built.ingress_region),
                spillover=route is not None and spec.name != route.primary,
                spillover_logged=attempt.spillover_logged,
                sovereignty_violation=state.violation,
                cross_region=spec.region != self._built.ingress_region, held_s=state.held_s,
                cached_tokens=attempt.cached_tokens, predicted_prefix_hit=state.predicted_hit)
        self._outcomes[req.index] = outcome
        self._open -= 1
