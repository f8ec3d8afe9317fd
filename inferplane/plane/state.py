"""One ingress replica's placement state: its local view of the fleet and what it owes the authority.

The placement actor publishes a versioned snapshot every sync; between two syncs the replica keeps
placing on it, and three things keep that honest:

- **its own dispatches since**: the snapshot carries the in-flight counts every replica reported
  when it was made; this replica's view replaces its own reported counts by its current ones
  (``FleetSnapshot.with_dispatches``), so a burst between two syncs is not placed as if the fleet
  were idle. A dispatch is a ``Lease``, released exactly once however the request ends;
- **its grant**: with several live ingress replicas, the authority grants each, at its sync, the
  slots it may hold on each substrate until the next one (``FleetState._grant``: what it holds
  plus its share of the free slots, the other replicas' grants respected); once it holds its
  grant on a substrate, the substrate is held back from its placements until the next sync
  (``closed_for``). Without it, N replicas that each see one free slot would put N requests on it
  between two syncs. The view's counts stay the real ones: predictions are not made on grants;
- **a staleness bound**: a snapshot older than ``policy.snapshot_staleness_bound_s`` when a
  request is placed fails closed (``Unavailable``, answered 503), never silently;
- **the report it owes**: outcomes of its dispatches and the attributed cost of its finished
  requests accumulate here and go to the authority with the next sync (``take_report``); a sync
  that fails puts them back (``restore``), so none is lost.

When a tenant has quotas (``tenants[].quotas``), each placement also gets the substrates they
close to it (``PlacementRequest.closed``, see ``plane.shares``), from every replica's per-tenant
counts in the snapshot with this replica's own since, and the slots other tenants' waiting
requests reclaim. A listener (the replica's hold queue, ``listen``) is told whenever capacity may
have freed: a lease released, a snapshot adopted.

**Holding for a new replica.** For a request whose SLA class holds while scaling up
(``sla_classes[].while_scaling_up: hold``) and whose model's primary is full while the plane starts
a replica for it (the snapshot's ``scaling_up``: when that replica is expected to admit, from the
start times the actor measured), every other substrate is closed to it while that replica, idle,
could still give its first token by its deadline (``max(expected, now)`` + the primary's idle
first-token time <= arrival + the class's first-token deadline). The request waits in the hold
queue and goes to the new replica when it reports; once the replica can no longer be in time
(late, or the wait used the slack), the closure lifts and the request spills as it would have.

**Its prefix-cache belief.** Where substrates declare a KV cache, the replica keeps the plane's
belief of the prompt blocks each holds (``placement.prefix.PrefixIndex``, of the declared tokens
over the caller's block size): a request's predicted hits are read from it (``prefix_hits``); a
dispatch's blocks are believed held where it went from the moment it is sent (``prefix_sent``,
``AttemptLoop``), and when it settles they stay there as cached if its first byte came, else they
are forgotten (``prefix_settled``). Each replica believes only what it sent.

Thread-safety: the request path (``place``, ``lease``, ``report_outcome``, ``add_spend``) and a
sync thread (``take_report``, ``publish``) may run concurrently; one lock guards the counts and
the pending report. Ray-free: the Serve ingress and the replay's plane router both run this class,
on the plane's clock and on simulated time respectively.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol
from dataclasses import dataclass, field, replace

from inferplane.fleet_state import Outcome, PublishedSnapshot
from inferplane.placement import FleetSnapshot, FleetSpec, PlacementDecision, PlacementPolicy, PlacementRequest, place
from inferplane.placement.estimate import idle_ttft_s, prefill_lanes
from inferplane.placement.prefix import PrefixIndex
from inferplane.placement.signals import limits
from inferplane.plane.shares import closed_substrates, kept_slots, quota_classes, unlent_guarantees


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No snapshot fresh enough to place on: the plane fails closed (503)."""

    message: str


class PrefixBelief(Protocol):
    """What the replica reads of a prefix-cache belief (``placement.prefix.PrefixIndex``, or the
    replay's oracle of the simulator's caches)."""

    def hits(self, blocks: Sequence[int], substrates: Iterable[str] | None = None) -> tuple[tuple[str, float], ...]:
        ...

    def sent(self, substrate: str, blocks: Sequence[int]) -> None:
        ...

    def settled(self, substrate: str, blocks: Sequence[int], prefilled: bool) -> None:
        ...


