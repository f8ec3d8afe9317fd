"""The hold queue of one ingress replica: a request no eligible substrate can take now waits here.

A placement refused because every substrate that could take the request is full (``capacity``),
out of rate-limit headroom (``rate_limited``) or held back by the plane's arbitration (``held_back``)
is *held*, not refused, while its SLA class's first-token deadline can still be met, and placed
again as soon as capacity may have freed. Any other refusal (jurisdiction, context window,
unhealthy, over budget, ...) is answered at once: waiting cannot change it.

**When it is placed.** Event-driven: the replica's state tells the queue when capacity may have
freed (one of its leases released, a new snapshot adopted: ``ReplicaState.listen``), the queue
asks its host to run ``pump(now)`` soon (the ingress's event loop, or the simulator), and the pump
places waiting requests in order until the ones left are all blocked. Nothing polls.

**Order** (the Kubernetes API Priority and Fairness idea, with tokens as the work unit):

1. a request whose tenant is *reclaiming* its guaranteed slots (it holds fewer slots of a class its
   candidates include than its quota guarantees, ``plane.shares``): lent slots go back to it first;
2. then the highest SLA-class ``priority``;
3. then, among tenants, the lowest virtual token counter: tokens dispatched for the tenant divided
   by its ``share`` (``input + output_token_weight * max_output`` per request: the work it asked
   for; a long prompt counts for more), lifted when a tenant starts waiting to the least counter of
   the tenants already waiting, so idle time banks no credit (VTC, Sheng et al., OSDI'24);
4. then earliest deadline first (within a tenant, model and class, that is arrival order).

Requests of one (tenant, model, SLA class) wait in one FIFO, and the pump only ever tries each
FIFO's head: when a head is blocked, the rest of its FIFO, which has the same candidates, is
skipped for this pump. A pump costs a placement per FIFO that moves or blocks, never one per
waiting request.

**When it is refused.** A waiting request gives up at ``deadline - idle first-token time`` (its
arrival plus its class's first-token deadline, minus the best first-token time any blocked
candidate would give it once a slot frees, its profile's or its observed one if that is longer:
after that no wait can meet the deadline) and is
answered 429 ``capacity``; a request whose deadline is already out of reach is refused at once. A
request reclaiming a guaranteed quota does not give up while it reclaims: the slots it waits for
are its own and are coming back. The queue holds at most ``policy.queue.max_waiting``; when full,
a new request sheds the lowest-priority waiting one (latest deadline first) if it outranks it or
reclaims its tenant's guarantee (a reclaiming waiter is never shed), and is refused (429
``queue_full``) otherwise. Every refusal's ``Retry-After`` comes from the queue:
the requests waiting ahead over the rate the queue has drained at in the last
``DRAIN_WINDOW_S``.

Ray-free and clock-free (times are passed in). Not thread-safe: the host runs ``submit``, ``pump``,
``expire`` and ``cancel`` on one thread (the ingress's event loop); ``reclaiming()`` may be read
from the sync thread (it returns a dict built whole by the loop's thread).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from inferplane.placement import PlacementRequest
from inferplane.placement.estimate import idle_ttft_s, learnt_ttft_s
from inferplane.placement.filters import RejectionCode
from inferplane.plane.attempts import AttemptLoop, Dispatch, Refusal
from inferplane.placement.signals import limits
from inferplane.plane.state import ReplicaState, Unavailable

HOLDABLE = frozenset({RejectionCode.CAPACITY, RejectionCode.RATE_LIMITED, RejectionCode.HELD_BACK})
"""Rejections a wait can end: a slot frees, headroom returns, a tenant's own requests finish."""
DRAIN_WINDOW_S = 30.0
"""The window over which the queue's drain rate (for ``Retry-After``) is measured."""
RETRY_AFTER_IDLE_S = 5.0
"""``Retry-After`` when the queue has not drained in the window."""
RETRY_AFTER_MAX_S = 60.0
QUEUE_FULL = "queue_full"
SHED = "shed"


