"""The placement authority's state: what it knows of every substrate, turned into snapshots.

Pure bookkeeping with an injected clock; the Ray actor (``deployments.placement_actor``) is a thin
wrapper around it. Three kinds of report arrive, each a documented signal source:

- **ingress replicas** (every ``ingress.snapshot_refresh_ms``): their in-flight requests per
  substrate, their prefill-lane clocks and lane work (published as they came, ``lanes``), and their
  outcomes (time to first token, time per output token, success, Retry-After,
  and for a finished request its tenant, model, output tokens and when it was dispatched);
- **substrate replicas** (every 0.25 s, their heartbeat): what their adapter reads from the
  substrate itself (vLLM engine: running, waiting, KV-cache use; provider API: rate-limit headroom
  and Retry-After from response headers; emulated: its queue), plus the Ray node they run on and
  that node's region, zone and jurisdiction labels, its memory and CPU pressure, and the memory of
  the GPUs the replica holds (NVML);
- **the platform team**: named external signals pushed for a substrate, a zone, a region or the
  whole fleet (``push_external``), used by the policy's ``external_signals`` rules.

Derivation, per substrate:

- ``in_flight`` is the sum over live ingress replicas (what was dispatched and has not ended:
  running, waiting in the substrate, or still in Serve's handle) and exists only while at least
  one substrate replica reports: no heartbeat, no signal, not eligible. While no ingress replica
  reports, it is the substrate replicas' own count, which means the same for the vLLM adapter
  (every request handed to the engine) and a provider API's (every request sent and not
  answered); the emulated adapter counts only the slots held, so its waiting requests are added
  (``RUNNING_ONLY_KINDS``). It is the substrate's occupancy (``placement.signals``).
- ``capacity`` (``SubstrateSignals.capacity``) of a vLLM or emulated substrate follows its replicas:
  ``SubstrateSpec.capacity_at(live)``, the declared limits scaled by the replicas live over the
  replicas declared (per-replica slots times live replicas). A replica is live while its reports
  are within the staleness bound and Serve does not say it is stopping (``set_serve_replicas``,
  from the actor's poll of Serve): a replica being drained stops adding capacity at once, while
  its reports still count in the load. None live: capacity 0 (and no ``in_flight``, so nothing is
  admitted). Replicas Serve is starting are shown (``status``), never counted. A provider API's
  limit is fleet-level: None, the spec's. ``_grant`` shares out the live capacity, and the
  outcomes that met "no queue" are those below it.
- ``queued`` sums (the waiting part of ``in_flight``, not added to it); ``kv_cache_usage`` and
  ``gpu_memory_used_ratio`` take the max, rate-limit headroom the min over replicas.
- ``recent_ttft_s`` / ``recent_tpot_s`` are medians and ``error_rate`` the failure fraction of the
  last ``OUTCOME_WINDOW`` outcomes no older than ``latency_window_s``; when none is that recent,
  of those within ``latency_window_s`` of the newest, dated by it (stale readings: the estimate
  ignores them, the deadline filter admits only probes while they say "too slow"). The medians
  are taken over the outcomes whose load counts at the current occupancy (below), each reading
  dated by the newest of them; the error rate over all. ``ttft_ratio`` is the median of observed
  over declared first-token time (``Outcome.declared_ttft_s``, the decision's) over the same
  outcomes, those that carry both, dated as the medians: what the estimate scales its prediction
  by (``placement.estimate``).
- **A latency reading counts only at a load it bounds.** An outcome's ``load`` is the most
  requests it shared the substrate with: the occupancy published when it was dispatched, or the
  highest published while it ran less itself, whichever is more (from the authority's record of
  each substrate's occupancy; unknown, and then counted at any load, when the outcome carries no
  dispatch time or the record no longer reaches back to it). At occupancy ``o`` now, the medians
  use the outcomes with ``load <= max(o, max_concurrent - 1)``. Latency does not fall as load
  rises, so an outcome that met no more load than there is now bounds what a request meets now
  from below, and one that met no queue (``load < max_concurrent``: every request had a slot, and
  the estimate models no wait there) measures the substrate itself, at any load. One that met a
  deeper queue than now's measured that queue, which the estimate already predicts from the live
  occupancy: it would judge an idle substrate by a burst it has finished. (The price: a substrate
  both slow and overloaded, whose every outcome met a queue, is no longer held to probes once it
  drains; up to ``max_concurrent`` requests go before the queue's readings count again, and
  those, meeting no queue, keep it cut if it is still slow.)
- ``expected_output_tokens`` (per tenant and canonical model, in the snapshot): the output length
  of its finished requests, a running mean over the first ``1 / OUTPUT_LENGTH_WEIGHT`` and an
  exponentially weighted one after (weight ``OUTPUT_LENGTH_WEIGHT``), for at most
  ``OUTPUT_LENGTH_PAIRS`` pairs (the least recently updated leaves). Placement predicts with it
  (capped at each request's max output tokens) instead of the max clients ask for.
- ``circuit`` comes from the substrate's ``CircuitBreaker`` (``inferplane.health``), fed by the
  outcomes and by Retry-After.
- ``node_countries`` is the set of jurisdiction labels of the nodes of its live replicas.
- **Drift penalties** (``policy.health.residual_drift: penalize``): the actor hands over its drift
  detector's floors (``set_drift_floors``; ``telemetry.drift``) before each snapshot. While a
  substrate is flagged ``ttft`` (``tpot``), its ``recent_ttft_s`` (``recent_tpot_s``) is raised to
  the floor, ``factor x`` its median prediction when the flag was set: a reading that is missing,
  stale or lower becomes ``Reading(floor_s, now)`` (the detector's judgement is current; a stale
  reading left in place would make the estimate ignore the penalty), a fresh higher one is kept.
  Each floor applied is named in the signals' ``drift`` (``placement.signals.DriftPenalty``), so
  every decision that predicted with it says so. A change of floors publishes a new version.

Every reading carries the time of the oldest report it was built from, so its age is honest,
with one exception: an ingress replica silent for half the staleness bound (``INGRESS_SILENT_FRACTION``:
Serve stopped it in a rollout, or it was killed) no longer dates ``in_flight``, while its counts are
still summed until the bound. Dated by it, every substrate's ``in_flight`` would age with its last
report and, as that neared the bound, reach the other replicas stale (their snapshot adds its own
age): every substrate ineligible at once, and a burst of 503 ``stale_signals`` on the replicas that
are fine, though every substrate reports. Its counts can only overstate the load (a silent replica
places nothing the others do not already leave it: its grant, ``_grant``, stays until the bound),
so admission stays on the safe side; the substrates' own liveness still dates every reading.
Reports from replicas silent for longer than the staleness bound are dropped; an ingress replica
stopping gracefully says goodbye after its last report and is dropped at once
(``leave_ingress``).
"""

from __future__ import annotations

from collections import deque
import datetime as _dt
from dataclasses import dataclass, field, fields, replace
from functools import partial
from bisect import bisect_left, bisect_right, insort
from itertools import compress, islice, repeat
from operator import is_not, le, not_, sub
from typing import NamedTuple

from inferplane.health import BreakerSettings, CircuitBreaker
from inferplane.placement.fleet import FleetSpec, SubstrateSpec
from inferplane.placement.signals import Capacity, CircuitState, DriftPenalty, Reading, SubstrateSignals