_INF = float("inf")
_RATE_WINDOW_S = 60.0
"""A provider's rate limits are per minute: a dispatch older than that is back in its budget."""


class SyncReport(NamedTuple):
    """What one sync sends the authority: this replica's in-flight counts by substrate, the outcomes
    of its dispatches and its finished requests' attributed cost by tenant since the last sync, and
    the snapshot it held (version, age). (A named tuple: one is built on every sync, ten a second,
    and a frozen dataclass's ``__init__`` cost more than the rest of ``take_report``.)"""

    in_flight: dict[str, int]
    outcomes: list[Outcome]
    spend_usd: dict[str, float]
    snapshot_version: int | None
    snapshot_age_s: float | None
    tenant_in_flight: dict[str, dict[str, int]]
    """Tenant -> substrate -> dispatches in flight (kept only when some tenant has quotas)."""
    reclaiming: dict[str, dict[str, int]]
    """Substrate class -> tenant -> slots its waiting requests reclaim (``plane.queue``)."""
    demand: dict[str, dict[int, int]]
    """Substrate -> priority -> requests waiting in this replica's queue for a slot of it."""
    lanes: dict[str, tuple[float, float]] = {}
    """Substrate -> (when its prefill lanes clear this replica's own first-token work there, its
    lane clock, 0 when cleared; the lane-seconds of first-token work it has dispatched there in
    all), for every substrate it has dispatched such work to (``lease``)."""


@dataclass(eq=False, slots=True)
class Lease:
    """One dispatch to one substrate, counted in the replica's view until released. ``release`` is
    idempotent, so every exit path of a request may call it."""

    substrate: str
    _state: ReplicaState = field(repr=False)
    tenant: str | None = None
    released: bool = False

    def release(self) -> None:
        self._state._release(self)