@dataclass(eq=False, slots=True)
class Waiter:
    """One held request. ``outcome`` is set once: the ``Dispatch`` it got, or the ``Refusal``."""

    loop: AttemptLoop
    tenant: str
    group: tuple[str, str, str]
    priority: int
    deadline_s: float
    """Its arrival plus its class's first-token deadline."""
    give_up_s: float
    """After this no dispatch can meet the deadline (ignored while it reclaims a quota)."""
    enqueued_s: float
    seq: int
    tokens: float
    """What its dispatch adds to its tenant's virtual token counter."""
    reclaim_classes: frozenset[str]
    """Classes among its blocked candidates' where its tenant is guaranteed slots."""
    blocked: tuple[str, ...] = ()
    """The candidates that were full (or rate-limited, or held back) when it was held."""
    reason: str = ""
    """Why it was held: the refusal's rolled-up message (``explain`` shows it)."""
    outcome: Dispatch | Refusal | None = None
    resolved_s: float | None = None

    @property
    def waited_s(self) -> float:
        """Time held, until resolved (0 while still waiting)."""
        return 0.0 if self.resolved_s is None else self.resolved_s - self.enqueued_s


class HoldQueue:
    """The hold queue of one replica's ``ReplicaState``. ``notify()`` asks the host to run
    ``pump`` soon (it may be called from another thread); ``resolved(waiter)`` is told of every
    waiter that leaves the queue with an outcome (dispatched, refused, shed), by ``pump``,
    ``submit`` (shed) or ``expire``."""

    def __init__(self, state: ReplicaState, *, notify: Callable[[], None],
                 resolved: Callable[[Waiter], None]) -> None:
        self._state = state
        self._policy = state.policy
        self._settings = state.policy.queue
        self._notify = notify
        self._resolved = resolved
        self._groups: dict[tuple[str, str, str], deque[Waiter]] = {}
        self._count = 0
        self._seq = 0
        self._vtc: dict[str, float] = {}
        self._drained: deque[float] = deque()
        self._changed = False
        self._quotas = {name: t.quotas for name, t in self._policy.tenants.items() if t.quotas}
        self._reclaim_report: dict[str, dict[str, int]] = {}
        self._demand_report: dict[str, dict[int, int]] = {}
        # Waiting requests counted by (blocked substrate, priority) and by (reclaimed class, tenant),
        # kept as they come and go, so that a report costs the few keys, not a pass over the queue.
        self._by_substrate: Counter[tuple[str, int]] = Counter()
        self._by_reclaim: Counter[tuple[str, str]] = Counter()
        state.listen(self._on_change, self.reclaiming, self.demand)

    # -- what the host calls --------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def submit(self, loop: AttemptLoop, step: Dispatch | Refusal, now_s: float,
               arrived_at_s: float | None = None) -> Dispatch | Refusal | Waiter:
        """A step of ``loop`` (``loop.start()``, or a retry's ``loop.failed(...)``): a dispatch
        passes (and is counted for its tenant), a refusal a wait cannot end is answered, and one it
        can end is held (a ``Waiter``, resolved later through ``resolved``) or refused when no wait
        can meet the deadline or the queue is full. The deadline runs from ``arrived_at_s`` (the
        request's receipt; default: its placement request's time, which a retry moves on)."""
        request = loop.request
        if isinstance(step, Dispatch):
            self._charge(request)
            return step
        if not self._settings.hold:
            return step
        idle, classes, blocked = self._blocked_candidates(step, request)
        if not blocked:
            return step
        sla = self._policy.sla_classes[step.decision.sla_class]
        deadline = (request.arrived_at_s if arrived_at_s is None else arrived_at_s) + sla.ttft_deadline_s
        give_up = deadline - idle
        reclaim = self._reclaim_classes(request.tenant, classes)
        reclaiming = bool(reclaim) and self._reclaiming_now(request.tenant, reclaim, None)
        if give_up <= now_s and not reclaiming:
            return self._refusal(step, RejectionCode.CAPACITY.value,
                                 f"{step.message}; no wait can meet the {sla.ttft_deadline_s:g}s first-token deadline",
                                 now_s)
        if self._count >= self._settings.max_waiting:
            victim = self._lowest()  # never one reclaiming its tenant's guarantee
            if victim is None or (victim.priority >= sla.priority and not reclaiming):
                return self._refusal(step, QUEUE_FULL, f"{step.message}; the hold queue is full "
                                     f"({self._count} waiting at priority {sla.priority} or higher)", now_s)
            self._remove(victim)
            self._resolve(victim, Refusal(429, SHED, "shed from the full hold queue by a higher-priority request",
                                          None, victim.loop.decision), now_s)
        self._seq += 1
        key = (request.tenant, step.decision.model, sla.name)
        waiter = Waiter(loop, request.tenant, key, sla.priority, deadline, give_up, now_s, self._seq,
                        self._cost(request), reclaim, blocked, step.message)
        if request.tenant not in self._waiting_tenants():
            self._lift(request.tenant)
        self._groups.setdefault(key, deque()).append(waiter)
        self._count += 1
        self._counted(waiter, 1)
        self._report_waiting()
        return waiter

    def pump(self, now_s: float) -> None:
        """Place waiting requests in order until every one left is blocked."""
        self._changed = False
        if not self._count:
            return
        blocked: set[tuple[str, str, str]] = set()
        usage: dict[str, dict[str, int]] = {}
        while True:
            best = best_key = None
            for key, fifo in self._groups.items():
                if key in blocked or not fifo:
                    continue
                w = fifo[0]
                order = (0 if w.reclaim_classes and self._reclaiming_now(w.tenant, w.reclaim_classes, usage) else 1,
                         -w.priority, self._counter(w.tenant), w.deadline_s, w.seq)
                if best_key is None or order < best_key:
                    best, best_key = w, order
            if best is None:
                break
            w = best
            reclaiming = best_key[0] == 0
            if now_s >= w.give_up_s and not reclaiming:
                self._pop(w)
                self._resolve(w, self._expired(w), now_s)
                continue
            step = w.loop.place_again(now_s)
            if isinstance(step, Dispatch):
                self._pop(w)
                self._charge(w.loop.request)
                self._drained.append(now_s)
                usage.pop(w.tenant, None)
                self._resolve(w, step, now_s)
            elif self._blocked_candidates(step, w.loop.request)[2]:
                blocked.add(w.group)
            else:
                self._pop(w)
                self._resolve(w, step, now_s)
        self._report_waiting()

    def expire(self, waiter: Waiter, now_s: float) -> float | None:
        """The host's timer for ``waiter`` fired: refuse it if it is still waiting past its give-up
        time (None: resolved, now or before); otherwise the time to check again."""
        if waiter.outcome is not None:
            return None
        if now_s < waiter.give_up_s:
            return waiter.give_up_s
        if waiter.reclaim_classes and self._reclaiming_now(waiter.tenant, waiter.reclaim_classes, None):
            return now_s + 1.0  # its slots are coming back; look again in a second
        self._remove(waiter)
        self._report_waiting()
        self._resolve(waiter, self._expired(waiter), now_s)
        return None

    def cancel(self, waiter: Waiter) -> None:
        """The client left: the waiter leaves the queue without an outcome."""
        if waiter.outcome is None and self._remove(waiter):
            self._report_waiting()

    def retry_after_s(self, now_s: float) -> float:
        """Seconds until the queue, at the rate it drained in the last ``DRAIN_WINDOW_S``, would
        have served the requests waiting now and one more."""
        drained = self._drained
        while drained and drained[0] < now_s - DRAIN_WINDOW_S:
            drained.popleft()
        if not drained:
            return RETRY_AFTER_IDLE_S
        rate = len(drained) / DRAIN_WINDOW_S
        return min(RETRY_AFTER_MAX_S, max(1.0, math.ceil((self._count + 1) / rate)))

    def reclaiming(self) -> dict[str, dict[str, int]]:
        """Substrate class -> tenant -> slots this replica's waiting requests reclaim now (sent to
        the authority with each sync; ``plane.shares``)."""
        return self._reclaim_report

    def demand(self) -> dict[str, dict[int, int]]:
        """Substrate -> priority -> requests waiting here for a slot of it (sent with each sync:
        free slots go to the replicas whose waiting requests rank highest, ``plane.state``)."""
        return self._demand_report

    # -- internals ------------------------------------------------------------------------------
    def _on_change(self) -> None:
        if self._count and not self._changed:
            self._changed = True
            self._notify()

    def _cost(self, request: PlacementRequest) -> float:
        return request.input_tokens + self._settings.output_token_weight * request.max_output_tokens

    def _charge(self, request: PlacementRequest) -> None:
        share = self._policy.tenants[request.tenant].share
        self._vtc[request.tenant] = self._vtc.get(request.tenant, 0.0) + self._cost(request) / share

    def _counter(self, tenant: str) -> float:
        return self._vtc.get(tenant, 0.0)

    def _waiting_tenants(self) -> set[str]:
        return {key[0] for key, fifo in self._groups.items() if fifo}

    def _lift(self, tenant: str) -> None:
        waiting = self._waiting_tenants()
        if waiting:
            floor = min(self._counter(t) for t in waiting)
            if self._counter(tenant) < floor:
                self._vtc[tenant] = floor

    def _blocked_candidates(self, step: Refusal, request: PlacementRequest
                            ) -> tuple[float, frozenset[str], tuple[str, ...]]:
        """The candidates a wait could open (none: the refusal stands), with the best first-token
        time one of them gives once free (network, base and prefill, scaled by the first-token ratio
        learnt there: ``estimate.learnt_ttft_s``) and their classes. A
        candidate a wait could open is one refused for a full slot, rate-limit headroom or by the
        plane's arbitration, or one predicted too slow while its running slots are full and that
        would meet the first-token deadline when idle (its queue, not its speed, made it slow; a
        substrate slow with slots free stays refused)."""
        decision = step.decision if isinstance(step, Refusal) else None
        if decision is None or decision.substrate is not None or not decision.candidates:
            return math.inf, frozenset(), ()  # refused before any substrate was considered
        fleet = self._state.fleet
        deadline = self._policy.sla_classes[decision.sla_class].ttft_deadline_s
        view = None
        best = math.inf
        classes = set()
        names = []
        bound = self._policy.signal_staleness_bound_s
        for c in decision.candidates:
            if c.code not in HOLDABLE and c.code is not RejectionCode.PREDICTED_TOO_SLOW:
                continue
            spec = fleet.substrate(c.name)
            idle = idle_ttft_s(spec, request.input_tokens)
            if view is None:
                view = self._state.view(request.arrived_at_s)
            if not isinstance(view, Unavailable):  # as outcomes taught: scaled by the ratio learnt there
                idle = learnt_ttft_s(view.signals[spec.index], idle, request.arrived_at_s, bound)
            if c.code is RejectionCode.PREDICTED_TOO_SLOW:
                if idle > deadline:
                    continue
                reading = None if isinstance(view, Unavailable) else view.signals[spec.index].in_flight
                if reading is None or reading.value < limits(spec, view.signals[spec.index])[0]:
                    continue  # slow with running slots free: its speed, not a queue
            best = min(best, idle)
            classes.add(spec.substrate_class)
            names.append(c.name)
        return best, frozenset(classes), tuple(names)

    def _reclaim_classes(self, tenant: str, classes: frozenset[str]) -> frozenset[str]:
        quotas = self._quotas.get(tenant)
        if not quotas:
            return frozenset()
        return frozenset(q.substrate_class for q in quotas if q.guaranteed and q.substrate_class in classes)

    def _reclaiming_now(self, tenant: str, classes: frozenset[str], usage: dict | None) -> bool:
        """Whether ``tenant`` holds fewer slots than guaranteed on one of ``classes``."""
        held = None if usage is None else usage.get(tenant)
        if held is None:
            held = self._state.tenant_usage(tenant)
            if usage is not None:
                usage[tenant] = held
        return any(held.get(q.substrate_class, 0) < q.guaranteed for q in self._quotas[tenant]
                   if q.substrate_class in classes)

    def _report_waiting(self) -> None:
        """The reports the next sync carries: demand per substrate and priority, and reclaims."""
        demand: dict[str, dict[int, int]] = {}
        for (name, priority), n in self._by_substrate.items():
            if n:
                demand.setdefault(name, {})[priority] = n
        self._demand_report = demand
        if not self._quotas:
            return
        report: dict[str, dict[str, int]] = {}
        usage: dict[str, dict[str, int]] = {}
        for (c, tenant), n in self._by_reclaim.items():
            if not n:
                continue
            held = usage.get(tenant)
            if held is None:
                held = usage[tenant] = self._state.tenant_usage(tenant)
            guaranteed = next(q.guaranteed for q in self._quotas[tenant] if q.substrate_class == c)
            deficit = guaranteed - held.get(c, 0)
            if deficit > 0:
                report.setdefault(c, {})[tenant] = min(n, deficit)
        self._reclaim_report = report

    def _lowest(self) -> Waiter | None:
        """The waiter a request may shed: lowest priority, latest deadline, not reclaiming."""
        lowest = None
        usage: dict[str, dict[str, int]] = {}
        for fifo in self._groups.values():
            for w in fifo:
                if w.reclaim_classes and self._reclaiming_now(w.tenant, w.reclaim_classes, usage):
                    continue
                if lowest is None or (w.priority, -w.deadline_s) < (lowest.priority, -lowest.deadline_s):
                    lowest = w
        return lowest

    def _counted(self, waiter: Waiter, k: int) -> None:
        for name in waiter.blocked:
            self._by_substrate[(name, waiter.priority)] += k
        for c in waiter.reclaim_classes:
            self._by_reclaim[(c, waiter.tenant)] += k

    def _pop(self, waiter: Waiter) -> None:
        fifo = self._groups[waiter.group]
        fifo.popleft()
        self._count -= 1
        self._counted(waiter, -1)
        if not fifo:
            del self._groups[waiter.group]

    def _remove(self, waiter: Waiter) -> bool:
        fifo = self._groups.get(waiter.group)
        if fifo is None or waiter not in fifo:
            return False
        fifo.remove(waiter)
        self._count -= 1
        self._counted(waiter, -1)
        if not fifo:
            del self._groups[waiter.group]
        return True

    def _resolve(self, waiter: Waiter, outcome: Dispatch | Refusal, now_s: float) -> None:
        waiter.outcome, waiter.resolved_s = outcome, now_s
        if isinstance(outcome, Refusal) and outcome.status == 429:
            outcome = waiter.outcome = Refusal(outcome.status, outcome.code, outcome.message,
                                               self.retry_after_s(now_s), outcome.decision)
        self._resolved(waiter)

    def _expired(self, waiter: Waiter) -> Refusal:
        decision = waiter.loop.decision
        waited = waiter.give_up_s - waiter.enqueued_s
        return Refusal(429, RejectionCode.CAPACITY.value,
                       f"no slot freed within {max(0.0, waited):.2f}s, in time for the first-token deadline "
                       f"({decision.rejection_message if decision is not None and decision.rejection_message else 'at capacity'})",
                       None, decision)

    def _refusal(self, step: Refusal, code: str, message: str, now_s: float) -> Refusal:
        return Refusal(429, code, message, self.retry_after_s(now_s), step.decision)