OUTCOME_WINDOW = 64
OUTPUT_LENGTH_WEIGHT = 1.0 / 32.0
"""The weight of each finished request in its (tenant, model)'s expected output length: the plain
mean of the first 32, then an exponentially weighted mean over about the last 32."""
OUTPUT_LENGTH_PAIRS = 4096
"""The most (tenant, model) pairs whose output length is kept; the least recently updated leaves."""
LOAD_RECORD = 4096
"""The most changes of a substrate's occupancy kept to find the load an outcome met (about a
minute of syncs at the replay's rate); an outcome dispatched before the oldest kept counts at any
load."""
RUNNING_ONLY_KINDS = frozenset({"emulated"})
"""Kinds whose adapter's ``load().in_flight`` counts only the requests holding a slot (its
``queued`` ones are not in it): the authority adds the two when it uses the replicas' own count."""
HEARTBEAT_S = 0.25
"""How often each substrate replica reports its load (its heartbeat)."""
ACTOR_WARMUP_S = 0.75
"""After a (re)start the authority publishes nothing for at least this long, and then not until
every substrate has reported or the staleness bound has passed: until then every substrate would
look unknown, and ingress replicas do better on their last snapshot."""
INGRESS_SILENT_FRACTION = 0.5
"""An ingress replica that has not reported for this fraction of the staleness bound (a replica
Serve stopped or that was killed) no longer dates the in-flight readings; its counts are still
summed until the bound drops them (module doc)."""
EXTERNAL_SCOPES = ("substrate", "zone", "region", "fleet")
_INF = float("inf")


@dataclass(frozen=True, slots=True)
class SubstrateReport:
    """One substrate replica's view of itself: what its adapter's ``load()`` returns, and (filled
    by the replica) the node it runs on. None: not known."""

    in_flight: int
    queued: int = 0
    kv_cache_usage: float | None = None
    rate_limit_requests_remaining: float | None = None
    rate_limit_tokens_remaining: float | None = None
    retry_after_until_s: float | None = None
    node_id: str | None = None
    node_region: str | None = None
    node_zone: str | None = None
    node_jurisdiction: str | None = None
    gpu_memory_used_ratio: float | None = None
    node_memory_used_ratio: float | None = None
    node_cpu_used_ratio: float | None = None
    prefix_cache_queried_tokens: int | None = None
    """Prompt tokens the engine looked up in its prefix cache since it started (vLLM's
    ``vllm:prefix_cache_queries``)."""
    prefix_cache_hit_tokens: int | None = None
    """Of those, the tokens it found cached (``vllm:prefix_cache_hits``)."""
    replicas: int = 1
    """The engine replicas this report speaks for: 1 from a Serve replica (its own heartbeat); the
    replay's simulator reports each substrate once for all its configured replicas."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt on ``substrate`` ended, at ``at_s``, as the ingress replica saw it."""

    substrate: str
    ok: bool
    ttft_s: float | None
    tpot_s: float | None
    at_s: float
    retry_after_s: float | None = None
    tenant: str | None = None
    model: str | None = None
    """The canonical model name (the decision's)."""
    output_tokens: int | None = None
    """Tokens produced (a completed request's teach the expected output length)."""
    dispatched_at_s: float | None = None
    """When the attempt was dispatched (dates the load it met)."""
    declared_ttft_s: float | None = None
    """The first-token time the substrate's declared profile predicted for it at placement
    (``PlacementDecision.declared_ttft_s``): ``ttft_s`` over it teaches ``ttft_ratio``."""


@dataclass(frozen=True, slots=True)
class PublishedSnapshot:
    """What the actor sends an ingress: signals in fleet order, without the static fleet spec
    (every ingress builds the same spec from the same config; ``policy_hash`` proves it)."""

    version: int
    taken_at_s: float
    policy_hash: str
    signals: tuple[SubstrateSignals, ...]
    tenant_spend_usd: dict[str, float] = field(default_factory=dict)
    tenant_in_flight: dict[str, dict[str, int]] = field(default_factory=dict)
    """Tenant -> substrate -> in flight, summed over live ingress replicas (only those that report
    it: replicas of a config where some tenant has quotas)."""
    reclaiming: dict[str, dict[str, int]] = field(default_factory=dict)
    """Substrate class -> tenant -> slots its waiting requests reclaim, summed over replicas."""
    ingress_ids: tuple[str, ...] = ()
    """The live ingress replicas, sorted: each takes its share of a pool's free slots until the
    next sync (``plane.state``)."""
    demand: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)
    """Ingress replica -> substrate -> priority -> requests waiting there for a slot of it
    (replicas with none waiting are left out): free slots go to the highest priority first."""
    grants: dict[str, dict[str, int]] = field(default_factory=dict)
    """Ingress replica -> substrate -> requests it may have in flight there until its next sync
    (``FleetState.report_ingress``): together never more than the substrate admits."""
    expected_output_tokens: dict[tuple[str, str], float] = field(default_factory=dict)
    """(tenant, canonical model) -> the output length its finished requests produced on average
    (``FleetSnapshot.expected_output_tokens``)."""
    scaling_up: dict[str, float] = field(default_factory=dict)
    """Substrate -> when (epoch s) its first starting replica is expected to admit: the time Serve
    started it plus the longest start measured for the substrate (``set_serve_replicas``). Only
    substrates with a replica starting and a start measured; an SLA class that holds while scaling up
    waits for it (``plane.state.ReplicaState.closed_for``)."""
    lanes: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    """Ingress replica -> substrate -> (when the substrate's prefill lanes clear the first-token
    work that replica dispatched, 0 when cleared; the lane-seconds of it in all), as each replica
    reported it (``plane.state.SyncReport.lanes``; replicas that never dispatched such work are
    left out): each replica adds the others' new work to its own view (``ReplicaState.publish``)."""


class IngressReport(NamedTuple):
    """One ingress replica's last sync, as kept. (A named tuple: one is built on every sync.)"""

    at_s: float
    in_flight: dict[str, int]
    snapshot_version: int | None
    snapshot_age_s: float | None
    zone: str | None
    tenant_in_flight: dict[str, dict[str, int]] | None = None
    reclaiming: dict[str, dict[str, int]] | None = None
    demand: dict[str, dict[int, int]] | None = None
    lanes: dict[str, tuple[float, float]] | None = None