class ReplicaState:
    def __init__(self, fleet: FleetSpec, policy: PlacementPolicy, *,
                 observe: Callable[[PlacementDecision, float], None] | None = None,
                 timer: Callable[[], float] = time.perf_counter, replica_id: str | None = None,
                 prefix_block_tokens: int | None = None, prefix_belief: PrefixBelief | None = None) -> None:
        """``observe(decision, seconds)`` is told of every placement and how long ``place()`` took
        (the ingress's placement metrics); ``timer`` measures it. ``replica_id`` is the id this
        replica syncs under (its rank among the live replicas decides its share of free slots;
        None: it takes them all). ``prefix_block_tokens``: the block size of the prompts' prefix
        blocks (the ingress's tokenizer blocks, a trace's ``hash_ids``); with it and a substrate
        that declares a KV cache the replica keeps a prefix belief (module doc), None: none.
        ``prefix_belief``: another belief to keep instead (the replay's oracle)."""
        self.fleet = fleet
        caches = {s.name: s.prefix_cache.total_tokens // prefix_block_tokens
                  for s in fleet.substrates if s.prefix_cache is not None} if prefix_block_tokens else {}
        self.prefix: PrefixBelief | None = (prefix_belief if prefix_belief is not None else PrefixIndex(caches)) \
            if caches else None
        """Where this replica believes prompts' blocks are cached (None: no belief kept)."""
        self.replica_id = replica_id
        self._grant: dict[str, int] = {}
        """Substrate -> requests this replica may hold there until its next sync (several replicas)."""
        self._others_waiting: dict[str, dict[int, int]] = {}
        """Substrate -> priority -> requests waiting for it at the other replicas (last snapshot)."""
        self._scaling_up: dict[str, float] = {}
        """Substrate -> when its starting replica is expected to admit (last snapshot)."""
        self._hold_classes = frozenset(n for n, c in policy.sla_classes.items() if c.while_scaling_up == "hold")
        self.policy = policy
        self._observe = observe
        self._timer = timer
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()
        self._snapshot: FleetSnapshot | None = None
        # A published snapshot adopted but not yet built into a ``FleetSnapshot``: it is built when
        # first read (``_latest``), since many are superseded by the next sync before any request
        # is placed on them. Built from the last one built, it reuses the same entries.
        self._pending: PublishedSnapshot | None = None
        self._reported: dict[str, int] = {}
        self._lanes = {s.name: s for s in fleet.substrates if s.latency.prefill_lanes is not None}
        self._lane_clock: dict[str, float] = {}
        """Substrate (one that declares prefill lanes) -> when its lanes clear the first-token work
        this replica dispatched there (``lease``; in the past once cleared)."""
        self._lane_work: Counter[str] = Counter()
        """Substrate -> the lane-seconds of first-token work this replica has dispatched there in
        all. It and the clock are what it reports (``SyncReport.lanes``)."""
        self._lane_seen: dict[str, float] = {}
        """Substrate -> when its lanes clear the work this replica knows of: its own, run on by its
        dispatches like its clock, and the other replicas', added as each snapshot brings it
        (``publish``). What its view reads; kept once cleared (the base the next work adds to)."""
        self._lane_others: dict[tuple[str, str], float] = {}
        """(other replica, substrate) -> the lane-seconds of its work there the last snapshot said."""
        self._lane_peers: frozenset[str] = frozenset()
        """The ingress replicas the last snapshot listed."""
        self._limited = frozenset(s.name for s in fleet.substrates
                                  if s.requests_per_minute is not None or s.tokens_per_minute is not None)
        self._rate_spent: dict[str, deque[tuple[float, int]]] = {}
        """Substrate (one with rate limits) -> (dispatched at, input + max output tokens) of this
        replica's dispatches there not yet older than its last rate-limit reading."""
        self._rate_share = 1.0
        """This replica's share of a provider's rate-limit headroom: 1 / the ingress replicas the
        last snapshot listed (each spends what it alone dispatched since a reading; the others'
        dispatches reach it only in the provider's next reading)."""
        self._view: FleetSnapshot | None = None
        self._outcomes: list[Outcome] = []
        self._spend: Counter[str] = Counter()
        # Quotas: per (tenant, substrate) dispatches of this replica, what it last reported of them,
        # and every replica's totals and reclaims as the last snapshot said.
        self._quota_classes = quota_classes(policy)
        self._unlent = unlent_guarantees(policy)
        self._class_of = {s.name: s.substrate_class for s in fleet.substrates}
        # Tenant -> substrate -> dispatches in flight: a tenant's usage reads its own counts only.
        self._tenant_in_flight: dict[str, Counter[str]] = {}
        self._tenant_reported: dict[str, dict[str, int]] = {}
        self._tenant_published: dict[str, dict[str, int]] = {}
        self._usage: dict[str, dict[str, int]] = {}
        """Tenant -> ``tenant_usage``, kept until one of its counts changes."""
        self._reclaiming_published: dict[str, dict[str, int]] = {}
        self._reclaiming: Callable[[], dict[str, dict[str, int]]] | None = None
        self._demand: Callable[[], dict[str, dict[int, int]]] | None = None
        self._listener: Callable[[], None] | None = None

    # -- the request path -----------------------------------------------------------------------
    @property
    def snapshot(self) -> FleetSnapshot | None:
        """The last published snapshot (without this replica's dispatches since)."""
        return self._latest()

    def _latest(self) -> FleetSnapshot | None:
        if self._pending is not None:
            with self._lock:
                self._build_pending()
        return self._snapshot

    def _build_pending(self) -> None:
        """With the lock held: the pending published snapshot, if any, built (on the last one built)."""
        pending = self._pending
        if pending is not None:
            self._snapshot = FleetSnapshot(pending.version, pending.taken_at_s, self.fleet, pending.signals,
                                           pending.tenant_spend_usd, pending.expected_output_tokens,
                                           policy=self.policy, previous=self._snapshot)
            self._pending = None

    def view(self, now_s: float) -> FleetSnapshot | Unavailable:
        """The snapshot to place on at ``now_s``: the published one with this replica's dispatches
        since applied, or ``Unavailable`` when there is none or it is over the staleness bound."""
        latest = self._pending or self._snapshot
        if latest is None:
            return Unavailable("the plane has no fleet snapshot yet; retry shortly")
        age = now_s - latest.taken_at_s
        bound = self.policy.snapshot_staleness_bound_s
        if age > bound:
            return Unavailable(f"fleet snapshot is {age:.1f}s old, over the {bound:.1f}s bound; failing closed")
        view = self._view
        if view is None:
            with self._lock:
                self._build_pending()
                # what clears the lanes, of the work this replica knows of; nothing once cleared
                seen = {n: t for n, t in self._lane_seen.items() if t > now_s} if self._lane_seen else {}
                share = self._rate_share
                spent = self._spent_since_readings(now_s) if self._rate_spent or share < 1.0 else None
                view = self._view = self._snapshot.with_dispatches(self._reported, self._in_flight, seen, spent,
                                                                   share)
        return view

    def _spent_since_readings(self, now_s: float) -> dict[str, tuple[int, int]]:
        """With the lock held: per rate-limited substrate, the requests and tokens this replica
        dispatched there at or after its last rate-limit reading was observed (what that reading
        cannot yet show); older dispatches are in the reading and are dropped, as are any older
        than a per-minute limit's window (a reading that stopped coming cannot hold them forever).
        With a share below 1 every rate-limited substrate is named, so its headroom is shared."""
        out = {}
        index = self.fleet.index
        signals = self._snapshot.signals
        shared = self._rate_share < 1.0
        for name in (self._limited if shared else tuple(self._rate_spent)):
            sent = self._rate_spent.get(name)
            if sent is None:
                out[name] = (0, 0)
                continue
            sig = signals[index[name]]
            reading = sig.rate_limit_tokens_remaining or sig.rate_limit_requests_remaining
            cutoff = now_s - _RATE_WINDOW_S
            if reading is not None and reading.observed_at_s > cutoff:
                cutoff = reading.observed_at_s
            while sent and sent[0][0] < cutoff:
                sent.popleft()
            if sent or shared:
                out[name] = (len(sent), sum(tokens for _, tokens in sent))
        return out

    def place(self, request: PlacementRequest,
              due_s: float | None = None) -> tuple[PlacementDecision | Unavailable, float | None]:
        """Place ``request`` on the view at its ``arrived_at_s``; also returns the snapshot's age
        then (None when unavailable). ``due_s``: when its first token is due (default: its
        ``arrived_at_s`` plus its class's first-token deadline)."""
        view = self.view(request.arrived_at_s)
        if isinstance(view, Unavailable):
            return view, None
        if (self._grant or self._quota_classes or self._others_waiting or (self._demand is not None and self._demand())
                or (self._scaling_up and request.sla_class in self._hold_classes)):
            closed = self.closed_for(request, view, due_s)
            if closed != request.closed:
                request = replace(request, closed=closed)
        if self._observe is None:
            return place(request, view, self.policy), request.arrived_at_s - view.taken_at_s
        t0 = self._timer()
        decision = place(request, view, self.policy)
        self._observe(decision, self._timer() - t0)
        return decision, request.arrived_at_s - view.taken_at_s

    def prefix_hits(self, blocks: Sequence[int]) -> tuple[tuple[str, float], ...]:
        """A prompt's predicted hit fraction per substrate believed to hold a leading run of
        ``blocks`` (``PlacementRequest.prefix_hits``); () without blocks or a belief."""
        return self.prefix.hits(blocks) if self.prefix is not None and blocks else ()

    def prefix_sent(self, substrate: str, blocks: Sequence[int]) -> None:
        """A request with ``blocks`` was dispatched to ``substrate``: believe them held there while
        it is in flight (``placement.prefix.PrefixIndex.sent``)."""
        if self.prefix is not None and blocks:
            self.prefix.sent(substrate, blocks)

    def prefix_settled(self, substrate: str, blocks: Sequence[int], prefilled: bool) -> None:
        """That dispatch ended; ``prefilled``: its first byte came, so ``substrate`` cached its blocks."""
        if self.prefix is not None and blocks:
            self.prefix.settled(substrate, blocks, prefilled)

    def lease(self, substrate: str, tenant: str | None = None, prefill_tokens: float = 0.0,
              now_s: float | None = None, rate_tokens: int = 0) -> Lease:
        """Count a dispatch to ``substrate`` (for ``tenant``) in this replica's view until the lease
        is released. Dispatched at ``now_s`` with ``prefill_tokens`` to prefill (its prompt less the
        predicted prefix hit) to a substrate that declares prefill lanes, it also runs that
        substrate's lane clock on (``SubstrateSignals.prefill_clear_at_s``): its first-token phase,
        ``base_ttft + prefill``, over the live lanes, from now or from when the work before it
        clears. A failed or abandoned dispatch keeps its place on the clock (what it started to
        prefill is not known). Dispatched at ``now_s`` to a substrate with rate limits, it takes one
        request and ``rate_tokens`` (input + max output tokens, what a provider's token bucket
        takes) off its rate-limit readings until a reading observed after it arrives; with several
        ingress replicas, off this replica's equal share of them (``_rate_share``)."""
        spec = self._lanes.get(substrate) if now_s is not None else None
        if spec is not None:
            latest = self._pending or self._snapshot
            cap = spec.max_concurrent if latest is None else limits(spec, latest.signals[spec.index])[0]
            lat = spec.latency
            lane_s = lat.base_ttft_s + prefill_tokens / lat.prefill_tokens_per_s
        with self._lock:
            if spec is not None:
                lane_s /= prefill_lanes(spec, cap)
                start = self._lane_clock.get(substrate, now_s)
                self._lane_clock[substrate] = (start if start > now_s else now_s) + lane_s
                start = self._lane_seen.get(substrate, now_s)
                self._lane_seen[substrate] = (start if start > now_s else now_s) + lane_s
                self._lane_work[substrate] += lane_s
            if now_s is not None and substrate in self._limited:
                sent = self._rate_spent.get(substrate)
                if sent is None:
                    sent = self._rate_spent[substrate] = deque()
                sent.append((now_s, rate_tokens))
            self._in_flight[substrate] += 1
            if self._quota_classes and tenant is not None:
                counts = self._tenant_in_flight.get(tenant)
                if counts is None:
                    counts = self._tenant_in_flight[tenant] = Counter()
                counts[substrate] += 1
                self._usage.pop(tenant, None)  # the other tenants' usage is unchanged
            self._view = None
        return Lease(substrate, self, tenant)

    def _release(self, lease: Lease) -> None:
        with self._lock:
            if lease.released:
                return
            lease.released = True
            self._in_flight[lease.substrate] -= 1
            if self._quota_classes and lease.tenant is not None:
                self._tenant_in_flight[lease.tenant][lease.substrate] -= 1
                self._usage.pop(lease.tenant, None)
            self._view = None
        if self._listener is not None:
            self._listener()

    # -- quotas and the hold queue ---------------------------------------------------------------
    def listen(self, listener: Callable[[], None], reclaiming: Callable[[], dict[str, dict[str, int]]],
               demand: Callable[[], dict[str, dict[int, int]]]) -> None:
        """``listener()`` is called whenever capacity may have freed (a lease released, a snapshot
        adopted); ``reclaiming()`` and ``demand()`` say what this replica's waiting requests
        reclaim and wait for (sent with each sync)."""
        self._listener = listener
        self._reclaiming = reclaiming
        self._demand = demand

    def tenant_usage(self, tenant: str) -> dict[str, int]:
        """Substrate class -> slots ``tenant`` holds there across every replica: the snapshot's
        counts with this replica's own reported ones replaced by its current ones. Read-only: the
        same dict is returned until a lease, a release or a snapshot changes a count."""
        if not self._quota_classes:
            return {}
        # Every placement of a tenant with quotas reads several tenants' usage, and the hold
        # queue reads it for each waiting head: worked out once per change of the counts (a lease
        # or a release drops its tenant's from ``_usage``, a snapshot adopted all; under the lock).
        with self._lock:
            usage = self._usage.get(tenant)
            if usage is None:
                usage = self._usage[tenant] = self._usage_now(tenant)
            return usage

    def _usage_now(self, tenant: str) -> dict[str, int]:
        """With the lock held: ``tenant_usage`` worked out from the counts."""
        classes = self._class_of
        usage: dict[str, int] = {}
        for name, n in self._tenant_published.get(tenant, {}).items():
            usage[classes[name]] = usage.get(classes[name], 0) + n
        for name, n in self._tenant_reported.get(tenant, {}).items():
            usage[classes[name]] = usage.get(classes[name], 0) - n
        for name, n in self._tenant_in_flight.get(tenant, {}).items():
            if n:
                usage[classes[name]] = usage.get(classes[name], 0) + n
        return {c: max(0, n) for c, n in usage.items()}

    def closed_for(self, request: PlacementRequest, view: FleetSnapshot,
                   due_s: float | None = None) -> tuple[tuple[str, str], ...]:
        """The substrates closed to ``request``'s next placement on ``view``: by its tenant's quotas
        (``plane.shares``), those whose free slots here are no more than the requests of a
        higher priority waiting for them at other replicas (a slot this replica freed since the
        last sync goes to them with the next one, ``share_of_free_slots``), and, for a class that
        holds while scaling up, all but the primary while its new replica can be in time (module
        doc)."""
        closed = self._arbitration_closed(request, view)
        if self._scaling_up and request.sla_class in self._hold_classes:
            held = self._held_for_new_replica(request, view, due_s)
            if held:
                done = {name for name, _ in closed}
                closed += tuple(h for h in held if h[0] not in done)
        return closed

    def _arbitration_closed(self, request: PlacementRequest, view: FleetSnapshot) -> tuple[tuple[str, str], ...]:
        """``closed_for`` by quotas, grants and higher-priority requests waiting elsewhere."""
        closed: tuple[tuple[str, str], ...] = ()
        tenant = self.policy.tenants.get(request.tenant)
        if tenant is not None and self._quota_classes:
            kept = kept_slots(self._unlent, request.tenant, self.tenant_usage) if self._unlent else {}
            closed = closed_substrates(tenant, self.fleet, view, self.tenant_usage(request.tenant),
                                       self._reclaiming_published, kept, self.policy.signal_staleness_bound_s)
        extra = []
        if self._grant:
            done = {name for name, _ in closed}
            with self._lock:
                for name, granted in self._grant.items():
                    if name not in done and self._in_flight[name] >= granted:
                        extra.append((name, f"this ingress replica holds its grant of {granted} slot(s) until its "
                                            "next sync; the others are other replicas'"))
        sla = self.policy.sla_classes.get(request.sla_class)
        own = self._demand() if self._demand is not None else {}
        if sla is None or not (self._others_waiting or own):
            return closed + tuple(extra) if extra else closed
        done = {name for name, _ in closed} | {name for name, _ in extra}
        for name in self._others_waiting.keys() | own.keys():
            if name in done:
                continue
            i = self.fleet.index[name]
            reading = view.signals[i].in_flight
            if reading is None:
                continue
            max_concurrent, max_queued = limits(self.fleet.substrates[i], view.signals[i])
            others = self._others_waiting.get(name, {})
            above = sum(n for p, n in others.items() if p > sla.priority)
            if above and max_concurrent + max_queued - reading.value <= above:
                extra.append((name, f"held for {above} higher-priority request(s) waiting at other ingress replicas"))
            elif max_queued and reading.value >= max_concurrent:
                waiting = sum(others.values()) + sum(own.get(name, {}).values())
                extra.append((name, f"running slots full; its own queue is kept while {waiting} request(s) wait "
                                    "in the plane, which orders them"))
        return closed + tuple(extra) if extra else closed

    def _held_for_new_replica(self, request: PlacementRequest, view: FleetSnapshot,
                              due_s: float | None) -> tuple[tuple[str, str], ...]:
        """Every substrate but the model's primary, with the reason, while the primary is full and
        the replica it is starting can still give ``request`` its first token in time; else ()."""
        route = self.fleet.route_for(request.model, request.request_id)  # its version's, for a model with versions
        if route is None or route.primary in request.exclude:
            return ()
        ready_at = self._scaling_up.get(route.primary)
        if ready_at is None:
            return ()
        i = self.fleet.index[route.primary]
        spec, signals = self.fleet.substrates[i], view.signals[i]
        reading = signals.in_flight
        max_concurrent, max_queued = limits(spec, signals)
        if reading is None or reading.value < max_concurrent + max_queued:
            return ()  # room on it now (or no reading: the engine decides)
        now = request.arrived_at_s
        if due_s is None:
            due_s = now + self.policy.sla_classes[request.sla_class].ttft_deadline_s
        if max(ready_at, now) + idle_ttft_s(spec, request.input_tokens) > due_s:
            return ()  # the new replica cannot be in time: spill as usual
        reason = (f"held for {route.primary}'s new replica, expected to admit in {max(0.0, ready_at - now):.1f} s "
                  f"(class {request.sla_class} holds while scaling up)")
        return tuple((self.fleet.substrates[j].name, reason) for j in route.substrate_indices if j != i)

    def in_flight(self) -> dict[str, int]:
        """This replica's dispatches not yet released, by substrate (zeros included)."""
        with self._lock:
            return dict(self._in_flight)

    def report_outcome(self, outcome: Outcome) -> None:
        with self._lock:
            self._outcomes.append(outcome)

    def add_spend(self, tenant: str, usd: float) -> None:
        if usd:
            with self._lock:
                self._spend[tenant] += usd

    # -- the sync -------------------------------------------------------------------------------
    def take_report(self, now_s: float) -> SyncReport:
        """What the next sync sends; the outcomes and spend in it leave this state (``restore``
        puts them back if the sync fails)."""
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
            spend = dict(self._spend)
            self._spend.clear()
            in_flight = dict(self._in_flight)
            tenants: dict[str, dict[str, int]] = {}
            for tenant, counts in self._tenant_in_flight.items():
                for name, n in counts.items():
                    if n:
                        tenants.setdefault(tenant, {})[name] = n
            clock = self._lane_clock
            lanes = {name: (clock[name] if clock[name] > now_s else 0.0, work)
                     for name, work in self._lane_work.items()} if self._lane_work else {}
        snap = self._pending or self._snapshot
        return SyncReport(in_flight, outcomes, spend, None if snap is None else snap.version,
                          None if snap is None else now_s - snap.taken_at_s, tenants,
                          self._reclaiming() if self._reclaiming is not None else {},
                          self._demand() if self._demand is not None else {}, lanes)

    def _add_others_lane_work(self, published: PublishedSnapshot) -> None:
        """With the lock held: the other replicas' first-token work that ``published`` brings, added
        to what clears the lanes in this replica's view. The lanes serve every replica's work, so
        the new lane-seconds each other replica reports since the last snapshot add up on top of
        what was known (work-conserving: the total is the same in any order), and it clears no
        earlier than any other replica's own clock (nor than this one's: ``lease`` runs both on
        alike). A replica seen for the first time brings only the
        work its clock still has ahead; one this replica knew before with nothing dispatched, all
        of its work."""
        at = published.taken_at_s
        added: dict[str, float] = {}
        latest: dict[str, float] = {}
        known, peers = self._lane_others, self._lane_peers
        seen_now: dict[tuple[str, str], float] = {}
        for rid, lanes in published.lanes.items():
            if rid == self.replica_id:
                continue
            for name, (clear_at, work) in lanes.items():
                key = (rid, name)
                if rid in peers:
                    new = work - known.get(key, 0.0)
                else:
                    new = clear_at - at if clear_at > at else 0.0
                if new > 0.0:
                    added[name] = added.get(name, 0.0) + new
                if clear_at > latest.get(name, -_INF):
                    latest[name] = clear_at
                seen_now[key] = work
        self._lane_others = seen_now
        self._lane_peers = frozenset(published.ingress_ids)  # a replica gone from the snapshot is forgotten
        seen = self._lane_seen
        for name in added.keys() | latest.keys():
            base = seen.get(name)
            t = -_INF if base is None else base + added.get(name, 0.0)
            seen[name] = max(t, latest.get(name, -_INF))

    def restore(self, report: SyncReport) -> None:
        """A sync that did not reach the authority: its outcomes and spend go with the next one."""
        with self._lock:
            self._outcomes[:0] = report.outcomes
            self._spend.update(report.spend_usd)

    def publish(self, published: PublishedSnapshot, report: SyncReport) -> bool:
        """Adopt the authority's answer to ``report``. Refused (False, the last snapshot kept) when
        it was computed under another config (``policy_hash`` differs)."""
        if published.policy_hash != self.policy.policy_hash:
            return False
        grant = published.grants.get(self.replica_id, {}) if self.replica_id is not None else {}
        others: dict[str, dict[int, int]] = {}
        for rid, by_substrate in published.demand.items():
            if rid != self.replica_id:
                for name, by_priority in by_substrate.items():
                    row = others.setdefault(name, {})
                    for p, n in by_priority.items():
                        row[p] = row.get(p, 0) + n
        self._others_waiting = others
        self._scaling_up = published.scaling_up
        with self._lock:
            self._pending = published
            self._reported = report.in_flight
            replicas = len(set(published.ingress_ids) | {self.replica_id}) if self.replica_id is not None \
                else max(1, len(published.ingress_ids))
            self._rate_share = 1.0 / replicas
            self._grant = grant
            self._view = None
            if published.lanes or self._lane_peers:
                self._add_others_lane_work(published)
            if self._quota_classes:
                self._tenant_published = published.tenant_in_flight
                self._tenant_reported = report.tenant_in_flight
                self._reclaiming_published = published.reclaiming
                self._usage.clear()
        if self._listener is not None:
            self._listener()
        return True