class FleetState:
    def __init__(self, fleet: FleetSpec, policy_hash: str, staleness_bound_s: float,
                 breaker: BreakerSettings | None = None, latency_window_s: float = 10.0,
                 budget_periods: dict[str, str] | None = None) -> None:
        self._latency_window = latency_window_s
        # tenant -> "day" or "month"; spend is kept per (tenant, current period key)
        self._budget_periods = dict(budget_periods or {})
        self._spend: dict[str, tuple[str, float]] = {}
        # (tenant, model) -> (mean output tokens, finished requests counted), in order of update
        self._output_lengths: dict[tuple[str, str], tuple[float, int]] = {}
        self._expected_output: dict[tuple[str, str], float] | None = {}
        self._fleet = fleet
        self._names = [s.name for s in fleet.substrates]
        self._policy_hash = policy_hash
        self._bound = staleness_bound_s
        self._ingress: dict[str, IngressReport] = {}
        self._grants: dict[str, dict[str, int]] = {}  # ingress replica -> substrate -> slots it may hold
        self._scaling_up: dict[str, float] = {}  # substrate -> when its starting replica should admit
        self._replicas: dict[str, dict[str, tuple[float, SubstrateReport]]] = {n: {} for n in self._names}
        self._breakers = {n: CircuitBreaker(breaker or BreakerSettings()) for n in self._names}
        self._external: dict[tuple[str, str, str], Reading] = {}
        self._version = 0
        self._published: PublishedSnapshot | None = None
        self._dirty = True
        # Per substrate (fleet order), what its signals were derived from, kept until those inputs
        # change (the replay syncs ten times a simulated second; most syncs change nothing but the
        # ingress counts).
        self._derived = tuple(_Derived(s.name, s.zone, s.region, self._breakers[s.name], self._replicas[s.name],
                                       s.max_concurrent, s.kind in RUNNING_ONLY_KINDS, s)
                              for s in fleet.substrates)
        self._derived_by_name = {d.name: d for d in self._derived}
        # No kept report is older than this, so nothing can expire before it + the bound (a sync
        # then skips the pass over every report).
        self._oldest_report_s = float("inf")
        # substrate -> its drift floors as ((kind, factor, floor_s), ...), sorted (``set_drift_floors``)
        self._drift_floors: dict[str, tuple[tuple[str, float, float], ...]] = {}

    def reconfigured(self, fleet: FleetSpec, policy_hash: str, staleness_bound_s: float,
                     breaker: BreakerSettings | None = None, latency_window_s: float = 10.0,
                     budget_periods: dict[str, str] | None = None) -> FleetState:
        """This state under another config (``models apply``): a new state for ``fleet`` that keeps,
        for every substrate the two fleets share by name, its replicas' reports, its circuit breaker,
        its outcome window and what Serve said of its replicas; and, fleet-wide, the tenants' spend,
        the learnt output lengths, external signals, the ingress replicas' last reports (counts of
        substrates that remain) and the snapshot version, which keeps rising. A substrate new to
        ``fleet`` starts as at start-up (not reporting: not eligible); one no longer in it is gone."""
        new = FleetState(fleet, policy_hash, staleness_bound_s, breaker, latency_window_s, budget_periods)
        kept = {d.name: d for d in self._derived}
        for d in new._derived:
            old = kept.get(d.name)
            if old is None:
                continue
            new._replicas[d.name] = d.replicas = old.replicas
            new._breakers[d.name] = d.breaker = old.breaker
            d.outcomes, d.stopping, d.serve = old.outcomes, old.stopping, old.serve
            d.replica_s, d.integrated_at_s = old.replica_s, old.integrated_at_s
        names = set(new._replicas)
        new._spend = {t: v for t, v in self._spend.items() if t in new._budget_periods}
        new._output_lengths = dict(self._output_lengths)
        new._expected_output = None
        new._external = dict(self._external)
        new._ingress = {i: r._replace(in_flight={k: v for k, v in r.in_flight.items() if k in names})
                        for i, r in self._ingress.items()}
        new._scaling_up = {k: v for k, v in self._scaling_up.items() if k in names}
        new._drift_floors = {k: v for k, v in self._drift_floors.items() if k in names}
        new._version = self._version
        new._oldest_report_s = self._oldest_report_s
        return new

    # -- reports ------------------------------------------------------------------------------
    def report_ingress(self, ingress_id: str, in_flight: dict[str, int], outcomes: list[Outcome], now_s: float,
                       *, snapshot_version: int | None = None, snapshot_age_s: float | None = None,
                       zone: str | None = None, tenant_in_flight: dict[str, dict[str, int]] | None = None,
                       reclaiming: dict[str, dict[str, int]] | None = None,
                       demand: dict[str, dict[int, int]] | None = None,
                       lanes: dict[str, tuple[float, float]] | None = None) -> None:
        """``tenant_in_flight`` (tenant -> substrate -> count) and ``reclaiming`` (class -> tenant ->
        slots) come from replicas of a config with quotas (``plane.shares``); ``demand``
        (substrate -> priority -> waiting) from replicas holding requests (``plane.queue``);
        ``lanes`` (substrate -> (lane clock, lane-seconds dispatched)) from replicas that have
        dispatched to a substrate that declares prefill lanes."""
        replicas = self._replicas
        counts = dict(in_flight) if replicas.keys() >= in_flight.keys() else \
            {k: v for k, v in in_flight.items() if k in replicas}
        self._ingress[ingress_id] = IngressReport(now_s, counts, snapshot_version, snapshot_age_s, zone,
                                                  tenant_in_flight or None, reclaiming or None, demand or None,
                                                  lanes or None)
        if len(self._ingress) > 1 or len(self._grants) > 0:
            self._grant(ingress_id)
        if now_s < self._oldest_report_s:
            self._oldest_report_s = now_s
        for o in outcomes:
            d = self._derived_by_name.get(o.substrate)
            if d is None:
                continue
            d.outcomes.append(o, d.load_met(o.dispatched_at_s))
            d.op = None
            if o.ok and o.output_tokens is not None and o.tenant is not None and o.model is not None:
                self._learn_output_length(o.tenant, o.model, o.output_tokens)
            breaker = self._breakers[o.substrate]
            if o.retry_after_s:  # back-pressure the substrate timed: held until then, not a failure
                breaker.retry_after(o.at_s + o.retry_after_s, now_s)
            else:
                breaker.record(o.ok, o.at_s)
        self._dirty = True

    def _learn_output_length(self, tenant: str, model: str, output_tokens: int) -> None:
        """One finished request's output length into its (tenant, model)'s mean (module doc)."""
        lengths = self._output_lengths
        key = (tenant, model)
        kept = lengths.pop(key, None)  # put back last: the dict is in order of update
        if kept is None:
            if len(lengths) >= OUTPUT_LENGTH_PAIRS:
                del lengths[next(iter(lengths))]
            mean, n = float(output_tokens), 1
        else:
            mean, n = kept
            n += 1
            mean += (output_tokens - mean) * max(1.0 / n, OUTPUT_LENGTH_WEIGHT)
        lengths[key] = (mean, n)
        self._expected_output = None

    def expected_output_tokens(self) -> dict[tuple[str, str], float]:
        """(tenant, canonical model) -> expected output length, as published (the same object
        until an outcome changes it)."""
        if self._expected_output is None:
            self._expected_output = {key: mean for key, (mean, _) in self._output_lengths.items()}
        return self._expected_output

    def add_spend(self, spend_usd: dict[str, float], now_s: float) -> None:
        """Attributed cost of finished requests, by tenant (only tenants with a budget are kept)."""
        for tenant, usd in spend_usd.items():
            period = self._budget_periods.get(tenant)
            if period is None or not usd:
                continue
            key = period_key(period, now_s)
            current_key, total = self._spend.get(tenant, (key, 0.0))
            self._spend[tenant] = (key, (total if current_key == key else 0.0) + usd)
            self._dirty = True

    def tenant_spend(self, now_s: float) -> dict[str, float]:
        return {t: usd for t, (key, usd) in self._spend.items()
                if key == period_key(self._budget_periods[t], now_s)}

    def report_substrate(self, substrate: str, replica_id: str, report: SubstrateReport, now_s: float) -> None:
        if substrate not in self._replicas:
            raise KeyError(f"unknown substrate {substrate!r}")
        self._replicas[substrate][replica_id] = (now_s, report)
        if now_s < self._oldest_report_s:
            self._oldest_report_s = now_s
        self._derived_by_name[substrate].rp = None
        if report.retry_after_until_s is not None:
            self._breakers[substrate].retry_after(report.retry_after_until_s, now_s)
        self._dirty = True

    def set_serve_replicas(self, substrate: str, target: int, starting: int, stopping: frozenset[str],
                           ready_at_s: float | None = None) -> None:
        """What Serve says of a substrate's deployment: the replicas it aims for (``target``), those
        it is starting (shown, never admitted to: they admit once they report), and the ids of those
        it is stopping. A stopping replica's capacity leaves at once, while its heartbeats still
        arrive (Serve drains it: it takes no new request, its running ones finish, and its reports
        still count in the load); a replica that merely goes silent leaves when its last report
        expires. ``ready_at_s``: when the first starting replica is expected to admit (None: none
        starting, or no start measured yet), published as ``PublishedSnapshot.scaling_up``."""
        d = self._derived_by_name[substrate]
        if (target, starting) != d.serve:
            d.serve = (target, starting)
        ready_at_s = ready_at_s if starting > 0 else None
        if ready_at_s != self._scaling_up.get(substrate):
            if ready_at_s is None:
                del self._scaling_up[substrate]
            else:
                self._scaling_up[substrate] = ready_at_s
            self._dirty = True
        # Once stopping, always: Serve forgets a replica once it is gone, while its last report may
        # still be within the staleness bound (ids are never reused; kept while the report is).
        stopping = stopping | {rid for rid in d.stopping if rid in d.replicas}
        if stopping != d.stopping:
            d.stopping = stopping
            d.rp = None
            self._dirty = True

    def _grant(self, ingress_id: str) -> None:
        """The slots ``ingress_id`` may hold on each substrate until its next sync: what it holds
        now, plus its share of the free slots (``share_of_free_slots``: waiting requests by
        priority first, then evenly), never more than what the other replicas' grants leave. Each
        replica admits only within its grant, so however the syncs interleave the replicas
        together never put more on a substrate than it admits (``max_concurrent + max_queued``, as
        they are now: its live capacity, ``set_serve_replicas``)."""
        reports = self._ingress
        me = reports[ingress_id]
        ids = tuple(sorted(reports))
        grants = self._grants
        demand = {i: r.demand for i, r in reports.items() if r.demand}
        mine: dict[str, int] = {}
        for spec, d in zip(self._fleet.substrates, self._derived):
            name = spec.name
            if d.rp is None:  # a replica reported or left since the last snapshot: count it now
                d.rp = _replica_part(d.replicas.values(), d.running_only)
                d.count_live()
            c = d.capacity
            limit = spec.max_concurrent + spec.max_queued if c is None else c[0] + c[1]
            held = me.in_flight.get(name, 0)
            others_granted = 0
            used = held
            for i, r in reports.items():
                if i != ingress_id:
                    c = r.in_flight.get(name, 0)
                    # A replica that has not synced since grants began may use every slot it sees.
                    others_granted += max(c, grants[i].get(name, c)) if i in grants else limit
                    used += c
            room = limit - others_granted - held
            if room <= 0:
                mine[name] = held
                continue
            wanted = {i: d[name] for i, d in demand.items() if name in d}
            portion = share_of_free_slots(max(0, limit - used), ids, wanted, self._version)[ingress_id]
            mine[name] = held + min(room, portion)
        grants[ingress_id] = mine

    def leave_ingress(self, ingress_id: str) -> bool:
        """An ingress replica stopping gracefully (Serve drained it in a rollout or a scale-down)
        says goodbye after its last report: it is dropped at once, its grant with it, so its share
        of the free slots goes back to the others at their next sync instead of after the bound.
        Refused (False: kept until the bound, as a silent one) while its last report still held
        requests in flight: those may still run on the substrates, and the counts must stay."""
        report = self._ingress.get(ingress_id)
        if report is None or any(report.in_flight.values()):
            return False
        del self._ingress[ingress_id]
        self._grants.pop(ingress_id, None)
        self._dirty = True
        return True

    def live_ingress(self, now_s: float) -> int:
        """Ingress replicas that reported within the staleness bound."""
        horizon = now_s - self._bound
        return sum(1 for r in self._ingress.values() if r.at_s >= horizon)

    def all_reporting(self) -> bool:
        """Whether every substrate has at least one replica report (a restarted authority waits
        for this, up to a bound, before it publishes)."""
        return all(self._replicas.values())

    def push_external(self, name: str, value: float, scope: str, target: str, now_s: float) -> None:
        """A platform signal (power headroom, zone congestion, regional failover state...) for a
        substrate, zone or region by name, or for the whole fleet (``scope="fleet"``, any target).
        The most specific value wins: substrate, then zone, then region, then fleet."""
        if scope not in EXTERNAL_SCOPES:
            raise ValueError(f"scope must be one of {EXTERNAL_SCOPES}, not {scope!r}")
        if scope == "substrate" and target not in self._replicas:
            raise KeyError(f"unknown substrate {target!r}")
        self._external[(scope, "*" if scope == "fleet" else target, name)] = Reading(float(value), now_s)
        self._dirty = True

    def set_drift_floors(self, floors) -> None:
        """The drift detector's floors (``telemetry.drift.DriftDetector.floors``: substrate ->
        {``ttft``/``tpot``: a ``Floor`` with ``floor_s`` and ``factor``}) to apply from the next
        snapshot on (module doc); ``{}`` clears them. Unknown substrates and kinds are ignored. A
        change makes the next snapshot a new version."""
        known = self._derived_by_name
        wanted = {}
        for name, by_kind in floors.items():
            if name in known:
                kept = tuple(sorted((kind, float(f.factor), float(f.floor_s)) for kind, f in by_kind.items()
                                    if kind in _PENALIZED_READINGS))
                if kept:
                    wanted[name] = kept
        if wanted != self._drift_floors:
            self._drift_floors = wanted
            self._dirty = True

    # -- snapshots ----------------------------------------------------------------------------
    def snapshot(self, now_s: float) -> PublishedSnapshot:
        """The current snapshot; a new version whenever a report arrived since the last one."""
        if self._published is None or self._dirty:
            if self._oldest_report_s < now_s - self._bound:
                self._expire(now_s)
            self._version += 1
            # in_flight sums over the ingress replicas within the bound, dated by the oldest report
            # of those still syncing (``INGRESS_SILENT_FRACTION``).
            ingress = self._ingress
            if len(ingress) == 1:  # one replica (the replay's, a small deployment's): its counts are the sums
                (only,) = ingress.values()
                totals, oldest_ingress = only.in_flight, only.at_s
            else:
                totals = {}
                oldest_ingress = oldest_syncing = None
                syncing_since = now_s - self._bound * INGRESS_SILENT_FRACTION
                for r in ingress.values():
                    at = r.at_s
                    if oldest_ingress is None or at < oldest_ingress:
                        oldest_ingress = at
                    if at >= syncing_since and (oldest_syncing is None or at < oldest_syncing):
                        oldest_syncing = at
                    for name, n in r.in_flight.items():
                        totals[name] = totals.get(name, 0) + n
                if oldest_syncing is not None:
                    oldest_ingress = oldest_syncing
            signals = self._signals
            derived = [signals(d, now_s, totals, oldest_ingress) for d in self._derived]
            if self._drift_floors:
                floors = self._drift_floors
                derived = [_penalized(sig, floors[d.name], now_s, self._bound) if d.name in floors else sig
                           for d, sig in zip(self._derived, derived)]
            self._published = _published_snapshot(
                self._version, now_s, self._policy_hash,
                tuple(derived),
                self.tenant_spend(now_s) if self._spend else {},
                _nested_sum(r.tenant_in_flight for r in ingress.values()),
                _nested_sum(r.reclaiming for r in ingress.values()),
                tuple(sorted(ingress)),
                {i: r.demand for i, r in ingress.items() if r.demand},
                {i: g for i, g in self._grants.items() if i in ingress},
                self.expected_output_tokens(),
                dict(self._scaling_up),
                {i: r.lanes for i, r in ingress.items() if r.lanes},
            )
            self._dirty = False
        return self._published

    def _expire(self, now_s: float) -> None:
        horizon = now_s - self._bound
        for ingress_id in [i for i, r in self._ingress.items() if r.at_s < horizon]:
            del self._ingress[ingress_id]
            self._grants.pop(ingress_id, None)  # a replica silent that long holds nothing it may use
        oldest = min((r.at_s for r in self._ingress.values()), default=float("inf"))
        for name, per_replica in self._replicas.items():
            for rid in [r for r, (t, _) in per_replica.items() if t < horizon]:
                del per_replica[rid]
                self._derived_by_name[name].rp = None
            for t, _ in per_replica.values():
                if t < oldest:
                    oldest = t
        self._oldest_report_s = oldest

    def _external_for(self, name: str, zone: str, region: str) -> tuple[tuple[str, Reading], ...]:
        by_name: dict[str, tuple[int, Reading]] = {}
        targets = {"substrate": name, "zone": zone, "region": region, "fleet": "*"}
        for (scope, target, signal), reading in self._external.items():
            if targets[scope] != target:
                continue
            rank = EXTERNAL_SCOPES.index(scope)
            if signal not in by_name or rank < by_name[signal][0]:
                by_name[signal] = (rank, reading)
        return tuple(sorted((signal, reading) for signal, (_, reading) in by_name.items()))

    def _signals(self, d: _Derived, now_s: float, ingress_totals: dict[str, int],
                 oldest_ingress_s: float | None) -> SubstrateSignals:
        # Liveness comes from the substrate's own replicas: without a fresh replica report the
        # substrate is unknown, whatever the ingress replicas think they sent it.
        rp = d.rp
        if rp is None:
            rp = d.rp = _replica_part(d.replicas.values(), d.running_only)
            d.count_live()
        # The in-flight reading as (value, time), or rp's own, or None: compared with the last one
        # before a Reading is made. ``occupancy`` is its value (None: unknown).
        newest = rp.newest
        if newest is None:
            in_flight_value = in_flight_at = occupancy = None
        elif oldest_ingress_s is not None:
            occupancy = in_flight_value = float(ingress_totals.get(d.name, 0))
            in_flight_at = newest if newest < oldest_ingress_s else oldest_ingress_s
        else:
            in_flight_value, in_flight_at = rp, None
            occupancy = rp.in_flight.value
        if occupancy is not None and occupancy != d.load_last:
            d.record_load(occupancy, now_s)
        # The outcomes whose load counts now (module doc): load <= max(occupancy, max_concurrent - 1).
        counted = _INF if occupancy is None else occupancy if occupancy > d.no_queue_below else d.no_queue_below
        op = d.op
        if (op is None or not op.computed_at_s <= now_s < op.valid_until_s
                or not (op.load_from <= counted < op.load_until or counted == op.load_until == _INF)):
            op = d.op = _outcome_part(d.outcomes, now_s, self._latency_window, counted)
        circuit = d.breaker.state(now_s)
        external = self._external_for(d.name, d.zone, d.region) if self._external else ()
        # The same object as last time when nothing changed, so a snapshot can reuse what was
        # derived from it (``FleetSnapshot``'s prepared entries).
        last = d.signals
        if (last is not None and d.signals_rp is rp and d.signals_op is op and d.in_flight_value == in_flight_value
                and d.in_flight_at == in_flight_at and d.circuit is circuit and d.external == external):
            return last
        if newest is None:
            in_flight = None
        elif oldest_ingress_s is not None:
            in_flight = _reading(in_flight_value, in_flight_at)
        else:
            in_flight = rp.in_flight
        signals = d.signals = _signals_of(
            in_flight, rp.queued, rp.gpu, rp.kv, rp.rl_req, rp.rl_tok, op.ttft, op.tpot, op.error_rate, circuit,
            rp.node_countries, rp.unlabelled, external, d.capacity, op.ttft_ratio)
        d.signals_rp, d.signals_op, d.in_flight_value, d.in_flight_at, d.circuit, d.external = \
            rp, op, in_flight_value, in_flight_at, circuit, external
        return signals

    # -- status -------------------------------------------------------------------------------
    @staticmethod
    def replica_counts(d: _Derived) -> dict[str, int | None]:
        """live (reporting, not stopping), stopping (draining, still reporting), starting and target
        (from Serve; None where Serve was not asked: the replay, tests)."""
        stopping = sum(1 for rid in d.replicas if rid in d.stopping)
        target, starting = d.serve if d.serve is not None else (None, None)
        return {"live": d.live, "stopping": stopping, "starting": starting, "target": target}

    @staticmethod
    def capacity_of(spec: SubstrateSpec, sig: SubstrateSignals) -> dict:
        """The admission limits now, and whether they follow the replicas (per_replica: the slots
        one replica adds, ``max_concurrent / replicas`` as declared)."""
        c = sig.capacity
        scales = spec.replicas is not None
        return {"max_concurrent": spec.max_concurrent if c is None else c[0],
                "max_queued": spec.max_queued if c is None else c[1],
                "follows_replicas": scales,
                "per_replica_concurrent": spec.max_concurrent / spec.replicas if scales else None,
                "declared_max_concurrent": spec.max_concurrent, "declared_replicas": spec.replicas}

    def replica_seconds(self, now_s: float) -> dict[str, float]:
        """Substrate -> live replica-seconds since this authority started, integrated up to
        ``now_s`` (each call adds the replicas live at the last count times the time since the last
        call; the actor calls it at every sync, ten times a second). Owned hardware is paid for
        while its replicas run: ``x usd_per_replica_second`` is its cost (``owned_cost_usd``)."""
        out = {}
        for d in self._derived:
            last = d.integrated_at_s
            if last is None or now_s > last:
                if last is not None:
                    d.replica_s += d.live * (now_s - last)
                d.integrated_at_s = now_s
            out[d.name] = d.replica_s
        return out

    def capacities(self) -> dict[str, tuple[dict, dict]]:
        """Substrate -> (``replica_counts``, ``capacity_of``) as of the last snapshot (metrics)."""
        snap = self._published
        if snap is None:
            return {}
        return {spec.name: (self.replica_counts(d), self.capacity_of(spec, sig))
                for spec, sig, d in zip(self._fleet.substrates, snap.signals, self._derived)}

    def status(self, now_s: float) -> dict:
        """The fleet as this authority sees it, as plain data (``inferplane status``)."""
        snap = self.snapshot(now_s)
        substrates = []
        for spec, sig, d in zip(self._fleet.substrates, snap.signals, self._derived):
            readings = {}
            for signal in ("in_flight", "queued", "gpu_memory_used_ratio", "kv_cache_usage",
                          "rate_limit_requests_remaining", "rate_limit_tokens_remaining",
                          "recent_ttft_s", "recent_tpot_s", "error_rate", "ttft_ratio"):
                r = getattr(sig, signal)
                readings[signal] = None if r is None else {"value": r.value, "age_s": now_s - r.observed_at_s}
            breaker = self._breakers[spec.name]
            declared = spec.countries
            mismatch = sorted((sig.node_countries or frozenset()) - declared)
            substrates.append({
                "name": spec.name, "class": spec.substrate_class, "kind": spec.kind, "emulated": spec.emulated,
                "declared": {"region": spec.region, "zone": spec.zone, "jurisdiction": spec.jurisdiction},
                "replicas": [
                    {"replica": rid, "node": r.node_id, "region": r.node_region, "zone": r.node_zone,
                     "jurisdiction": r.node_jurisdiction, "age_s": now_s - t, "in_flight": r.in_flight,
                     "queued": r.queued, "gpu_memory_used_ratio": r.gpu_memory_used_ratio,
                     "node_memory_used_ratio": r.node_memory_used_ratio,
                     "node_cpu_used_ratio": r.node_cpu_used_ratio,
                     "prefix_cache_queried_tokens": r.prefix_cache_queried_tokens,
                     "prefix_cache_hit_tokens": r.prefix_cache_hit_tokens}
                    for rid, (t, r) in sorted(self._replicas[spec.name].items())
                ],
                "signals": readings,
                "circuit": {"state": sig.circuit.value, "reason": breaker.reason,
                            "open_until_in_s": None if breaker.open_until_s is None
                            else max(0.0, breaker.open_until_s - now_s)},
                "node_jurisdiction_mismatch": mismatch,
                "unlabelled_replicas": sig.unlabelled_replicas,
                "external": {n: {"value": r.value, "age_s": now_s - r.observed_at_s} for n, r in sig.external},
                "drift_penalty": [p._asdict() for p in sig.drift],
                "replicas_now": self.replica_counts(d),
                "capacity": self.capacity_of(spec, sig),
            })
        ingress = [
            {"ingress": iid, "report_age_s": now_s - r.at_s, "snapshot_version": r.snapshot_version,
             "snapshot_age_s": r.snapshot_age_s, "zone": r.zone, "in_flight": r.in_flight}
            for iid, r in sorted(self._ingress.items())
        ]
        return {"snapshot_version": snap.version, "snapshot_taken_at_s": snap.taken_at_s,
                "tenant_spend_usd": snap.tenant_spend_usd,
                "policy_hash": self._policy_hash, "staleness_bound_s": self._bound,
                "substrates": substrates, "ingress": ingress}


_PENALIZED_READINGS = {"ttft": "recent_ttft_s", "tpot": "recent_tpot_s"}


def _penalized(signals: SubstrateSignals, floors: tuple[tuple[str, float, float], ...], now_s: float,
               bound_s: float) -> SubstrateSignals:
    """``signals`` with the drift ``floors`` applied (module doc): each reading that is missing,
    stale at ``now_s`` or lower than its floor becomes ``Reading(floor_s, now_s)``, and each floor
    so applied is named in ``drift``. A new object, or ``signals`` itself when no floor applies."""
    changes: dict = {}
    applied = []
    for kind, factor, floor_s in floors:
        field_name = _PENALIZED_READINGS[kind]
        current = getattr(signals, field_name)
        if current is None or now_s - current.observed_at_s > bound_s or current.value < floor_s:
            changes[field_name] = _reading(floor_s, now_s)
            applied.append(DriftPenalty(kind, factor, floor_s))
    if not applied:
        return signals
    return replace(signals, drift=tuple(applied), **changes)


def _nested_sum(parts) -> dict[str, dict[str, int]]:
    """The sum of ``{a: {b: n}}`` mappings (None ones skipped)."""
    out: dict[str, dict[str, int]] = {}
    for part in parts:
        if part:
            for a, inner in part.items():
                row = out.setdefault(a, {})
                for b, n in inner.items():
                    row[b] = row.get(b, 0) + n
    return out


def share_of_free_slots(free: int, replicas: tuple[str, ...], waiting: dict[str, dict[int, int]],
                        version: int) -> dict[str, int]:
    """How ``free`` slots of one substrate are split among ``replicas`` until the next sync: first
    to the requests waiting for it, highest priority first (``waiting``: replica -> priority ->
    count); a priority that wants more than is left shares it in proportion to what each replica
    holds; what no waiting request wants is split evenly, for new arrivals. Every remainder goes to
    replicas by rank, rotated by ``version`` so that no replica always gets it. The shares sum to
    ``free``: every replica computes the same split from the same snapshot."""
    n = len(replicas)
    order = replicas[version % n:] + replicas[:version % n]
    share = dict.fromkeys(replicas, 0)
    left = free
    for priority in sorted({p for w in waiting.values() for p in w}, reverse=True):
        want = {rid: waiting[rid].get(priority, 0) for rid in order if rid in waiting}
        total = sum(want.values())
        if total <= left:
            for rid, k in want.items():
                share[rid] += k
            left -= total
            continue
        given = {rid: left * k // total for rid, k in want.items()}
        spare = left - sum(given.values())
        for rid in order:
            if spare and want.get(rid, 0) > given.get(rid, 0):
                given[rid] += 1
                spare -= 1
        for rid, k in given.items():
            share[rid] += k
        return share
    for i, rid in enumerate(order):
        share[rid] += left // n + (1 if i < left % n else 0)
    return share


def period_key(period: str, now_s: float) -> str:
    """The UTC calendar period a budget counts in: ``2026-11-26`` (day) or ``2026-11`` (month)."""
    day = _dt.datetime.fromtimestamp(now_s, tz=_dt.timezone.utc)
    return day.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


class _Derived:
    """One substrate's inputs (its replicas' reports, its outcomes, its breaker) and what was derived
    from them: the replica part (``rp``, None once a report arrives or expires), the outcome part
    (``op``, None once an outcome arrives), and the last signals with what they were built from.

    It also keeps the record of its occupancy (``record_load``): each change, as published, in
    ``load_t``/``load_v``, and the same changes reduced to a stack of suffix maxima
    (``peak_t``/``peak_v``: each kept change is higher than every later one), so that the most
    published after an instant is the first kept peak after it, found by bisection."""

    __slots__ = ("name", "zone", "region", "breaker", "replicas", "outcomes", "rp", "op", "signals",
                 "signals_rp", "signals_op", "in_flight_value", "in_flight_at", "circuit", "external",
                 "no_queue_below", "running_only", "load_last", "load_t", "load_v", "peak_t", "peak_v",
                 "spec", "live", "capacity", "capacity_live", "stopping", "serve", "replica_s", "integrated_at_s")

    def __init__(self, name: str, zone: str, region: str, breaker: CircuitBreaker,
                 replicas: dict[str, tuple[float, SubstrateReport]], max_concurrent: int = 1,
                 running_only: bool = False, spec: SubstrateSpec | None = None) -> None:
        self.name, self.zone, self.region, self.breaker = name, zone, region, breaker
        self.replicas = replicas
        self.outcomes = _OutcomeWindow()
        self.rp: _ReplicaPart | None = None
        self.op: _OutcomePart | None = None
        self.signals: SubstrateSignals | None = None
        self.signals_rp = self.signals_op = self.in_flight_value = self.in_flight_at = None
        self.circuit: CircuitState | None = None
        self.external: tuple = ()
        self.no_queue_below = float(max_concurrent - 1)
        """The most an outcome may have shared the substrate with and still have met no queue."""
        self.running_only = running_only
        self.load_last: float | None = None
        self.load_t: list[float] = []
        self.load_v: list[float] = []
        self.peak_t: list[float] = []
        self.peak_v: list[float] = []
        self.spec = spec
        self.live = 0
        """Replicas reporting and not stopping (``count_live``)."""
        self.capacity: Capacity | None = None if spec is None else spec.capacity_at(0)
        """The live admission limits (``SubstrateSpec.capacity_at``); None: the spec's, fixed."""
        self.capacity_live = 0
        """The live count ``capacity`` was worked out for."""
        self.stopping: frozenset[str] = frozenset()
        """Ids of the replicas Serve is stopping (``FleetState.set_serve_replicas``)."""
        self.serve: tuple[int, int] | None = None
        """(target, starting) replicas as Serve last said; None: not known (the replay, tests)."""
        self.replica_s = 0.0
        """Live replica-seconds integrated so far (``FleetState.replica_seconds``)."""
        self.integrated_at_s: float | None = None

    def count_live(self) -> None:
        """The replicas live now (reporting, not stopping; each report counts the replicas it speaks
        for), and the capacity they give; the no-queue load follows it."""
        stopping = self.stopping
        live = 0
        for rid, (_, report) in self.replicas.items():
            if rid not in stopping:
                live += report.replicas
        self.live = live
        spec = self.spec
        if live != self.capacity_live and spec is not None and spec.replicas is not None:
            self.capacity_live = live
            capacity = self.capacity = spec.capacity_at(live)
            self.no_queue_below = float(max(capacity[0], 1) - 1)

    def record_load(self, occupancy: float, now_s: float) -> None:
        """The occupancy published at ``now_s`` (a change from the last one)."""
        self.load_last = occupancy
        self.load_t.append(now_s)
        self.load_v.append(occupancy)
        peak_t, peak_v = self.peak_t, self.peak_v
        while peak_v and peak_v[-1] <= occupancy:
            peak_t.pop()
            peak_v.pop()
        peak_t.append(now_s)
        peak_v.append(occupancy)
        if len(self.load_t) > 2 * LOAD_RECORD:  # keep the last LOAD_RECORD changes, and the peaks since
            del self.load_t[:-LOAD_RECORD]
            del self.load_v[:-LOAD_RECORD]
            k = bisect_left(peak_t, self.load_t[0])
            del peak_t[:k]
            del peak_v[:k]

    def load_met(self, dispatched_at_s: float | None) -> float:
        """The most requests an outcome dispatched at ``dispatched_at_s`` shared the substrate with:
        max(occupancy published when it was dispatched, highest published since - 1, as that
        count includes itself once its dispatch was reported); -inf when unknown (counted at any
        load)."""
        if dispatched_at_s is None:
            return -_INF
        i = bisect_right(self.load_t, dispatched_at_s) - 1
        if i < 0:  # dispatched before the oldest change kept (or none yet)
            return -_INF
        load = self.load_v[i]
        j = bisect_right(self.peak_t, dispatched_at_s)
        if j < len(self.peak_v):
            later = self.peak_v[j] - 1.0
            if later > load:
                load = later
        return load


class _ReplicaPart(NamedTuple):
    """What a substrate's live replica reports say, until one more arrives or one expires (a named
    tuple: built on every heartbeat, by ``tuple.__new__``)."""

    newest: float | None
    """The newest report's time; None when no replica reports."""
    in_flight: Reading | None
    """The replicas' own count of the requests they hold, running or waiting (used when no ingress
    replica reports)."""
    queued: Reading | None = None
    kv: Reading | None = None
    gpu: Reading | None = None
    rl_req: Reading | None = None
    rl_tok: Reading | None = None
    node_countries: frozenset[str] | None = None
    unlabelled: int = 0


_new_part = tuple.__new__


def _replica_part(reports, running_only: bool = False) -> _ReplicaPart:
    """``in_flight`` and ``queued`` sum (with ``running_only``, the adapters' in-flight count holds
    only the running requests, and their queued ones are added to it); KV-cache and GPU memory take
    the max, rate-limit headroom the min; every reading is dated by the oldest report it was built
    from."""
    if len(reports) == 1:  # the common case, read straight off the one report
        ((t, r),) = reports
        j = r.node_jurisdiction
        kv, gpu, rl_req, rl_tok = (r.kv_cache_usage, r.gpu_memory_used_ratio, r.rate_limit_requests_remaining,
                                   r.rate_limit_tokens_remaining)
        return _new_part(_ReplicaPart, (
            t, _reading(float(r.in_flight + r.queued if running_only else r.in_flight), t),
            _reading(float(r.queued), t),
            None if kv is None else _reading(kv, t), None if gpu is None else _reading(gpu, t),
            None if rl_req is None else _reading(rl_req, t), None if rl_tok is None else _reading(rl_tok, t),
            frozenset((j,)) if j else None, 0 if j else 1))
    reports = list(reports)
    if not reports:
        return _ReplicaPart(None, None)
    oldest = min(t for t, _ in reports)

    def agg(values, pick) -> Reading | None:
        known = [v for v in values if v is not None]
        return Reading(pick(known), oldest) if known else None

    labels = [r.node_jurisdiction for _, r in reports]
    return _ReplicaPart(
        newest=max(t for t, _ in reports),
        in_flight=Reading(float(sum(r.in_flight + r.queued if running_only else r.in_flight for _, r in reports)),
                          oldest),
        queued=Reading(float(sum(r.queued for _, r in reports)), oldest),
        kv=agg((r.kv_cache_usage for _, r in reports), max),
        gpu=agg((r.gpu_memory_used_ratio for _, r in reports), max),
        rl_req=agg((r.rate_limit_requests_remaining for _, r in reports), min),
        rl_tok=agg((r.rate_limit_tokens_remaining for _, r in reports), min),
        node_countries=frozenset(j for j in labels if j) if any(labels) else None,
        unlabelled=sum(1 for j in labels if not j),
    )


class _OutcomePart(NamedTuple):
    """Medians of a substrate's recent outcomes, valid from ``computed_at_s`` until the oldest of
    them leaves the latency window (or a new outcome arrives), and while the load that counts
    (``_outcome_part``'s ``counted``) stays in [``load_from``, ``load_until``) (or both are +inf):
    within it, the same outcomes count. (A named tuple, as ``_ReplicaPart``: built whenever an
    outcome arrives or leaves the window, by ``tuple.__new__``.)"""

    computed_at_s: float
    valid_until_s: float
    ttft: Reading | None
    tpot: Reading | None
    error_rate: Reading | None
    load_from: float = -_INF
    load_until: float = _INF
    ttft_ratio: Reading | None = None


class _OutcomeWindow:
    """A substrate's last ``OUTCOME_WINDOW`` outcomes, one deque per field (oldest first), so that
    ``_outcome_part`` selects and reduces them with C-level iterators. ``descents`` counts the
    neighbours out of time order (outcomes from several ingress replicas may interleave). ``load``
    is the load each met (``_Derived.load_met``; -inf: unknown).

    It also keeps the outcomes from the ``kept_from``-th appended on (every one appended since,
    and still held) reduced: their ttft and tpot values sorted, their failures counted, updated as
    outcomes arrive and leave, so that in time order a median is read, not sorted."""

    __slots__ = ("at_s", "ok", "ttft_s", "tpot_s", "ratio", "load", "descents", "appended", "kept_from", "ttfts",
                 "tpots", "ratios", "failures")

    def __init__(self) -> None:
        self.at_s: deque[float] = deque(maxlen=OUTCOME_WINDOW)
        self.ok: deque[bool] = deque(maxlen=OUTCOME_WINDOW)
        self.ttft_s: deque[float | None] = deque(maxlen=OUTCOME_WINDOW)
        self.tpot_s: deque[float | None] = deque(maxlen=OUTCOME_WINDOW)
        self.ratio: deque[float | None] = deque(maxlen=OUTCOME_WINDOW)
        self.load: deque[float] = deque(maxlen=OUTCOME_WINDOW)
        self.descents = 0
        self.appended = 0
        self.kept_from = 0
        self.ttfts: list[float] = []
        self.tpots: list[float] = []
        self.ratios: list[float] = []
        self.failures = 0

    def append(self, o: Outcome, load: float = -_INF) -> None:
        times = self.at_s
        if times:
            if len(times) == OUTCOME_WINDOW:  # the oldest leaves
                if len(times) > 1 and times[0] > times[1]:
                    self.descents -= 1
                if self.appended - OUTCOME_WINDOW >= self.kept_from:
                    self._unkeep(0)
                    self.kept_from += 1
            if o.at_s < times[-1]:
                self.descents += 1
        times.append(o.at_s)
        self.ok.append(o.ok)
        self.ttft_s.append(o.ttft_s)
        self.tpot_s.append(o.tpot_s)
        declared = o.declared_ttft_s
        ratio = o.ttft_s / declared if o.ttft_s is not None and declared is not None and declared > 0.0 else None
        self.ratio.append(ratio)
        self.load.append(load)
        self.appended += 1
        if o.ttft_s is not None:
            insort(self.ttfts, o.ttft_s)
        if o.tpot_s is not None:
            insort(self.tpots, o.tpot_s)
        if ratio is not None:
            insort(self.ratios, ratio)
        if not o.ok:
            self.failures += 1

    def keep_from(self, start: int) -> None:
        """Keep the outcomes from position ``start`` (0: the oldest held) on, reduced."""
        first = self.appended - len(self.at_s)  # the oldest held, counted in appends
        if first + start >= self.kept_from:
            for i in range(self.kept_from - first, start):
                self._unkeep(i)
        else:  # outcomes kept before are wanted again (an earlier ``now``): reduce afresh
            self.ttfts = sorted(filter(_KNOWN, islice(self.ttft_s, start, None)))
            self.tpots = sorted(filter(_KNOWN, islice(self.tpot_s, start, None)))
            self.ratios = sorted(filter(_KNOWN, islice(self.ratio, start, None)))
            self.failures = sum(map(not_, islice(self.ok, start, None)))
        self.kept_from = first + start

    def _unkeep(self, i: int) -> None:
        """Take the outcome at position ``i`` out of the reduction."""
        ttft, tpot, ratio = self.ttft_s[i], self.tpot_s[i], self.ratio[i]
        if ttft is not None:
            del self.ttfts[bisect_left(self.ttfts, ttft)]
        if ratio is not None:
            del self.ratios[bisect_left(self.ratios, ratio)]
        if tpot is not None:
            del self.tpots[bisect_left(self.tpots, tpot)]
        if not self.ok[i]:
            self.failures -= 1


def _outcome_part(outcomes: _OutcomeWindow, now_s: float, window_s: float, counted: float = _INF) -> _OutcomePart:
    """The readings of the outcomes in the window (module doc): the error rate over all of them,
    the ttft and tpot medians over those whose load is at most ``counted``."""
    # Worked out again whenever an outcome arrives or leaves the window. An outcome is recent when
    # ``now_s - at_s <= window_s``; that difference never grows with ``at_s``, so in a window in
    # time order the recent outcomes are a suffix, found by bisection, and reduced already
    # (``keep_from``). Out of order, every pass over the (up to OUTCOME_WINDOW) outcomes runs in C.
    times = outcomes.at_s
    if not times:
        return _OutcomePart(now_s, _INF, None, None, None)
    if not outcomes.descents:
        start = bisect_left(times, True, key=lambda t: now_s - t <= window_s)
        if start < len(times):
            valid_until = times[start] + window_s
        else:
            # Nothing recent: the last window that had outcomes, dated by its newest, so placement
            # still knows what the substrate last did, and how long ago (DeadlineReachable probes
            # it). It stays so until a new outcome arrives.
            valid_until = _INF
            newest = times[-1]
            start = bisect_left(times, True, key=lambda t: newest - t <= window_s)
        outcomes.keep_from(start)
        at = times[-1]
        n = len(times) - start
        failures = outcomes.failures
        top = max(islice(outcomes.load, start, None))
        if top <= counted:  # every one counts: the kept reduction
            ttfts, tpots, ratios, counted_at, load_from, load_until = (
                outcomes.ttfts, outcomes.tpots, outcomes.ratios, at, top, _INF)
        else:
            loads = list(islice(outcomes.load, start, None))
            mask = list(map(le, loads, repeat(counted)))
            ttfts = sorted(filter(_KNOWN, compress(islice(outcomes.ttft_s, start, None), mask)))
            tpots = sorted(filter(_KNOWN, compress(islice(outcomes.tpot_s, start, None), mask)))
            ratios = sorted(filter(_KNOWN, compress(islice(outcomes.ratio, start, None), mask)))
            counted_at = max(compress(islice(times, start, None), mask), default=None)
            load_from = max(compress(loads, mask), default=-_INF)
            load_until = min(compress(loads, map(not_, mask)))  # the least load above counted
    else:
        recent = list(map(le, map(sub, repeat(now_s), times), repeat(window_s)))
        if True in recent:
            at_s = list(compress(times, recent))
            valid_until = min(at_s) + window_s
        else:  # nothing recent, as above
            valid_until = _INF
            recent = list(map(le, map(sub, repeat(times[-1]), times), repeat(window_s)))
            at_s = list(compress(times, recent))
        at = max(at_s)
        n = len(at_s)
        failures = sum(map(not_, compress(outcomes.ok, recent)))
        loads = list(compress(outcomes.load, recent))
        below = [r and load <= counted for r, load in zip(recent, outcomes.load)]
        ttfts = sorted(filter(_KNOWN, compress(outcomes.ttft_s, below)))
        tpots = sorted(filter(_KNOWN, compress(outcomes.tpot_s, below)))
        ratios = sorted(filter(_KNOWN, compress(outcomes.ratio, below)))
        counted_at = max(compress(times, below), default=None)
        load_from = max((load for load in loads if load <= counted), default=-_INF)
        load_until = min((load for load in loads if load > counted), default=_INF)
    return _new_part(_OutcomePart, (
        now_s, valid_until,
        _reading(ttfts[len(ttfts) // 2], counted_at) if ttfts else None,
        _reading(tpots[len(tpots) // 2], counted_at) if tpots else None,
        _reading(failures / n, at), load_from, load_until,
        _reading(ratios[len(ratios) // 2], counted_at) if ratios else None))


_KNOWN = partial(is_not, None)


# Readings and signals are built on most heartbeats. A frozen dataclass's ``__init__`` sets each
# field through ``object.__setattr__``; these set the slots directly, the same fields to the same
# values (neither class validates anything when built), in a little over half the time.
_new = object.__new__
_SET_VALUE, _SET_OBSERVED = Reading.value.__set__, Reading.observed_at_s.__set__
(_SET_IN_FLIGHT, _SET_QUEUED, _SET_GPU, _SET_KV, _SET_RL_REQ, _SET_RL_TOK, _SET_TTFT, _SET_TPOT, _SET_ERROR,
 _SET_CIRCUIT, _SET_COUNTRIES, _SET_UNLABELLED, _SET_EXTERNAL, _SET_DRIFT, _SET_CAPACITY, _SET_TTFT_RATIO,
 _SET_PREFILL_CLEAR) = (
    getattr(SubstrateSignals, f.name).__set__ for f in fields(SubstrateSignals))


def _reading(value: float, observed_at_s: float) -> Reading:
    r = _new(Reading)
    _SET_VALUE(r, value)
    _SET_OBSERVED(r, observed_at_s)
    return r


def _signals_of(in_flight, queued, gpu, kv, rl_req, rl_tok, ttft, tpot, error_rate, circuit, countries, unlabelled,
                external, capacity=None, ttft_ratio=None) -> SubstrateSignals:
    """``SubstrateSignals(...)`` with its fields in declaration order."""
    s = _new(SubstrateSignals)
    _SET_IN_FLIGHT(s, in_flight)
    _SET_QUEUED(s, queued)
    _SET_GPU(s, gpu)
    _SET_KV(s, kv)
    _SET_RL_REQ(s, rl_req)
    _SET_RL_TOK(s, rl_tok)
    _SET_TTFT(s, ttft)
    _SET_TPOT(s, tpot)
    _SET_ERROR(s, error_rate)
    _SET_CIRCUIT(s, circuit)
    _SET_COUNTRIES(s, countries)
    _SET_UNLABELLED(s, unlabelled)
    _SET_EXTERNAL(s, external)
    _SET_DRIFT(s, ())  # drift penalties are applied afterwards (``_penalized``)
    _SET_CAPACITY(s, capacity)
    _SET_TTFT_RATIO(s, ttft_ratio)
    _SET_PREFILL_CLEAR(s, None)  # a replica's own lane clock, never the authority's (``signals``)
    return s


# A snapshot is published on every sync (ten a second per ingress replica): built the same way.
_PUBLISHED_SETTERS = tuple(getattr(PublishedSnapshot, f.name).__set__ for f in fields(PublishedSnapshot))


def _published_snapshot(version, taken_at_s, policy_hash, signals, tenant_spend_usd, tenant_in_flight, reclaiming,
                        ingress_ids, demand, grants, expected_output_tokens, scaling_up, lanes) -> PublishedSnapshot:
    """``PublishedSnapshot(...)`` with every field given, in declaration order."""
    p = _new(PublishedSnapshot)
    for set_field, value in zip(_PUBLISHED_SETTERS, (
            version, taken_at_s, policy_hash, signals, tenant_spend_usd, tenant_in_flight, reclaiming, ingress_ids,
            demand, grants, expected_output_tokens, scaling_up, lanes)):
        set_field(p, value)
    return p


if tuple(f.name for f in fields(PublishedSnapshot)) != (
        "version", "taken_at_s", "policy_hash", "signals", "tenant_spend_usd", "tenant_in_flight", "reclaiming",
        "ingress_ids", "demand", "grants", "expected_output_tokens", "scaling_up", "lanes"):
    raise ImportError("_published_snapshot sets PublishedSnapshot's fields in order: keep it in step")
if tuple(f.name for f in fields(SubstrateSignals)) != (
        "in_flight", "queued", "gpu_memory_used_ratio", "kv_cache_usage", "rate_limit_requests_remaining",
        "rate_limit_tokens_remaining", "recent_ttft_s", "recent_tpot_s", "error_rate", "circuit", "node_countries",
        "unlabelled_replicas", "external", "drift", "capacity", "ttft_ratio", "prefill_clear_at_s"):
    raise ImportError("_signals_of sets SubstrateSignals' fields in order: keep it in step")
if tuple(f.name for f in fields(Reading)) != ("value", "observed_at_s"):
    raise ImportError("_reading sets Reading's fields: keep it in step")
